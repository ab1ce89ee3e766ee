"""Stateless simulation through the trace entry point: bridge, router, chains (foundation issue)."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, IPerror
from scapy.layers.l2 import ARP

from tests.scenario.conftest import Tracer, scapy_of
from topology.loader import loads_topology
from workers.trace import TraceSession

TOPO = """
version: 1
hosts:
  host-a: {tunnel_ip: 127.0.0.11}
  host-b: {tunnel_ip: 127.0.0.12}
bridges:
  tenant:
    ports:
      vm1: {host: host-a, interface: tap-vm1}
      vm2: {host: host-b, interface: tap-vm2}
      vm3: {host: host-a, interface: tap-vm3}
      vm4: {}
      up: {peer: r1.tenant}
routers:
  r1:
    ports:
      tenant: {address: 10.0.0.1/24, mac: "02:0a:00:00:00:01"}
      uplink: {address: 198.51.100.2/24, mac: "02:0a:00:00:00:02", host: host-a, interface: up0}
    routes:
      - {dst: 0.0.0.0/0, src: 10.0.0.0/24, gateway: 198.51.100.1, port: uplink}
      - {dst: 11.0.0.0/24, type: blackhole}
      - {dst: 12.0.0.0/24, type: reject}
      - {dst: 21.31.41.51/32, gateway: 198.51.100.7, port: uplink}
      - {dst: 21.31.41.51/32, gateway: 198.51.100.8, port: uplink}
      - {dst: 21.31.41.0/24, gateway: 198.51.100.9, port: uplink, weight: 10}
    arp_table:
      198.51.100.1: "02:0b:00:00:00:01"
      198.51.100.7: "02:0b:00:00:00:07"
      198.51.100.8: "02:0b:00:00:00:08"
