"""The packet spec (CONTRACTS §2): parsing, defaults, round trips, JSON form and error messages."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings

from packet.codec import build, parse
from packet.packet import ETH_TYPE_ARP, PROTO_ICMP, PROTO_TCP, TCP_FLAGS
from packet.spec import SpecError, format_spec, packet_to_dict, parse_spec
from tests.fuzz.packet_strategies import packets

CONTRACT_EXAMPLES = [
    "eth_src=02:00:00:00:00:01,eth_dst=02:0a:00:00:00:01,ip_src=10.0.0.2,ip_dst=203.0.113.10,proto=tcp,"
    "tp_src=6456,tp_dst=80,tcp_flags=syn",
    "eth_src=02:00:00:00:00:01,eth_dst=ff:ff:ff:ff:ff:ff,arp_op=1,arp_spa=10.0.0.2,arp_tpa=10.0.0.1",
    "eth_src=02:00:00:00:00:01,eth_dst=02:0a:00:00:00:01,ip_src=10.0.0.2,ip_dst=10.0.0.1,proto=icmp,icmp_type=8,"
    "icmp_id=203,icmp_seq=25,ttl=1",
    "ip_src=203.0.113.9,ip_dst=10.0.0.2,proto=icmp,icmp_type=3,icmp_code=3,inner_ip_src=10.0.0.2,"
    "inner_ip_dst=203.0.113.9,inner_proto=udp,inner_tp_src=5000,inner_tp_dst=53",
    "ip_src=10.0.0.1,ip_dst=10.0.0.2,icmp_type=11,inner_proto=icmp,inner_icmp_id=77,payload_len=12",
    "ip_src=10.0.0.1,ip_dst=10.0.0.2,proto=udp,vlan=12,vlan_pcp=5,tos=0x10,payload_len=3",
    "eth_type=0x88cc,eth_src=02:00:00:00:00:01,eth_dst=01:80:c2:00:00:0e,payload_len=4",
    "ip_src=10.0.0.1,ip_dst=10.0.0.2,proto=47,frag=later,ip_df=1,payload_len=8",
]


@pytest.mark.parametrize("text", CONTRACT_EXAMPLES)
def test_spec_round_trips_and_builds(text):
    pkt = parse_spec(text, random.Random(1))
    assert parse_spec(format_spec(pkt), random.Random(2)) == pkt
    assert parse(build(pkt)) == pkt
    d = packet_to_dict(pkt)
    assert json.loads(json.dumps(d)) == d
    assert parse_spec(",".join(f"{k}={v}" for k, v in d.items()), random.Random(3)) == pkt


def test_contract_example_fields():
    tcp = parse_spec(CONTRACT_EXAMPLES[0])
    assert (tcp.ip_src, tcp.ip_dst, tcp.proto, tcp.tp_src, tcp.tp_dst, tcp.tcp_flags, tcp.ttl) == (
        0x0A000002, 0xCB00710A, PROTO_TCP, 6456, 80, TCP_FLAGS["syn"], 64)
    arp = parse_spec(CONTRACT_EXAMPLES[1])
    assert arp.eth_type == ETH_TYPE_ARP and arp.arp_sha == arp.eth_src == 0x020000000001 and arp.arp_op == 1
    icmp = parse_spec(CONTRACT_EXAMPLES[2])
    assert (icmp.proto, icmp.icmp_type, icmp.icmp_id, icmp.icmp_seq, icmp.ttl) == (PROTO_ICMP, 8, 203, 25, 1)
    d = packet_to_dict(tcp)
    assert d["ip_src"] == "10.0.0.2" and d["proto"] == "tcp" and d["tcp_flags"] == "syn"
    assert d["eth_src"] == "02:00:00:00:00:01" and "icmp_type" not in d and "payload_len" not in d
    ack = parse_spec("ip_src=1.1.1.1,ip_dst=2.2.2.2,tcp_flags=syn|ack,payload_len=5")
    assert packet_to_dict(ack)["tcp_flags"] == "syn|ack" and packet_to_dict(ack)["payload_len"] == 5


def test_defaults_are_random_but_seedable():
    a = parse_spec("ip_src=10.0.0.1,ip_dst=10.0.0.2", random.Random(5))
    b = parse_spec("ip_src=10.0.0.1,ip_dst=10.0.0.2", random.Random(5))
    c = parse_spec("ip_src=10.0.0.1,ip_dst=10.0.0.2", random.Random(6))
    assert a == b and a != c
    assert a.proto == PROTO_TCP and a.tcp_flags == TCP_FLAGS["syn"] and a.ttl == 64
    echo = parse_spec("ip_src=10.0.0.1,ip_dst=10.0.0.2,proto=icmp", random.Random(5))
    assert (echo.icmp_type, echo.icmp_code, echo.icmp_seq) == (8, 0, 1) and echo.icmp_id is not None
    err = parse_spec("ip_src=10.0.0.1,ip_dst=10.0.0.2,icmp_type=3", random.Random(5))
    assert err.is_icmp_error and (err.inner_ip_src, err.inner_ip_dst) == (err.ip_dst, err.ip_src)


@pytest.mark.parametrize("text, message", [
    ("ip_src=10.0.0.1,ip_dst=10.0.0.2,tp_dst=x", "tp_dst: not a port number: 'x'"),
    ("ip_src=10.0.0.1,ip_dst=10.0.0.2,tp_dst=70000", "tp_dst: not a port number: '70000'"),
    ("ip_src=10.0.0.300,ip_dst=10.0.0.2", "ip_src: not an IPv4 address: '10.0.0.300'"),
    ("eth_src=02:00:00:00:00,ip_src=1.1.1.1,ip_dst=2.2.2.2", "eth_src: not a MAC address: '02:00:00:00:00'"),
    ("ip_src=1.1.1.1,ip_dst=2.2.2.2,colour=blue", "colour: unknown key"),
    ("ip_src=1.1.1.1,ip_dst=2.2.2.2,proto=udp,tcp_flags=syn", "tcp_flags: does not apply to proto udp: 'syn'"),
    ("ip_src=1.1.1.1,ip_dst=2.2.2.2,tcp_flags=syn|fly", "tcp_flags: not a TCP flag: 'fly'"),
    ("ip_src=1.1.1.1,ip_dst=2.2.2.2,proto=gre", "proto: not a protocol"),
    ("ip_src=1.1.1.1,ip_dst=2.2.2.2,icmp_type=8,inner_ip_src=3.3.3.3", "inner_ip_src: does not apply to ICMP type 8"),
    ("ip_src=1.1.1.1,ip_dst=2.2.2.2,ttl=1,ttl=2", "ttl: given twice"),
    ("ip_src=1.1.1.1", "ip_dst: missing"),
    ("arp_op=1,arp_spa=1.1.1.1", "arp_tpa: missing"),
    ("arp_tpa=1.1.1.1,ip_src=1.1.1.1", "ip_src: does not apply to an ARP packet"),
    ("ip_src=1.1.1.1,ip_dst=2.2.2.2,vlan=4096", "vlan: not a VLAN id"),
    ("ip_src", "'ip_src': expected key=value"),
    ("", "empty packet spec"),
])
def test_spec_errors_name_key_and_value(text, message):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


@settings(max_examples=300, deadline=None)
@given(packets(("tcp", "udp", "icmp", "arp", "l2", "ip_other", "frag_later")))
def test_format_spec_round_trip_for_any_packet_with_zero_payload(pkt):
    pkt = pkt._replace(payload=bytes(len(pkt.payload)))
    if pkt.is_arp:
        pkt = pkt._replace(payload=b"")
    assert parse_spec(format_spec(pkt)) == pkt
