"""The IPv6 packet layer against scapy, both directions: build() output as scapy reads it (fields, valid
checksums over scapy's pseudo-header), scapy-built frames (extension headers, routing headers with segments
left, fragments, ICMPv6 errors carrying the offending packet, neighbor and router discovery with their
options, Ethernet padding) as parse() reads them and build() rewrites them byte for byte; the malformed
reasons; the bounded extension header walk; rewrite() of addresses / hop limit / class / flow label / ports
against build() and scapy.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    IPv6ExtHdrSegmentRouting,
    RouterAlert,
)
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Padding, Raw

from packet.codec import ParseError, build, parse, rewrite
from packet.packet import (
    FRAG_FIRST,
    FRAG_LATER,
    FRAG_NONE,
    MAX_IPV6_EXT_HEADERS,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Packet,
)
from tests.fuzz.packet6_strategies import (
    flow_labels,
    ip6s,
    packets6,
    scapy_checksum6_ok,
    scapy_view6,
)
from tests.fuzz.packet_strategies import assert_fields, macs, u8, u16

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
A, B, C = "2001:db8::a", "2001:db8::b", "2001:db8:1::c"


def _i6(text: str) -> int:
    return int(ipaddress.IPv6Address(text))


def _eth(vlan: int | None = None):
    e = Ether(src=MAC_A, dst=MAC_B)
    return e / Dot1Q(vlan=vlan) if vlan is not None else e


# ---- build → scapy ----

@settings(max_examples=600, deadline=None)
@given(packets6())
def test_build_is_read_back_by_scapy_with_valid_checksums(pkt):
    frame = build(pkt)
    assert_fields(pkt, scapy_view6(frame))
    assert scapy_checksum6_ok(frame), "scapy finds the L4 checksum invalid"
    assert parse(frame) == pkt


# ---- scapy → parse (and build back to scapy's exact bytes: our checksums are scapy's) ----

def _same(frame: bytes) -> Packet:
    pkt = parse(frame)
    assert_fields(pkt, scapy_view6(frame))
    assert build(pkt) == frame, "build() does not reproduce scapy's frame (checksum or layout differs)"
    return pkt


@st.composite
def scapy_ext(draw):
    """scapy extension header layers (with scapy choosing lengths and padding)."""
    layers = []
    if draw(st.booleans()):
        layers.append(IPv6ExtHdrHopByHop(options=[RouterAlert()]) if draw(st.booleans()) else IPv6ExtHdrHopByHop())
    for _ in range(draw(st.integers(0, 2))):
        k = draw(st.integers(0, 2))
        if k == 0:
            layers.append(IPv6ExtHdrDestOpt())
        else:
            addrs = [str(ipaddress.IPv6Address(draw(ip6s))) for _ in range(draw(st.integers(1, 3)))]
            segleft = draw(st.integers(0, len(addrs)))
            layers.append(IPv6ExtHdrRouting(addresses=addrs, segleft=segleft) if k == 1
                          else IPv6ExtHdrSegmentRouting(addresses=addrs, segleft=segleft))
    return layers


@st.composite
def scapy_l4(draw):
    k = draw(st.sampled_from(["tcp", "udp", "echo", "reply"]))
    data = Raw(draw(st.binary(max_size=40)))
    if k == "tcp":
        return TCP(sport=draw(u16), dport=draw(u16), seq=draw(st.integers(0, 2**32 - 1)), flags=draw(u8),
                   window=draw(u16)) / data
    if k == "udp":
        return UDP(sport=draw(u16), dport=draw(u16)) / data
    cls = ICMPv6EchoRequest if k == "echo" else ICMPv6EchoReply
    return cls(id=draw(u16), seq=draw(u16), data=draw(st.binary(max_size=40)))


@settings(max_examples=400, deadline=None)
@given(src=ip6s, dst=ip6s, hlim=u8, tc=u8, fl=flow_labels, ext=scapy_ext(), l4=scapy_l4(),
       vlan=st.none() | st.integers(0, 4095))
def test_parse_reads_scapy_ipv6_with_extension_headers(src, dst, hlim, tc, fl, ext, l4, vlan):
    ip = IPv6(src=str(ipaddress.IPv6Address(src)), dst=str(ipaddress.IPv6Address(dst)), hlim=hlim, tc=tc, fl=fl)
    pkt = ip
    for layer in ext:
        pkt = pkt / layer
    frame = bytes(_eth(vlan) / pkt / l4)
    p = _same(frame)
    assert p.is_ipv6 and not p.is_ipv4 and len(p.ipv6_ext) == len(ext)


def test_routing_header_with_segments_left_puts_the_final_address_in_the_pseudo_header():
    rh = IPv6ExtHdrRouting(addresses=[B, C], segleft=2)
    frame = bytes(_eth() / IPv6(src=A, dst=B) / rh / UDP(sport=1, dport=2) / Raw(b"x"))
    p = _same(frame)
    # the same datagram without the routing header, sent to the final address, has the same UDP checksum
    plain = bytes(_eth() / IPv6(src=A, dst=C) / UDP(sport=1, dport=2) / Raw(b"x"))
    assert frame[-3:-1] == plain[-3:-1] and frame[-3:-1] != bytes(_eth() / IPv6(src=A, dst=B) / UDP(
        sport=1, dport=2) / Raw(b"x"))[-3:-1]
    # rewriting the destination (the next segment) changes no checksum; rewriting the source does
    new = p._replace(ipv6_dst=_i6("2001:db8::99"))
    assert rewrite(frame, p, new) == build(new) and rewrite(frame, p, new)[-3:] == frame[-3:]
    new = p._replace(ipv6_src=_i6("2001:db8::98"))
    assert rewrite(frame, p, new) == build(new) and scapy_checksum6_ok(rewrite(frame, p, new))


def test_fragments_first_later_and_atomic():
    first = bytes(_eth() / IPv6(src=A, dst=B) / IPv6ExtHdrFragment(id=0xDEADBEEF, m=1, offset=0)
                  / UDP(sport=5000, dport=53, len=1000) / Raw(b"q" * 32))
    canonical_first = bytes(_eth() / IPv6(src=A, dst=B) / IPv6ExtHdrFragment(id=1, m=1) / TCP(sport=9, dport=10))
    assert _same(canonical_first).frag == FRAG_FIRST
    p = parse(first)                                  # (UDP length covers the datagram: not canonical)
    assert_fields(p, scapy_view6(first))
    assert p.frag == FRAG_FIRST and (p.tp_src, p.tp_dst) == (5000, 53) and p.proto == PROTO_UDP
    later = bytes(_eth() / IPv6(src=A, dst=B) / IPv6ExtHdrFragment(nh=17, id=0xDEADBEEF, m=0, offset=185)
                  / Raw(b"r" * 40))
    p = _same(later)
    assert p.frag == FRAG_LATER and p.tp_src is None and p.tp_dst is None and p.proto == PROTO_UDP
    assert p.payload == b"r" * 40
    # a later fragment whose data happens to look like more headers: not walked
    later_hbh = bytes(_eth() / IPv6(src=A, dst=B) / IPv6ExtHdrFragment(nh=60, offset=3) / Raw(bytes(16)))
    p = _same(later_hbh)
    assert p.frag == FRAG_LATER and p.proto == 60 and len(p.ipv6_ext) == 1
    atomic = bytes(_eth() / IPv6(src=A, dst=B) / IPv6ExtHdrFragment(m=0, offset=0) / TCP(sport=1, dport=2))
    p = _same(atomic)
    assert p.frag == FRAG_NONE and (p.tp_src, p.tp_dst) == (1, 2)


@pytest.mark.parametrize("err, data", [
    (ICMPv6DestUnreach(code=4), 0), (ICMPv6PacketTooBig(mtu=1400), 1400), (ICMPv6TimeExceeded(code=0), 0),
    (ICMPv6ParamProblem(code=1, ptr=40), 40)])
@pytest.mark.parametrize("inner", ["udp", "tcp", "echo", "ext"])
def test_icmpv6_errors_carry_the_offending_packet(err, data, inner):
    if inner == "udp":
        offending = IPv6(src=B, dst=A, hlim=3) / UDP(sport=40000, dport=53) / Raw(b"query")
    elif inner == "tcp":
        offending = IPv6(src=B, dst=A, tc=0x28, fl=77) / TCP(sport=40001, dport=443, seq=5, flags="S")
    elif inner == "echo":
        offending = IPv6(src=B, dst=A) / ICMPv6EchoRequest(id=0x4242, seq=9, data=b"ping")
    else:
        offending = IPv6(src=B, dst=A) / IPv6ExtHdrDestOpt() / IPv6ExtHdrFragment(m=1) / UDP(sport=7, dport=8)
    frame = bytes(_eth() / IPv6(src=C, dst=B) / err / offending)
    p = _same(frame)
    assert p.is_icmpv6_error and not p.is_icmp_error and p.icmpv6_data == data
    assert (p.inner_ipv6_src, p.inner_ipv6_dst) == (_i6(B), _i6(A))
    if inner in ("udp", "ext"):
        assert p.inner_proto == PROTO_UDP and p.inner_tp_src in (40000, 7)
    elif inner == "tcp":
        assert (p.inner_proto, p.inner_tp_src, p.inner_tp_dst, p.inner_tclass, p.inner_flow_label) == (
            PROTO_TCP, 40001, 443, 0x28, 77)
    else:
        assert p.inner_proto == PROTO_ICMPV6 and p.inner_icmp_id == 0x4242


def test_neighbor_solicitation_and_advertisement_with_link_layer_options():
    ns = bytes(Ether(src=MAC_A, dst="33:33:ff:00:00:0b") / IPv6(src=A, dst="ff02::1:ff00:b", hlim=255)
               / ICMPv6ND_NS(tgt=B) / ICMPv6NDOptSrcLLAddr(lladdr=MAC_A))
    p = _same(ns)
    assert (p.icmpv6_type, p.nd_target, p.nd_sll, p.nd_tll, p.hop_limit) == (135, _i6(B), 0x02000000000A, None,
                                                                              255)
    na = bytes(Ether(src=MAC_B, dst=MAC_A) / IPv6(src=B, dst=A, hlim=255) / ICMPv6ND_NA(tgt=B, R=0, S=1, O=1)
               / ICMPv6NDOptDstLLAddr(lladdr=MAC_B))
    p = _same(na)
    assert (p.icmpv6_type, p.nd_target, p.nd_tll, p.icmpv6_data) == (136, _i6(B), 0x02000000000B, 0x60000000)
    dad = bytes(Ether(src=MAC_A, dst="33:33:ff:00:00:0a") / IPv6(src="::", dst="ff02::1:ff00:a", hlim=255)
                / ICMPv6ND_NS(tgt=A))
    p = _same(dad)
    assert p.ipv6_src == 0 and p.nd_sll is None and p.payload == b""


def test_router_solicitation_and_advertisement_are_parsed():
    rs = bytes(Ether(src=MAC_A, dst="33:33:00:00:00:02") / IPv6(src="fe80::a", dst="ff02::2", hlim=255)
               / ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=MAC_A))
    p = _same(rs)
    assert (p.icmpv6_type, p.nd_sll) == (133, 0x02000000000A)
    ra = bytes(Ether(src=MAC_B, dst="33:33:00:00:00:01") / IPv6(src="fe80::b", dst="ff02::1", hlim=255)
               / ICMPv6ND_RA(chlim=64, M=1, routerlifetime=1800, reachabletime=30000, retranstimer=1000)
               / ICMPv6NDOptSrcLLAddr(lladdr=MAC_B) / ICMPv6NDOptMTU(mtu=1450)
               / ICMPv6NDOptPrefixInfo(prefix="2001:db8:5::", prefixlen=64, validlifetime=86400,
                                       preferredlifetime=14400)
               / ICMPv6NDOptPrefixInfo(prefix="2001:db8:6::", prefixlen=48, L=1, A=0)
               / Raw(b"\xc8\x01" + bytes(6)))                      # an option type shardnet does not model
    p = _same(ra)
    assert p.icmpv6_type == 134 and p.icmpv6_data >> 24 == 64 and p.icmpv6_data & 0xFFFF == 1800
    assert (p.nd_sll, p.nd_mtu, p.nd_reachable, p.nd_retrans) == (0x02000000000B, 1450, 30000, 1000)
    assert p.nd_prefixes == ((_i6("2001:db8:5::"), 64, 0xC0, 86400, 14400),
                             (_i6("2001:db8:6::"), 48, 0x80, 0xFFFFFFFF, 0xFFFFFFFF))
    assert p.nd_opts == ((200, bytes(6)),)


def test_ethernet_padding_after_the_ipv6_payload_is_not_payload():
    frame = bytes(_eth() / IPv6(src=A, dst=B) / UDP(sport=1, dport=2) / Raw(b"hi") / Padding(bytes(14)))
    p = parse(frame)
    assert p.payload == b"hi" and build(p) == frame[:-14]


# ---- malformed: reasons, and the bounded walk ----

def _frame(ip_bytes: bytes) -> bytes:
    return bytes(Ether(src=MAC_A, dst=MAC_B, type=0x86DD)) + ip_bytes


def _ip6(nh: int, body: bytes, plen: int | None = None) -> bytes:
    return bytes(IPv6(src=A, dst=B, nh=nh, plen=len(body) if plen is None else plen)) + body


DEST = b"\x3c\x00\x01\x04\x00\x00\x00\x00"         # a destination options header whose next is another one


@pytest.mark.parametrize("frame, reason", [
    (_frame(bytes(IPv6(src=A, dst=B))[:39]), "truncated"),
    (_frame(b"\x45" + bytes(IPv6(src=A, dst=B))[1:]), "bad_ip_version"),
    (_frame(_ip6(17, bytes(UDP()), plen=9)), "bad_payload_length"),
    (_frame(_ip6(60, b"\x11\x00\x01\x04\x00\x00")), "bad_ipv6_ext"),                 # header cut short
    (_frame(_ip6(60, b"\x11\x05" + bytes(14))), "bad_ipv6_ext"),                     # length past the end
    (_frame(_ip6(60, b"\x00\x00\x01\x04\x00\x00\x00\x00" + bytes(8))), "bad_ipv6_ext"),   # HBH not first
    (_frame(_ip6(44, b"\x2c\x00\x00\x01\x00\x00\x00\x01" + b"\x11\x00\x00\x01\x00\x00\x00\x01" + bytes(8))),
     "bad_ipv6_ext"),                                                                  # two fragment headers
    (_frame(_ip6(60, DEST * MAX_IPV6_EXT_HEADERS + b"\x11\x00\x01\x04\x00\x00\x00\x00" + bytes(UDP()))),
     "ipv6_ext_chain_too_long"),
    (_frame(_ip6(6, bytes(TCP())[:19])), "bad_l4_length"),
    (_frame(_ip6(6, b"\x00\x01\x00\x02" + bytes(8) + b"\x40" + bytes(7))), "bad_tcp_offset"),
    (_frame(_ip6(17, b"\x00\x01\x00\x02\x00\x07\x00\x00")), "bad_l4_length"),
    (_frame(_ip6(58, b"\x80\x00\x00\x00\x00\x01")), "bad_l4_length"),
    (_frame(_ip6(58, bytes(ICMPv6ND_NS(tgt=B))[:20])), "bad_l4_length"),
    (_frame(_ip6(58, bytes(ICMPv6ND_NS(tgt=B)) + b"\x01\x00" + bytes(6))), "bad_nd_option"),  # length 0
    (_frame(_ip6(58, bytes(ICMPv6ND_NS(tgt=B)) + b"\x01\x02" + bytes(6))), "bad_nd_option"),  # past the end
    (_frame(_ip6(58, bytes(ICMPv6ND_RA()) + b"\x03\x01" + bytes(6))), "bad_nd_option"),       # short prefix
    (_frame(_ip6(58, bytes(ICMPv6ND_RS()) + b"\x01\x01\x00")), "bad_nd_option"),             # cut option
    (_frame(_ip6(58, bytes(ICMPv6DestUnreach()) + bytes(IPv6())[:30])), "bad_icmp_inner"),
    (_frame(_ip6(58, bytes(ICMPv6DestUnreach()) + b"\x40" + bytes(IPv6())[1:])), "bad_icmp_inner"),
    (_frame(_ip6(58, bytes(ICMPv6TimeExceeded()) + bytes(IPv6(nh=60, plen=8)) + b"\x11\x03")), "bad_icmp_inner"),
])
def test_malformed_ipv6_raises_parse_error_with_reason(frame, reason):
    with pytest.raises(ParseError) as info:
        parse(frame)
    assert info.value.reason == reason


def test_the_extension_header_walk_is_bounded():
    """MAX_IPV6_EXT_HEADERS headers parse; one more is malformed, however long the frame could go on."""
    ok = _frame(_ip6(60, DEST * (MAX_IPV6_EXT_HEADERS - 1) + b"\x11\x00\x01\x04\x00\x00\x00\x00"
                     + bytes(UDP(sport=1, dport=2))))
    p = parse(ok)
    assert len(p.ipv6_ext) == MAX_IPV6_EXT_HEADERS and p.tp_dst == 2
    endless = _frame(_ip6(60, DEST * 180))           # a 1500-byte frame of nothing but extension headers
    with pytest.raises(ParseError) as info:
        parse(endless)
    assert info.value.reason == "ipv6_ext_chain_too_long"
    with pytest.raises(ValueError):
        build(p._replace(ipv6_ext=p.ipv6_ext + p.ipv6_ext[:1]))   # build refuses what parse would refuse


def test_build_refuses_inconsistent_ipv6_packets():
    base = parse(bytes(_eth() / IPv6(src=A, dst=B) / UDP(sport=1, dport=2)))
    with pytest.raises(ValueError):
        build(base._replace(frag=FRAG_LATER))                         # no fragment header says so
    with pytest.raises(ValueError):
        build(base._replace(ipv6_ext=((60, b"\x01\x00"),)))           # length byte disagrees with the body
    with pytest.raises(ValueError):
        build(base._replace(ipv6_ext=((60, b"\x00\x01\x04\x00\x00\x00\x00"), (0, b"\x00\x01\x04\x00\x00\x00\x00"))))
    with pytest.raises(ValueError):
        build(base._replace(ipv6_ext=((51, b"\x00" * 7),)))            # not a header the codec walks
    with pytest.raises(ValueError):
        build(base._replace(hop_limit=256))
    nd = parse(bytes(_eth() / IPv6(src=A, dst=B) / ICMPv6ND_NS(tgt=B)))
    with pytest.raises(ValueError):
        build(nd._replace(payload=b"x"))
    with pytest.raises(ValueError):
        build(nd._replace(nd_opts=((200, b"abc"),)))                  # not 8n - 2 bytes


# ---- rewrite ----

@st.composite
def rewrites6(draw):
    """(old, new): a canonical IPv6 packet and the same flow with random rewritable fields changed."""
    old = draw(packets6())
    ch: dict = {}
    if draw(st.booleans()):
        ch.update(eth_src=draw(macs), eth_dst=draw(macs))
    if draw(st.booleans()):
        ch.update(vlan=draw(st.none() | st.integers(0, 4095)), vlan_pcp=draw(st.integers(0, 7)))
        if ch["vlan"] is None:
            ch["vlan_pcp"] = 0
    for f, strat in (("ipv6_src", ip6s), ("ipv6_dst", ip6s), ("hop_limit", u8), ("tclass", u8),
                     ("flow_label", flow_labels)):
        if draw(st.booleans()):
            ch[f] = draw(strat)
    if old.frag != FRAG_LATER:
        for f in ("tp_src", "tp_dst", "icmp_id"):
            if getattr(old, f) is not None and draw(st.booleans()):
                ch[f] = draw(u16)
        if old.inner_ipv6_src is not None:
            inner = [("inner_ipv6_src", ip6s), ("inner_ipv6_dst", ip6s), ("inner_hop_limit", u8),
                     ("inner_tclass", u8), ("inner_flow_label", flow_labels)]
            inner += [(f, u16) for f in ("inner_tp_src", "inner_tp_dst", "inner_icmp_id")
                      if getattr(old, f) is not None]
            for f, strat in inner:
                if draw(st.booleans()):
                    ch[f] = draw(strat)
    return old, old._replace(**ch)


@settings(max_examples=600, deadline=None)
@given(rewrites6())
def test_rewrite_equals_build_and_scapy_agrees(case):
    old, new = case
    out = rewrite(build(old), old, new)
    assert out == build(new)
    assert scapy_checksum6_ok(out)
    assert parse(out) == new


def test_rewrite_refuses_the_other_family_and_extension_headers():
    v6 = parse(bytes(_eth() / IPv6(src=A, dst=B) / TCP(sport=1, dport=2)))
    frame = build(v6)
    for bad in (dict(ip_src=1), dict(ttl=3), dict(ipv6_ext=((60, b"\x00\x01\x04\x00\x00\x00\x00"),)),
                dict(proto=17)):
        with pytest.raises(ValueError):
            rewrite(frame, v6, v6._replace(**bad))
    v4 = parse(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP()))
    with pytest.raises(ValueError):
        rewrite(build(v4), v4, v4._replace(ipv6_src=1))
    with pytest.raises(ValueError):
        rewrite(build(v4), v4, v4._replace(hop_limit=1))


def test_hop_limit_rewrite_changes_no_checksum():
    p = parse(bytes(_eth() / IPv6(src=A, dst=B, hlim=64) / UDP(sport=1, dport=2) / Raw(b"abc")))
    frame = build(p)
    out = rewrite(frame, p, p._replace(hop_limit=63))
    assert out[14 + 7] == 63 and out[:21] == frame[:21] and out[22:] == frame[22:]
