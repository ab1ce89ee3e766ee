"""Fuzzing parse(): whatever the bytes, the result is a Packet or a ParseError, never another exception.

Volume comes from a seeded loop (100,000 frames: 1/5 pure random bytes, 4/5 truncations and mutations of
valid frames of every kind, so the deep paths - VLAN, options, fragments, ICMP error carried headers - are
reached); hypothesis adds 2 x 1,500 shrinkable cases.  IPv6 the same way: 50,000 seeded frames (noise after an
IPv6 ethertype, mutations of every kind of IPv6 frame: extension header chains, fragments, ICMPv6 errors,
neighbor discovery), 2 x 1,500 hypothesis cases.  A frame that parses must also build, and re-parse to
the same Packet (except an ICMP error whose carried header is a later fragment: the Packet does not model
the carried fragment offset).
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packet import codec
from packet.codec import ParseError, build, parse
from packet.spec import parse_spec
from tests.fuzz.packet6_strategies import packets6
from tests.fuzz.packet_strategies import packets

BULK_FRAMES = 100_000
_SPECS = [
    "ip_src=10.0.0.1,ip_dst=10.0.0.2,tp_src=1000,tp_dst=80,payload_len=20",
    "ip_src=10.0.0.1,ip_dst=10.0.0.2,proto=udp,vlan=5,payload_len=9",
    "ip_src=10.0.0.1,ip_dst=10.0.0.2,proto=icmp,payload_len=16",
    "ip_src=10.0.0.1,ip_dst=10.0.0.2,icmp_type=3,inner_proto=udp,payload_len=12",
    "ip_src=10.0.0.1,ip_dst=10.0.0.2,icmp_type=11,inner_proto=icmp,vlan=7",
    "ip_src=10.0.0.1,ip_dst=10.0.0.2,icmp_type=3,inner_proto=tcp",
    "ip_src=10.0.0.1,ip_dst=10.0.0.2,proto=udp,frag=first,payload_len=30",
    "ip_src=10.0.0.1,ip_dst=10.0.0.2,proto=tcp,frag=later,payload_len=30",
    "ip_src=10.0.0.1,ip_dst=10.0.0.2,proto=47,payload_len=10",
    "arp_op=1,arp_spa=10.0.0.1,arp_tpa=10.0.0.2",
    "arp_op=2,arp_spa=10.0.0.1,arp_tpa=10.0.0.2,vlan=100",
    "eth_type=0x86dd,payload_len=40",
]


def _seeds(rng: random.Random) -> list[bytes]:
    frames = [build(parse_spec(s, rng)) for s in _SPECS]
    # IP options / TCP options variants: IHL 6 with a NOP option word, TCP data offset 6.
    tcp = bytearray(frames[0])
    with_opts = tcp[:14] + bytes([0x46]) + tcp[15:16] + struct.pack("!H", len(tcp) - 14 + 4) + tcp[18:34] \
        + b"\x01\x01\x01\x00" + tcp[34:]
    frames.append(bytes(with_opts))
    frames.append(frames[0] + bytes(12))                      # Ethernet padding
    return frames


def _mutate(frame: bytes, rng: random.Random) -> bytes:
    op = rng.randrange(6)
    if op == 0:
        return frame[:rng.randrange(len(frame) + 1)]
    buf = bytearray(frame)
    if op == 1:                                               # flip random bytes
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif op == 2:                                             # hit a header byte (first 70 bytes)
        buf[rng.randrange(min(70, len(buf)))] = rng.choice([0, 1, 0x45, 0x4F, 0x40, 0xFF, rng.randrange(256)])
    elif op == 3:                                             # lie in a 16-bit length-ish field
        at = rng.choice([16, 20, 38, 42, 46, 52, 58]) if len(buf) > 60 else rng.randrange(max(1, len(buf) - 1))
        if at + 2 <= len(buf):
            struct.pack_into("!H", buf, at, rng.choice([0, 1, 7, 8, 19, 20, 21, 0xFFFF, rng.randrange(65536)]))
    elif op == 4:                                             # mutate then truncate
        buf[rng.randrange(len(buf))] = rng.randrange(256)
        del buf[rng.randrange(len(buf) + 1):]
    else:                                                     # append junk
        buf += rng.randbytes(rng.randrange(1, 20))
    return bytes(buf)


def _check(frame: bytes, parser=parse) -> bool:
    """Parse; if it parses, build must work and re-parse identically. Returns whether it parsed."""
    try:
        pkt = parser(frame)
    except ParseError:
        return False
    again = parse(build(pkt))
    carried_later_fragment = pkt.is_icmp_error and pkt.inner_ip_src is not None and _carried_frag(frame, pkt)
    if not carried_later_fragment:
        assert again == pkt, (frame.hex(), pkt, again)
    return True


def _carried_frag(frame: bytes, pkt) -> bool:
    l3 = 14 if pkt.vlan is None else 18
    p = l3 + (frame[l3] & 15) * 4 + 8
    return bool(struct.unpack_from("!H", frame, p + 6)[0] & 0x1FFF)


def test_parse_100k_seeded_random_and_mutated_frames_only_packet_or_parse_error():
    rng = random.Random(20240601)
    seeds = _seeds(rng)
    parsed = 0
    # codec._parse is parse() without its last-resort struct.error/IndexError net: every path must check.
    for i in range(BULK_FRAMES):
        if i % 5 == 0:
            frame = rng.randbytes(rng.randrange(0, 80))
            if rng.random() < 0.5:                            # give pure noise a plausible start
                frame = frame[:12] + rng.choice([b"\x08\x00\x45", b"\x81\x00\x00\x05\x08\x00\x45", b"\x08\x06"]) \
                    + frame[12:]
        else:
            frame = _mutate(rng.choice(seeds), rng)
        parsed += _check(frame, codec._parse)
    # Both outcomes are exercised in volume (the mutations are neither all fatal nor all harmless).
    assert BULK_FRAMES // 10 < parsed < BULK_FRAMES * 9 // 10


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=120))
def test_hypothesis_random_bytes_1500(frame):
    _check(frame)


@settings(max_examples=1500, deadline=None)
@given(packets(), st.integers(0, 200), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4))
def test_hypothesis_truncated_and_mutated_valid_frames_1500(pkt, cut, edits):
    buf = bytearray(build(pkt))
    for at, value in edits:
        if at < len(buf):
            buf[at] = value
    _check(bytes(buf[:cut]))


# ---- IPv6: the same three attacks on frames after an IPv6 ethertype ----

_SPECS6 = [
    "ipv6_src=2001:db8::1,ipv6_dst=2001:db8::2,tp_src=1000,tp_dst=80,payload_len=20",
    "ipv6_src=2001:db8::1,ipv6_dst=2001:db8::2,proto=udp,vlan=5,payload_len=9,ipv6_ext=hbh|dst",
    "ipv6_src=2001:db8::1,ipv6_dst=2001:db8::2,icmp_id=7,payload_len=16",
    "ipv6_src=2001:db8::1,ipv6_dst=2001:db8::2,icmpv6_type=1,inner_proto=udp,payload_len=12,inner_ipv6_ext=dst",
    "ipv6_src=2001:db8::1,ipv6_dst=2001:db8::2,icmpv6_type=2,inner_proto=icmpv6",
    "ipv6_src=2001:db8::1,ipv6_dst=2001:db8::2,icmpv6_type=3,inner_proto=tcp,ipv6_ext=rt",
    "ipv6_src=2001:db8::1,ipv6_dst=2001:db8::2,proto=udp,frag=first,payload_len=30",
    "ipv6_src=2001:db8::1,ipv6_dst=2001:db8::2,proto=tcp,frag=later,payload_len=30",
    "ipv6_src=2001:db8::1,ipv6_dst=2001:db8::2,proto=47,payload_len=10",
    "ipv6_src=2001:db8::1,nd_target=2001:db8::2",
    "ipv6_src=2001:db8::2,ipv6_dst=2001:db8::1,icmpv6_type=136,nd_target=2001:db8::2,nd_opts=200:000000000000",
    "ipv6_src=::,icmpv6_type=133",
    "ipv6_src=fe80::1,icmpv6_type=134,nd_prefixes=2001:db8:1::/64|2001:db8:2::/64,nd_mtu=1500",
]


def _seeds6(rng: random.Random) -> list[bytes]:
    frames = [build(parse_spec(s, rng)) for s in _SPECS6]
    frames.append(frames[0] + bytes(12))                      # Ethernet padding
    # a chain of MAX_IPV6_EXT_HEADERS + 1 destination options headers (malformed) and one of exactly the limit
    for n in (8, 9):
        pkt = parse_spec("ipv6_src=2001:db8::1,ipv6_dst=2001:db8::2,proto=udp,tp_src=1,tp_dst=2", rng)
        pkt = pkt._replace(ipv6_ext=((60, b"\0\1\4\0\0\0\0"),) * n)
        frames.append(_build_unchecked_chain(pkt))
    return frames


def _build_unchecked_chain(pkt) -> bytes:
    """build() refuses a chain longer than the codec accepts; write one by hand (IPv6 + dest opts + UDP)."""
    if len(pkt.ipv6_ext) <= 8:
        return build(pkt)
    short = build(pkt._replace(ipv6_ext=pkt.ipv6_ext[:8]))
    extra = len(pkt.ipv6_ext) - 8
    l3 = 14
    buf = bytearray(short)
    # insert the extra headers right after the fixed header: each says "next: destination options"
    buf[l3 + 6] = 60
    buf[l3 + 40:l3 + 40] = b"\x3c\0\1\4\0\0\0\0" * extra
    struct.pack_into("!H", buf, l3 + 4, struct.unpack_from("!H", buf, l3 + 4)[0] + 8 * extra)
    return bytes(buf)


def test_parse_50k_seeded_mutated_ipv6_frames_only_packet_or_parse_error():
    rng = random.Random(20261202)
    seeds = _seeds6(rng)
    assert _check(seeds[-2]) and not _check(seeds[-1])        # the limit parses, one more is malformed
    with pytest.raises(ParseError) as info:
        parse(seeds[-1])
    assert info.value.reason == "ipv6_ext_chain_too_long"
    parsed = 0
    for i in range(BULK_FRAMES // 2):
        if i % 5 == 0:
            frame = rng.randbytes(rng.randrange(0, 120))
            frame = frame[:12] + rng.choice([b"\x86\xdd\x60", b"\x81\x00\x00\x05\x86\xdd\x60", b"\x86\xdd"]) \
                + frame[12:]
        else:
            frame = _mutate6(rng.choice(seeds), rng)
        parsed += _check(frame, codec._parse)
    assert BULK_FRAMES // 20 < parsed < BULK_FRAMES * 9 // 20


def _mutate6(frame: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return _mutate(frame, rng)
    buf = bytearray(frame)
    l3 = 18 if buf[12:14] == b"\x81\x00" else 14
    op = rng.randrange(4)
    if op == 0 and len(buf) >= l3 + 6:                        # lie in the payload length
        struct.pack_into("!H", buf, l3 + 4, rng.choice([0, 1, 7, 8, 40, 0xFFFF, rng.randrange(65536)]))
    elif op == 1 and len(buf) > l3 + 6:                       # another next header (an extension header)
        buf[l3 + 6] = rng.choice([0, 43, 44, 60, 58, 6, 17, rng.randrange(256)])
    elif op == 2 and len(buf) > l3 + 41:                      # an extension header / L4 length byte
        at = rng.randrange(l3 + 40, min(len(buf), l3 + 120))
        buf[at] = rng.choice([0, 1, 2, 0xFF, rng.randrange(256)])
    else:                                                     # cut inside the L4 / options
        del buf[rng.randrange(l3, len(buf) + 1):]
    return bytes(buf)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=160))
def test_hypothesis_random_bytes_after_an_ipv6_ethertype_1500(body):
    _check(b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x86\xdd" + body)


@settings(max_examples=1500, deadline=None)
@given(packets6(), st.integers(0, 260), st.lists(st.tuples(st.integers(0, 260), st.integers(0, 255)), max_size=4))
def test_hypothesis_truncated_and_mutated_valid_ipv6_frames_1500(pkt, cut, edits):
    buf = bytearray(build(pkt))
    for at, value in edits:
        if at < len(buf):
            buf[at] = value
    _check(bytes(buf[:cut]))
