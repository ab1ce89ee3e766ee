"""flow_key and normalized_flow_hash: both directions agree, ICMP errors map to their flow, stable across
processes."""

from __future__ import annotations

import os
import subprocess
import sys

from hypothesis import given, settings

from packet.codec import build, parse
from packet.flowkey import flow_key, normalized_flow_hash
from packet.packet import FLOW_KEY_FIELDS, FRAG_FIRST, FRAG_LATER
from packet.spec import parse_spec
from tests.fuzz.packet_strategies import packets


def _reverse(pkt):
    return pkt._replace(eth_src=pkt.eth_dst, eth_dst=pkt.eth_src, ip_src=pkt.ip_dst, ip_dst=pkt.ip_src,
                        tp_src=pkt.tp_dst, tp_dst=pkt.tp_src)


def test_flow_key_is_in_port_plus_flow_fields_and_ignores_per_packet_fields():
    pkt = parse_spec("ip_src=10.0.0.1,ip_dst=10.0.0.2,tp_src=1000,tp_dst=80,payload_len=10")
    key = flow_key(pkt, "tenant.vm1")
    assert key == ("tenant.vm1", *(getattr(pkt, f) for f in FLOW_KEY_FIELDS))
    later = pkt._replace(tcp_seq=pkt.tcp_seq + 1, ip_id=7, tcp_flags=0x10, payload=b"other")
    assert flow_key(later, "tenant.vm1") == key and hash(flow_key(later, "tenant.vm1")) == hash(key)
    assert flow_key(pkt, "tenant.vm2") != key
    assert flow_key(pkt._replace(tp_dst=81), "tenant.vm1") != key


@settings(max_examples=300, deadline=None)
@given(packets(("tcp", "udp", "icmp", "ip_other", "arp", "l2")))
def test_both_directions_hash_alike(pkt):
    assert normalized_flow_hash(pkt) == normalized_flow_hash(_reverse(pkt))
    assert 0 <= normalized_flow_hash(pkt) < 2**32


def test_different_flows_hash_apart_mostly():
    base = parse_spec("ip_src=10.0.0.1,ip_dst=10.0.0.2,tp_src=1000,tp_dst=80")
    hashes = {normalized_flow_hash(base._replace(tp_src=p)) for p in range(1000, 3000)}
    assert len(hashes) == 2000
    buckets = [0] * 4
    for h in hashes:
        buckets[h % 4] += 1
    assert min(buckets) > 400                    # spread over 4 workers, not all on one


def test_icmp_error_maps_to_the_flow_it_reports():
    fwd = parse_spec("ip_src=10.0.0.2,ip_dst=203.0.113.9,proto=udp,tp_src=5000,tp_dst=53")
    err = parse_spec("ip_src=198.51.100.1,ip_dst=10.0.0.2,icmp_type=3,icmp_code=1,inner_ip_src=10.0.0.2,"
                     "inner_ip_dst=203.0.113.9,inner_proto=udp,inner_tp_src=5000,inner_tp_dst=53")
    assert normalized_flow_hash(err) == normalized_flow_hash(fwd) == normalized_flow_hash(_reverse(fwd))
    echo = parse_spec("ip_src=10.0.0.2,ip_dst=10.0.0.1,proto=icmp,icmp_id=42")
    reply = _reverse(echo)._replace(icmp_type=0)
    terr = parse_spec("ip_src=198.51.100.1,ip_dst=10.0.0.2,icmp_type=11,inner_ip_src=10.0.0.2,"
                      "inner_ip_dst=10.0.0.1,inner_proto=icmp,inner_icmp_id=42")
    assert normalized_flow_hash(echo) == normalized_flow_hash(reply) == normalized_flow_hash(terr)
    # a parsed frame hashes like the spec it came from
    assert normalized_flow_hash(parse(build(err))) == normalized_flow_hash(fwd)


