"""Lease-ahead of SNAT port blocks (workers/worker.py ``_lease_ahead``), with the real parts in one process.

The wire of tests/inprocess.py (two Workers, the in-memory datapath, the real StoreNatAllocator on a memory
store), with one change: the supervisor answers lease requests one burst late (``LateWire``), so a lease's
round trip is as long as the gap between two bursts of new connections, as it is on a loaded agent.  Traffic
is new TCP connections from vm1 to the internet, each one needing its own SNAT port (one destination).

- at a steady rate, only the first block of each worker is leased by a park; without lease-ahead
  (``snat_lease_ahead = 0``, the old behaviour) the same traffic parks every time a block runs dry;
- the blocks ahead (held without a binding, or asked for) never exceed ``snat_lease_ahead``, and once the
  traffic stops every block goes back to the allocator;
- a store that fails leases: what a failed lease was for drops with its reason, lease-ahead holds off for a
  while instead of asking again at every burst, and once the store answers again nothing parks.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from backchannel import messages as m
from backchannel.codec import encode
from tests.inprocess import VM1, Wire, frame, to_internet
from topology.nat_leases import BLOCK_SIZE, random_free_blocks
from workers.simulation.result import FlowStateWrite
from workers.simulation.state import LocalState
from workers.worker import LEASE_AHEAD_RETRY_S

BURST = 12                     # new connections per burst (both workers together)
GAP = 0.01                     # seconds between bursts: 1,200 new connections/s


class LateWire(Wire):
    """Leases are answered when ``answer_leases`` is called (after each burst), not at once; ``failing`` makes
    the supervisor answer LeaseFailed (the store did not answer) instead.  Releases reach the allocator."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.held: list[m.LeaseRequest] = []
        self.failing = False

    def serve(self, msg) -> None:
        if type(msg) is m.LeaseRequest:
            self.to_supervisor.append(msg)
            self.held.append(msg)
        elif type(msg) is m.LeaseRelease:
            self.to_supervisor.append(msg)
            self.leases.release(f"w{msg.worker}", msg.device, msg.ip, msg.block)
        else:
            super().serve(msg)

    def answer_leases(self) -> None:
        held, self.held = self.held, []
        for msg in held:
            if self.failing:
                self.to_workers[msg.worker].send(encode(m.LeaseFailed(msg.device, msg.ip, "store_unavailable")))
                continue
            block = self.leases.lease(f"w{msg.worker}", msg.device, msg.ip, msg.port_start, msg.port_end)
            self.to_workers[msg.worker].send(encode(m.LeaseGranted(msg.device, msg.ip,
                                                                   -1 if block is None else block)))
        self.pump()


@pytest.fixture
def wire():
    w = LateWire()
    yield w
    w.close()


def total(wire: Wire, name: str) -> int:
    return sum(w.c[name] for w in wire.workers)


def burst(wire: LateWire, first: int) -> None:
    """BURST new connections, then the lease answers; the clock moves on by GAP."""
    wire.inject("tenant.vm1", *[to_internet(p) for p in range(first, first + BURST)])
    wire.answer_leases()
    wire.now += GAP


def ahead_of(w) -> list[int]:
    """Per (device, ip) worker ``w`` uses: its blocks held with no binding plus its leases in flight."""
    out = []
    for (device, ip) in w.state.blocks:
        out.append(w.state.empty_nat_blocks(device, ip) + w.leases_out.get(("lease", device, ip), 0))
    return out


def check_counts(w) -> None:
    """The worker's incremental SNAT port counts equal those recounted from its flow state."""
    st = w.state
    revs = [e.key for e in st.flow_state.values() if e.kind == "rev_snat"]
    ports = Counter((k[5], k[1], k[4]) for k in revs)
    assert st.snat_ports == ports
    assert st.snat_block_used == Counter((d, ip, p - p % BLOCK_SIZE) for d, ip, p in ports)
    held = {(d, ip, b) for (d, ip), blocks in st.blocks.items() for b in blocks}
    assert st.held_blocks == held
    assert st.snat_toward == Counter((k[5], k[1], k[0], k[2], k[3]) for k in revs
                                     if (k[5], k[1], k[4] - k[4] % BLOCK_SIZE) in held)
    for d, ip in st.blocks:
        assert st.empty_nat_blocks(d, ip) == sum(1 for b in st.blocks[(d, ip)] if (d, ip, b) not in st.snat_block_used)


