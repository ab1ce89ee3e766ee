"""The IPv6 keys of the packet spec (CONTRACTS §2): parse, defaults (neighbor discovery addresses, hop limit
255, link-layer options), errors that name the key, format_spec round trip, JSON keys, and parse_match with
IPv6 (and IPv4) CIDRs and ``!``.  Built packets are checked by scapy."""

from __future__ import annotations

import ipaddress
import json
import random

import pytest
from hypothesis import given, settings
from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
from scapy.layers.l2 import Ether

from packet.codec import build, parse
from packet.packet import ETH_TYPE_IPV6, FRAG_FIRST, FRAG_LATER, ND_NA_OVERRIDE, ND_NA_SOLICITED, PROTO_ICMPV6
from packet.spec import (
    AddrMatch,
    SpecError,
    field_matches,
    format_spec,
    packet_to_dict,
    parse_match,
    parse_spec,
)
from tests.fuzz.packet6_strategies import KINDS6, packets6, scapy_checksum6_ok

H1, H2 = "2001:db8::1", "2001:db8::2"


def _i6(text: str) -> int:
    return int(ipaddress.IPv6Address(text))


@pytest.mark.parametrize("text", [
    f"ipv6_src={H1},ipv6_dst={H2},proto=tcp,tp_src=40000,tp_dst=22,tcp_flags=syn|ack,hop_limit=7,tclass=0x28,"
    "flow_label=12345",
    f"ipv6_src={H1},ipv6_dst={H2},proto=udp,tp_dst=53,payload_len=30,ipv6_ext=hbh|rt|dst,vlan=12",
    f"ipv6_src={H1},ipv6_dst={H2},icmp_id=5,icmp_seq=9,payload_len=56",
    f"ipv6_src={H1},ipv6_dst={H2},icmpv6_type=129,icmp_id=5",
    f"ipv6_src={H1},ipv6_dst={H2},icmpv6_type=1,icmpv6_code=4,inner_proto=udp,inner_tp_src=9,inner_tp_dst=53",
    f"ipv6_src={H1},ipv6_dst={H2},icmpv6_type=2,icmpv6_data=1400,inner_proto=icmpv6,inner_icmp_id=77",
    f"ipv6_src={H1},ipv6_dst={H2},icmpv6_type=3,inner_ipv6_ext=dst,inner_hop_limit=1,inner_tclass=4,"
    "inner_flow_label=3",
    f"ipv6_src={H1},ipv6_dst={H2},proto=udp,frag=first,payload_len=100",
    f"ipv6_src={H1},ipv6_dst={H2},proto=udp,frag=later,payload_len=100",
    f"ipv6_src={H1},nd_target={H2}",
    f"ipv6_src={H2},ipv6_dst={H1},icmpv6_type=136,nd_target={H2},nd_opts=200:000000000000",
    "ipv6_src=::,icmpv6_type=133",
    "ipv6_src=fe80::1,icmpv6_type=134,nd_prefixes=2001:db8:1::/64|2001:db8:2::/48@0x80:100:50,nd_mtu=1500,"
    "nd_reachable=30000,nd_retrans=1000",
    f"ipv6_src={H1},ipv6_dst={H2},proto=47,payload_len=4",
])
def test_spec_round_trips_builds_and_scapy_agrees(text):
    pkt = parse_spec(text, random.Random(3))
    assert pkt.is_ipv6 and pkt.eth_type == ETH_TYPE_IPV6
    frame = build(pkt)
    assert parse(frame) == pkt
    assert scapy_checksum6_ok(frame)
    assert parse_spec(format_spec(pkt)) == pkt
    assert Ether(frame).haslayer(IPv6)


