"""Stateful simulation through the trace entry point: conntrack, NAT, load balancing, expiry."""

from __future__ import annotations

import ipaddress

from scapy.layers.inet import ICMP, IP, TCP, IPerror, UDPerror

from tests.scenario.conftest import Tracer, scapy_of

HOSTS = """
version: 1
hosts:
  host-a: {tunnel_ip: 127.0.0.11}
  host-b: {tunnel_ip: 127.0.0.12}
  gw-1: {tunnel_ip: 127.0.0.21}
  gw-2: {tunnel_ip: 127.0.0.22}
"""

CT = HOSTS + """
bridges:
  tenant:
    ports:
      vm1: {host: host-a, interface: tap-vm1}
      vm2: {host: host-b, interface: tap-vm2}
    inbound_filter: fw
chains:
  fw:
    - {match: {ct: forward, in_port: tenant.vm1}, action: accept}
    - {match: {ct: return}, action: accept}
    - {action: drop}
"""

VM1_TO_VM2 = "eth_src=02:00:00:00:00:01,eth_dst=02:00:00:00:00:02,ip_src=10.0.0.2,ip_dst=10.0.0.3"
VM2_TO_VM1 = "eth_src=02:00:00:00:00:02,eth_dst=02:00:00:00:00:01,ip_src=10.0.0.3,ip_dst=10.0.0.2"


def test_conntrack_forward_writes_one_entry_and_the_reply_is_accepted():
    t = Tracer(CT)
    # a reply with no request before it is dropped
    out = t("tenant.vm2", VM2_TO_VM1 + ",proto=icmp,icmp_type=0,icmp_id=77,icmp_seq=1")
    assert out["result"] == "drop" and out["drop_reason"] == "filter_drop"
    out = t("tenant.vm1", VM1_TO_VM2 + ",proto=icmp,icmp_type=8,icmp_id=77,icmp_seq=1")
    assert out["result"] == "forward"
    assert [s["type"] for s in out["flow_state"]] == ["conntrack"]
    assert out["flow_state"][0]["key"] == "10.0.0.3:77>10.0.0.2:77/1@tenant"
    assert out["interested_hosts"] == ["host-a", "host-b"]
    out = t("tenant.vm2", VM2_TO_VM1 + ",proto=icmp,icmp_type=0,icmp_id=77,icmp_seq=1")
    assert out["result"] == "forward" and out["flow_state"] == []
    assert [o["port"] for o in out["outputs"]] == ["tenant.vm1"]
    # another connection from vm2 is still refused
    out = t("tenant.vm2", VM2_TO_VM1 + ",proto=tcp,tp_src=5000,tp_dst=22")
    assert out["result"] == "drop"


