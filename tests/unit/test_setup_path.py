"""The setup path's shortcuts against the plain code they stand for: compiled chain conditions read and decide
exactly what ``chains._test`` does, a compiled chain follows its record (a changed chain is recompiled), the
flow table's one-key index entries behave as sets of one, ``Packet._replace`` keeps NamedTuple's contract, and a
flow kept for a datapath restart re-installs under the key the datapath had."""

from __future__ import annotations

import itertools

import pytest

from packet.addr import ip2int, ip6_2int
from packet.packet import ETH_TYPE_ARP, ETH_TYPE_IPV6, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Packet
from topology.model import Chain, Condition, Match, Rule
from workers.flowtable import FlowTable
from workers.simulation import chains
from workers.simulation.context import Ctx
from workers.simulation.state import LocalState


class _Topo:
    def __init__(self, *objs):
        self.chains = {c.name: c for c in objs}

    def chain(self, name):
        return self.chains.get(name)

    def port(self, port_id):
        return None


def _ctx(pkt: Packet, topo=None) -> Ctx:
    return Ctx(topo or _Topo(), LocalState(), 0.0, "h", "b.p1", pkt)


_PACKETS = [
    Packet(eth_src=0x020000000001, eth_dst=0x020000000002, ip_src=ip2int("198.51.100.7"),
           ip_dst=ip2int("203.0.113.9"), proto=PROTO_TCP, ttl=64, tos=8, tp_src=40000, tp_dst=23),
    Packet(eth_src=0x020000000003, eth_dst=0x020000000001, ip_src=ip2int("203.0.113.9"),
           ip_dst=ip2int("198.51.100.7"), proto=PROTO_UDP, ttl=3, tos=0, tp_src=53, tp_dst=5353, vlan=7),
    Packet(eth_src=0x020000000001, eth_dst=0x020000000002, ip_src=ip2int("198.51.100.7"),
           ip_dst=ip2int("198.51.100.1"), proto=PROTO_ICMP, ttl=64, icmp_type=8, icmp_id=9),
    Packet(eth_src=0x020000000001, eth_dst=0x020000000002, eth_type=ETH_TYPE_IPV6,
           ipv6_src=ip6_2int("2001:db8::1"), ipv6_dst=ip6_2int("2001:db8:1::2"), proto=PROTO_TCP,
           hop_limit=64, tclass=8, tp_src=1234, tp_dst=80),
    Packet(eth_src=0x020000000001, eth_dst=0xFFFFFFFFFFFF, eth_type=ETH_TYPE_ARP, arp_op=1),
]

_CONDITIONS = [
    ("in_port", frozenset({"b.p1"})), ("in_port", frozenset({"b.p9"})), ("out_port", frozenset({"b.p2"})),
    ("eth_src", 0x020000000001), ("eth_dst", 0x020000000001), ("ethertype", ETH_TYPE_IPV6),
    ("ethertype", 0x0800), ("proto", PROTO_TCP), ("proto", PROTO_UDP), ("vlan", 7), ("tos", 8),
    ("src", (ip2int("198.51.100.0"), 24)), ("dst", (ip2int("198.51.100.0"), 24)), ("src", (0, 0)),
    ("dst", (ip2int("203.0.113.9"), 32)), ("src", (ip6_2int("2001:db8::"), 32, 6)),
    ("dst", (ip6_2int("2001:db8:1::"), 48, 6)), ("src_port", (1024, 65535)), ("dst_port", (23, 23)),
    ("dst_port", (80, 80)), ("ct", "forward"), ("ct", "return"),
]


@pytest.mark.parametrize("pkt", _PACKETS)
@pytest.mark.parametrize("field, value", _CONDITIONS)
@pytest.mark.parametrize("negate", [False, True])
def test_compiled_condition_reads_and_decides_as_the_reference(pkt, field, value, negate):
    c = Condition(field, value, negate)
    ref, got = _ctx(pkt), _ctx(pkt)
    t = chains._test(ref, c, pkt, "b.p1", "b.p2")
    want = t is not None and t != negate
    assert chains._compile(c)(got, pkt, "b.p1", "b.p2") == want
    assert got.fields == ref.fields and got.prefixes == ref.prefixes and got.tags == ref.tags
    assert got.effects == ref.effects


def _rule(action, *conds, invert=False, **kw):
    return Rule(action, Match(tuple(Condition(*c) for c in conds), invert), **kw)


