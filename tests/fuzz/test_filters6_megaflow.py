"""The megaflow invariant (tests/fuzz/test_megaflow_property.py) and the simulation's soundness
(tests/fuzz/test_simulation_fuzz.py) over IPv6 filters: a bridge whose inbound
filter has rules of both families — IPv6 and IPv4 CIDRs of every length, negated or not, protocols, ports,
traffic class, ``ct: forward``/``ct: return`` — fed IPv6 TCP/UDP/echo, ICMPv6 errors, neighbor discovery and
IPv4 packets, after warm-up packets that open connections.  Every packet a megaflow matches must be simulated
to that megaflow's decision: the IPv6 prefix reads, the 5-tuple reads of conntrack and the family of a
condition are all in the flow's mask.  ``test_the_filters6_check_catches_a_forgotten_ipv6_field`` shows the
check has teeth here: with an IPv6 address left out of the recorded match, or the source prefix recorded too
short, it finds a counterexample.  The soundness test sends replies and ICMPv6 errors about the connections
the packets opened, over hostile IPv6 flow state (128-bit keys on random and on the packets' own tuples)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from packet.addr import int2ip6
from packet.packet import ETH_TYPE_IPV4, ETH_TYPE_IPV6, ND_TYPES, Packet
from tests.fuzz.test_megaflow_property import NOW, check_megaflows
from tests.fuzz.test_simulation_fuzz import _check_sound, _check_worker_answer
from topology.loader import topology_from_dict
from workers.megaflow import flow_match
from workers.simulation import generate
from workers.simulation.conntrack import five_tuple, reverse
from workers.simulation.result import CONNTRACK, FORWARD, NAT_KINDS, FlowStateWrite, state_key
from workers.simulation.simulate import simulate
from workers.simulation.state import LocalState

BASES6 = (0x20010DB8000A << 80, 0x20010DB8000B << 80, 0x20010DB8000A0001 << 64)
VMS = {1: "02:00:00:00:00:01", 2: "02:00:00:00:00:02", 3: "02:00:00:00:00:03"}


def _vm6(n: int) -> int:
    return BASES6[0] | n


def _cidr6(draw, long: bool = False) -> str:
    # lengths of every size, and often (``long``: only) ones ending in the low 32 bits, where the shared checker
    # varies the free bits of a packet the megaflow matches (test_megaflow_property._matching)
    length = draw(st.integers(97, 128) if long else st.one_of(st.integers(0, 128), st.integers(97, 128)))
    if long:                                    # around a VM's own address: its packets are in or next to it
        base = _vm6(draw(st.integers(1, 3)))
    else:
        base = draw(st.sampled_from(BASES6)) | draw(st.sampled_from([1, 2, 3, 0x55]))
    if length:
        base ^= draw(st.sampled_from([0, 1 << (128 - length)]))
    net = base & ((((1 << 128) - 1) << (128 - length)) & ((1 << 128) - 1))
    return f"{int2ip6(net)}/{length}"


def _cidr4(draw) -> str:
    length = draw(st.integers(0, 32))
    base = draw(st.sampled_from([0x0A000001, 0x0A000002, 0xCB007105]))
    net = base & ((0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF)
    return f"{net >> 24}.{(net >> 16) & 255}.{(net >> 8) & 255}.{net & 255}/{length}"


@st.composite
def filter6_topologies(draw, cidrs_only: bool = False) -> dict:
    """A bridge of three VMs whose inbound filter has rules of both families (``cidrs_only``: IPv6 CIDR
    conditions only, each rule one, accept or drop — where prefix tracking alone decides)."""
    rules = []
    for _ in range(draw(st.integers(1, 2 if cidrs_only else 6))):
        match: dict = {}
        for _ in range(1 if cidrs_only else draw(st.integers(0, 3))):
            kind = "cidr6" if cidrs_only else draw(
                st.sampled_from(["cidr6", "cidr6", "cidr4", "proto", "port", "ct", "in_port", "tos"]))
            neg = draw(st.sampled_from(["", "", "!"]))
            if kind in ("cidr6", "cidr4"):
                match[draw(st.sampled_from(["src", "dst"]))] = neg + (
                    _cidr6(draw, cidrs_only) if kind == "cidr6" else _cidr4(draw))
            elif kind == "proto":
                match["proto"] = draw(st.sampled_from(["tcp", "udp", "icmpv6", "icmp"]))
            elif kind == "port":
                lo = draw(st.sampled_from([0, 53, 80, 1024]))
                match[draw(st.sampled_from(["src_port", "dst_port"]))] = f"{neg}{lo}-{lo + draw(st.integers(0, 2000))}"
            elif kind == "ct":
                match["ct"] = neg + draw(st.sampled_from(["forward", "return"]))
            elif kind == "in_port":
                match["in_port"] = neg + f"b0.vm{draw(st.integers(1, 3))}"
            else:
                match["tos"] = neg + str(draw(st.sampled_from([0, 32])))
        actions = ["accept", "drop"] if cidrs_only else ["accept", "drop", "continue", "reject"]
        rules.append({"match": match, "action": draw(st.sampled_from(actions))})
    return {"version": 1, "hosts": {"h": {"tunnel_ip": "127.0.0.11"}},
            "bridges": {"b0": {"ports": {f"vm{n}": {"host": "h", "interface": f"t{n}"} for n in VMS},
                               "mac_table": {mac: f"vm{n}" for n, mac in VMS.items()},
                               "inbound_filter": "fw"}},
            "chains": {"fw": rules}}


@st.composite
def filter6_packets(draw, topo) -> Packet:
    """Between the VMs: IPv6 TCP/UDP/echo (addresses near the rules' prefixes), ICMPv6 errors carrying such a
    packet, neighbor discovery, and IPv4."""
    a, b = draw(st.permutations(sorted(VMS)))[:2]
    kw = dict(eth_src=int(VMS[a].replace(":", ""), 16), eth_dst=int(VMS[b].replace(":", ""), 16))
    kind = draw(st.sampled_from(["tcp", "udp", "echo", "error", "nd", "v4"]))
    if kind == "v4":
        return Packet(**kw, eth_type=ETH_TYPE_IPV4, ip_src=0x0A000000 | a, ip_dst=0x0A000000 | b, proto=6, ttl=64,
                      tos=draw(st.sampled_from([0, 32])), ip_id=0, tp_src=draw(st.sampled_from([53, 80, 40000])),
                      tp_dst=draw(st.sampled_from([53, 80, 40000])), tcp_flags=2, tcp_seq=1, tcp_ack=0,
                      tcp_window=1024)

    def addr(n):
        return draw(st.sampled_from([_vm6(n), BASES6[1] | n, BASES6[2] | n])) ^ (
            draw(st.integers(0, 0xFFFF)) >> draw(st.integers(0, 16)) << draw(st.sampled_from([0, 16, 64, 100])))

    src, dst = addr(a), addr(b)
    v6 = dict(eth_type=ETH_TYPE_IPV6, ipv6_src=src, ipv6_dst=dst, hop_limit=64, tclass=draw(st.sampled_from([0, 32])),
              flow_label=0)
    ports = (draw(st.sampled_from([53, 80, 40000, 1500])), draw(st.sampled_from([53, 80, 40000, 1500])))
    if kind in ("tcp", "udp"):
        l4 = dict(proto=6 if kind == "tcp" else 17, tp_src=ports[0], tp_dst=ports[1])
        if kind == "tcp":
            l4.update(tcp_flags=2, tcp_seq=1, tcp_ack=0, tcp_window=1024)
    elif kind == "echo":
        l4 = dict(proto=58, icmpv6_type=draw(st.sampled_from([128, 129])), icmpv6_code=0,
                  icmp_id=draw(st.sampled_from([7, 8])), icmp_seq=1)
    elif kind == "error":
        l4 = dict(proto=58, icmpv6_type=1, icmpv6_code=4, icmpv6_data=0, inner_ipv6_src=dst, inner_ipv6_dst=src,
                  inner_proto=17, inner_tp_src=ports[1], inner_tp_dst=ports[0], inner_hop_limit=64, inner_tclass=0,
                  inner_flow_label=0, inner_rest=b"\x00\x08\x00\x00")
    else:
        l4 = dict(proto=58, icmpv6_type=136, icmpv6_code=0, icmpv6_data=0x60000000, nd_target=src,
                  nd_tll=kw["eth_src"])
        v6["hop_limit"] = 255
    return Packet(**kw, **v6, **l4)


SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                          HealthCheck.data_too_large])


@SETTINGS
@given(filter6_topologies(), st.data())
def test_every_packet_an_ipv6_filter_megaflow_matches_is_simulated_to_its_actions(topo_dict, data):
    check_megaflows(topo_dict, data, aimed=filter6_packets)


def _without(field: str):
    def record(res):
        return tuple(p for p in flow_match(res) if p[0] != field)
    return record


def _shorter6(res):
    """An IPv6 source prefix recorded 4 bits too short."""
    out = []
    for name, m in flow_match(res):
        if name == "ipv6_src" and m != -1:
            m = (m << 4) & ((1 << 128) - 1)
            if not m:
                continue
        out.append((name, m))
    return tuple(out)


@pytest.mark.parametrize("record", [_without("ipv6_src"), _without("ipv6_dst"), _shorter6],
                         ids=["forgets ipv6_src", "forgets ipv6_dst", "ipv6_src prefix too short"])
def test_the_filters6_check_catches_a_forgotten_ipv6_field(record):
    @settings(max_examples=3000, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(filter6_topologies(cidrs_only=True), st.data())
    def broken(topo_dict, data):
        check_megaflows(topo_dict, data, record, filter6_packets)

    with pytest.raises(AssertionError):
        broken()


@st.composite
def hostile_state6(draw, t: tuple | None) -> list:
    """Conntrack and NAT entries on random IPv6 tuples and on the connection of a packet with tuple ``t``."""
    ips = st.one_of(st.sampled_from([_vm6(1), _vm6(2), _vm6(3)]), st.integers(0, 2**128 - 1))
    l4 = st.sampled_from([0, 53, 80, 40000, 1500, 7, 8])
    tuples = [st.tuples(ips, ips, st.sampled_from([6, 17, 58]), l4, l4)]
    if t is not None:
        tuples.append(st.sampled_from([t, reverse(t)]))
    key = st.builds(state_key, st.one_of(*tuples), st.sampled_from(["b0", "r0"]))
    return draw(st.lists(st.one_of(
        st.builds(FlowStateWrite, st.just(CONNTRACK), key, st.none()),
        st.builds(FlowStateWrite, st.sampled_from(NAT_KINDS), key, st.none() | st.tuples(ips, l4))), max_size=6))


def _reply6(p: Packet) -> Packet:
    icmp = {"icmpv6_type": 129} if p.icmpv6_type == 128 else {}
    return p._replace(eth_src=p.eth_dst, eth_dst=p.eth_src, ipv6_src=p.ipv6_dst, ipv6_dst=p.ipv6_src,
                      tp_src=p.tp_dst, tp_dst=p.tp_src, **icmp)


@SETTINGS
@given(filter6_topologies(), st.data())
def test_ipv6_through_filters_is_sound_and_deterministic(topo_dict, data):
    # every packet's conntrack state is read (a rule that changes nothing), so each may write an entry
    topo_dict["chains"]["fw"].insert(0, {"match": {"ct": "forward"}, "action": "continue"})
    topo = topology_from_dict(topo_dict)
    ports = sorted(topo.all_ports())
    state = LocalState()
    replies: list = []
    for _ in range(data.draw(st.integers(1, 8), label="packets")):
        if replies and data.draw(st.booleans(), label="a reply"):
            port, pkt = replies.pop(data.draw(st.integers(0, len(replies) - 1)))
        else:
            port = data.draw(st.sampled_from(ports), label="port")
            pkt = data.draw(filter6_packets(topo), label="packet")
        state.apply(data.draw(hostile_state6(five_tuple(pkt)), label="state"), NOW)
        res = simulate(pkt, port, topo, state, NOW)
        _check_sound(res, pkt)
        assert simulate(pkt, port, topo, state, NOW) == res
        if pkt.is_icmpv6_error or pkt.icmpv6_type in ND_TYPES:
            assert not any(type(e) is FlowStateWrite for e in res.effects)     # an error, ND: no connection
        for g in res.generated if pkt.ipv6_src is not None else ():         # a reject's RST / ICMPv6
            assert g.packet.ipv6_dst == pkt.ipv6_src and (g.packet.proto == 6 or g.packet.is_icmpv6_error)
        event(f"{res.result}: {res.drop_reason or 'ok'}{', generated' if res.generated else ''}")
        if res.result == FORWARD:
            _check_worker_answer(res, pkt)
            for o in res.outputs[:1]:
                if o.packet.ipv6_src is not None and not o.packet.is_icmpv6_error:
                    replies.append((o.port, _reply6(o.packet)))
                    replies.append((o.port, generate.icmp6_error(o.packet, 1, 4, o.packet.eth_dst,
                                                                  o.packet.ipv6_dst)))
        state.apply(res.effects, NOW)
