"""A worker's own parts: flow table, waiting room, ARP broker, flow-state expiry, dispatcher admission."""

from __future__ import annotations

from backchannel.messages import UpcallBatch
from engine.datapath.flowcache import FlowCache, compile_actions
from engine.dispatcher import Dispatcher, TokenBucket
from packet.spec import parse_spec
from workers.arp import ArpBroker
from workers.flowtable import FlowTable
from workers.parking import ParkingLot
from workers.simulation.result import FlowStateWrite, NeedArp, NeedFragment
from workers.simulation.state import MISSING, TAG_COST, LocalState


def test_flow_table_invalidates_by_tag_and_evicts_oldest():
    t = FlowTable(max_flows=3)
    t.add(("a",), frozenset({"router:r1", "port:x"}), 0)
    t.add(("b",), frozenset({"bridge:b"}), 0)
    t.add(("c",), frozenset({"router:r1"}), 0)
    assert sorted(t.invalidate(["router:r1"])) == [("a",), ("c",)]
    assert list(t.flows) == [("b",)] and "router:r1" not in t.by_tag and "port:x" not in t.by_tag
    t.add(("d",), frozenset(), 0)
    t.add(("e",), frozenset(), 0)
    assert t.add(("f",), frozenset(), 0) == [("b",)]          # full: the oldest goes
    t.removed([("d",)])
    assert list(t.flows) == [("e",), ("f",)]


def test_flow_table_hard_expiry():
    t = FlowTable(hard_s=10)
    t.add(("a",), frozenset(), 0)
    t.add(("b",), frozenset(), 5)
    assert t.expire(12) == [("a",)] and t.expire(14) == [] and t.expire(16) == [("b",)]


def test_parking_one_request_per_need_resume_and_deadline():
    p = ParkingLot(timeout_s=5, max_parked=3)
    need = NeedFragment("router", "r1")
    assert p.park(need, "u1", 0) is True
    assert p.park(need, "u2", 1) is False                     # already requested
    assert p.park(NeedArp("r1", "r1.up", 7), "u3", 2) is True
    assert p.park(need, "u4", 2) is None                      # full
    assert p.satisfy(("fragment", "router", "r1")) == ["u1", "u2"]
    assert p.next_deadline() == 7
    assert p.expire(6.9) == [] and p.expire(7) == [(("arp", "r1", 7), ["u3"])]
    assert p.size == 0 and p.counters["parked_timeout"] == 1 and p.counters["parked_overflow"] == 1


def test_arp_broker_retries_with_jitter_then_times_out():
    b = ArpBroker(retry_s=1.0, timeout_s=5.0, seed=1)
    pkt = parse_spec("arp_op=1,arp_spa=10.0.0.1,arp_tpa=10.0.0.9")
    assert b.request("r1", 9, "r1.p", pkt, 0) is True
    assert b.request("r1", 9, "r1.p", pkt, 0.1) is False       # one outstanding request per (router, ip)
    sends = sum(len(b.tick(t / 10)[0]) for t in range(1, 49))
    assert 3 <= sends <= 7                                    # ~ every 0.75-1.25 s over 4.8 s
    resend, failed = b.tick(5.0)
    assert failed == [("r1", 9)] and not b.pending
    assert b.request("r1", 9, "r1.p", pkt, 6) and b.resolved("r1", 9) and not b.resolved("r1", 9)


def test_flow_state_idles_out_and_a_touch_restarts_the_timer():
    s = LocalState(flow_state_idle_s=60)
    s.apply([FlowStateWrite("conntrack", (1, 2, 6, 3, 4, "br"), None)], now=0)
    s.flow_state[("conntrack", (1, 2, 6, 3, 4, "br"))].last_used = 50
    assert s.expire(100) == [] and s.flow_state_get("conntrack", (1, 2, 6, 3, 4, "br"), 100) is None
    assert [e.key for e in s.expire(111)] == [(1, 2, 6, 3, 4, "br")]
    assert s.flow_state_get("conntrack", (1, 2, 6, 3, 4, "br"), 111) is MISSING