GW = HOSTS + """
bridges:
  tenant:
    ports:
      vm1: {host: host-a, interface: tap-vm1}
      vm2: {host: host-b, interface: tap-vm2}
      up: {peer: r1.tenant}
routers:
  r1:
    ports:
      tenant: {address: 10.0.0.1/24, mac: "02:0a:00:00:00:01"}
      uplink: {address: 198.51.100.2/24, mac: "02:0a:00:00:00:02", host: gw-1, interface: up0}
      uplink2: {address: 198.51.100.3/24, mac: "02:0a:00:00:00:03", host: gw-2, interface: up1}
    routes:
      - {dst: 0.0.0.0/0, gateway: 198.51.100.1, port: uplink}
    arp_table:
      198.51.100.1: "02:0b:00:00:00:01"
      10.0.0.2: "02:00:00:00:00:01"
      10.0.0.3: "02:00:00:00:00:02"
      10.0.0.4: "02:00:00:00:00:03"
      10.0.0.7: "02:00:00:00:00:03"
    inbound_filter: r1-in
    outbound_filter: r1-out
    load_balancer: lb1
chains:
  r1-in:
    - {match: {dst: 198.51.100.51}, action: dnat, targets: [{ip: 10.0.0.2}]}
    - {match: {dst: 198.51.100.52}, action: dnat, targets: [{ip: 10.0.0.3}]}
    - {action: rev_snat}
    - {match: {src: "!10.0.0.0/24", dst: 198.51.100.80, proto: tcp, dst_port: 80}, action: dnat,
       targets: [{ip: 10.0.0.3-10.0.0.3, port: 8080}]}
  r1-out:
    - {action: rev_dnat}
    - {match: {src: 10.0.0.2}, action: snat, targets: [{ip: 198.51.100.51}]}
    - {match: {src: 10.0.0.3}, action: snat, targets: [{ip: 198.51.100.52}]}
    - {match: {src: 10.0.0.0/24, dst: "!10.0.0.0/24"}, action: snat,
       targets: [{ip: 198.51.100.100, port: 5000-65535}]}
load_balancers:
  lb1:
    vips:
      - {address: 203.0.113.10, port: 80, proto: tcp, pool: web}
      - {address: 203.0.113.11, port: 80, proto: tcp, pool: web, sticky_source_ip: true}
      - {address: 203.0.113.12, port: 80, proto: tcp, pool: dead}
    pools:
      web:
        members:
          - {address: 10.0.0.3, port: 8080, weight: 1}
          - {address: 10.0.0.4, port: 8080, weight: 1}
          - {address: 10.0.0.5, port: 8080, weight: 0}
          - {address: 10.0.0.6, port: 8080, weight: 5, admin_up: false}
      dead:
        members:
          - {address: 10.0.0.5, port: 8080, weight: 0}
port_groups:
  uplinks: {stateful: true, ports: [r1.uplink, r1.uplink2]}
"""

TO_GW = "eth_dst=02:0a:00:00:00:01"
VM3 = "eth_src=02:00:00:00:00:03," + TO_GW + ",ip_src=10.0.0.4"
FROM_NET = "eth_src=02:0b:00:00:00:01,eth_dst=02:0a:00:00:00:02"


def gw_tracer() -> Tracer:
    """The GW topology with the bridge having learned where the VMs' MACs are (a broadcast from each)."""
    t = Tracer(GW)
    for port, mac in (("tenant.vm1", "02:00:00:00:00:01"), ("tenant.vm2", "02:00:00:00:00:02"),
                      ("tenant.vm1", "02:00:00:00:00:03")):
        t(port, f"eth_src={mac},eth_dst=ff:ff:ff:ff:ff:ff,ip_src=10.0.0.250,ip_dst=10.0.0.255,proto=udp")
    return t


def _in_snat_range(ip: str, port: int) -> bool:
    return ip == "198.51.100.100" and 5000 <= port <= 65535


def test_snat_binding_in_range_reply_translated_back_and_kept():
    t = gw_tracer()
    out = t("tenant.vm1", VM3 + ",ip_dst=203.0.113.5,proto=tcp,tp_src=40000,tp_dst=443")
    assert out["result"] == "forward"
    s = scapy_of(t.last)
    ip, port = s[IP].src, s[TCP].sport
    assert _in_snat_range(ip, port) and s[IP].dst == "203.0.113.5" and s[TCP].dport == 443
    kinds = sorted(f["kind"] for f in out["flow_state"] if f["type"] == "nat")
    assert kinds == ["fwd_snat", "rev_snat"]
    # state goes to the ingress host, the egress host and the other member of the stateful group
    assert out["interested_hosts"] == ["gw-1", "gw-2", "host-a"]
    # the reply comes back to the VM with the original address and port
    back = t("r1.uplink", FROM_NET + f",ip_src=203.0.113.5,ip_dst={ip},proto=tcp,tp_src=443,tp_dst={port},"
             "tcp_flags=syn|ack")
    assert back["result"] == "forward" and back["outputs"][0]["port"] == "tenant.vm1"
    r = scapy_of(t.last)
    assert (r[IP].dst, r[TCP].dport, r[IP].src) == ("10.0.0.4", 40000, "203.0.113.5")
    # the reply may come in through the other uplink (another gateway): it still finds the state
    back2 = t("r1.uplink2", FROM_NET.replace("00:02", "00:03") + f",ip_src=203.0.113.5,ip_dst={ip},"
              f"proto=tcp,tp_src=443,tp_dst={port}")
    assert back2["outputs"][0]["packet"]["ip_dst"] == "10.0.0.4"
    # the connection keeps its binding
    again = t("tenant.vm1", VM3 + ",ip_dst=203.0.113.5,proto=tcp,tp_src=40000,tp_dst=443,tcp_flags=ack")
    assert (again["outputs"][0]["packet"]["ip_src"], again["outputs"][0]["packet"]["tp_src"]) == (ip, port)
    assert again["flow_state"] == []


