"""NAT port-block leases (topology.store.leases) on both stores: two handles = two agents."""

from __future__ import annotations

import threading
from collections import deque

import pytest

from packet.addr import ip2int
from topology.nat_leases import BLOCK_SIZE
from topology.store.base import ConnState
from topology.store.leases import BadLeaseRequest, StoreNatAllocator, lease_dir

IP = ip2int("180.0.1.100")
LO = 80 * BLOCK_SIZE                 # 5120: aligned, so every block lies inside the range


def span(blocks: int) -> tuple[int, int]:
    return LO, LO + blocks * BLOCK_SIZE - 1


class Agent:
    """Hands out ports only from the blocks its allocator leased; frees the oldest port when it has
    ``live`` ports in use, and releases a block when its last port is freed."""

    def __init__(self, name, alloc, ledger, live, blocks):
        self.name, self.alloc, self.ledger, self.live = name, alloc, ledger, live
        self.lo, self.hi = span(blocks)
        self.free: dict[int, list[int]] = {}          # block → free ports
        self.used: dict[int, int] = {}                # block → ports in use
        self.ports: deque[tuple[int, int]] = deque()
        self.handed = 0

    def _release_oldest(self) -> bool:
        """Free the oldest port in use; True when that released its block."""
        block, port = self.ports.popleft()
        self.ledger.free_port(port, self.name)      # a freed port is not reused before its block is released
        self.used[block] -= 1
        if self.used[block] == 0 and not self.free[block]:
            del self.free[block], self.used[block]
            self.ledger.drop_block(block, self.name)          # before the store sees it free
            self.alloc.release(self.name, "r1", IP, block)
            return True
        return False

    def allocate(self) -> None:
        if len(self.ports) >= self.live:
            self._release_oldest()
        while True:
            block = next((b for b, f in self.free.items() if f), None)
            if block is not None:
                break
            block = self.alloc.lease(self.name, "r1", IP, self.lo, self.hi)
            if block is None:                          # exhausted: free our oldest block, try again
                self.ledger.exhausted += 1
                while self.ports and not self._release_oldest():
                    pass
                continue
            self.ledger.take_block(block, self.name)
            self.free[block] = list(range(max(block, self.lo), min(block + BLOCK_SIZE - 1, self.hi) + 1))
            self.used[block] = 0
        port = self.free[block].pop()
        self.ledger.take_port(port, self.name)
        self.used[block] += 1
        self.ports.append((block, port))
        self.handed += 1


class Ledger:
    """Global truth across agents: who holds which block and port right now."""

    def __init__(self):
        self.lock = threading.Lock()
        self.blocks: dict[int, str] = {}
        self.ports: dict[int, str] = {}
        self.errors: list[str] = []
        self.exhausted = 0
        self.block_leases = 0

    def take_block(self, block, who):
        with self.lock:
            self.block_leases += 1
            if block in self.blocks:
                self.errors.append(f"block {block} leased by {who} while held by {self.blocks[block]}")
            self.blocks[block] = who

    def drop_block(self, block, who):
        with self.lock:
            self.blocks.pop(block, None)

    def take_port(self, port, who):
        with self.lock:
            if port in self.ports:
                self.errors.append(f"port {port} handed out by {who} while used by {self.ports[port]}")
            self.ports[port] = who

    def free_port(self, port, who):
        with self.lock:
            self.ports.pop(port, None)


