"""Re-leasing the exact SNAT blocks a restarted agent restores (both stores)."""

from __future__ import annotations

from topology.store.leases import StoreNatAllocator


def test_an_agent_reclaims_its_own_blocks_but_never_another_agents(store_factory):
    first = store_factory()
    a = StoreNatAllocator(first, "host-a")
    block = a.lease("host-a/worker-0", "r1", 99, 5000, 65535)
    assert block is not None
    # the agent restarts: a new session, the old one not expired yet (killed, not stopped)
    again = StoreNatAllocator(store_factory(), "host-a")
    assert again.claim("host-a/worker-1", "r1", 99, block) is True
    assert again.claim("host-a/worker-1", "r1", 99, block) is True          # idempotent in one session
    # another agent cannot claim it, nor lease it
    b = StoreNatAllocator(store_factory(), "host-b")
    assert b.claim("host-b/worker-0", "r1", 99, block) is False
    assert b.lease("host-b/worker-0", "r1", 99, block, block + 63) is None
    # a free block can be claimed by anyone
    assert b.claim("host-b/worker-0", "r1", 99, block + 64) is True
    assert again.claim("host-a/worker-0", "r1", 99, block + 64) is False