def test_idle_nat_blocks_are_those_without_bindings():
    s = LocalState()
    s.add_nat_block("r1", 99, 5056)
    s.add_nat_block("r1", 99, 5120)
    s.apply([FlowStateWrite("rev_snat", (7, 99, 6, 80, 5060, "r1"), (1, 1000))], now=0)
    assert s.idle_nat_blocks() == [("r1", 99, 5120)]


def test_token_bucket_and_dispatcher_admission():
    b = TokenBucket(rate=10, burst=2, now=0)
    assert [b.take(0) for _ in range(3)] == [True, True, False] and b.take(0.1)
    sent = []
    d = Dispatcher(2, lambda w, batch: sent.append((w, batch)) or True, max_inflight=1, batch=64)
    pkt = parse_spec("ip_src=10.0.0.1,ip_dst=10.0.0.2,proto=udp,tp_src=1,tp_dst=2")
    reply = parse_spec("ip_src=10.0.0.2,ip_dst=10.0.0.1,proto=udp,tp_src=2,tp_dst=1")
    assert d.worker_for(pkt, "p") == d.worker_for(reply, "q")  # both directions → one worker
    assert d.upcall("p", b"f1", pkt, ("k1",), 0) is True
    assert d.upcall("p", b"f2", pkt, ("k1",), 0) is False      # same flow: held back
    assert d.upcall("p", b"f3", pkt, ("k2",), 0) is False      # that worker has one in flight: refused
    assert d.counters["dispatcher_queue_full"] == 1 and d.counters["dispatcher_held"] == 1
    d.flush()
    [(w, batch)] = sent
    assert isinstance(batch, UpcallBatch) and [u.frame for u in batch.upcalls] == [b"f1"]
    rec, held = d.answered(batch.upcalls[0].seq)
    assert rec.worker == w and rec.frame == b"f1" and rec.key == ("k1",)
    assert [h[1] for h in held] == [b"f2"] and d.inflight[w] == 0


def test_flow_cache_executes_rewrites_and_expires():
    out = []
    cache = FlowCache(lambda kind, target, key, frame: out.append((kind, target, key)), max_flows=2)
    acts = (("set", "ttl", 7), ("output", "a"), ("tunnel", 0x7F00000C, 5))
    assert compile_actions(acts) == (({"ttl": 7}, "output", "a", None), ({"ttl": 7}, "tunnel", 0x7F00000C, 5))
    cache.install(("k1",), acts, 0, idle_s=1, hard_s=0, now=0)
    cache.install(("k2",), (("drop",),), 1, idle_s=0, hard_s=5, now=0)
    cache.install(("k3",), (("drop",),), 1, idle_s=0, hard_s=0, now=0)  # over the bound: k1 evicted
    assert list(cache.flows) == [("k2",), ("k3",)] and cache.counters["datapath_evicted"] == 1
    assert [f.key for f in cache.expire(6)] == [("k2",)]
    assert cache.install(("k4",), (("bogus",),), 0, 0, 0, 0) is None
    assert cache.counters["datapath_bad_actions"] == 1


def test_every_field_a_flow_may_set_is_one_the_datapath_can_rewrite():
    from backchannel.messages import SET_FIELDS
    from packet import rewrite
    from workers.plan import REWRITABLE

    assert set(REWRITABLE) <= rewrite.REWRITABLE | rewrite.REWRITABLE_IPV6
    assert set(REWRITABLE) <= set().union(*(tags for tags, _rest in SET_FIELDS.cases))   # and the wire takes them


