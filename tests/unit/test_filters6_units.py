"""The IPv6 pieces of conntrack, NAT and the load balancer called directly (the trace scenarios go through a
router: tests/scenario/test_trace_filters6.py): neighbor discovery never reads nor writes conntrack, an IPv6
packet meeting an snat/dnat rule goes on untranslated (no NAT66), and an IPv6 VIP DNATs to IPv6 members,
keeps a sticky client's backend, and its reply and ICMPv6 errors are translated back."""

from __future__ import annotations

from packet.addr import ip2int, ip6_2int
from packet.packet import ETH_TYPE_IPV6, PROTO_TCP
from packet.spec import parse_spec
from topology.model import LoadBalancer, Member, NatTarget, Pool, Router, Rule, Topology, Vip
from workers.simulation import conntrack, lb, nat
from workers.simulation.context import Ctx, Stop
from workers.simulation.result import FWD_DNAT, FWD_STICK_DNAT, REV_DNAT, FlowStateTouch, FlowStateWrite
from workers.simulation.state import LocalState

A6 = ip6_2int


def _ctx(pkt, topo=None, state=None):
    return Ctx(topo or Topology(), state or LocalState(), 0.0, "h", "br.a", pkt)


def test_neighbor_discovery_has_no_connection_and_writes_none():
    for spec in ("eth_src=02:00:00:00:00:0a,ipv6_src=2001:db8::a,nd_target=2001:db8::b",
                 "eth_src=02:00:00:00:00:0a,ipv6_src=2001:db8::a,ipv6_dst=2001:db8::b,icmpv6_type=136,"
                 "nd_target=2001:db8::a",
                 "eth_src=02:00:00:00:00:0a,ipv6_src=fe80::a,icmpv6_type=133"):
        pkt = parse_spec(spec)
        state = LocalState()
        # even with an entry under its tuple, ND is not "return"
        key = conntrack.state_key(conntrack.five_tuple(pkt), "br")
        state.apply([FlowStateWrite(conntrack.CONNTRACK, key, None)], 0.0)
        ctx = _ctx(pkt, state=state)
        ctx.topo = _TopoWithPort()
        assert conntrack.ct_state(ctx) == conntrack.FORWARD
        assert not any(type(e) is FlowStateTouch for e in ctx.effects)
        conntrack.finish(ctx, [("br2", pkt)])
        assert not any(type(e) is FlowStateWrite for e in ctx.effects)
    # an IPv6 echo (not ND) is tracked: the control
    echo = parse_spec("eth_src=02:00:00:00:00:0a,ipv6_src=2001:db8::a,ipv6_dst=2001:db8::b,icmp_id=5")
    ctx = _ctx(echo)
    ctx.topo = _TopoWithPort()
    assert conntrack.ct_state(ctx) == conntrack.FORWARD
    conntrack.finish(ctx, [("br2", echo)])
    assert [e.key[:5] for e in ctx.effects if type(e) is FlowStateWrite] == [
        (A6("2001:db8::b"), A6("2001:db8::a"), 58, 5, 5)]


class _TopoWithPort(Topology):
    def port(self, port_id):
        from topology.model import Port
        return Port(device="br", name="a")


def test_no_nat66_an_ipv6_packet_meeting_snat_or_dnat_goes_on_untranslated():
    pkt = parse_spec("eth_src=02:00:00:00:00:0a,ipv6_src=2001:db8::a,ipv6_dst=2001:db8::b,proto=tcp,tp_dst=80")
    for action in ("snat", "dnat"):
        rule = Rule(action=action, targets=(NatTarget(ip2int("198.51.100.9"), ip2int("198.51.100.9"), 1024, 2000),))
        ctx = _ctx(pkt)
        assert nat.apply_rule(ctx, rule, pkt, "r1") is None         # the rule does not apply: the chain goes on
        assert ctx.effects == []


# -- the load balancer ----------------------------------------------------------------------------------------
VIP6 = A6("2001:db8:f::80")
M1, M2 = A6("2001:db8:b::1"), A6("2001:db8:b::2")


