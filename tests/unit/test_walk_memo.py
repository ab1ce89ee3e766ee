"""The walk memo (workers/memo.py): a new connection through a walk already made is answered from its template.

The oracle is the one ``simulate()``: for every packet, what the memo answers must equal what a fresh
simulation returns against the same state (result, path, outputs, effects, tags, fields read — the whole
SimResult); and a worker with the memo must send, message for message, what a worker without it sends, over
generated topologies and packet streams (new connections, their replies, new MACs, time passing).  The last
test shows the check has teeth: a memo that forgets one field its walks read is caught."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from backchannel import messages as m
from bench.wirerig import ROUTER_MAC_A, SENDER_MAC, SINK_MAC, mac_int
from bench.wiretopo import HOST, ingress_port, topology_yaml
from packet.addr import ip2int
from packet.codec import ParseError, build, parse
from packet.packet import PROTO_TCP, PROTO_UDP, Packet
from tests.fuzz.topology_strategies import aimed_packets, topologies
from topology.loader import load_topology, topology_from_dict
from topology.store import topo as store_topo
from workers import memo as memo_mod
from workers import tags
from workers.memo import WalkMemo
from workers.simulation.result import CONNTRACK, FORWARD, FlowStateTouch, FlowStateWrite
from workers.simulation.simulate import simulate
from workers.worker import Worker, WorkerConfig

SENDER, SINK = ip2int("198.51.100.1"), ip2int("198.51.100.2")
FAR = ip2int("203.0.113.7")


def _load(w: Worker, topo) -> Worker:
    for kind, (attr, _) in store_topo.KINDS.items():
        for obj in getattr(topo, attr).values():
            assert w.topo.add(kind, obj.name, store_topo.encode(obj))
    w.topo.groups = {pid: topo.groups_of_port(pid) for pid in topo.all_ports()}
    return w


def _worker(topo, memo: bool, host: str = HOST, **kw) -> Worker:
    return _load(Worker(WorkerConfig(index=0, n_workers=2, runtime_dir="", host=host, walk_memo=memo, **kw)), topo)


def _udp(sport: int, dport: int = 5000, src=SENDER, dst=SINK, smac=SENDER_MAC, dmac=SINK_MAC, ttl=64,
         proto=PROTO_UDP) -> Packet:
    kw = dict(tcp_flags=0x02, tcp_seq=1, tcp_ack=0, tcp_window=1024) if proto == PROTO_TCP else {}
    return parse(build(Packet(eth_src=mac_int(smac), eth_dst=mac_int(dmac), ip_src=src, ip_dst=dst, proto=proto,
                              ttl=ttl, tos=0, ip_id=1, tp_src=sport, tp_dst=dport, payload=b"x" * 8, **kw)))


def _norm(msg):
    """A message with its tags as a set (two equal tag sets may iterate in different orders)."""
    if hasattr(msg, "_fields") and "tags" in msg._fields:
        return msg._replace(tags=frozenset(msg.tags))
    return msg


def _same(a: Worker, b: Worker) -> None:
    assert [_norm(x) for x in a.out_dp] == [_norm(x) for x in b.out_dp]
    assert [_norm(x) for x in a.out_sup] == [_norm(x) for x in b.out_sup]
    a.out_dp.clear(), a.out_sup.clear(), b.out_dp.clear(), b.out_sup.clear()


def _both(ws, msg, now):
    for w in ws:
        w.handle(msg, now)
    _same(*ws)


def _check(memo: WalkMemo, w: Worker, pkt: Packet, port: str, now: float):
    """The memo's answer is a fresh simulation's; its effects are then applied (so the state moves on)."""
    fresh = simulate(pkt, port, w.topo, w.state, now, w.cfg.host, w.cfg.replicate_hosts)
    got = memo.simulate(pkt, port, now)
    assert got == fresh
    w.state.apply(got.effects, now)
    return got


def _ct_worker(n: int):
    """A worker with the memo on the bench's ct pipeline, after ``n`` new connections from the sender."""
    topo = load_topology(topology_yaml("ct", "eth-s", "eth-k").encode())
    w = _worker(topo, memo=True)
    port = ingress_port("ct")
    for i in range(n):
        w.handle(m.UpcallBatch((m.Upcall(i + 1, port, build(_udp(1024 + i))),)), 1000.0)
    return topo, w, port


