"""Issue 16: five behaviours checked against MidoNet's own simulation tests (BridgeSimulationTest,
RouterSimulationTest, FloatingIpTest, IcmpErrorNatTest), through the trace entry point, with the issue's
inputs.  Every port is bound to one host so that outputs show."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, ICMPerror, IPerror, TCPerror
from scapy.layers.l2 import Dot1Q

from packet.addr import ip2int
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


# -- 3. the echo reply to a floating IP passes the router's outbound chain -------------------------------------
FIP = """
version: 1
hosts: {h: {tunnel_ip: 127.0.0.11}}
routers:
  r:
    ports:
      uplink: {address: 180.0.1.2/24, mac: "02:0a:08:06:04:02", host: h, interface: t1}
      port1: {address: 10.0.1.5/30, mac: "02:0a:08:06:04:03", host: h, interface: t2}
    inbound_filter: r-in
    outbound_filter: r-out
chains:
  r-in:
    - {match: {dst: 176.28.127.1}, action: dnat, targets: [{ip: 10.0.1.5}]}
  r-out:
    - {match: {src: 10.0.1.5}, action: snat, targets: [{ip: 176.28.127.1}]}
"""

PING_FIP = "eth_src=02:00:00:00:01:17,eth_dst=02:0a:08:06:04:02,ip_src=180.0.1.23,ip_dst=176.28.127.1," \
           "proto=icmp,icmp_type=8,icmp_id=1,icmp_seq=1"


def test_the_echo_reply_to_a_floating_ip_leaves_from_the_floating_ip():
    t = Tracer(FIP)
    out = t("r.uplink", PING_FIP)
    assert out["result"] == "consumed" and out["outputs"] == []
    [g] = out["generated"]
    assert g["port"] == "r.uplink" and "from" not in g
    p = g["packet"]
    assert (p["ip_src"], p["ip_dst"], p["icmp_type"], p["icmp_id"], p["icmp_seq"]) == (
        "176.28.127.1", "180.0.1.23", 0, 1, 1)
    assert (p["eth_src"], p["eth_dst"]) == ("02:0a:08:06:04:02", "02:00:00:00:01:17")
    s = scapy_of(t.last, generated=True)
    assert s[IP].src == "176.28.127.1" and s[ICMP].type == 0
    # the checksums are right after the rewrite (scapy recomputes them)
    ip_sum, icmp_sum = s[IP].chksum, s[ICMP].chksum
    del s[IP].chksum, s[ICMP].chksum
    again = s.__class__(bytes(s))
    assert (again[IP].chksum, again[ICMP].chksum) == (ip_sum, icmp_sum)
    # a ping to the uplink's own address is answered from it: the SNAT rule does not match that source
    out = t("r.uplink", PING_FIP.replace("ip_dst=176.28.127.1", "ip_dst=180.0.1.2"))
    assert out["generated"][0]["packet"]["ip_src"] == "180.0.1.2"


def test_an_echo_reply_the_outbound_chain_drops_is_not_sent():
    t = Tracer(FIP.replace("action: snat, targets: [{ip: 176.28.127.1}]", "action: drop"))
    out = t("r.uplink", PING_FIP)
    assert out["result"] == "consumed" and out["generated"] == []


# -- 4. a packet a device generates onto an interior port enters the peer device ------------------------------
TWO_ROUTERS = """
version: 1
hosts: {h: {tunnel_ip: 127.0.0.11}}
bridges:
  br:
    ports:
      edge: {peer: edge.in}
      tenant: {peer: tenant.in}
routers:
  edge:
    ports:
      ext: {address: 180.0.1.2/24, mac: "02:0a:00:00:01:02", host: h, interface: t1}
      in: {address: 10.0.0.254/24, mac: "02:0a:00:00:00:fe"}
    routes:
      - {dst: 0.0.0.0/0, port: in}
    arp_table: {10.0.2.9: "02:0a:00:00:02:fe"}     # a host behind the tenant router, reached through it
  tenant:
    ports:
      in: {address: 10.0.2.254/24, mac: "02:0a:00:00:02:fe"}
    routes:
      - {dst: 0.0.0.0/0, port: in}
"""

PINGER = "eth_src=02:00:00:00:01:17,eth_dst=02:0a:00:00:01:02,ip_src=180.0.1.23"
PINGER_ARP = "eth_src=02:00:00:00:01:17,eth_dst=ff:ff:ff:ff:ff:ff,arp_op=1,arp_sha=02:00:00:00:01:17," \
             "arp_spa=180.0.1.23,arp_tpa=180.0.1.2"
REPLY_PATH = ["tenant.in", "br.tenant", "br", "br.edge", "edge.in", "edge", "edge.ext"]


def two_routers() -> Tracer:
    """The pinger has ARPed for the edge router's address first, as a host does: the edge router knows it."""
    t = Tracer(TWO_ROUTERS)
    assert t("edge.ext", PINGER_ARP)["result"] == "consumed"
    return t


