"""Issue 16: five behaviours checked against MidoNet's own simulation tests (BridgeSimulationTest,
RouterSimulationTest, FloatingIpTest, IcmpErrorNatTest), through the trace entry point, with the issue's
inputs.  Every port is bound to one host so that outputs show."""

from __future__ import annotations

from scapy.layers.inet import IP
from scapy.layers.l2 import Dot1Q

from tests.scenario.conftest import Tracer, scapy_of
from workers.simulation.result import MacTableWrite

# -- 1. a group source MAC is never learned nor forwarded ------------------------------------------------
BRIDGE = """
version: 1
hosts: {h: {tunnel_ip: 127.0.0.11}}
bridges:
  br:
    ports:
      p1: {host: h, interface: t1}
      p2: {host: h, interface: t2}
      p3: {host: h, interface: t3}
      h2: {host: h, interface: t4}
      h3: {host: h, interface: t5}
"""

GROUP_SRC = "eth_src=ff:54:ce:50:44:ce,eth_dst=0a:de:57:16:a3:06,ip_src=10.10.10.12,ip_dst=10.11.11.12," \
            "proto=udp,tp_src=10,tp_dst=12"


def test_a_group_source_mac_is_dropped_and_not_learned():
    t = Tracer(BRIDGE)
    for spec in (GROUP_SRC, GROUP_SRC + ",vlan=10"):
        out = t("br.p1", spec)
        assert out["result"] == "drop" and out["drop_reason"] == "bad_src_mac"
        assert out["outputs"] == [] and out["generated"] == [] and out["flow_state"] == []
        assert not [e for e in t.last.effects if type(e) is MacTableWrite]
    assert t.session.state.macs == {}
    # the broadcast address is a group address too
    out = t("br.p2", GROUP_SRC.replace("ff:54:ce:50:44:ce", "ff:ff:ff:ff:ff:ff"))
    assert out["drop_reason"] == "bad_src_mac"
    # a unicast source on the same frame still floods to every other port and is learned
    out = t("br.p1", GROUP_SRC.replace("ff:54:ce:50:44:ce", "02:54:ce:50:44:ce"))
    assert sorted(o["port"] for o in out["outputs"]) == ["br.h2", "br.h3", "br.p2", "br.p3"]
    assert [e.port for e in t.last.effects if type(e) is MacTableWrite] == ["br.p1"]


# -- 2. routers are VLAN-unaware ---------------------------------------------------------------------------
ROUTER = """
version: 1
hosts: {h: {tunnel_ip: 127.0.0.11}}
routers:
  r:
    ports:
      p1: {address: 10.0.0.1/24, mac: "02:0a:00:00:00:01", host: h, interface: t1}
      p2: {address: 10.0.1.1/24, mac: "02:0a:00:00:00:02", host: h, interface: t2}
    arp_table: {10.0.1.5: "02:00:00:00:01:05"}
"""

TO_R = "eth_src=02:00:00:00:00:05,eth_dst=02:0a:00:00:00:01,ip_src=10.0.0.5,ip_dst=10.0.1.5,proto=udp," \
       "tp_src=1000,tp_dst=53"


def test_a_router_drops_8021q_tagged_frames():
    t = Tracer(ROUTER)
    out = t("r.p1", TO_R + ",vlan=10")
    assert out["result"] == "drop" and out["drop_reason"] == "vlan_tagged" and out["outputs"] == []
    assert "vlan" in t.last.fields_read
    # a tagged ARP request for the router's own address is not answered either
    out = t("r.p1", "eth_src=02:00:00:00:00:05,eth_dst=ff:ff:ff:ff:ff:ff,vlan=10,arp_op=1,arp_spa=10.0.0.5,"
            "arp_tpa=10.0.0.1")
    assert out["drop_reason"] == "vlan_tagged" and out["generated"] == []


def test_a_router_routes_priority_tagged_frames_with_the_tag_popped():
    t = Tracer(ROUTER)
    out = t("r.p1", TO_R + ",vlan=0")
    assert out["result"] == "forward"
    [o] = out["outputs"]
    assert o["port"] == "r.p2" and "vlan" not in o["packet"] and o["packet"]["ttl"] == 63
    s = scapy_of(t.last)
    assert not s.haslayer(Dot1Q) and s[IP].dst == "10.0.1.5" and s.dst == "02:00:00:00:01:05"
    # what the router answers itself for a priority-tagged frame leaves untagged too
    out = t("r.p1", "eth_src=02:00:00:00:00:05,eth_dst=ff:ff:ff:ff:ff:ff,vlan=0,arp_op=1,arp_spa=10.0.0.5,"
            "arp_sha=02:00:00:00:00:05,arp_tpa=10.0.0.1")
    assert out["result"] == "consumed" and "vlan" not in out["generated"][0]["packet"]
    assert not scapy_of(t.last, generated=True).haslayer(Dot1Q)