# -- a conntrack pipeline: every new connection but the first is a hit ---------------------------------------
def test_new_connections_through_a_ct_filter_are_answered_from_one_walk():
    _, w, port = _ct_worker(300)
    c = w.memo.c
    # the first packet learns the sender's MAC (not kept), the second is kept, the rest are hits
    assert (c["memo_walks"], c["memo_hits"], c["memo_kept"]) == (2, 298, 1)
    assert w.memo.size == 1
    # each hit wrote its own connection's return key
    for i in range(300):
        key = (SINK, SENDER, PROTO_UDP, 5000, 1024 + i, "tenant")
        assert (CONNTRACK, key) in w.state.flow_state
    # and the memo's answers are the simulation's, forward and return
    now = 1000.5
    for i in range(300, 340):
        res = _check(w.memo, w, _udp(1024 + i), port, now)
        assert res.result == FORWARD and type(res.effects[0]) is FlowStateWrite
    for i in range(300, 340):                      # the replies: ct return, from the sink (whose MAC the first learns)
        res = _check(w.memo, w, _udp(5000, 1024 + i, SINK, SENDER, SINK_MAC, SENDER_MAC), "tenant.sink", now)
        touch = FlowStateTouch(CONNTRACK, (SINK, SENDER, PROTO_UDP, 5000, 1024 + i, "tenant"))
        assert res.effects == ((touch,) if i > 300 else (touch, res.effects[1]))
        assert tags.flow_state(CONNTRACK, touch.key) in res.tags
    assert w.memo.c["memo_hits"] > 298 + 70


def test_a_worker_with_the_memo_sends_what_one_without_it_sends():
    topo = load_topology(topology_yaml("ct", "eth-s", "eth-k").encode())
    ws = (_worker(topo, memo=True), _worker(topo, memo=False))
    port = ingress_port("ct")
    now = 1000.0
    for i in range(200):
        proto = PROTO_TCP if i % 3 == 0 else PROTO_UDP
        _both(ws, m.UpcallBatch((m.Upcall(2 * i + 1, port, build(_udp(2000 + i, proto=proto))),)), now)
        _both(ws, m.UpcallBatch((m.Upcall(2 * i + 2, "tenant.sink",
                                          build(_udp(5000, 2000 + i, SINK, SENDER, SINK_MAC, SENDER_MAC))),)), now)
        now += 0.01
    assert ws[0].memo.c["memo_hits"] > 350
    # the sink moves to the sender's port (a MAC move): the memo starts again, and still agrees
    _both(ws, m.UpcallBatch((m.Upcall(1001, port, build(_udp(9, 9, SINK, SENDER, SINK_MAC, SENDER_MAC))),)), now)
    assert ws[0].memo.c["memo_cleared"] >= 1
    for i in range(20):
        _both(ws, m.UpcallBatch((m.Upcall(1100 + i, "tenant.sink", build(_udp(3000 + i, 80, SINK, SENDER,
                                                                                  SINK_MAC, SENDER_MAC))),)), now)
    assert ws[0].state.flow_state.keys() == ws[1].state.flow_state.keys()