def test_neighbor_discovery_defaults():
    ns = parse_spec(f"eth_src=02:00:00:00:00:01,ipv6_src={H1},nd_target=2001:db8::ab:cdef")
    assert (ns.proto, ns.icmpv6_type, ns.hop_limit) == (PROTO_ICMPV6, 135, 255)
    assert ns.ipv6_dst == _i6("ff02::1:ffab:cdef") and ns.eth_dst == 0x3333FFABCDEF
    assert ns.nd_sll == 0x020000000001 and ns.nd_tll is None
    s = Ether(build(ns))
    assert s[ICMPv6ND_NS].tgt == "2001:db8::ab:cdef" and s[ICMPv6NDOptSrcLLAddr].lladdr == "02:00:00:00:00:01"
    dad = parse_spec("ipv6_src=::,nd_target=2001:db8::5")
    assert dad.nd_sll is None                                          # RFC 4861 §4.3: none from ::
    assert parse_spec(f"ipv6_src={H1},nd_target={H2},nd_sll=none").nd_sll is None
    na = parse_spec(f"eth_src=02:00:00:00:00:02,ipv6_src={H2},ipv6_dst={H1},icmpv6_type=136,nd_target={H2}")
    assert na.icmpv6_data == ND_NA_SOLICITED | ND_NA_OVERRIDE and na.nd_tll == 0x020000000002
    unsolicited = parse_spec(f"ipv6_src={H2},icmpv6_type=136,nd_target={H2}")
    assert unsolicited.ipv6_dst == _i6("ff02::1") and unsolicited.icmpv6_data == ND_NA_OVERRIDE
    assert parse_spec("ipv6_src=fe80::1,icmpv6_type=133").ipv6_dst == _i6("ff02::2")
    ra = parse_spec("ipv6_src=fe80::1,icmpv6_type=134,nd_prefixes=2001:db8:1::/64")
    assert ra.ipv6_dst == _i6("ff02::1") and ra.icmpv6_data >> 24 == 64 and ra.icmpv6_data & 0xFFFF == 1800
    assert ra.nd_prefixes == ((_i6("2001:db8:1::"), 64, 0xC0, 2592000, 604800),)


def test_other_defaults_and_inference():
    tcp = parse_spec(f"ipv6_src={H1},ipv6_dst={H2}")
    assert (tcp.proto, tcp.hop_limit, tcp.tclass, tcp.flow_label, tcp.ipv6_ext) == (6, 64, 0, 0, ())
    echo = parse_spec(f"ipv6_src={H1},ipv6_dst={H2},proto=icmpv6")
    assert echo.icmpv6_type == 128 and echo.icmp_seq == 1 and echo.icmp_id is not None
    err = parse_spec(f"ipv6_src={H1},ipv6_dst={H2},inner_proto=udp")
    assert err.icmpv6_type == 1 and (err.inner_ipv6_src, err.inner_ipv6_dst) == (_i6(H2), _i6(H1))
    ptb = parse_spec(f"ipv6_src={H1},ipv6_dst={H2},icmpv6_type=2")
    assert ptb.icmpv6_data == 1280
    later = parse_spec(f"ipv6_src={H1},ipv6_dst={H2},proto=udp,frag=later")
    assert later.frag == FRAG_LATER and later.tp_src is None and later.ipv6_ext[-1][0] == 44
    first = parse_spec(f"ipv6_src={H1},ipv6_dst={H2},proto=udp,frag=first,ipv6_ext=hbh")
    assert first.frag == FRAG_FIRST and [t for t, _b in first.ipv6_ext] == [0, 44]
    # eth_type=ipv6 with no IPv6 key is still a bare L2 frame, as before
    bare = parse_spec("eth_type=0x86dd,payload_len=4")
    assert bare.eth_type == ETH_TYPE_IPV6 and bare.ipv6_src is None and bare.payload == bytes(4)
    # multicast destinations get their 33:33 MAC
    assert parse_spec(f"ipv6_src={H1},ipv6_dst=ff02::fb,proto=udp").eth_dst == 0x3333000000FB


@pytest.mark.parametrize("text, message", [
    ("ipv6_src=10.0.0.1,ipv6_dst=2001:db8::2", "ipv6_src: not an IPv6 address"),
    (f"ipv6_src={H1},ipv6_dst=2001:db8::g", "ipv6_dst: not an IPv6 address"),
    (f"ipv6_dst={H2}", "ipv6_src: missing"),
    (f"ipv6_src={H1},proto=udp", "ipv6_dst: missing"),
    (f"ipv6_src={H1},ipv6_dst={H2},ip_src=10.0.0.1", "ip_src: does not apply to an IPv6 packet"),
    (f"ipv6_src={H1},ipv6_dst={H2},ttl=3", "ttl: does not apply to an IPv6 packet"),
    (f"ipv6_src={H1},ipv6_dst={H2},hop_limit=256", "hop_limit: not a hop limit"),
    (f"ipv6_src={H1},ipv6_dst={H2},flow_label=0x100000", "flow_label: not a flow label"),
    (f"ipv6_src={H1},ipv6_dst={H2},ipv6_ext=xyz", "ipv6_ext: not an extension header"),
    (f"ipv6_src={H1},ipv6_dst={H2},ipv6_ext=" + "|".join(["dst"] * 9), "ipv6_ext: more than 8"),
    (f"ipv6_src={H1},ipv6_dst={H2},icmpv6_type=136", "nd_target: missing"),
    (f"ipv6_src={H1},ipv6_dst={H2},icmpv6_type=135,nd_tll=02:00:00:00:00:01", "nd_tll: does not apply"),
    (f"ipv6_src={H1},ipv6_dst={H2},icmpv6_type=135,nd_target={H2},payload_len=3", "payload_len: does not apply"),
    (f"ipv6_src={H1},ipv6_dst={H2},icmpv6_type=128,inner_proto=tcp", "inner_proto: does not apply"),
    (f"ipv6_src={H1},ipv6_dst={H2},inner_ip_src=10.0.0.1", "inner_ip_src: does not apply to an IPv6 packet"),
    (f"ipv6_src={H1},ipv6_dst={H2},proto=tcp,frag=later,tp_src=1", "tp_src: does not apply to a later fragment"),
    (f"ipv6_src={H1},ipv6_dst={H2},proto=udp,frag=first,ipv6_ext=44:0005c86ec9d286", "frag: does not apply"),
    ("ipv6_src=fe80::1,icmpv6_type=134,nd_prefixes=2001:db8::", "nd_prefixes: not a prefix"),
    (f"ipv6_src={H1},nd_target={H2},nd_opts=200:00", "nd_opts: option 200"),
    (f"ipv6_src={H1},ipv6_dst={H2},proto=ospf", "proto: not a protocol (tcp, udp, icmp, icmpv6"),
])
def test_spec_errors_name_key_and_value(text, message):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert message in str(info.value)