def test_a_ping_across_two_routers_and_a_bridge_is_answered():
    t = two_routers()
    out = t("edge.ext", PINGER + ",ip_dst=10.0.2.254,proto=icmp,icmp_type=8,icmp_id=7,icmp_seq=1")
    # the edge router's ARP request crossed the bridge, was answered for the tenant router, and the reply
    # crossed back into the edge router: the ping went on and the tenant router answered it
    assert out["result"] == "consumed" and "needs" not in out
    assert out["path"] == ["edge.ext", "edge", "edge.in", "br.edge", "br", "br.tenant", "tenant.in", "tenant"]
    assert t.session.state.arp_lookup("edge", ip2int("10.0.2.254"), t.session.now) == 0x020A000002FE
    [g] = out["generated"]
    assert (g["port"], g["from"], g["path"]) == ("edge.ext", "tenant.in", REPLY_PATH)
    s = scapy_of(t.last, generated=True)
    assert (s.src, s.dst) == ("02:0a:00:00:01:02", "02:00:00:00:01:17")
    assert (s[IP].src, s[IP].dst, s[IP].ttl) == ("10.0.2.254", "180.0.1.23", 63)   # one router on the way
    assert (s[ICMP].type, s[ICMP].id, s[ICMP].seq) == (0, 7, 1)
    # the next ping needs no ARP at all
    out = t("edge.ext", PINGER + ",ip_dst=10.0.2.254,proto=icmp,icmp_type=8,icmp_id=7,icmp_seq=2")
    assert out["result"] == "consumed" and out["generated"][0]["port"] == "edge.ext"


def test_an_icmp_error_from_the_far_router_comes_back_through_the_bridge():
    t = two_routers()
    out = t("edge.ext", PINGER + ",ip_dst=10.0.2.9,proto=udp,tp_src=4000,tp_dst=53,ttl=2")
    assert out["result"] == "drop" and out["drop_reason"] == "ttl_exceeded"
    [g] = out["generated"]
    assert (g["port"], g["from"], g["path"]) == ("edge.ext", "tenant.in", REPLY_PATH)
    s = scapy_of(t.last, generated=True)
    assert (s[ICMP].type, s[ICMP].code) == (11, 0)
    assert (s[IP].src, s[IP].dst, s[IP].ttl) == ("10.0.2.254", "180.0.1.23", 63)
    assert (s[IPerror].src, s[IPerror].dst) == ("180.0.1.23", "10.0.2.9")


def test_a_generated_packet_whose_onward_walk_needs_arp_waits_for_it():
    t = Tracer(TWO_ROUTERS)                       # the edge router does not know the pinger yet
    out = t("edge.ext", PINGER + ",ip_dst=10.0.2.254,proto=icmp,icmp_type=8,icmp_id=7,icmp_seq=1")
    assert out["result"] == "consumed"
    # the echo reply reached the edge router, which asks for the pinger's MAC: the reply waits for it
    [w] = out["waiting"]
    assert w["port"] == "tenant.in" and w["packet"]["icmp_type"] == 0
    assert w["needs"] == {"type": "NeedArp", "router": "edge", "port": "edge.ext", "ip": "180.0.1.23"}
    [g] = out["generated"]
    assert g["port"] == "edge.ext" and g["packet"]["arp_op"] == 1 and g["packet"]["arp_tpa"] == "180.0.1.23"
    # once the pinger answered, the next ping's reply goes straight out
    reply = "eth_src=02:00:00:00:01:17,eth_dst=02:0a:00:00:01:02,arp_op=2,arp_sha=02:00:00:00:01:17," \
            "arp_spa=180.0.1.23,arp_tha=02:0a:00:00:01:02,arp_tpa=180.0.1.2"
    assert t("edge.ext", reply)["result"] == "consumed"
    out = t("edge.ext", PINGER + ",ip_dst=10.0.2.254,proto=icmp,icmp_type=8,icmp_id=7,icmp_seq=2")
    assert "waiting" not in out and [g["port"] for g in out["generated"]] == ["edge.ext"]