def test_two_agents_never_hold_the_same_block(store_factory):
    ledger = Ledger()
    blocks = 8
    agents = [Agent(f"host-{n}", StoreNatAllocator(store_factory(), f"host-{n}", seed=i), ledger, 200, blocks)
              for i, n in enumerate("ab")]
    total = 10_000
    failures: list[BaseException] = []

    def run(agent: Agent) -> None:
        try:
            for _ in range(total // 2):
                agent.allocate()
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            failures.append(e)

    threads = [threading.Thread(target=run, args=(a,)) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures
    assert sum(a.handed for a in agents) == total
    assert ledger.errors == []
    assert ledger.block_leases > 2 * blocks          # blocks changed hands many times
    # the store holds exactly the blocks the agents think they hold
    held = {b for a in agents for b in a.free}
    stored = {int(n) for n in agents[0].alloc.store.children(lease_dir("r1", IP))}
    assert stored == held
    assert sum(a.alloc.counters["nat_leases"] for a in agents) == ledger.block_leases


def test_exhaustion_idle_reclaim_and_release(store_factory):
    a = StoreNatAllocator(store_factory(), "host-a", seed=1)
    b = StoreNatAllocator(store_factory(), "host-b", seed=2)
    lo, hi = span(2)
    got = {a.lease("host-a", "r1", IP, lo, hi), a.lease("host-a", "r1", IP, lo, hi)}
    assert got == {LO, LO + BLOCK_SIZE}
    assert b.lease("host-b", "r1", IP, lo, hi) is None
    assert b.counters["nat_exhausted"] == 1
    assert a.lease("host-a", "r1", IP, lo, hi) is None              # nothing idle to reuse
    a.mark_idle("host-a", "r1", IP, LO + BLOCK_SIZE, now=5.0)
    a.mark_idle("host-a", "r1", IP, LO, now=7.0)
    assert a.lease("host-a", "r1", IP, lo, hi) == LO + BLOCK_SIZE    # least recently idled first
    assert a.counters["nat_reclaimed"] == 1
    assert b.lease("host-b", "r1", IP, lo, hi) is None              # never another agent's idle block
    assert a.release_idle(now=8.0, idle_s=5.0) == []
    assert a.release_idle(now=12.0, idle_s=5.0) == [("r1", IP, LO)]
    assert b.lease("host-b", "r1", IP, lo, hi) == LO
    a.release("host-b", "r1", IP, LO + BLOCK_SIZE)                   # not host-b's block at a: no-op
    assert a.held() == {("r1", IP, LO + BLOCK_SIZE): "host-a"}
    # other devices / addresses are separate pools
    assert b.lease("host-b", "r2", IP, lo, hi) is not None
    assert b.lease("host-b", "r1", IP + 1, lo, hi) is not None


def test_closing_a_session_frees_its_blocks(store_factory):
    sa = store_factory()
    a = StoreNatAllocator(sa, "host-a")
    b = StoreNatAllocator(store_factory(), "host-b")
    lo, hi = span(3)
    for _ in range(3):
        assert a.lease("host-a", "r1", IP, lo, hi) is not None
    assert b.lease("host-b", "r1", IP, lo, hi) is None
    sa.close()                                                      # the agent dies
    assert sorted(b.lease("host-b", "r1", IP, lo, hi) for _ in range(3)) == [LO, LO + 64, LO + 128]


def test_session_expiry_blocks_vanish_then_reclaimed_or_lost(store_factory, expire_session, wait_until):
    sa, sb = store_factory(), store_factory()
    lost_event, release = threading.Event(), threading.Event()

    def gate(state):                      # registered first: holds A's re-creation back
        if state is ConnState.LOST:
            lost_event.set()
            release.wait(20)

    sa.add_state_listener(gate)
    lost: list = []
    a = StoreNatAllocator(sa, "host-a", on_lost=lambda *k: lost.append(k))
    b = StoreNatAllocator(sb, "host-b")
    lo, hi = span(2)
    a.lease("host-a", "r1", IP, lo, hi)
    a.lease("host-a", "r1", IP, lo, hi)
    try:
        expire_session(sa)
        assert lost_event.wait(10)
        wait_until(lambda: sb.children(lease_dir("r1", IP)) == [], what="A's blocks to vanish")
        wait_until(lambda: not a.confirmed, what="A's new session")
        taken = b.lease("host-b", "r1", IP, LO, LO + BLOCK_SIZE - 1)   # B grabs one of them
        assert taken == LO
    finally:
        release.set()
    wait_until(lambda: a.confirmed and lost, what="A to re-create its blocks")
    assert lost == [("r1", IP, LO)]
    assert a.held() == {("r1", IP, LO + BLOCK_SIZE): "host-a"}
    assert a.counters["nat_blocks_lost"] == 1
    assert sorted(sb.children(lease_dir("r1", IP))) == [str(LO), str(LO + BLOCK_SIZE)]


@pytest.mark.parametrize("args", [
    ("", IP, 1, 2), ("r1", -1, 1, 2), ("r1", IP, 10, 5), ("r1", IP, 0, 70000), ("r1", "1.2.3.4", 1, 2),
])
def test_bad_requests_are_typed_errors(args):
    from topology.store.memory import MemoryStore

    with MemoryStore() as s:
        with pytest.raises(BadLeaseRequest):
            StoreNatAllocator(s, "host-a").lease("host-a", *args)