def _lb_topo(sticky: bool = False) -> Topology:
    lbal = LoadBalancer(
        name="lb1",
        vips=(Vip(VIP6, 80, PROTO_TCP, "web6", sticky_source_ip=sticky, v6=True),
              Vip(ip2int("203.0.113.80"), 80, PROTO_TCP, "web4")),
        pools={"web6": Pool("web6", (Member(M1, 8080, v6=True), Member(M2, 8080, v6=True))),
               "web4": Pool("web4", (Member(ip2int("10.0.1.1"), 8080),))})
    return Topology(routers={"r1": Router("r1", {}, load_balancer="lb1")}, load_balancers={"lb1": lbal})


def _client(n: int, sport: int = 40000, dst: str = "2001:db8:f::80") -> object:
    return parse_spec(f"eth_src=02:00:00:00:00:0a,ipv6_src=2001:db8:c::{n:x},ipv6_dst={dst},proto=tcp,"
                      f"tp_src={sport},tp_dst=80")


def _run(topo, state, pkt):
    ctx = _ctx(pkt, topo, state)
    out = lb.process_inbound(ctx, topo.routers["r1"], pkt)
    state.apply(ctx.effects, 0.0)
    return out, ctx


def test_an_ipv6_vip_dnats_to_an_ipv6_member_and_the_reply_is_translated_back():
    topo, state = _lb_topo(), LocalState()
    pkt = _client(1)
    (new, matched), ctx = _run(topo, state, pkt)
    assert matched and new.eth_type == ETH_TYPE_IPV6
    assert (new.ipv6_dst, new.tp_dst) in {(M1, 8080), (M2, 8080)} and new.ipv6_src == pkt.ipv6_src
    assert new.ip_dst is None                                       # never an IPv4 rewrite
    writes = {e.kind: e for e in ctx.effects if type(e) is FlowStateWrite}
    assert writes[FWD_DNAT].value == (new.ipv6_dst, 8080) and writes[FWD_DNAT].key.src == pkt.ipv6_src
    assert writes[REV_DNAT].value == (VIP6, 80)
    assert {"ipv6_src", "ipv6_dst", "tp_src"} <= ctx.fields_read()  # one connection's flow
    # the same connection keeps its backend
    (again, _), _ = _run(topo, state, pkt)
    assert again == new
    # the backend's reply is reverse-DNATed to the VIP
    reply = new._replace(ipv6_src=new.ipv6_dst, ipv6_dst=new.ipv6_src, tp_src=8080, tp_dst=40000)
    (back, matched), _ = _run(topo, state, reply)
    assert not matched and (back.ipv6_src, back.tp_src, back.ipv6_dst, back.tp_dst) == (
        VIP6, 80, pkt.ipv6_src, 40000)
    # an ICMPv6 error from the backend about the translated connection is translated back too
    err = parse_spec(f"eth_src=02:00:00:00:00:0b,ipv6_src={_t(new.ipv6_dst)},ipv6_dst={_t(pkt.ipv6_src)},"
                     f"icmpv6_type=1,icmpv6_code=4,inner_ipv6_src={_t(pkt.ipv6_src)},"
                     f"inner_ipv6_dst={_t(new.ipv6_dst)},inner_proto=tcp,inner_tp_src=40000,inner_tp_dst=8080")
    (terr, _), _ = _run(topo, state, err)
    assert (terr.inner_ipv6_dst, terr.inner_tp_dst, terr.ipv6_src) == (VIP6, 80, VIP6)


def _t(v: int) -> str:
    from packet.addr import int2ip6
    return int2ip6(v)


def test_ipv6_connections_spread_over_the_members_and_sticky_clients_keep_theirs():
    topo, state = _lb_topo(), LocalState()
    backends = {_run(topo, state, _client(n))[0][0].ipv6_dst for n in range(1, 40)}
    assert backends == {M1, M2}                                     # the IPv6 flow hash spreads them
    topo, state = _lb_topo(sticky=True), LocalState()
    chosen = set()
    for n in range(1, 20):
        (first, _), ctx = _run(topo, state, _client(n, 40000))
        chosen.add(first.ipv6_dst)
        assert any(e.kind == FWD_STICK_DNAT and e.key.sport == 0 for e in ctx.effects if type(e) is FlowStateWrite)
        for sport in (40001, 40002, 40003):
            assert _run(topo, state, _client(n, sport))[0][0].ipv6_dst == first.ipv6_dst
    assert chosen == {M1, M2}                                       # clients of one /64 spread too