def test_two_vms_to_one_destination_get_different_bindings():
    t = gw_tracer()
    seen = set()
    for i, sport in enumerate((40000, 40000, 40001)):
        src = f"eth_src=02:00:00:00:01:0{i}," + TO_GW + f",ip_src=10.0.0.{20 + i}"
        out = t("tenant.vm1", src + f",ip_dst=203.0.113.5,proto=udp,tp_src={sport},tp_dst=53")
        p = out["outputs"][0]["packet"]
        assert _in_snat_range(p["ip_src"], p["tp_src"])
        seen.add((p["ip_src"], p["tp_src"]))
    assert len(seen) == 3


def test_snat_port_is_reused_for_another_destination_but_unique_per_destination():
    t = gw_tracer()
    a = t("tenant.vm1", VM3 + ",ip_dst=203.0.113.5,proto=udp,tp_src=1000,tp_dst=53")["outputs"][0]["packet"]
    b = t("tenant.vm1", VM3 + ",ip_dst=203.0.113.6,proto=udp,tp_src=1000,tp_dst=53")["outputs"][0]["packet"]
    # one port may serve several destinations (same flow hash offset ⇒ the same free port is found)
    assert a["tp_src"] != 0 and b["tp_src"] != 0
    # but no two connections to one destination share a binding, across many sources
    bindings = set()
    for i in range(150):                      # more than two blocks' worth: leases follow on demand
        spec = f"eth_src=02:00:00:00:02:01,{TO_GW},ip_src=10.0.0.{100 + i % 50},ip_dst=203.0.113.7," \
               f"proto=udp,tp_src={2000 + i},tp_dst=53"
        p = t("tenant.vm1", spec)["outputs"][0]["packet"]
        bindings.add((p["ip_src"], p["tp_src"]))
    assert len(bindings) == 150
    assert len(t.session.state.nat_blocks("r1", int(ipaddress.IPv4Address("198.51.100.100")))) >= 3


def test_dnat_and_snat_on_one_router_both_rewritten_and_reversed():
    t = gw_tracer()
    # port forward from outside: DNAT 198.51.100.80:80 → 10.0.0.3:8080
    out = t("r1.uplink", FROM_NET + ",ip_src=203.0.113.9,ip_dst=198.51.100.80,proto=tcp,tp_src=3333,tp_dst=80")
    assert out["result"] == "forward" and out["outputs"][0]["port"] == "tenant.vm2"
    s = scapy_of(t.last)
    assert (s[IP].dst, s[TCP].dport, s[IP].src, s[TCP].sport) == ("10.0.0.3", 8080, "203.0.113.9", 3333)
    # the server answers; rev_dnat makes it come from the public address and port again.  10.0.0.3 also
    # has a floating IP, but rev_dnat comes first in r1-out and ends the chain.
    back = t("tenant.vm2", "eth_src=02:00:00:00:00:02," + TO_GW + ",ip_src=10.0.0.3,ip_dst=203.0.113.9,"
             "proto=tcp,tp_src=8080,tp_dst=3333")
    r = scapy_of(t.last)
    assert back["outputs"][0]["port"] == "r1.uplink"
    assert (r[IP].src, r[TCP].sport, r[IP].dst, r[TCP].dport) == ("198.51.100.80", 80, "203.0.113.9", 3333)
    # an outbound SNAT connection on the same router and its reply
    out = t("tenant.vm1", VM3 + ",ip_dst=203.0.113.9,proto=tcp,tp_src=5555,tp_dst=25")
    p = out["outputs"][0]["packet"]
    assert _in_snat_range(p["ip_src"], p["tp_src"])
    back = t("r1.uplink", FROM_NET + f",ip_src=203.0.113.9,ip_dst={p['ip_src']},proto=tcp,tp_src=25,"
             f"tp_dst={p['tp_src']}")
    assert back["outputs"][0]["packet"]["ip_dst"] == "10.0.0.4"
    assert back["outputs"][0]["packet"]["tp_dst"] == 5555