def test_a_topology_change_or_a_fragment_or_expiry_empties_the_memo():
    topo, w, port = _ct_worker(3)
    assert w.memo.size == 1
    w.handle(m.TopologyChanged("chain", "fw"), 1000.0)
    assert w.memo.size == 0
    _load(w, topo)
    for i in range(3):
        w.handle(m.UpcallBatch((m.Upcall(10 + i, port, build(_udp(2024 + i))),)), 1000.0)
    assert w.memo.size == 1
    w.handle(m.Fragment("chain", "fw", (("chain", "fw", store_topo.encode(topo.chains["fw"])),)), 1000.0)
    assert w.memo.size == 0
    w.handle(m.UpcallBatch((m.Upcall(20, port, build(_udp(3024))),)), 1000.0)
    assert w.memo.size == 1
    w.housekeeping(1000.0 + 10 * w.state.mac_expiry_s)    # the sender's MAC expires
    assert w.memo.size == 0
    # a connection's own state changing is no reason: its tags are rebuilt per hit
    w.handle(m.UpcallBatch((m.Upcall(30, port, build(_udp(4024))),)), 5000.0)
    w.handle(m.UpcallBatch((m.Upcall(31, port, build(_udp(4025))),)), 5000.0)
    assert w.memo.size == 1
    w.memo.invalidate([tags.flow_state(CONNTRACK, (SINK, SENDER, PROTO_UDP, 5000, 4024, "tenant"))])
    assert w.memo.size == 1


def test_a_walk_through_a_learned_arp_entry_is_not_used_after_the_entry_expires():
    topo = load_topology(topology_yaml("l3", "eth-s", "eth-k").encode())
    w = _worker(topo, memo=True, megaflows=False)
    w.state.learn_mac("left", 0, mac_int(SENDER_MAC), "left.sender", 1000.0)
    w.state.learn_arp("r1", FAR, mac_int(SINK_MAC), 1000.0)
    port = ingress_port("l3")
    for i in range(6):                             # the first teaches the right bridge the router's MAC
        _check(w.memo, w, _udp(1024 + i, dst=FAR, dmac=ROUTER_MAC_A), port, 1000.0)
    assert w.memo.c["memo_hits"] == 4
    late = 1000.0 + w.state.arp_expiry_s + 1
    res = _check(w.memo, w, _udp(2000, dst=FAR, dmac=ROUTER_MAC_A), port, late)
    assert res.result != FORWARD                   # parked on the ARP request now, as a fresh walk is
    assert w.memo.c["memo_hits"] == 4


def test_snat_and_other_walks_that_read_the_five_tuple_are_not_kept():
    topo = load_topology(topology_yaml("full", "eth-s", "eth-k").encode())
    w = _worker(topo, memo=True)
    w.state.learn_arp("r1", FAR, mac_int(SINK_MAC), 1000.0)
    port = ingress_port("full")
    for i in range(20):
        w.handle(m.UpcallBatch((m.Upcall(i + 1, port, build(_udp(1024 + i, dst=FAR, dmac=ROUTER_MAC_A))),)), 1000.0)
    assert w.memo.c["memo_kept"] == 0 and w.memo.c["memo_hits"] == 0 and w.memo.c["memo_unfit"] > 0


def test_the_memo_is_bounded():
    topo = load_topology(topology_yaml("l3", "eth-s", "eth-k").encode())
    w = _worker(topo, memo=True)
    w.memo.max_entries = 16
    w.state.learn_mac("left", 0, mac_int(SENDER_MAC), "left.sender", 1000.0)
    w.state.learn_arp("r1", FAR, mac_int(SINK_MAC), 1000.0)
    for ttl in range(2, 200):                      # the router reads the TTL: one template per TTL
        _check(w.memo, w, _udp(1024, dst=FAR, dmac=ROUTER_MAC_A, ttl=ttl), ingress_port("l3"), 1000.0)
        assert w.memo.size <= 16
    assert w.memo.c["memo_cleared"] >= 10


# -- generated topologies and streams: a worker with the memo is a worker without it ------------------------
def _reply(p: Packet) -> Packet:
    return p._replace(eth_src=p.eth_dst, eth_dst=p.eth_src, ip_src=p.ip_dst, ip_dst=p.ip_src,
                      ipv6_src=p.ipv6_dst, ipv6_dst=p.ipv6_src, tp_src=p.tp_dst, tp_dst=p.tp_src)


