"""Lease-ahead through a real agent: worker processes, the supervisor's store shell and store-call lanes, and the
store's allocator (``store_uri``: the memory store, and a real ZooKeeper server).

New SNAT connections come in bursts, each sent once the previous one is out and no lease is in flight (a closed
loop, so the test does not depend on how fast this machine is): only the first burst parks on a lease; every
later block was leased ahead.  The workers' blocks are the ones the store holds under their names.
"""

from __future__ import annotations

import pytest

from engine.supervisor import Agent
from tests.integration.test_agent_store_outages import TOPO, UPLINK, snat_frames
from tests.integration.test_engine import Outputs, wait_for

BURST = 16
ROUNDS = 30                    # 480 connections: ~4 blocks per worker


def summed(agent: Agent, name: str) -> int:
    return sum(w.get(name, 0) for w in agent.stats()["workers"])


@pytest.fixture
def agent(store_uri, tmp_path):
    (tmp_path / "t.yaml").write_text(TOPO)
    a = Agent(workers=2, host="host-a", topology=str(tmp_path / "t.yaml"), store=store_uri).start()
    yield a
    a.stop()


def test_steady_bursts_of_new_snat_connections_park_only_for_the_first_block(agent):
    out = Outputs(agent)
    sent, first_parks = 0, None
    for r in range(ROUNDS):
        agent.inject("tenant.vm1", snat_frames(range(20000 + sent, 20000 + sent + BURST)))
        sent += BURST
        out.wait(UPLINK, sent, timeout=30)
        wait_for(lambda: summed(agent, "worker_leases_out") == 0, timeout=30, what="no lease in flight")
        if r == 0:
            first_parks = summed(agent, "worker_parked_lease")
            assert first_parks > 0                           # nothing held yet: the first connections wait
    stats = agent.stats()
    workers = stats["workers"]
    assert summed(agent, "worker_parked_lease") == first_parks
    assert sum(w.get("worker_lease_ahead_requests", 0) for w in workers) >= 2
    assert not any(k.startswith("worker_drops_") and v for w in workers for k, v in w.items())
    assert len(set(out.frames[UPLINK])) == sent
    # what the workers hold is what the store holds under their names, and within the lease-ahead bound
    held = agent.allocator.held()
    assert sum(w["worker_nat_blocks"] for w in workers) == len(held)
    assert sum(w["worker_leases_granted"] for w in workers) == len(held)
    assert sent // 64 <= len(held) <= sent // 64 + 2 * (1 + agent.cfg.snat_lease_ahead)
    assert stats["supervisor"]["supervisor_lease_requests"] == len(held)
