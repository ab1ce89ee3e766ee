"""parse/build against scapy, both directions: build() output as scapy reads it (fields, valid checksums), and
scapy-built frames (VLAN, ARP, IP options, TCP options, fragments, ICMP errors, padding) as parse() reads them.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, ICMPerror, IPerror, TCPerror, UDPerror
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Padding, Raw

from packet.codec import ParseError, build, parse
from packet.packet import FRAG_FIRST, FRAG_LATER, FRAG_NONE, Packet
from tests.fuzz.packet_strategies import (
    assert_fields,
    ips,
    macs,
    packets,
    payloads,
    scapy_recomputed,
    scapy_view,
    u8,
    u16,
    u32,
)

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def _int_ip(ip: int) -> str:
    return ".".join(str(ip >> s & 255) for s in (24, 16, 8, 0))


def _int_mac(mac: int) -> str:
    return ":".join(f"{mac >> s & 255:02x}" for s in range(40, -8, -8))


# ---- build → scapy ----

@settings(max_examples=400, deadline=None)
@given(packets())
def test_build_is_read_back_by_scapy_with_valid_checksums(pkt):
    frame = build(pkt)
    assert_fields(pkt, scapy_view(frame))
    assert scapy_recomputed(frame) == frame, "scapy recomputes a different checksum"
    assert parse(frame) == pkt


def test_build_udp_zero_checksum_is_sent_as_ffff():
    # Find a payload whose UDP checksum comes out as 0: scapy must agree it is then sent as 0xFFFF.
    base = Packet(eth_src=1, eth_dst=2, ip_src=0x0A000001, ip_dst=0x0A000002, proto=17, ttl=64, tos=0, ip_id=0,
                  tp_src=1, tp_dst=2)
    frame = build(base._replace(payload=b"\0\0"))
    csum = struct.unpack_from("!H", frame, 14 + 20 + 6)[0]
    pkt = base._replace(payload=struct.pack("!H", csum))      # adds exactly the complement: sum becomes 0xFFFF
    frame = build(pkt)
    assert struct.unpack_from("!H", frame, 14 + 20 + 6)[0] == 0xFFFF
    assert scapy_recomputed(frame) == frame


def test_build_rejects_out_of_range_values():
    with pytest.raises(ValueError):
        build(Packet(ip_src=1, ip_dst=2, proto=6, ttl=64, tp_src=70000, tp_dst=1))
    with pytest.raises(ValueError):
        build(Packet(ip_src=1, ip_dst=None, proto=17, tp_src=1, tp_dst=1))


# ---- scapy → parse ----

@st.composite
def scapy_ip_frames(draw):
    """(scapy frame bytes, expected fields) for IPv4 with options, TCP options, padding, fragments, VLAN."""
    exp = dict(eth_src=draw(macs), eth_dst=draw(macs), eth_type=0x0800, vlan=None, vlan_pcp=0)
    frame = Ether(src=_int_mac(exp["eth_src"]), dst=_int_mac(exp["eth_dst"]))
    if draw(st.booleans()):
        exp.update(vlan=draw(st.integers(0, 4095)), vlan_pcp=draw(st.integers(0, 7)))
        frame = frame / Dot1Q(vlan=exp["vlan"], prio=exp["vlan_pcp"])
    exp.update(ip_src=draw(ips), ip_dst=draw(ips), ttl=draw(u8), tos=draw(u8), ip_id=draw(u16),
               ip_df=draw(st.booleans()))
    frag = draw(st.sampled_from([FRAG_NONE, FRAG_NONE, FRAG_FIRST, FRAG_LATER]))
    exp["frag"] = frag
    options = draw(st.sampled_from([b"", b"\x01\x01\x01\x00", b"\x07\x07\x04" + bytes(5)]))
    flags = (2 if exp["ip_df"] else 0) | (1 if frag == FRAG_FIRST else 0)
    ip = IP(src=_int_ip(exp["ip_src"]), dst=_int_ip(exp["ip_dst"]), ttl=exp["ttl"], tos=exp["tos"],
            id=exp["ip_id"], flags=flags, frag=draw(st.integers(1, 8191)) if frag == FRAG_LATER else 0,
            options=options)
    payload = draw(payloads)
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "other"]))
    if frag == FRAG_LATER or kind == "other":
        proto = draw(st.sampled_from([6, 17, 1, 47, 50])) if frag == FRAG_LATER else draw(st.sampled_from([47, 50]))
        exp.update(proto=proto, payload=payload)
        l4 = Raw(payload) if payload else Raw(b"")
        ip.proto = proto
    elif kind == "tcp":
        exp.update(proto=6, tp_src=draw(u16), tp_dst=draw(u16), tcp_flags=draw(u8), tcp_seq=draw(u32),
                   tcp_ack=draw(u32), tcp_window=draw(u16), payload=payload)
        opts = draw(st.sampled_from([[], [("MSS", 1460)], [("NOP", None), ("WScale", 7)]]))
        l4 = TCP(sport=exp["tp_src"], dport=exp["tp_dst"], flags=exp["tcp_flags"], seq=exp["tcp_seq"],
                 ack=exp["tcp_ack"], window=exp["tcp_window"], options=opts) / Raw(payload)
    elif kind == "udp":
        exp.update(proto=17, tp_src=draw(u16), tp_dst=draw(u16), payload=payload)
        l4 = UDP(sport=exp["tp_src"], dport=exp["tp_dst"]) / Raw(payload)
    else:
        exp.update(proto=1, icmp_type=draw(st.sampled_from([0, 8])), icmp_code=0, icmp_id=draw(u16),
                   icmp_seq=draw(u16), payload=payload)
        l4 = ICMP(type=exp["icmp_type"], id=exp["icmp_id"], seq=exp["icmp_seq"]) / Raw(payload)
    raw = bytes(frame / ip / l4)
    pad = draw(st.sampled_from([0, 0, max(0, 60 - len(raw)), 7]))
    return raw + bytes(pad), exp


@settings(max_examples=400, deadline=None)
@given(scapy_ip_frames())
def test_parse_reads_scapy_ipv4_frames(case):
    frame, expected = case
    pkt = parse(frame)
    assert_fields(pkt, expected)
    assert_fields(pkt, scapy_view(frame))


@st.composite
def scapy_icmp_errors(draw):
    exp = dict(inner_ip_src=draw(ips), inner_ip_dst=draw(ips), inner_ttl=draw(u8), inner_ip_id=draw(u16),
               inner_tos=draw(u8))
    inner_proto = draw(st.sampled_from([6, 17, 1]))
    inner = IPerror(src=_int_ip(exp["inner_ip_src"]), dst=_int_ip(exp["inner_ip_dst"]), ttl=exp["inner_ttl"],
                    id=exp["inner_ip_id"], tos=exp["inner_tos"], proto=inner_proto)
    sp, dp = draw(u16), draw(u16)
    l4 = {6: TCPerror(sport=sp, dport=dp, seq=draw(u32)), 17: UDPerror(sport=sp, dport=dp),
          1: ICMPerror(type=8, id=sp, seq=dp)}[inner_proto]
    l4_bytes = bytes(l4)
    cut = draw(st.sampled_from([2, 4, 6, 8, len(l4_bytes)]))       # carried L4 bytes; 2 = truncated header
    carried = l4_bytes[:cut]
    if inner_proto == 1:
        exp.update(inner_icmp_id=sp if cut >= 6 else None,
                   inner_rest=carried[:4] + carried[6:8] if cut >= 6 else carried[:8])
    else:
        exp.update(inner_tp_src=sp if cut >= 4 else None, inner_tp_dst=dp if cut >= 4 else None,
                   inner_rest=carried[4:8] if cut >= 4 else carried)
    exp.update(payload=carried[8:], inner_proto=inner_proto, icmp_type=draw(st.sampled_from([3, 11, 12])),
               icmp_code=draw(st.integers(0, 15)))
    icmp = ICMP(type=exp["icmp_type"], code=exp["icmp_code"])
    frame = Ether(src=MAC_A, dst=MAC_B) / IP(src="198.51.100.1", dst="203.0.113.9") / icmp / inner / Raw(carried)
    return bytes(frame), exp


@settings(max_examples=300, deadline=None)
@given(scapy_icmp_errors())
def test_parse_reads_scapy_icmp_errors(case):
    frame, expected = case
    pkt = parse(frame)
    assert pkt.is_icmp_error
    assert_fields(pkt, expected)
    assert_fields(pkt, scapy_view(frame))


@settings(max_examples=200, deadline=None)
@given(op=st.sampled_from([1, 2]), sha=macs, spa=ips, tha=macs, tpa=ips, vlan=st.none() | st.integers(0, 4095))
def test_parse_reads_scapy_arp_padded(op, sha, spa, tha, tpa, vlan):
    l2 = Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff")
    arp = ARP(op=op, hwsrc=_int_mac(sha), psrc=_int_ip(spa), hwdst=_int_mac(tha), pdst=_int_ip(tpa))
    frame = bytes((l2 / Dot1Q(vlan=vlan) if vlan is not None else l2) / arp / Padding(bytes(18)))
    pkt = parse(frame)
    assert (pkt.arp_op, pkt.arp_sha, pkt.arp_spa, pkt.arp_tha, pkt.arp_tpa, pkt.vlan) == (op, sha, spa, tha, tpa,
                                                                                          vlan)
    assert pkt.payload == b"" and pkt.is_arp
    assert parse(build(pkt)) == pkt


def test_unknown_ethertypes_parse_as_l2():
    # (0x86DD was the example here until the codec learned IPv6: tests/unit/test_packet_ipv6.py)
    frame = bytes(Ether(src=MAC_A, dst=MAC_B, type=0x88B5) / Raw(b"\x60" + bytes(39)))
    pkt = parse(frame)
    assert pkt.eth_type == 0x88B5 and pkt.ip_src is None and pkt.ipv6_src is None and pkt.payload == frame[14:]
    assert build(pkt) == frame


# ---- malformed frames: the reason tokens ----

def _tcp_frame(**ip_kw) -> bytearray:
    return bytearray(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.1", dst="10.0.0.2", **ip_kw)
                           / TCP(sport=1, dport=2) / Raw(b"data")))


@pytest.mark.parametrize("mutate, reason", [
    (lambda f: f[:13], "truncated"),
    (lambda f: f[:30], "truncated"),
    (lambda f: f.__setitem__(14, 0x65) or f, "bad_ip_version"),
    (lambda f: f.__setitem__(14, 0x44) or f, "bad_ihl"),
    (lambda f: f.__setitem__(14, 0x4F) or f, "truncated"),
    (lambda f: struct.pack_into("!H", f, 16, 2000) or f, "bad_total_length"),
    (lambda f: struct.pack_into("!H", f, 16, 30) or f, "bad_l4_length"),
    (lambda f: f.__setitem__(14 + 20 + 12, 0x40) or f, "bad_tcp_offset"),
    (lambda f: f.__setitem__(14 + 20 + 12, 0xF0) or f, "bad_tcp_offset"),
])
def test_malformed_frames_raise_parse_error_with_reason(mutate, reason):
    with pytest.raises(ParseError) as info:
        parse(bytes(mutate(_tcp_frame())))
    assert info.value.reason == reason


def test_bad_udp_length_and_arp_and_icmp_inner():
    udp = bytearray(bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / Raw(b"abcd")))
    struct.pack_into("!H", udp, 14 + 20 + 4, 200)
    with pytest.raises(ParseError, match="bad_l4_length"):
        parse(bytes(udp))
    arp = bytearray(bytes(Ether() / ARP(pdst="10.0.0.1")))
    struct.pack_into("!H", arp, 14, 6)                      # hardware type 6: not Ethernet
    with pytest.raises(ParseError) as info:
        parse(bytes(arp))
    assert info.value.reason == "bad_arp"
    short = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=3) / Raw(bytes(12)))
    with pytest.raises(ParseError) as info:
        parse(short)
    assert info.value.reason == "bad_icmp_inner"
    assert isinstance(info.value, ValueError)