"""

VM1 = "eth_src=02:00:00:00:00:01"
TO_R1 = VM1 + ",eth_dst=02:0a:00:00:00:01,ip_src=10.0.0.2"
FROM_UPLINK = "eth_src=02:0b:00:00:00:01,eth_dst=02:0a:00:00:00:02,ip_src=203.0.113.5"


def test_tcp_to_internet_leaves_uplink_with_ttl_decremented_and_macs_rewritten():
    t = Tracer(TOPO)
    out = t("tenant.vm1", TO_R1 + ",ip_dst=203.0.113.10,proto=tcp,tp_src=6456,tp_dst=80,ttl=8")
    assert out["result"] == "forward"
    assert out["path"] == ["tenant.vm1", "tenant", "tenant.up", "r1.tenant", "r1", "r1.uplink"]
    [o] = out["outputs"]
    assert (o["port"], o["host"], o["tunnel_key"]) == ("r1.uplink", "host-a", None)
    s = scapy_of(t.last)
    assert s.src == "02:0a:00:00:00:02" and s.dst == "02:0b:00:00:00:01"
    assert s[IP].ttl == 7 and s[IP].dst == "203.0.113.10" and s[TCP].dport == 80
    # the checksums the simulation's packet builds to are right (scapy recomputes them)
    ip_sum, tcp_sum = s[IP].chksum, s[TCP].chksum
    del s[IP].chksum, s[TCP].chksum
    again = s.__class__(bytes(s))
    assert (again[IP].chksum, again[TCP].chksum) == (ip_sum, tcp_sum)


def test_blackhole_route_drops():
    out = Tracer(TOPO)("tenant.vm1", TO_R1 + ",ip_dst=11.0.0.9,proto=udp,tp_dst=53")
    assert out["result"] == "drop" and out["drop_reason"] == "blackhole" and out["generated"] == []


def test_reject_route_generates_admin_prohibited_from_ingress_port_address():
    t = Tracer(TOPO)
    out = t("r1.uplink", FROM_UPLINK + ",ip_dst=12.0.0.7,proto=tcp,tp_src=999,tp_dst=80")
    assert out["result"] == "drop" and out["drop_reason"] == "reject_route"
    [g] = out["generated"]
    assert g["port"] == "r1.uplink"
    s = scapy_of(t.last, generated=True)
    assert s[IP].src == "198.51.100.2" and s[IP].dst == "203.0.113.5"
    assert (s[ICMP].type, s[ICMP].code) == (3, 13)
    assert s[IPerror].dst == "12.0.0.7" and s.dst == "02:0b:00:00:00:01"


def test_unrouted_destination_generates_net_unreachable():
    t = Tracer(TOPO)
    # the default route only serves the tenant's sources: from outside, 172.16/12 has no route
    out = t("r1.uplink", FROM_UPLINK + ",ip_dst=172.16.0.1,proto=udp,tp_src=1,tp_dst=2")
    assert out["drop_reason"] == "no_route"
    s = scapy_of(t.last, generated=True)
    assert (s[ICMP].type, s[ICMP].code) == (3, 0) and s[IP].src == "198.51.100.2"


def test_ttl_one_generates_time_exceeded_to_the_sender():
    t = Tracer(TOPO)
    out = t("tenant.vm1", TO_R1 + ",ip_dst=203.0.113.10,proto=icmp,icmp_type=8,icmp_id=203,icmp_seq=25,ttl=1")
    assert out["result"] == "drop" and out["drop_reason"] == "ttl_exceeded"
    [g] = out["generated"]
    # emitted on the router's interior port, it crosses the bridge to the sender's port (issue 16, item 4)
    assert g["port"] == "tenant.vm1" and g["from"] == "r1.tenant"
    assert g["path"] == ["r1.tenant", "tenant.up", "tenant", "tenant.vm1"]
    s = scapy_of(t.last, generated=True)
    assert (s[ICMP].type, s[ICMP].code) == (11, 0)
    assert s[IP].src == "10.0.0.1" and s[IP].dst == "10.0.0.2" and s.dst == "02:00:00:00:00:01"
    assert s[IPerror].src == "10.0.0.2" and s[IPerror].dst == "203.0.113.10"


def test_echo_request_to_router_port_is_consumed_with_reply():
    t = Tracer(TOPO)
    out = t("tenant.vm1", TO_R1 + ",ip_dst=10.0.0.1,proto=icmp,icmp_type=8,icmp_id=5,icmp_seq=3")
    assert out["result"] == "consumed" and out["outputs"] == []
    s = scapy_of(t.last, generated=True)
    assert s[ICMP].type == 0 and (s[ICMP].id, s[ICMP].seq) == (5, 3)
    assert s[IP].src == "10.0.0.1" and s[IP].dst == "10.0.0.2"


def test_ipv6_is_dropped_by_the_router():
    out = Tracer(TOPO)("tenant.vm1", TO_R1.replace(",ip_src=10.0.0.2", "") + ",eth_type=0x86dd")
    assert out["result"] == "drop" and out["drop_reason"] == "not_ip"


def test_unknown_mac_floods_then_learned_mac_unicasts():
    t = Tracer(TOPO)
    out = t("tenant.vm1", VM1 + ",eth_dst=02:00:00:00:00:02,ip_src=10.0.0.2,ip_dst=10.0.0.3,proto=udp")
    assert out["result"] == "forward"
    # flood: every exterior port but the ingress one, the router port is not flooded; vm4 is bound to no host
    # yet: listed (CONTRACTS §3: host null, bound false), and the agent drops that copy
    assert sorted(o["port"] for o in out["outputs"] if o.get("bound", True)) == ["tenant.vm2", "tenant.vm3"]
    [vm4] = [o for o in out["outputs"] if o["port"] == "tenant.vm4"]
    assert vm4["bound"] is False and vm4["host"] is None
    vm2 = next(o for o in out["outputs"] if o["port"] == "tenant.vm2")
    assert vm2["tunnel_key"] == t.topo.port("tenant.vm2").tunnel_key   # vm2 lives on host-b
    # vm2 answers: its MAC is learned, and vm1's (learned from the first packet) is a unicast now
    back = t("tenant.vm2", "eth_src=02:00:00:00:00:02,eth_dst=02:00:00:00:00:01,ip_src=10.0.0.3,"
             "ip_dst=10.0.0.2,proto=udp")
    assert [o["port"] for o in back["outputs"]] == ["tenant.vm1"]
    again = t("tenant.vm1", VM1 + ",eth_dst=02:00:00:00:00:02,ip_src=10.0.0.2,ip_dst=10.0.0.3,proto=udp")
    assert [o["port"] for o in again["outputs"]] == ["tenant.vm2"]


def test_destination_on_ingress_port_is_dropped():
    t = Tracer(TOPO)
    # two stations behind vm1's port: the bridge learns the first there, then the second talks to it
    t("tenant.vm1", VM1 + ",eth_dst=ff:ff:ff:ff:ff:ff,ip_src=10.0.0.2,ip_dst=10.0.0.255")
    out = t("tenant.vm1", "eth_src=02:00:00:00:00:11,eth_dst=02:00:00:00:00:01,ip_src=10.0.0.12,ip_dst=10.0.0.2")
    assert out["drop_reason"] == "same_port"


def test_bridge_answers_arp_for_the_router_port():
    t = Tracer(TOPO)
    out = t("tenant.vm1", VM1 + ",eth_dst=ff:ff:ff:ff:ff:ff,arp_op=1,arp_spa=10.0.0.2,arp_tpa=10.0.0.1")
    assert out["result"] == "consumed"
    s = scapy_of(t.last, generated=True)
    assert s[ARP].op == 2 and s[ARP].psrc == "10.0.0.1" and s[ARP].hwsrc == "02:0a:00:00:00:01"
    assert s[ARP].pdst == "10.0.0.2" and s.dst == "02:00:00:00:00:01"


def test_unknown_next_hop_parks_with_an_arp_request_then_arp_reply_resolves():
    t = Tracer(TOPO)
    spec = "eth_src=02:0b:00:00:00:01,eth_dst=02:0a:00:00:00:02,ip_src=203.0.113.5,ip_dst=10.0.0.9,proto=udp"
    out = t("r1.uplink", spec)
    assert out["result"] == "parked" and out["needs"]["type"] == "NeedArp" and out["needs"]["ip"] == "10.0.0.9"
    s = scapy_of(t.last, generated=True)
    assert s[ARP].op == 1 and s[ARP].pdst == "10.0.0.9" and s[ARP].psrc == "10.0.0.1"
    # the VM answers the router; the router learns the entry and the packet now goes through
    reply = "eth_src=02:00:00:00:00:09,eth_dst=02:0a:00:00:00:01,arp_op=2,arp_sha=02:00:00:00:00:09," \
            "arp_spa=10.0.0.9,arp_tha=02:0a:00:00:00:01,arp_tpa=10.0.0.1"
    assert t("tenant.vm3", reply)["result"] == "consumed"
    out = t("r1.uplink", spec)
    assert out["result"] == "forward"
    assert {o["packet"]["eth_dst"] for o in out["outputs"]} == {"02:00:00:00:00:09"}


def test_ecmp_spreads_flows_over_equal_routes_and_keeps_a_flow_on_one():
    t = Tracer(TOPO)
    seen = set()
    for sport in range(1000, 1064):
        out = t("tenant.vm1", TO_R1 + f",ip_dst=21.31.41.51,proto=tcp,tp_src={sport},tp_dst=80")
        seen.add(out["outputs"][0]["packet"]["eth_dst"])
        again = t("tenant.vm1", TO_R1 + f",ip_dst=21.31.41.51,proto=tcp,tp_src={sport},tp_dst=80")
        assert again["outputs"][0]["packet"]["eth_dst"] == out["outputs"][0]["packet"]["eth_dst"]
    assert seen == {"02:0b:00:00:00:07", "02:0b:00:00:00:08"}
    # the /24 (less specific) is not used for the /32's address
    out = t("tenant.vm1", TO_R1 + ",ip_dst=21.31.41.52,proto=tcp,tp_dst=80")
    assert out["result"] == "parked" and out["needs"]["ip"] == "198.51.100.9"


def test_wrong_destination_mac_is_dropped_by_router():
    t = Tracer(TOPO)
    out = t("r1.uplink", "eth_src=02:0b:00:00:00:01,eth_dst=02:0a:00:00:00:99,ip_src=203.0.113.5,"
            "ip_dst=10.0.0.2,proto=udp")
    assert out["drop_reason"] == "wrong_dst_mac"


def test_result_reports_tags_and_fields_read():
    t = Tracer(TOPO)
    t("tenant.vm1", TO_R1 + ",ip_dst=203.0.113.10,proto=tcp,tp_dst=80")
    assert {"bridge:tenant", "router:r1", "port:tenant.vm1", "port:r1.uplink"} <= t.last.tags
    assert {"eth_dst", "ttl"} <= t.last.fields_read
    # routed through a gateway: only the prefix of ip_dst that told the routes and the router's own addresses
    # apart was read (prefix tracking), not the whole address
    assert "ip_dst" not in t.last.fields_read and 0 < dict(t.last.prefixes_read)["ip_dst"] < 32


LOOP = """
version: 1
hosts: {h: {tunnel_ip: 127.0.0.11}}
bridges:
  a: {ports: {vm: {host: h, interface: t0}, b: {peer: b.a}, c: {peer: c.a}}}
  b: {ports: {a: {peer: a.b}, c: {peer: c.b}}}
  c: {ports: {a: {peer: a.c}, b: {peer: b.c}}}