@settings(max_examples=300, deadline=None)
@given(packets6(tuple(k for k in KINDS6 if k != "error6")))
def test_format_spec_round_trip_for_any_packet_with_zero_payload(pkt):
    """Every IPv6 field has a spec form: format → parse gives the packet back (payload as zero bytes of its
    length).  ICMPv6 errors are left out as for IPv4: their carried bytes are no spec key (the specs above
    cover them)."""
    pkt = pkt._replace(payload=bytes(len(pkt.payload)))
    assert parse_spec(format_spec(pkt)) == pkt


def test_json_output_uses_the_spec_keys():
    pkt = parse_spec(f"eth_src=02:00:00:00:00:01,ipv6_src={H1},nd_target={H2},ipv6_ext=hbh")
    d = packet_to_dict(pkt)
    assert d["ipv6_src"] == H1 and d["ipv6_dst"] == "ff02::1:ff00:2" and d["nd_target"] == H2
    assert d["nd_sll"] == "02:00:00:00:00:01" and d["proto"] == "icmpv6" and d["icmpv6_type"] == 135
    assert d["hop_limit"] == 255 and d["ipv6_ext"] == "hbh" and d["eth_type"] == "0x86dd"
    assert "ip_src" not in d and "ttl" not in d and "nd_prefixes" not in d
    json.dumps(d)
    err = packet_to_dict(parse_spec(f"ipv6_src={H1},ipv6_dst={H2},icmpv6_type=1,inner_proto=udp,inner_tp_dst=53"))
    assert err["inner_ipv6_src"] == H2 and err["inner_tp_dst"] == 53 and err["inner_proto"] == "udp"


def test_parse_match_takes_ipv6_and_ipv4_addresses_cidrs_and_negation():
    m = parse_match(f"ipv6_src=2001:db8::/32,ipv6_dst=!{H2},proto=tcp,in_port=tenant.vm1")
    assert m["proto"] == 6 and m["in_port"] == "tenant.vm1"
    src, dst = m["ipv6_src"], m["ipv6_dst"]
    assert isinstance(src, AddrMatch) and isinstance(dst, AddrMatch)
    assert field_matches(src, _i6("2001:db8:ffff::1")) and not field_matches(src, _i6("2001:db9::1"))
    assert field_matches(dst, _i6(H1)) and not field_matches(dst, _i6(H2))
    assert not field_matches(dst, None) and not field_matches(src, None)   # absent never matches
    exact = parse_match(f"ipv6_src={H1}")
    assert exact == {"ipv6_src": _i6(H1)} and field_matches(exact["ipv6_src"], _i6(H1))
    v4 = parse_match("ip_src=!10.0.0.0/8,ip_dst=10.0.0.1")
    assert v4["ip_dst"] == 0x0A000001                                   # an exact IPv4 address: as before
    assert field_matches(v4["ip_src"], 0x0B000001) and not field_matches(v4["ip_src"], 0x0A000001)
    for bad, msg in (("ipv6_src=!10.0.0.0/8", "not an IPv6 address or CIDR"),
                     ("ip_src=2001:db8::/32", "not an IPv4 address or CIDR"),
                     ("ipv6_src=2001:db8::/129", "not an IPv6 address or CIDR"),
                     (f"ipv6_src={H1},ipv6_src=!{H2}", "given twice")):
        with pytest.raises(SpecError) as info:
            parse_match(bad)
        assert msg in str(info.value)