def _differential(topo_dict: dict, data) -> None:
    note(f"topology: {topo_dict}")
    topo = topology_from_dict(topo_dict)
    ports = sorted(pid for pid, p in topo.all_ports().items() if p.peer is None)
    hosts = sorted({p.host for p in topo.all_ports().values() if p.host}) or [None]
    host = data.draw(st.sampled_from(hosts), label="host")
    mf = data.draw(st.booleans(), label="megaflows")
    ws = (_worker(topo, True, host, megaflows=mf), _worker(topo, False, host, megaflows=mf))
    seen: list[tuple[Packet, str]] = []
    now = 1000.0
    seq = 0
    for _ in range(data.draw(st.integers(5, 40), label="steps")):
        step = data.draw(st.sampled_from(("fresh", "fresh", "again", "again", "again", "reply", "time")))
        if step == "time":
            now += data.draw(st.sampled_from((0.001, 1.0, 30.0, 200.0, 400.0)), label="time")
            for w in ws:
                w.housekeeping(now)
            _same(*ws)
            continue
        if step == "fresh" or not seen:
            pkt, port = data.draw(aimed_packets(topo), label="packet"), data.draw(st.sampled_from(ports))
        else:
            pkt, port = data.draw(st.sampled_from(seen), label="earlier")
            if step == "again":                    # another connection between the same ends
                pkt = pkt._replace(tp_src=data.draw(st.integers(1, 65535)) if pkt.tp_src is not None else None)
            else:                                  # its reply, on some port
                w = ws[1]
                res = simulate(pkt, port, w.topo, w.state, now, host)
                outs = [o for o in res.outputs if o.bound] if res.result == FORWARD else []
                if outs:
                    o = data.draw(st.sampled_from(outs))
                    pkt, port = _reply(o.packet), o.port
                else:
                    pkt, port = _reply(pkt), data.draw(st.sampled_from(ports))
        try:
            frame = build(pkt)
            parsed = parse(frame)
        except (ParseError, ValueError):
            continue
        if parsed.proto in (PROTO_TCP, PROTO_UDP):
            seen.append((parsed, port))
        seq += 1
        _both(ws, m.UpcallBatch((m.Upcall(seq, port, frame),)), now)
    assert ws[0].state.flow_state.keys() == ws[1].state.flow_state.keys()
    assert ws[0].state.macs == ws[1].state.macs
    c = ws[0].memo.c
    event(f"memo hits: {'none' if not c['memo_hits'] else 'some'}")


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(topologies(), st.data())
def test_over_generated_topologies_a_worker_with_the_memo_sends_what_one_without_it_sends(topo_dict, data):
    _differential(topo_dict, data)


def test_the_check_catches_a_memo_that_forgets_a_field(monkeypatch):
    """A memo whose keys leave out tp_dst, on a filter that drops port 22: the comparison finds it."""
    yaml = topology_yaml("ct", "eth-s", "eth-k").replace(
        "    - {match: {ethertype: arp}, action: accept}\n",
        "    - {match: {ethertype: arp}, action: accept}\n    - {match: {dst_port: 22-22}, action: drop}\n")
    topo = load_topology(yaml.encode())
    real_init = memo_mod._Mask.__init__

    def forgetful(self, fields, prefixes):
        real_init(self, tuple(f for f in fields if f != "tp_dst"), prefixes)
    monkeypatch.setattr(memo_mod._Mask, "__init__", forgetful)
    ws = (_worker(topo, True), _worker(topo, False))
    port = ingress_port("ct")
    for i in range(3):
        _both(ws, m.UpcallBatch((m.Upcall(i + 1, port, build(_udp(1024 + i, 80))),)), 1000.0)
    with pytest.raises(AssertionError):
        _both(ws, m.UpcallBatch((m.Upcall(9, port, build(_udp(4000, 22))),)), 1000.0)