def test_at_a_steady_rate_only_the_first_block_is_leased_by_a_park(wire):
    burst(wire, 1000)                                         # no block yet: these park, one lease per worker
    first_parks = total(wire, "parked_lease")
    assert first_parks > 0 and total(wire, "leases_granted") >= 1
    sport = 1000 + BURST
    for _ in range(60):                                       # 720 connections: ~6 blocks per worker
        burst(wire, sport)
        sport += BURST
        for w in wire.workers:
            assert all(n <= w.cfg.snat_lease_ahead for n in ahead_of(w)), ahead_of(w)
            check_counts(w)
    assert total(wire, "parked_lease") == first_parks        # none parked after the first block
    assert total(wire, "lease_ahead_requests") >= (sport - 1000) // BLOCK_SIZE - 2
    assert len(wire.outputs("r1.uplink")) == sport - 1000     # every connection went out
    assert not any(w.drops for w in wire.workers)
    # each worker holds what the allocator says it does, and its bindings live in those blocks
    for w in wire.workers:
        held = sorted((d, ip, b) for (d, ip), blocks in w.state.blocks.items() for b in blocks)
        assert held == wire.leases.held_by(f"w{w.i}")
        assert w.c["lease_rtt_count"] == w.c["leases_granted"] and w.lease_rtt >= 0


def test_connections_to_many_remote_ends_share_ports_and_lease_nothing_ahead(wire):
    # 720 connections spread over 60 servers: 12 per server, all served by the first block of each worker
    # (a port is bound once per remote end): nothing to lease ahead
    sport = 1000
    for _ in range(60):
        wire.inject("tenant.vm1", *[frame(f"{VM1},eth_dst=02:0a:00:00:00:01,ip_src=10.0.0.2,ip_dst=203.0.113.5,"
                                          f"proto=tcp,tp_src={p},tp_dst={1 + p % 60}")
                                    for p in range(sport, sport + BURST)])
        wire.answer_leases()
        wire.now += GAP
        sport += BURST
    assert len(wire.outputs("r1.uplink")) == sport - 1000
    assert total(wire, "lease_ahead_requests") == 0
    assert total(wire, "leases_granted") == len(wire.workers)
    assert all(max(w.state.snat_toward.values()) >= 5 for w in wire.workers)


def test_without_lease_ahead_the_same_traffic_parks_whenever_a_block_runs_dry(wire):
    for w in wire.workers:
        w.cfg.snat_lease_ahead = 0
    burst(wire, 1000)
    first_parks = total(wire, "parked_lease")
    sport = 1000 + BURST
    for _ in range(60):
        burst(wire, sport)
        sport += BURST
    assert total(wire, "parked_lease") > first_parks + 2 * BURST
    assert total(wire, "lease_ahead_requests") == 0
    assert len(wire.outputs("r1.uplink")) == sport - 1000     # parked, not lost: a lease came one burst later


def test_blocks_ahead_are_bounded_and_every_block_is_released_once_idle(wire):
    for w in wire.workers:
        w.cfg.snat_lease_ahead, w.cfg.snat_low_ports = 3, 3 * BLOCK_SIZE   # asks for as much as it may
    sport, most = 1000, 0
    for _ in range(40):
        burst(wire, sport)
        sport += BURST
        for w in wire.workers:
            assert all(n <= 3 for n in ahead_of(w)), ahead_of(w)
            most = max(most, *ahead_of(w))
    assert most >= 2                                          # it did lease more than one block ahead
    granted = total(wire, "leases_granted")
    assert granted == len(wire.leases.held_by("w0")) + len(wire.leases.held_by("w1"))
    # the traffic stops: connections idle out, then their blocks (the ones ahead too) go back
    for _ in range(40):
        wire.now += 10.0
        for w in wire.workers:
            w.housekeeping(wire.now)
        wire.pump()
    assert wire.leases.held_by("w0") == [] and wire.leases.held_by("w1") == []
    assert total(wire, "nat_blocks_released") == granted
    assert all(not w.state.blocks and not w.state.snat_block_used and not w.state.snat_toward
               and not w.state.snat_ports and not w.state.empty_blocks for w in wire.workers)


def test_failed_leases_drop_softly_hold_lease_ahead_off_and_it_resumes_when_the_store_answers(wire):
    sport = 1000
    for _ in range(10):
        burst(wire, sport)
        sport += BURST
    assert len(wire.outputs("r1.uplink")) == sport - 1000
    wire.failing = True                                       # the store stops answering leases
    ahead0 = total(wire, "lease_ahead_requests")
    rounds = 50                                               # 0.5 s: within one hold-off
    for _ in range(rounds):
        burst(wire, sport)
        sport += BURST
    assert rounds * GAP <= LEASE_AHEAD_RETRY_S
    failed = total(wire, "leases_failed")
    assert failed > 0
    # after the first failure per worker no lease-ahead asked again within the hold-off; the parks still ask
    assert total(wire, "lease_ahead_requests") - ahead0 <= 2 * len(wire.workers)
    assert total(wire, "lease_ahead_held_off") > 0
    dropped = sum(w.drops["lease_store_unavailable"] for w in wire.workers)
    assert dropped > 0 and set().union(*(w.drops for w in wire.workers)) == {"lease_store_unavailable"}
    out = len(wire.outputs("r1.uplink"))
    assert out + dropped == rounds * BURST                    # every packet out or dropped with its reason
    assert all(sum(w.leases_out.values()) == 0 for w in wire.workers)
    # the store answers again: after the hold-off, the blocks ahead come back and nothing parks
    wire.failing = False
    wire.now += LEASE_AHEAD_RETRY_S
    burst(wire, sport)                                        # may park once: the blocks ran dry meanwhile
    parks = total(wire, "parked_lease")
    for i in range(1, 41):
        burst(wire, sport + i * BURST)
    assert total(wire, "parked_lease") == parks
    assert len(wire.outputs("r1.uplink")) == 41 * BURST
    assert set().union(*(w.drops for w in wire.workers)) == {"lease_store_unavailable"}