def test_floating_ip_both_ways_and_hairpin():
    t = gw_tracer()
    # inbound to vm1's floating IP: a stateless rewrite, no flow state
    out = t("r1.uplink", FROM_NET + ",ip_src=203.0.113.9,ip_dst=198.51.100.51,proto=tcp,tp_src=1,tp_dst=22")
    assert out["outputs"][0]["packet"]["ip_dst"] == "10.0.0.2" and out["flow_state"] == []
    # outbound from vm1 leaves from its floating IP, port untouched
    out = t("tenant.vm1", "eth_src=02:00:00:00:00:01," + TO_GW + ",ip_src=10.0.0.2,ip_dst=203.0.113.9,"
            "proto=tcp,tp_src=22,tp_dst=1")
    p = out["outputs"][0]["packet"]
    assert (p["ip_src"], p["tp_src"]) == ("198.51.100.51", 22)
    # hairpin: vm1 talks to vm2's floating IP; the router sends it back into the tenant bridge
    out = t("tenant.vm1", "eth_src=02:00:00:00:00:01," + TO_GW + ",ip_src=10.0.0.2,ip_dst=198.51.100.52,"
            "proto=tcp,tp_src=4000,tp_dst=80")
    assert out["path"][-1] == "tenant.vm2"
    p = out["outputs"][0]["packet"]
    assert (p["ip_src"], p["ip_dst"]) == ("198.51.100.51", "10.0.0.3")
    back = t("tenant.vm2", "eth_src=02:00:00:00:00:02," + TO_GW + ",ip_src=10.0.0.3,ip_dst=198.51.100.51,"
             "proto=tcp,tp_src=80,tp_dst=4000")
    p = back["outputs"][0]["packet"]
    assert back["outputs"][0]["port"] == "tenant.vm1" and (p["ip_src"], p["ip_dst"]) == ("198.51.100.52",
                                                                                           "10.0.0.2")
    # an ICMP error toward the floating IP has its carried header rewritten too
    err = t("r1.uplink", FROM_NET + ",ip_src=203.0.113.1,ip_dst=198.51.100.51,proto=icmp,icmp_type=3,"
            "icmp_code=3,inner_ip_src=198.51.100.51,inner_ip_dst=203.0.113.9,inner_proto=udp,"
            "inner_tp_src=22,inner_tp_dst=1")
    s = scapy_of(t.last)
    assert s[IP].dst == "10.0.0.2" and s[IPerror].src == "10.0.0.2" and err["result"] == "forward"


