"""rewrite() (incremental checksums, RFC 1624) against build() byte for byte and against scapy's checksums;
the checksum helpers against scapy's checksum function."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw
from scapy.utils import checksum as scapy_checksum

from packet.checksum import checksum, csum_update, csum_update16, csum_update32, l4_checksum
from packet.codec import build, parse, rewrite
from packet.packet import FRAG_LATER, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Packet
from tests.fuzz.packet_strategies import assert_fields, ips, macs, packets, scapy_recomputed, scapy_view, u8, u16


@st.composite
def rewrites(draw):
    """(old, new): a canonical packet and the same flow with random rewritable fields changed."""
    old = draw(packets(("tcp", "udp", "icmp", "icmp_error", "frag_first", "frag_later", "arp", "l2")))
    ch: dict = {}
    if draw(st.booleans()):
        ch.update(eth_src=draw(macs), eth_dst=draw(macs))
    vlan = draw(st.sampled_from(["keep", "pop", "push_or_set"]))
    if vlan == "pop":
        ch.update(vlan=None, vlan_pcp=0)
    elif vlan == "push_or_set":
        ch.update(vlan=draw(st.integers(0, 4095)), vlan_pcp=draw(st.integers(0, 7)))
    if old.ip_src is not None:
        for f, strat in (("ip_src", ips), ("ip_dst", ips), ("ttl", u8), ("tos", u8), ("ip_id", u16)):
            if draw(st.booleans()):
                ch[f] = draw(strat)
        if old.frag != FRAG_LATER and old.proto in (PROTO_TCP, PROTO_UDP):
            for f in ("tp_src", "tp_dst"):
                if draw(st.booleans()):
                    ch[f] = draw(u16)
        if old.proto == PROTO_ICMP and old.frag != FRAG_LATER:
            if draw(st.booleans()):
                ch["icmp_id"] = draw(u16)
            if old.inner_ip_src is not None:
                inner = [("inner_ip_src", ips), ("inner_ip_dst", ips), ("inner_ttl", u8), ("inner_tos", u8),
                         ("inner_ip_id", u16)]
                inner += [(f, u16) for f in ("inner_tp_src", "inner_tp_dst", "inner_icmp_id")
                          if getattr(old, f) is not None]
                for f, strat in inner:
                    if draw(st.booleans()):
                        ch[f] = draw(strat)
    return old, old._replace(**ch)


@settings(max_examples=600, deadline=None)
@given(rewrites())
def test_rewrite_equals_build_and_scapy_agrees(case):
    old, new = case
    out = rewrite(build(old), old, new)
    assert out == build(new)
    assert parse(out) == new
    assert scapy_recomputed(out) == out


def _scapy_frames():
    rng = random.Random(7)
    for _ in range(40):
        yield bytes(Ether() / Dot1Q(vlan=rng.randrange(4096)) / IP(src="10.0.0.1", dst="10.0.0.2",
                                                                   options=b"\x01\x01\x01\x00")
                    / TCP(sport=rng.randrange(65536), dport=80, options=[("MSS", 1460), ("NOP", None)])
                    / Raw(rng.randbytes(rng.randrange(30))) / Raw(bytes(rng.choice([0, 5]))))
        yield bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=rng.randrange(65536), dport=53)
                    / Raw(rng.randbytes(rng.randrange(1, 30))))
        yield bytes(Ether() / IP(src="198.51.100.1", dst="203.0.113.9", options=b"\x01\x01\x01\x00") / ICMP(type=3)
                    / IPerror(src="203.0.113.9", dst="10.0.0.2", options=b"\x01\x01\x01\x00")
                    / UDPerror(sport=rng.randrange(65536), dport=33434) / Raw(rng.randbytes(12)))


@pytest.mark.parametrize("frame", list(_scapy_frames()))
def test_rewrite_of_noncanonical_scapy_frames_keeps_checksums_valid(frame):
    # IP options, TCP options and Ethernet padding are kept by rewrite; scapy checks every checksum after it.
    rng = random.Random(frame)
    old = parse(frame)
    ch = dict(eth_src=rng.getrandbits(48), ip_src=rng.getrandbits(32), ip_dst=rng.getrandbits(32),
              ttl=old.ttl - 1, vlan=None)
    if old.tp_src is not None:
        ch.update(tp_src=rng.getrandbits(16), tp_dst=rng.getrandbits(16))
    if old.inner_ip_src is not None:
        ch.update(inner_ip_src=rng.getrandbits(32), inner_ip_dst=rng.getrandbits(32), inner_tp_src=7, inner_ttl=3)
    new = old._replace(**ch)
    out = rewrite(frame, old, new)
    assert parse(out) == new
    assert_fields(new, scapy_view(out))
    assert scapy_recomputed(out) == out


def test_rewrite_refuses_fields_it_cannot_change():
    old = parse(build(Packet(eth_src=1, eth_dst=2, ip_src=1, ip_dst=2, proto=6, ttl=64, tos=0, ip_id=1, tp_src=1,
                             tp_dst=2, tcp_flags=2, tcp_seq=1, tcp_ack=0, tcp_window=10, payload=b"x")))
    for change in (dict(payload=b"y"), dict(proto=17), dict(tcp_flags=18), dict(tp_src=None)):
        with pytest.raises(ValueError):
            rewrite(build(old), old, old._replace(**change))
    arp = Packet(eth_type=0x0806, arp_op=1, arp_sha=1, arp_spa=2, arp_tha=0, arp_tpa=3)
    with pytest.raises(ValueError, match="not IPv4"):
        rewrite(build(arp), arp, arp._replace(ip_src=5))
    assert rewrite(build(old), old, old) == build(old)


# ---- checksum helpers vs scapy ----

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_checksum_matches_scapy(data):
    assert checksum(data) == scapy_checksum(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=8, max_size=64).filter(lambda b: any(b)), st.data())
def test_incremental_updates_match_full_recompute(data, draw):
    data = bytearray(data)
    csum = checksum(data)
    at = draw.draw(st.integers(0, len(data) // 2 - 2)) * 2       # a 32-bit field on a 16-bit boundary
    old32 = int.from_bytes(data[at:at + 4])
    new32 = draw.draw(st.integers(0, 2**32 - 1))
    data[at:at + 4] = new32.to_bytes(4)
    if any(data):
        assert csum_update32(csum, old32, new32) == checksum(data)
        old_words, new_words = (old32 >> 16, old32 & 0xFFFF), (new32 >> 16, new32 & 0xFFFF)
        assert csum_update(csum, old_words, new_words) == checksum(data)
        mid = csum_update16(csum, old_words[0], new_words[0])
        assert csum_update16(mid, old_words[1], new_words[1]) == checksum(data)


def test_l4_checksum_matches_scapy_tcp():
    pkt = IP(src="10.1.2.3", dst="203.0.113.7") / TCP(sport=1000, dport=80, flags="PA") / Raw(b"hello!!")
    built = IP(bytes(pkt))
    seg = bytearray(bytes(built[TCP]))
    seg[16:18] = b"\0\0"
    assert l4_checksum(0x0A010203, 0xCB007107, 6, seg) == built[TCP].chksum