def test_free_blocks_are_drawn_at_random_lazily_each_once_and_never_a_taken_one():
    rng = random.Random(7)
    taken = set(range(1024, 65536, 128))                      # every other block
    looked = []

    def is_taken(b: int) -> bool:
        looked.append(b)
        return b in taken

    draw = random_free_blocks(1024, 65535, is_taken, rng)
    first = next(draw)
    assert first not in taken and len(looked) <= 8            # found by a probe: the range was not listed
    rest = list(draw)
    assert sorted([first, *rest]) == list(range(1088, 65536, 128))
    assert next(random_free_blocks(5000, 5100, lambda b: True, rng), None) is None   # all taken: nothing
    assert sorted(random_free_blocks(5000, 5100, lambda b: False, rng)) == [4992, 5056]
    # two draws of a mostly free range start apart (agents sharing a store rarely race)
    firsts = {next(random_free_blocks(1024, 65535, lambda b: False, random.Random(s))) for s in range(20)}
    assert len(firsts) > 10


def test_full_blocks_are_tried_last_and_a_dry_range_is_seen_without_a_walk():
    st = LocalState()
    for b in (4992, 5056, 5120):                              # 4992 sticks out of 5000-65535: 56 ports of it
        st.add_nat_block("r1", 99, b)
    assert st.snat_capacity("r1", 99, 5000, 65535) == 56 + 64 + 64
    assert st.empty_nat_blocks("r1", 99) == 3

    def bind(port: int, remote: int = 7) -> tuple:
        return (remote, 99, 6, 443, port, "r1")              # the reply's key: remote → (99, port)

    st.apply([FlowStateWrite("rev_snat", bind(p), (1, 1000)) for p in range(5120, 5184)], now=0)
    assert st.blocks[("r1", 99)] == [5120, 4992, 5056]        # every port of 5120 bound: tried last
    assert st.empty_nat_blocks("r1", 99) == 2 and not st.snat_dry("r1", 99, 7, 6, 443, 5000, 65535)
    st.apply([FlowStateWrite("rev_snat", bind(p), (1, 1000)) for p in range(5000, 5120)], now=0)
    assert st.snat_dry("r1", 99, 7, 6, 443, 5000, 65535)      # toward this remote end: no port left
    assert not st.snat_dry("r1", 99, 8, 6, 443, 5000, 65535)  # toward another one: all of them
    assert st.snat_new[("r1", 99)] == [184, 184]
    # a binding idles out: its block is tried first again, and the range is not dry any more
    st.flow_state[("rev_snat", bind(5130))].last_used = -1000
    st.expire(0)
    assert st.blocks[("r1", 99)][-1] == 5120 and not st.snat_dry("r1", 99, 7, 6, 443, 5000, 65535)


def test_connections_to_one_remote_end_take_the_ports_in_turn(wire):
    """The NAT's search for a port toward a remote end starts after the port bound last toward it (RFC 6056's
    per-destination increment): a few lookups per connection however full the blocks, where a random start in
    a filling block probed ~36 bound ports per connection.  The cursor goes with the last binding."""
    from workers.simulation import nat
    from workers.simulation.state import LocalState as St
    lookups, choices = Counter(), [0]
    real_get, real_choose = St.flow_state_get, nat.choose_snat_port

    def get(self, kind, key, now):
        lookups[kind] += 1
        return real_get(self, kind, key, now)

    def choose(*a):
        choices[0] += 1
        return real_choose(*a)

    St.flow_state_get, nat.choose_snat_port = get, choose
    try:
        for first in range(0, 3000, 50):
            wire.inject("tenant.vm1", *[to_internet(p) for p in range(first, first + 50)])
            wire.answer_leases()
            wire.now += GAP
    finally:
        St.flow_state_get, nat.choose_snat_port = real_get, real_choose
    assert choices[0] >= 3000
    # one REV_SNAT lookup per simulation is the NAT's own check of the new binding's reply key
    per_choice = (lookups["rev_snat"] - total(wire, "simulations")) / choices[0]
    assert per_choice < 12, per_choice
    for w in wire.workers:
        check_counts(w)
        bound = [e.key for e in w.state.flow_state.values() if e.kind == "rev_snat"]
        assert len({(k[1], k[4]) for k in bound}) == len(bound)           # never one port twice toward it
        assert set(w.state.snat_next) == set(w.state.snat_toward)         # a cursor per remote end bound to
    st = wire.workers[0].state
    for e in list(st.flow_state.values()):
        e.last_used = -1000.0
    st.expire(wire.now)
    assert not st.snat_next and not st.snat_toward                        # gone with the last binding