"""


def test_a_bridge_loop_stops_at_the_hop_limit():
    out = Tracer(LOOP)("a.vm", "eth_src=02:00:00:00:00:01,eth_dst=ff:ff:ff:ff:ff:ff,ip_src=10.0.0.1,"
                                "ip_dst=10.0.0.255,proto=udp")
    assert out["result"] == "drop" and out["drop_reason"] == "hop_limit"


VLAN = """
version: 1
hosts: {h: {tunnel_ip: 127.0.0.11}}
bridges:
  br:
    ports:
      a10: {host: h, interface: t1}
      b10: {host: h, interface: t2}
      a20: {host: h, interface: t3}
      trunk: {host: h, interface: t4}
    vlan_ports: {a10: 10, b10: 10, a20: 20}
"""


def test_vlan_aware_bridge_keeps_vlans_apart_and_tags_on_trunks():
    t = Tracer(VLAN)
    out = t("br.a10", "eth_src=02:00:00:00:00:01,eth_dst=ff:ff:ff:ff:ff:ff,ip_src=10.0.0.1,ip_dst=10.0.0.2")
    ports = {o["port"]: o["packet"].get("vlan") for o in out["outputs"]}
    assert ports == {"br.b10": None, "br.trunk": 10}
    # a frame tagged 20 from the trunk reaches only VLAN 20's access port, untagged
    out = t("br.trunk", "eth_src=02:00:00:00:00:05,eth_dst=ff:ff:ff:ff:ff:ff,vlan=20,ip_src=10.0.0.5,"
            "ip_dst=10.0.0.6")
    assert {o["port"]: o["packet"].get("vlan") for o in out["outputs"]} == {"br.a20": None}
    # a tagged frame on an access port is dropped
    out = t("br.a10", "eth_src=02:00:00:00:00:01,eth_dst=ff:ff:ff:ff:ff:ff,vlan=10,ip_src=10.0.0.1,"
            "ip_dst=10.0.0.2")
    assert out["drop_reason"] == "vlan_tag_on_access_port"


def test_the_trace_shows_the_megaflow_a_decision_installs():
    """The --stdin protocol shows the flow's match as the agent installs it: a source-routed default route
    reads the whole ip_src and just enough of ip_dst (5 bits tell 203.0.113.10 from the uplink 198.51.100.0/24
    and every other route); an ECMP choice reads the 5-tuple; a blackhole its
    prefix; a generated error makes the flow exact."""
    session = TraceSession(loads_topology(TOPO))
    out = session.run_line(f"tenant.vm1 {TO_R1},ip_dst=203.0.113.10,proto=udp,tp_src=5,tp_dst=53")
    mf = out["megaflow"]
    assert mf["ip_src"] == "10.0.0.2" and mf["ip_dst"] == "200.0.0.0/5" and "tp_src" not in mf
    assert mf["eth_dst"] == "02:0a:00:00:00:01" and mf["ttl"] == 64 and mf["in_port"] == "tenant.vm1"
    ecmp = session.run_line(f"tenant.vm1 {TO_R1},ip_dst=21.31.41.51,proto=udp,tp_src=5,tp_dst=53")["megaflow"]
    assert ecmp["ip_dst"] == "21.31.41.51" and ecmp["tp_src"] == 5 and ecmp["proto"] == "udp"
    hole = session.run_line(f"tenant.vm1 {TO_R1},ip_dst=11.0.0.9,proto=udp")["megaflow"]
    assert hole["ip_dst"] == "11.0.0.0/24" and "tp_dst" not in hole
    ttl1 = session.run_line(f"tenant.vm1 {TO_R1},ip_dst=203.0.113.10,proto=udp,tp_src=5,tp_dst=53,ttl=1")
    assert ttl1["generated"] and ttl1["megaflow"]["tp_src"] == 5 and ttl1["megaflow"]["tos"] == 0   # exact