def test_vips_are_met_by_their_own_family_only():
    topo, state = _lb_topo(), LocalState()
    # an IPv6 packet to an address equal to the IPv4 VIP's int is not the IPv4 VIP
    v4int = ip2int("203.0.113.80")
    pkt = parse_spec(f"eth_src=02:00:00:00:00:0a,ipv6_src=2001:db8:c::1,ipv6_dst={_t(v4int | 1 << 100)},"
                     "proto=tcp,tp_dst=80")._replace(ipv6_dst=v4int)
    (out, matched), _ = _run(topo, state, pkt)
    assert not matched and out == pkt
    # an IPv4 packet to the IPv4 VIP goes to the IPv4 member only
    p4 = parse_spec("eth_src=02:00:00:00:00:0a,ip_src=10.0.0.5,ip_dst=203.0.113.80,proto=tcp,tp_dst=80")
    (out, matched), _ = _run(topo, state, p4)
    assert matched and out.ip_dst == ip2int("10.0.1.1") and out.ipv6_dst is None
    # another protocol to the IPv6 VIP is dropped, as for IPv4
    udp = parse_spec("eth_src=02:00:00:00:00:0a,ipv6_src=2001:db8:c::1,ipv6_dst=2001:db8:f::80,proto=udp,tp_dst=80")
    try:
        _run(topo, state, udp)
        raise AssertionError("not dropped")
    except Stop as e:
        assert e.reason == "vip_proto_mismatch"


def test_an_ipv6_binding_for_an_ipv4_packet_is_dropped_not_written_into_it():
    """Flow state from a peer is not trusted: a 128-bit binding on an IPv4 connection (the wire carries U128
    since state keys hold either family) would make an IPv4 header no one can build."""
    from tests.scenario.conftest import Tracer
    from tests.scenario.test_trace_stateful import GW
    from workers.simulation.result import REV_SNAT, state_key
    reply = ("eth_src=02:00:00:00:00:02,eth_dst=02:0a:00:00:00:01,ip_src=10.0.0.3,ip_dst=203.0.113.5,proto=tcp,"
             "tp_src=8080,tp_dst=40000")
    key = state_key((ip2int("10.0.0.3"), ip2int("203.0.113.5"), 6, 8080, 40000), "r1")
    t = Tracer(GW)
    t.session.state.apply([FlowStateWrite(REV_DNAT, key, (A6("2001:db8::1"), 80))], 0.0)
    out = t("tenant.vm2", reply)
    assert out["result"] == "drop" and out["drop_reason"] == "bad_nat_binding"
    t = Tracer(GW)                                                    # the control: an IPv4 binding applies
    t.session.state.apply([FlowStateWrite(REV_DNAT, key, (ip2int("203.0.113.10"), 80))], 0.0)
    assert t("tenant.vm2", reply)["outputs"][0]["packet"]["ip_src"] == "203.0.113.10"
    # an ICMP echo reply through rev_snat likewise
    echo = ("eth_src=02:0b:00:00:00:01,eth_dst=02:0a:00:00:00:02,ip_src=203.0.113.5,ip_dst=198.51.100.100,"
            "icmp_type=0,icmp_id=5000")
    t = Tracer(GW)
    key = state_key((ip2int("203.0.113.5"), ip2int("198.51.100.100"), 1, 5000, 5000), "r1")
    t.session.state.apply([FlowStateWrite(REV_SNAT, key, (A6("2001:db8::1"), 7))], 0.0)
    out = t("r1.uplink", echo)
    assert out["result"] == "drop" and out["drop_reason"] == "bad_nat_binding"