def test_fragments_of_one_datagram_hash_alike():
    first = parse_spec("ip_src=10.0.0.1,ip_dst=10.0.0.2,proto=udp,tp_src=1,tp_dst=2,frag=first,ip_id=9")
    later = parse_spec("ip_src=10.0.0.2,ip_dst=10.0.0.1,proto=udp,frag=later,ip_id=9")
    assert first.frag == FRAG_FIRST and later.frag == FRAG_LATER
    assert normalized_flow_hash(first) == normalized_flow_hash(later)


def test_hash_is_stable_across_processes():
    spec = "ip_src=10.0.0.1,ip_dst=10.0.0.2,tp_src=1000,tp_dst=80,eth_src=02:00:00:00:00:01"
    code = ("from packet.spec import parse_spec; from packet.flowkey import normalized_flow_hash;"
            f"print(normalized_flow_hash(parse_spec({spec!r})))")
    here = normalized_flow_hash(parse_spec(spec))
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), timeout=60)
        assert int(out.stdout) == here


def _reverse6(pkt):
    return pkt._replace(eth_src=pkt.eth_dst, eth_dst=pkt.eth_src, ipv6_src=pkt.ipv6_dst, ipv6_dst=pkt.ipv6_src,
                        tp_src=pkt.tp_dst, tp_dst=pkt.tp_src)


def test_ipv6_flows_hash_by_their_5_tuple_both_ways_and_errors_and_echoes_by_what_they_carry():
    fwd = parse_spec("ipv6_src=2001:db8:1::10,ipv6_dst=2001:db8:2::10,proto=tcp,tp_src=40000,tp_dst=80")
    assert fwd.is_ipv6 and normalized_flow_hash(fwd) == normalized_flow_hash(_reverse6(fwd))
    assert normalized_flow_hash(fwd) != normalized_flow_hash(fwd._replace(tp_src=40001))
    # the addresses are hashed whole: two hosts that differ only in the top 64 bits differ
    assert normalized_flow_hash(fwd) != normalized_flow_hash(fwd._replace(ipv6_src=fwd.ipv6_src ^ (1 << 100)))
    # an ICMPv6 error hashes like the flow it carries, through a real build and parse
    err = parse(build(parse_spec("ipv6_src=2001:db8:9::1,ipv6_dst=2001:db8:1::10,icmpv6_type=1,icmpv6_code=4,"
                                 "inner_ipv6_src=2001:db8:1::10,inner_ipv6_dst=2001:db8:2::10,inner_proto=tcp,"
                                 "inner_tp_src=40000,inner_tp_dst=80")))
    assert err.is_icmpv6_error and normalized_flow_hash(err) == normalized_flow_hash(fwd)
    echo = parse_spec("ipv6_src=2001:db8:1::10,ipv6_dst=2001:db8:2::10,icmpv6_type=128,icmp_id=77")
    reply = parse_spec("ipv6_src=2001:db8:2::10,ipv6_dst=2001:db8:1::10,icmpv6_type=129,icmp_id=77")
    assert normalized_flow_hash(echo) == normalized_flow_hash(reply)
    assert normalized_flow_hash(echo) != normalized_flow_hash(echo._replace(icmp_id=78))


def test_an_ipv6_flow_key_holds_the_ipv6_fields_and_the_key_travels_on_the_wire():
    from backchannel import codec
    from backchannel import messages as m

    pkt = parse_spec("ipv6_src=2001:db8:1::10,ipv6_dst=2001:db8:2::10,proto=udp,tp_src=5,tp_dst=6,hop_limit=9")
    key = flow_key(pkt, "b.vm1")
    assert key[FLOW_KEY_FIELDS.index("ipv6_dst") + 1] == pkt.ipv6_dst > 2**64
    assert key[FLOW_KEY_FIELDS.index("hop_limit") + 1] == 9
    msg = m.Reinstall(1, 0, key, (("in_port", -1), ("ipv6_dst", ((1 << 64) - 1) << 64)),
                      (("set", "ipv6_dst", pkt.ipv6_src), ("set", "hop_limit", 8)), (), 0.0, 0.0)
    assert codec.decode(codec.encode(msg)) == msg
