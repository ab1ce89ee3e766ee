"""IPv6 frames through ``shardnet trace`` now that the packet layer parses them (issue 15, packets part): a
bridge forwards them with the IPv6 keys in the JSON output, bridge chains match their protocol and ports,
a reject on one is a drop (no IPv4 answer is made up for it), and a router without IPv6 routes has no route
for them (IPv6 routing: test_trace_router6.py)."""

from __future__ import annotations

from scapy.layers.inet import TCP
from scapy.layers.inet6 import IPv6

from tests.scenario.conftest import Tracer, scapy_of

TOPO = """
version: 1
hosts: {h: {tunnel_ip: 127.0.0.11}}
bridges:
  br:
    ports:
      a: {host: h, interface: t1}
      b: {host: h, interface: t2}
      c: {host: h, interface: t3}
      up: {peer: r1.br}
    inbound_filter: fw
    mac_table: {"02:00:00:00:00:0b": b}
routers:
  r1:
    ports:
      br: {address: 10.0.0.1/24, mac: "02:0a:00:00:00:01"}
chains:
  fw:
    - {match: {proto: tcp, dst_port: 22}, action: reject}
    - {match: {proto: udp, dst_port: 9}, action: drop}
"""
A_TO_B = "eth_src=02:00:00:00:00:0a,eth_dst=02:00:00:00:00:0b,ipv6_src=2001:db8::a,ipv6_dst=2001:db8::b"


def test_bridge_forwards_ipv6_with_the_ipv6_keys_in_json():
    t = Tracer(TOPO)
    out = t("br.a", A_TO_B + ",proto=tcp,tp_src=40000,tp_dst=443,hop_limit=9,flow_label=5")
    assert out["result"] == "forward" and [o["port"] for o in out["outputs"]] == ["br.b"]
    pkt = out["outputs"][0]["packet"]
    assert (pkt["ipv6_src"], pkt["ipv6_dst"], pkt["hop_limit"], pkt["flow_label"], pkt["proto"]) == (
        "2001:db8::a", "2001:db8::b", 9, 5, "tcp")
    assert "ip_src" not in pkt and "ttl" not in pkt
    s = scapy_of(t.last)
    assert s[IPv6].src == "2001:db8::a" and s[TCP].dport == 443


def test_neighbor_solicitation_floods_on_the_bridge():
    out = Tracer(TOPO)("br.a", "eth_src=02:00:00:00:00:0a,ipv6_src=2001:db8::a,nd_target=2001:db8::c")
    assert out["result"] == "forward"
    assert sorted(o["port"] for o in out["outputs"]) == ["br.b", "br.c"]
    assert out["outputs"][0]["packet"]["nd_target"] == "2001:db8::c"
    assert out["outputs"][0]["packet"]["eth_dst"] == "33:33:ff:00:00:0c"


def test_bridge_chains_match_ipv6_protocol_and_ports():
    t = Tracer(TOPO)
    drop = t("br.a", A_TO_B + ",proto=udp,tp_dst=9")
    assert drop["result"] == "drop" and drop["drop_reason"] == "filter_drop"
    rej = t("br.a", A_TO_B + ",proto=tcp,tp_dst=22")
    # a reject of an IPv6 packet is answered in IPv6 (an IPv6 RST: tests/scenario/test_trace_filters6.py)
    assert rej["result"] == "drop" and rej["drop_reason"] == "filter_reject"
    assert [g["packet"]["ipv6_src"] for g in rej["generated"]] == ["2001:db8::b"]
    assert t("br.a", A_TO_B + ",proto=tcp,tp_dst=23")["result"] == "forward"


def test_router_without_ipv6_routes_has_no_route():
    t = Tracer(TOPO)
    out = t("br.a", "eth_src=02:00:00:00:00:0a,eth_dst=02:0a:00:00:00:01,ipv6_src=2001:db8::a,"
                    "ipv6_dst=2001:db8:9::1,proto=udp")
    assert out["result"] == "drop" and out["drop_reason"] == "no_route" and out["generated"] == []