# -- 5. the NAT state of a packet dropped with an ICMP error translates the error back ------------------------
# MidoNet's IcmpErrorNatTest: the far router has no route to the DNAT target, so its net unreachable goes back
# through the near router, which must reverse both translations.
ICMP_NAT = """
version: 1
hosts: {h: {tunnel_ip: 127.0.0.11}}
routers:
  near:
    ports:
      left: {address: 172.19.0.2/24, mac: "02:0a:08:06:04:01", host: h, interface: t1}
      right: {address: 172.20.0.2/32, mac: "02:0a:08:06:04:02", peer: far.p}
    routes:
      - {dst: 2.2.2.2/32, port: right}
    arp_table: {172.19.0.4: "02:00:00:00:00:04"}
    inbound_filter: near-in
    outbound_filter: near-out
  far:
    ports:
      p: {address: 172.20.0.3/32, mac: "02:0a:08:06:05:01"}
chains:
  near-in:
    - {match: {in_port: near.right, dst: 42.159.207.7}, action: rev_snat}
    - {match: {in_port: near.left, dst: 1.1.1.1}, action: dnat, targets: [{ip: 2.2.2.2, port: 20}]}
  near-out:
    - {match: {src: 172.19.0.4}, action: snat, targets: [{ip: 42.159.207.7, port: 10}]}
    - {match: {dst: 172.19.0.4}, action: rev_dnat}
"""

FROM_HOST = "eth_src=02:00:00:00:00:04,eth_dst=02:0a:08:06:04:01,ip_src=172.19.0.4,ip_dst=1.1.1.1"
ERROR_PATH = ["far.p", "near.right", "near", "near.left"]


def _the_error_comes_back_translated(t: Tracer, out: dict):
    assert out["result"] == "drop" and out["drop_reason"] == "no_route"
    assert out["path"] == ["near.left", "near", "near.right", "far.p", "far"]
    # the bindings the packet got on its way are kept (reported and applied): the error is translated by them
    kinds = sorted(f["kind"] for f in out["flow_state"])
    assert kinds == ["fwd_dnat", "fwd_snat", "rev_dnat", "rev_snat"]
    assert len(t.session.state.flow_state) == 4
    [g] = out["generated"]
    assert (g["port"], g["from"], g["path"]) == ("near.left", "far.p", ERROR_PATH)
    s = scapy_of(t.last, generated=True)
    assert (s.src, s.dst) == ("02:0a:08:06:04:01", "02:00:00:00:00:04")
    assert (s[IP].src, s[IP].dst, s[IP].ttl) == ("172.20.0.3", "172.19.0.4", 63)
    assert (s[ICMP].type, s[ICMP].code) == (3, 0)
    assert (s[IPerror].src, s[IPerror].dst) == ("172.19.0.4", "1.1.1.1")
    return s


def test_an_icmp_error_about_a_tcp_packet_comes_back_through_both_nats():
    t = Tracer(ICMP_NAT)
    out = t("near.left", FROM_HOST + ",proto=tcp,tp_src=1234,tp_dst=6789,tcp_flags=syn")
    s = _the_error_comes_back_translated(t, out)
    assert (s[TCPerror].sport, s[TCPerror].dport) == (1234, 6789)
    # the far router saw the packet translated both ways: 42.159.207.7:10 → 2.2.2.2:20
    snat = next(f for f in out["flow_state"] if f["kind"] == "fwd_snat")
    assert snat["binding"] == "42.159.207.7:10"


def test_an_icmp_error_about_an_echo_request_comes_back_through_both_nats():
    t = Tracer(ICMP_NAT)
    out = t("near.left", FROM_HOST + ",proto=icmp,icmp_type=8,icmp_id=8756,icmp_seq=1")
    s = _the_error_comes_back_translated(t, out)
    assert s[ICMPerror].id == 8756


def test_a_drop_that_generates_nothing_still_keeps_no_state():
    # the far router's filter drops UDP: the packet was translated on the way, but nothing comes back
    topo = ICMP_NAT.replace("      p: {address: 172.20.0.3/32, mac: \"02:0a:08:06:05:01\"}",
                            "      p: {address: 172.20.0.3/32, mac: \"02:0a:08:06:05:01\"}\n    inbound_filter: far-in")
    t = Tracer(topo + "  far-in:\n    - {match: {proto: udp}, action: drop}\n")
    out = t("near.left", FROM_HOST + ",proto=udp,tp_src=1234,tp_dst=53")
    assert out["drop_reason"] == "filter_drop" and out["path"][-1] == "far"
    assert out["flow_state"] == [] and out["generated"] == [] and t.session.state.flow_state == {}


def test_an_icmp_error_about_an_echo_request_carries_its_whole_header():
    t = Tracer(ROUTER)
    t("r.p1", TO_R.replace("proto=udp,tp_src=1000,tp_dst=53", "proto=icmp,icmp_type=8,icmp_id=77,icmp_seq=5,ttl=1"))
    s = scapy_of(t.last, generated=True)
    inner = s[ICMPerror]
    assert (inner.type, inner.code, inner.id, inner.seq) == (8, 0, 77, 5)
    sent = inner.chksum                             # the checksum the sender's echo request had
    assert sent == ICMP(bytes(ICMP(type=8, code=0, id=77, seq=5))).chksum
