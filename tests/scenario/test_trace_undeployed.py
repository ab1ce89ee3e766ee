"""Trace before deployment (CONTRACTS §3): a topology whose exterior ports no host binds yet still shows where a
packet leaves and what it looks like there: ``"host": null``, ``"bound": false`` and the rewritten packet."""

from __future__ import annotations

from tests.scenario.conftest import Tracer

TOPO = """
version: 1
bridges:
  tenant:
    ports:
      vm1: {}
      up: {peer: r1.tenant}
routers:
  r1:
    ports:
      tenant: {address: 10.0.0.1/24, mac: "02:0a:00:00:00:01"}
      uplink: {address: 198.51.100.2/24, mac: "02:0a:00:00:00:02"}
    routes:
      - {dst: 0.0.0.0/0, gateway: 198.51.100.1, port: uplink}
    arp_table: {198.51.100.1: "02:0b:00:00:00:01"}
    outbound_filter: out
chains:
  out:
    - {match: {src: 10.0.0.0/24}, action: snat, targets: [{ip: 198.51.100.100, port: 5000-65535}]}
"""


def test_a_routed_snated_packet_shows_the_uplink_the_translated_source_and_bound_false():
    t = Tracer(TOPO)
    out = t("tenant.vm1", "eth_src=02:00:00:00:00:01,eth_dst=02:0a:00:00:00:01,ip_src=10.0.0.2,"
                          "ip_dst=203.0.113.5,proto=tcp,tp_src=1000,tp_dst=80")
    assert out["result"] == "forward" and out["drop_reason"] is None
    assert out["path"] == ["tenant.vm1", "tenant", "tenant.up", "r1.tenant", "r1", "r1.uplink"]
    [o] = out["outputs"]
    assert o["port"] == "r1.uplink" and o["host"] is None and o["bound"] is False and o["tunnel_key"] is None
    p = o["packet"]
    assert p["ip_src"] == "198.51.100.100" and 5000 <= p["tp_src"] <= 65535 and p["ttl"] == 63
    assert p["eth_src"] == "02:0a:00:00:00:02" and p["eth_dst"] == "02:0b:00:00:00:01"
    assert {s.get("kind") for s in out["flow_state"]} == {"fwd_snat", "rev_snat"}