def test_a_routed_ipv6_packet_plans_its_hop_limit_and_macs():
    """What the simulation changed in an IPv6 packet becomes set actions (the hop limit a router decrements, the
    addresses a NAT would rewrite); an IPv4 packet plans no IPv6 field."""
    from packet.packet import ETH_TYPE_IPV6, Packet
    from workers.plan import output_actions
    from workers.simulation.result import Output

    p = Packet(eth_src=1, eth_dst=2, eth_type=ETH_TYPE_IPV6, ipv6_src=0x20010DB8 << 96 | 1,
               ipv6_dst=0x20010DB8 << 96 | 2, hop_limit=64, tclass=0, flow_label=5, proto=17, tp_src=1, tp_dst=2)
    out = p._replace(eth_src=3, eth_dst=4, hop_limit=63, ipv6_src=0x20010DB8 << 96 | 9)
    acts = output_actions(p, (Output("r.p", "h", None, out),), None)
    assert acts == (("set", "eth_src", 3), ("set", "eth_dst", 4), ("set", "ipv6_src", 0x20010DB8 << 96 | 9),
                    ("set", "hop_limit", 63), ("output", "r.p"))
    v4 = Packet(eth_src=1, eth_dst=2, ip_src=10, ip_dst=11, ttl=64, tos=0, proto=17, tp_src=1, tp_dst=2)
    assert output_actions(v4, (Output("r.p", "h", None, v4._replace(ttl=63)),), None) == (
        ("set", "ttl", 63), ("output", "r.p"))


def _ct(i: int) -> tuple:
    return (0x0A000001, 1024 + i, 6, 0xC6336402, 80, "br")


def test_a_sweep_spread_over_turns_expires_what_is_idle_keeps_what_is_used_and_skips_what_changed():
    s = LocalState(flow_state_idle_s=10)
    s.apply([FlowStateWrite("conntrack", _ct(i), None) for i in range(100)], now=0)
    entries = list(s.flow_state.values())
    in_use = {"used"}
    for i, e in enumerate(entries):
        e.tag = f"t{i}"
    entries[3].tag = "used"                                    # an installed flow still uses entry 3
    del s.flow_state[("conntrack", _ct(5))]                    # removed after the pass began
    s.apply([FlowStateWrite("conntrack", _ct(7), None)], now=20)   # replaced after the pass began (a new entry)
    gone, pos = s.sweep(entries, 0, 40, 20, in_use, None)
    assert pos == 40 and len(gone) == 37                       # 40 visited − used (3) − removed (5) − replaced (7)
    assert {e.key for e in gone}.isdisjoint({_ct(3), _ct(5), _ct(7)})
    assert entries[3].last_used == 20 and ("conntrack", _ct(3)) in s.flow_state
    assert s.flow_state[("conntrack", _ct(7))].last_used == 20
    gone2, pos = s.sweep(entries, pos, None, 20, in_use, None)
    assert pos == 100 and len(gone2) == 60
    assert sorted(s.flow_state) == [("conntrack", _ct(3)), ("conntrack", _ct(7))]


def test_making_a_tag_counts_against_the_sweeps_budget():
    s = LocalState(flow_state_idle_s=10)
    s.apply([FlowStateWrite("conntrack", _ct(i), None) for i in range(10)], now=0)
    made = []
    gone, pos = s.sweep(list(s.flow_state.values()), 0, 2 * (1 + TAG_COST), 20, set(),
                        lambda e: made.append(e) or f"t{len(made)}")
    assert pos == 2 and len(made) == 2 and len(gone) == 2


def test_the_worker_sweeps_a_large_shard_in_turns_and_does_not_sleep_meanwhile():
    from workers.worker import SWEEP_PER_TURN, Worker, WorkerConfig

    w = Worker(WorkerConfig(index=0, n_workers=1, runtime_dir="", flow_state_idle_s=10))
    n = SWEEP_PER_TURN * 2 + 10
    w.state.apply([FlowStateWrite("conntrack", _ct(i), None) for i in range(n)], now=0)
    w.housekeeping(20.0)                                       # the pass begins: one turn's worth is done
    assert n - SWEEP_PER_TURN <= len(w.state.flow_state) < n and w.background
    turns = 1
    while w.background and turns < n:
        w.housekeeping(20.0 + turns / 100)
        turns += 1
    assert turns > 2 and not w.state.flow_state and not w.background and w.c["state_expired"] == n
    assert w.c["state_sweeps"] == 1