def test_icmp_echo_through_snat_from_two_vms_and_icmp_error_restored():
    t = gw_tracer()
    ids = {}
    for vm_ip, icmp_id in (("10.0.0.4", 100), ("10.0.0.7", 200)):
        out = t("tenant.vm1", f"eth_src=02:00:00:00:00:03,{TO_GW},ip_src={vm_ip},ip_dst=203.0.113.5,"
                f"proto=icmp,icmp_type=8,icmp_id={icmp_id},icmp_seq=1")
        s = scapy_of(t.last)
        assert s[IP].src == "198.51.100.100"
        ids[vm_ip] = (icmp_id, s[ICMP].id)
    assert ids["10.0.0.4"][1] != ids["10.0.0.7"][1]
    for vm_ip, (orig, natid) in ids.items():
        back = t("r1.uplink", FROM_NET + f",ip_src=203.0.113.5,ip_dst=198.51.100.100,proto=icmp,icmp_type=0,"
                 f"icmp_id={natid},icmp_seq=1")
        assert back["result"] == "forward" and back["outputs"][0]["port"] == "tenant.vm1"
        s = scapy_of(t.last)
        assert (s[IP].dst, s[ICMP].id, s[ICMP].type) == (vm_ip, orig, 0)
    # a UDP flow, then an ICMP port unreachable from the far side about it
    out = t("tenant.vm1", VM3 + ",ip_dst=203.0.113.5,proto=udp,tp_src=7000,tp_dst=9999")
    p = out["outputs"][0]["packet"]
    err = t("r1.uplink", FROM_NET + f",ip_src=203.0.113.5,ip_dst={p['ip_src']},proto=icmp,icmp_type=3,"
            f"icmp_code=3,inner_ip_src={p['ip_src']},inner_ip_dst=203.0.113.5,inner_proto=udp,"
            f"inner_tp_src={p['tp_src']},inner_tp_dst=9999")
    assert err["result"] == "forward" and err["outputs"][0]["port"] == "tenant.vm1"
    s = scapy_of(t.last)
    assert s[IP].dst == "10.0.0.4" and s[ICMP].type == 3
    assert s[IPerror].src == "10.0.0.4" and s[IPerror].dst == "203.0.113.5"
    assert s[UDPerror].sport == 7000 and s[UDPerror].dport == 9999


CLIENT = FROM_NET + ",ip_src=203.0.113.77"


def test_lb_vip_to_active_backend_and_reply_from_vip():
    t = gw_tracer()
    backends = set()
    for sport in range(30000, 30040):
        out = t("r1.uplink", CLIENT + f",ip_dst=203.0.113.10,proto=tcp,tp_src={sport},tp_dst=80")
        assert out["result"] == "forward"
        s = scapy_of(t.last)
        backends.add(s[IP].dst)
        assert s[TCP].dport == 8080
        # the same connection keeps its backend
        again = t("r1.uplink", CLIENT + f",ip_dst=203.0.113.10,proto=tcp,tp_src={sport},tp_dst=80,"
                  "tcp_flags=ack")
        assert again["outputs"][0]["packet"]["ip_dst"] == s[IP].dst
    # weight 0 and disabled members are never chosen
    assert backends == {"10.0.0.3", "10.0.0.4"}
    mac = {"10.0.0.3": "02:00:00:00:00:02", "10.0.0.4": "02:00:00:00:00:03"}
    port = {"10.0.0.3": "tenant.vm2", "10.0.0.4": "tenant.vm1"}
    out = t("r1.uplink", CLIENT + ",ip_dst=203.0.113.10,proto=tcp,tp_src=31000,tp_dst=80")
    be = out["outputs"][0]["packet"]["ip_dst"]
    back = t(port[be], f"eth_src={mac[be]},{TO_GW},ip_src={be},ip_dst=203.0.113.77,proto=tcp,"
             "tp_src=8080,tp_dst=31000,tcp_flags=syn|ack")
    s = scapy_of(t.last)
    assert back["outputs"][0]["port"] == "r1.uplink"
    assert (s[IP].src, s[TCP].sport, s[IP].dst, s[TCP].dport) == ("203.0.113.10", 80, "203.0.113.77", 31000)