def test_chain_walk_jumps_returns_and_detects_loops():
    pkt = _PACKETS[0]
    sub = Chain("sub", (_rule("return", ("proto", PROTO_UDP)), _rule("drop", ("dst_port", (23, 23)))))
    top = Chain("top", (_rule("accept", ("proto", PROTO_UDP)), _rule("jump", chain="sub"), _rule("accept")))
    assert chains.run_chain(_ctx(pkt, _Topo(top, sub)), "top", pkt, "b", "b.p1", None)[0] == chains.DROP
    udp = _PACKETS[1]
    assert chains.run_chain(_ctx(udp, _Topo(top, sub)), "top", udp, "b", "b.p1", None)[0] == chains.ACCEPT
    # sub returns for nothing and drops nothing here: back in top after the jump, its last rule accepts
    other = pkt._replace(tp_dst=80)
    ctx = _ctx(other, _Topo(top, sub))
    assert chains.run_chain(ctx, "top", other, "b", "b.p1", None)[0] == chains.ACCEPT
    assert ctx.tags == {"chain:top", "chain:sub"}
    inverted = Chain("inv", (_rule("drop", ("proto", PROTO_TCP), invert=True), _rule("reject")))
    assert chains.run_chain(_ctx(pkt, _Topo(inverted)), "inv", pkt, "b", None, None)[0] == chains.REJECT
    assert chains.run_chain(_ctx(udp, _Topo(inverted)), "inv", udp, "b", None, None)[0] == chains.DROP
    loop = Chain("a", (_rule("jump", chain="b"),))
    back = Chain("b", (_rule("jump", chain="a"),))
    with pytest.raises(chains.Stop, match="chain_loop"):
        chains.run_chain(_ctx(pkt, _Topo(loop, back)), "a", pkt, "b", None, None)
    self_loop = Chain("s", (_rule("jump", chain="s"),))
    with pytest.raises(chains.Stop, match="chain_loop"):
        chains.run_chain(_ctx(pkt, _Topo(self_loop)), "s", pkt, "b", None, None)


def test_a_changed_chain_is_compiled_again():
    pkt = _PACKETS[0]
    old = Chain("c", (_rule("drop", ("proto", PROTO_TCP)),))
    assert chains.run_chain(_ctx(pkt, _Topo(old)), "c", pkt, "b", None, None)[0] == chains.DROP
    new = Chain("c", (_rule("drop", ("proto", PROTO_UDP)),))   # the same name, a new record
    assert chains.run_chain(_ctx(pkt, _Topo(new)), "c", pkt, "b", None, None)[0] == chains.ACCEPT
    assert chains.run_chain(_ctx(pkt, _Topo(old)), "c", pkt, "b", None, None)[0] == chains.DROP


def test_flow_table_one_key_index_entries():
    t = FlowTable()
    t.add(1, ("ct:x", "router:r1"), 0)
    assert t.by_tag["ct:x"] == 1                       # one flow: the key itself
    t.add(2, ("ct:x", "router:r1"), 0)
    assert t.by_tag["ct:x"] == {1, 2}
    t.add(2, ("ct:y",), 0)                             # re-added with other tags: leaves the old ones
    assert t.by_tag["ct:x"] == {1} and t.by_tag["ct:y"] == 2
    assert t.invalidate(["ct:y", "nope"]) == [2] and "ct:y" not in t.by_tag
    assert sorted(t.invalidate(["router:r1", "ct:x"])) == [1] and not t.by_tag and not t.flows
    for k in range(3):
        t.add(k, ("a",), 0)
    t.removed([0, 1, 2])
    assert not t.by_tag


def test_packet_replace_keeps_the_namedtuple_contract():
    p = _PACKETS[3]
    q = p._replace(hop_limit=63, eth_src=5)
    assert type(q) is Packet and q.hop_limit == 63 and q.eth_src == 5 and q.ipv6_src == p.ipv6_src
    assert q == tuple(v if f not in ("hop_limit", "eth_src") else {"hop_limit": 63, "eth_src": 5}[f]
                      for f, v in zip(Packet._fields, p, strict=True))
    assert p._replace() == p and p.hop_limit == 64
    with pytest.raises(ValueError):
        p._replace(no_such_field=1)


def test_a_kept_flow_reinstalls_under_the_datapath_key():
    from backchannel import messages as m
    from packet.codec import build, parse
    from packet.flowkey import flow_key
    from workers.worker import Worker, WorkerConfig

    w = Worker(WorkerConfig(index=0, n_workers=1, runtime_dir=""))
    frames = [build(p) for p in _PACKETS[:3]]
    for seq, f in zip(itertools.count(1), frames):
        w._answer(seq, (("output", "b.p2"),), ("port:b.p2",), 0.0, origin=m.Upcall(seq, "b.p1", f))
    w.reinstall(0)
    got = {r.flow_id: r for r in w.out_dp if type(r) is m.Reinstall}
    assert sorted(got) == [1, 2, 3]
    for seq, f in zip(itertools.count(1), frames):
        assert got[seq].key == flow_key(parse(f), "b.p1") and got[seq].actions == (("output", "b.p2"),)


def test_forward_result_by_position_is_the_keyword_result():
    from workers.simulation import simulate as sim
    from workers.simulation.result import FORWARD, Generated, MacTableWrite

    ctx = _ctx(_PACKETS[0])
    ctx.path.extend(["b.p1", "b"])
    ctx.tags.update({"bridge:b", "port:b.p1"})
    ctx.fields.update({"eth_src", "eth_dst"})
    ctx.effects.append(MacTableWrite("b", 0, 1, "b.p1"))
    for prefixes, generated in (({}, []), ({"ip_dst": 24}, [Generated("b.p1", _PACKETS[1])])):
        ctx.prefixes, ctx.generated = prefixes, generated
        outputs, hosts = ("o",), frozenset({"h"})
        assert sim._forward_result(ctx, outputs, hosts) == sim._result(ctx, FORWARD, outputs=outputs,
                                                                        interested_hosts=hosts)
        assert sim._forward_result(ctx, outputs, hosts)._asdict() == sim._result(
            ctx, FORWARD, outputs=outputs, interested_hosts=hosts)._asdict()