def test_lb_sticky_source_ip_and_protocol_and_dead_pool():
    t = gw_tracer()
    chosen = {t("r1.uplink", CLIENT + f",ip_dst=203.0.113.11,proto=tcp,tp_src={p},tp_dst=80")
              ["outputs"][0]["packet"]["ip_dst"] for p in range(20000, 20030)}
    assert len(chosen) == 1                              # every connection of one client → one backend
    others = {t("r1.uplink", FROM_NET + f",ip_src=203.0.113.{n},ip_dst=203.0.113.11,proto=tcp,tp_src=9,"
                "tp_dst=80")["outputs"][0]["packet"]["ip_dst"] for n in range(100, 140)}
    assert others == {"10.0.0.3", "10.0.0.4"}            # different clients spread over the pool
    out = t("r1.uplink", CLIENT + ",ip_dst=203.0.113.10,proto=udp,tp_src=5,tp_dst=80")
    assert out["drop_reason"] == "vip_proto_mismatch"
    out = t("r1.uplink", CLIENT + ",ip_dst=203.0.113.12,proto=tcp,tp_src=5,tp_dst=80")
    assert out["drop_reason"] == "no_backend"


def test_advancing_past_idle_timeout_expires_state_and_reports_tags():
    t = gw_tracer()
    out = t("tenant.vm1", VM3 + ",ip_dst=203.0.113.5,proto=tcp,tp_src=40000,tp_dst=443")
    p = out["outputs"][0]["packet"]
    assert t.advance(30)["expired"] == []
    adv = t.advance(31)
    assert sorted(e["kind"] for e in adv["expired"]) == ["fwd_snat", "rev_snat"]
    assert "nat:fwd_snat:10.0.0.4:40000>203.0.113.5:443/6@r1" in adv["invalidate"]
    assert set(t.last.tags) & set(adv["invalidate"])      # the flow that used them is among the invalidated
    # the reply no longer finds the binding: it is addressed to the NAT IP, which the router does not own
    back = t("r1.uplink", FROM_NET + f",ip_src=203.0.113.5,ip_dst={p['ip_src']},proto=tcp,tp_src=443,"
             f"tp_dst={p['tp_src']}")
    assert back["result"] != "forward" or back["outputs"][0]["port"] != "tenant.vm1"


def test_use_restarts_the_idle_timer():
    t = Tracer(CT)
    t("tenant.vm1", VM1_TO_VM2 + ",proto=tcp,tp_src=1,tp_dst=2")
    for _ in range(3):
        t.advance(40)
        assert t("tenant.vm2", VM2_TO_VM1 + ",proto=tcp,tp_src=2,tp_dst=1")["result"] == "forward"
    t.advance(61)
    assert t("tenant.vm2", VM2_TO_VM1 + ",proto=tcp,tp_src=2,tp_dst=1")["result"] == "drop"


def test_reject_rule_on_tcp_sends_a_reset():
    topo = CT.replace("    - {action: drop}", "    - {action: reject}")
    t = Tracer(topo)
    out = t("tenant.vm2", VM2_TO_VM1 + ",proto=tcp,tp_src=5000,tp_dst=22")
    assert out["drop_reason"] == "filter_reject"
    s = scapy_of(t.last, generated=True)
    assert s[TCP].flags & 0x04 and (s[IP].src, s[IP].dst) == ("10.0.0.2", "10.0.0.3")
    assert (s[TCP].sport, s[TCP].dport) == (22, 5000)
    out = t("tenant.vm2", VM2_TO_VM1 + ",proto=udp,tp_src=5000,tp_dst=53")
    s = scapy_of(t.last, generated=True)
    assert (s[ICMP].type, s[ICMP].code) == (3, 13) and s[IPerror].dst == "10.0.0.2"


def test_parked_or_dropped_packets_create_no_flow_state():
    t = Tracer(GW)                               # no MACs learned, no ARP for 10.0.0.9
    out = t("r1.uplink", CLIENT + ",ip_dst=198.51.100.80,proto=tcp,tp_src=1,tp_dst=80")
    assert out["result"] == "forward"            # 10.0.0.3 is in the static ARP table
    topo = GW.replace("{ip: 10.0.0.3-10.0.0.3, port: 8080}", "{ip: 10.0.0.9, port: 8080}")
    t = Tracer(topo)
    out = t("r1.uplink", CLIENT + ",ip_dst=198.51.100.80,proto=tcp,tp_src=1,tp_dst=80")
    assert out["result"] == "parked" and out["flow_state"] == []
    assert t.session.state.flow_state == {}
