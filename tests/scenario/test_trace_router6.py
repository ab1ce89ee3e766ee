"""IPv6 through the virtual router, through the trace entry point (issue 15, routing and neighbor discovery):
longest prefix, source-aware routes, ECMP, the hop limit, blackhole / reject / no route, echo to the router's
global and link-local addresses, neighbor solicitations answered and learned, next hops resolved by a
solicitation (the packet parks, then resumes when the advertisement arrives), router solicitations, filters,
and megaflows over IPv6 prefixes.  Every packet the router makes is checked with scapy (checksums recomputed).
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
)
from scapy.layers.l2 import Ether

from packet.addr import ip6_2int, mac2int
from packet.codec import build
from packet.flowkey import FULL, flow_key, masked_key, slot_mask
from packet.spec import parse_spec
from tests.scenario.conftest import Tracer, scapy_of
from workers.megaflow import flow_match
from workers.trace import result_json

TOPO = """
version: 1
hosts: {h: {tunnel_ip: 127.0.0.11}}
bridges:
  tenant:
    ports:
      vm1: {host: h, interface: t1}
      vm2: {host: h, interface: t2}
      up: {peer: r1.tenant}
    mac_table: {"02:00:00:00:00:01": vm1, "02:00:00:00:00:02": vm2}
routers:
  r1:
    ports:
      tenant: {address: "2001:db8:1::1/64", mac: "02:0a:00:00:00:01"}
      uplink: {address: "2001:db8:ff::2/64", mac: "02:0a:00:00:00:02", host: h, interface: u1}
      uplink2: {address: "2001:db8:fe::2/64", mac: "02:0a:00:00:00:03", host: h, interface: u2}
    routes:
      - {dst: "::/0", src: "2001:db8:1::/64", gateway: "2001:db8:ff::1", port: uplink}
      - {dst: "::/0", src: "2001:db8:1:0:8000::/65", gateway: "2001:db8:fe::1", port: uplink2}
      - {dst: "2001:db8:77::/48", type: blackhole}
      - {dst: "2001:db8:78::/48", type: reject}
      - {dst: "2001:db8:99::/64", gateway: "2001:db8:ff::7", port: uplink}
      - {dst: "2001:db8:99::/64", gateway: "2001:db8:ff::8", port: uplink}
      - {dst: "2001:db8:99::/48", gateway: "2001:db8:fe::9", port: uplink2, weight: 10}
      - {dst: "2001:db8:55::/64", gateway: "2001:db8:ff::7", port: uplink}
      - {dst: "2001:db8:aa::/48", gateway: "2001:db8:ff::50", port: uplink}
      - {dst: "2001:db8:100::/48", gateway: "fe80::1", port: uplink}
    nd_table:
      "2001:db8:ff::1": "02:0b:00:00:00:01"
      "2001:db8:fe::1": "02:0c:00:00:00:01"
      "2001:db8:ff::7": "02:0b:00:00:00:07"
      "2001:db8:ff::8": "02:0b:00:00:00:08"
      "2001:db8:fe::9": "02:0c:00:00:00:09"
"""
R1_TENANT_MAC, R1_UPLINK_MAC = "02:0a:00:00:00:01", "02:0a:00:00:00:02"
LL_TENANT = "fe80::a:ff:fe00:1"            # EUI-64 of 02:0a:00:00:00:01
LL_UPLINK = "fe80::a:ff:fe00:2"
VM1 = "eth_src=02:00:00:00:00:01,eth_dst=02:0a:00:00:00:01,ipv6_src=2001:db8:1::5"
UPLINK = "eth_src=02:0b:00:00:00:01,eth_dst=02:0a:00:00:00:02,ipv6_src=2001:db8:5::1"


def _cksum_ok(s, cls) -> None:
    """scapy recomputes the checksum of layer ``cls``: it is the one the simulation's packet was built with."""
    name = "cksum" if "cksum" in s[cls].fields else "chksum"
    got = getattr(s[cls], name)
    again = Ether(bytes(s))
    delattr(again[cls], name)
    assert getattr(Ether(bytes(again))[cls], name) == got


def _out_mac(out) -> str:
    [o] = out["outputs"]
    return o["packet"]["eth_dst"]


# -- routing -------------------------------------------------------------------------------------------------
def test_routes_by_longest_prefix_with_hop_limit_decremented_and_macs_rewritten():
    t = Tracer(TOPO)
    out = t("tenant.vm1", VM1 + ",ipv6_dst=2001:db8:99:1::5,proto=udp,tp_src=4000,tp_dst=53,hop_limit=9")
    assert out["result"] == "forward"
    assert out["path"] == ["tenant.vm1", "tenant", "tenant.up", "r1.tenant", "r1", "r1.uplink2"]
    s = scapy_of(t.last)
    assert (s.src, s.dst) == ("02:0a:00:00:00:03", "02:0c:00:00:00:09")       # the /48, via fe::9
    assert s[IPv6].hlim == 8 and s[IPv6].dst == "2001:db8:99:1::5" and s[UDP].dport == 53
    _cksum_ok(s, UDP)
    # inside the /64 the more specific routes (ECMP over ff::7 / ff::8) win over the /48
    out = t("tenant.vm1", VM1 + ",ipv6_dst=2001:db8:99::5,proto=udp,tp_src=4000,tp_dst=53")
    assert out["outputs"][0]["port"] == "r1.uplink"
    assert _out_mac(out) in ("02:0b:00:00:00:07", "02:0b:00:00:00:08")
    # the default route
    out = t("tenant.vm1", VM1 + ",ipv6_dst=2001:db8:4242::1,proto=tcp,tp_dst=443")
    assert out["outputs"][0]["port"] == "r1.uplink" and _out_mac(out) == "02:0b:00:00:00:01"


def test_source_aware_default_routes_pick_the_longest_source_prefix():
    t = Tracer(TOPO)
    low = t("tenant.vm1", VM1 + ",ipv6_dst=2001:db8:4242::1,proto=udp")
    high = t("tenant.vm1", VM1.replace("2001:db8:1::5", "2001:db8:1:0:8000::5") + ",ipv6_dst=2001:db8:4242::1,"
             "proto=udp")
    assert (low["outputs"][0]["port"], _out_mac(low)) == ("r1.uplink", "02:0b:00:00:00:01")
    assert (high["outputs"][0]["port"], _out_mac(high)) == ("r1.uplink2", "02:0c:00:00:00:01")
    # a source no default route covers has no route
    other = t("r1.uplink", UPLINK + ",ipv6_dst=2001:db8:4242::1,proto=udp")
    assert other["drop_reason"] == "no_route"


def test_ecmp_spreads_flows_by_flow_hash_and_keeps_each_flow_on_one_path():
    t = Tracer(TOPO)
    seen = {}
    for sport in range(40000, 40040):
        out = t("tenant.vm1", VM1 + f",ipv6_dst=2001:db8:99::5,proto=tcp,tp_src={sport},tp_dst=80")
        seen[sport] = _out_mac(out)
    assert set(seen.values()) == {"02:0b:00:00:00:07", "02:0b:00:00:00:08"}
    # the addresses are hashed too: fixed ports, sources that differ only in their low bits
    by_src = {_out_mac(t("tenant.vm1", VM1.replace("2001:db8:1::5", f"2001:db8:1::{i:x}")
                         + ",ipv6_dst=2001:db8:99::5,proto=tcp,tp_src=40000,tp_dst=80")) for i in range(256, 296)}
    assert by_src == {"02:0b:00:00:00:07", "02:0b:00:00:00:08"}
    for sport in (40000, 40007, 40031):
        out = t("tenant.vm1", VM1 + f",ipv6_dst=2001:db8:99::5,proto=tcp,tp_src={sport},tp_dst=80")
        assert _out_mac(out) == seen[sport]
    # the ECMP decision read the 5-tuple: its megaflow matches the source port exactly
    t("tenant.vm1", VM1 + ",ipv6_dst=2001:db8:99::5,proto=tcp,tp_src=40001,tp_dst=80")
    match = dict(flow_match(t.last))
    assert match["tp_src"] == match["ipv6_src"] == match["ipv6_dst"] == FULL


def test_hop_limit_one_gets_time_exceeded_carrying_the_packet():
    t = Tracer(TOPO)
    ok = t("tenant.vm1", VM1 + ",ipv6_dst=2001:db8:4242::1,proto=udp,hop_limit=2")
    assert ok["result"] == "forward" and ok["outputs"][0]["packet"]["hop_limit"] == 1
    out = t("tenant.vm1", VM1 + ",ipv6_dst=2001:db8:4242::1,proto=udp,tp_src=1111,tp_dst=2222,hop_limit=1,"
            "payload_len=20")
    assert out["result"] == "drop" and out["drop_reason"] == "hop_limit_exceeded"
    [g] = out["generated"]
    assert g["port"] == "tenant.vm1" and g["from"] == "r1.tenant"
    s = scapy_of(t.last, generated=True)
    assert (s.src, s.dst) == (R1_TENANT_MAC, "02:00:00:00:00:01")
    assert (s[IPv6].src, s[IPv6].dst) == ("2001:db8:1::1", "2001:db8:1::5")
    assert (s[ICMPv6TimeExceeded].type, s[ICMPv6TimeExceeded].code) == (3, 0)
    assert s[IPerror6].dst == "2001:db8:4242::1" and s[IPerror6].hlim == 1
    # the whole offending packet is carried (it is far below 1280 bytes): header + 8 UDP bytes + 20 of payload
    assert len(bytes(s[IPerror6])) == 40 + 8 + 20 and s[IPerror6].plen == 28
    _cksum_ok(s, ICMPv6TimeExceeded)


def test_an_icmpv6_error_carries_as_much_as_fits_in_1280_bytes():
    t = Tracer(TOPO)
    out = t("tenant.vm1", VM1 + ",ipv6_dst=2001:db8:4242::1,proto=udp,tp_src=1,tp_dst=2,hop_limit=1,"
            "payload_len=1400")
    assert out["drop_reason"] == "hop_limit_exceeded"
    s = scapy_of(t.last, generated=True)
    error = bytes(s[IPv6])
    assert len(error) == 1280
    sent = bytes(
        Ether(build(parse_spec(VM1 + ",ipv6_dst=2001:db8:4242::1,proto=udp,tp_src=1,tp_dst=2,hop_limit=1,"
                               "payload_len=1400")))[IPv6])
    # the offending packet's bytes after its IPv6 header, cut where the error reaches 1280 bytes (the carried
    # header says how much is carried: its payload length is 1280 - 48 - 40)
    assert error[48 + 40:] == sent[40:1280 - 48] and s[IPerror6].plen == 1280 - 48 - 40
    _cksum_ok(s, ICMPv6TimeExceeded)


def test_no_icmpv6_error_about_an_error_or_from_a_multicast_source():
    t = Tracer(TOPO)
    err = t("tenant.vm1", VM1 + ",ipv6_dst=2001:db8:4242::1,icmpv6_type=1,inner_proto=udp,hop_limit=1")
    assert err["drop_reason"] == "hop_limit_exceeded" and err["generated"] == []
    mc = t("tenant.vm1", VM1.replace("2001:db8:1::5", "ff0e::5") + ",ipv6_dst=2001:db8:4242::1,proto=udp,"
           "hop_limit=1")
    assert mc["drop_reason"] == "hop_limit_exceeded" and mc["generated"] == []
    # multicast is not routed (and earns no error)
    out = t("tenant.vm1", VM1.replace("eth_dst=02:0a:00:00:00:01", "eth_dst=33:33:00:00:00:fb")
            + ",ipv6_dst=ff02::fb,proto=udp,tp_dst=5353")
    assert out["result"] == "forward" and "r1" not in out["path"]           # the bridge floods it, not to r1
    direct = t("r1.uplink", UPLINK.replace("eth_dst=02:0a:00:00:00:02", "eth_dst=33:33:00:00:00:fb")
               + ",ipv6_dst=ff05::fb,proto=udp,hop_limit=1")
    assert direct["drop_reason"] == "ipv6_multicast" and direct["generated"] == []


def test_blackhole_drops_silently_and_reject_answers_unreachable():
    t = Tracer(TOPO)
    bh = t("tenant.vm1", VM1 + ",ipv6_dst=2001:db8:77::9,proto=udp")
    assert bh["drop_reason"] == "blackhole" and bh["generated"] == []
    rej = t("r1.uplink", UPLINK.replace("2001:db8:5::1", "2001:db8:1::9") + ",ipv6_dst=2001:db8:78::7,proto=tcp,"
            "tp_src=999,tp_dst=80")
    assert rej["drop_reason"] == "reject_route"
    [g] = rej["generated"]
    assert g["port"] == "r1.uplink"
    s = scapy_of(t.last, generated=True)
    assert (s[IPv6].src, s[IPv6].dst) == ("2001:db8:ff::2", "2001:db8:1::9") and s.dst == "02:0b:00:00:00:01"
    assert (s[ICMPv6DestUnreach].type, s[ICMPv6DestUnreach].code) == (1, 6)     # reject route to destination
    assert s[IPerror6].dst == "2001:db8:78::7"
    _cksum_ok(s, ICMPv6DestUnreach)


def test_no_route_answers_unreachable_no_route():
    t = Tracer(TOPO)
    out = t("r1.uplink", UPLINK + ",ipv6_dst=2001:db8:abcd::1,proto=udp,tp_dst=7")
    assert out["result"] == "drop" and out["drop_reason"] == "no_route"
    s = scapy_of(t.last, generated=True)
    assert (s[ICMPv6DestUnreach].type, s[ICMPv6DestUnreach].code) == (1, 0)
    assert (s[IPv6].src, s[IPv6].dst) == ("2001:db8:ff::2", "2001:db8:5::1")
    _cksum_ok(s, ICMPv6DestUnreach)


# -- the router's own addresses --------------------------------------------------------------------------------
@pytest.mark.parametrize("dst", ["2001:db8:1::1", "2001:db8:ff::2", LL_TENANT])
def test_echo_to_a_router_address_global_or_link_local_is_answered(dst):
    t = Tracer(TOPO)
    src = "fe80::1" if dst.startswith("fe80") else "2001:db8:1::5"
    out = t("tenant.vm1", VM1.replace("2001:db8:1::5", src) + f",ipv6_dst={dst},icmp_id=77,icmp_seq=3,"
            "payload_len=12")
    assert out["result"] == "consumed" and out["outputs"] == []
    [g] = out["generated"]
    assert g["port"] == "tenant.vm1"
    s = scapy_of(t.last, generated=True)
    assert (s[IPv6].src, s[IPv6].dst) == (dst, src) and s.dst == "02:00:00:00:00:01" and s.src == R1_TENANT_MAC
    assert (s[ICMPv6EchoReply].id, s[ICMPv6EchoReply].seq, len(s[ICMPv6EchoReply].data)) == (77, 3, 12)
    _cksum_ok(s, ICMPv6EchoReply)


def test_link_local_addresses_are_neither_routed_nor_the_routers_on_another_port():
    t = Tracer(TOPO)
    other = t("tenant.vm1", VM1 + f",ipv6_dst={LL_UPLINK},icmp_id=1")
    assert other["drop_reason"] == "link_local_dst"
    src = t("tenant.vm1", VM1.replace("2001:db8:1::5", "fe80::5") + ",ipv6_dst=2001:db8:4242::1,proto=udp")
    assert src["drop_reason"] == "link_local_src"
    udp = t("tenant.vm1", VM1 + ",ipv6_dst=2001:db8:1::1,proto=udp,tp_dst=53")
    assert udp["drop_reason"] == "to_router"


def test_neighbor_solicitation_for_a_router_address_is_answered_and_teaches_the_solicitor():
    t = Tracer(TOPO)
    # on the uplink (the router itself answers), multicast to the solicited-node address
    ns = "eth_src=02:0b:00:00:00:21,ipv6_src=2001:db8:ff::21,nd_target=2001:db8:ff::2"
    out = t("r1.uplink", ns)
    assert out["result"] == "consumed"
    s = scapy_of(t.last, generated=True)
    na = s[ICMPv6ND_NA]
    assert (na.R, na.S, na.O, na.tgt) == (1, 1, 1, "2001:db8:ff::2")
    assert s[ICMPv6NDOptDstLLAddr].lladdr == R1_UPLINK_MAC and s[IPv6].hlim == 255
    assert (s[IPv6].src, s[IPv6].dst, s.dst) == ("2001:db8:ff::2", "2001:db8:ff::21", "02:0b:00:00:00:21")
    _cksum_ok(s, ICMPv6ND_NA)
    # the solicitor's link-layer address was learned: a packet to it leaves without a solicitation
    to = t("tenant.vm1", VM1 + ",ipv6_dst=2001:db8:ff::21,proto=udp")
    assert to["result"] == "forward" and _out_mac(to) == "02:0b:00:00:00:21" and to["generated"] == []
    # unicast to the router's MAC, for its link-local address
    uni = t("r1.uplink", f"eth_src=02:0b:00:00:00:22,eth_dst={R1_UPLINK_MAC},ipv6_src=fe80::22,"
            f"ipv6_dst={LL_UPLINK},nd_target={LL_UPLINK}")
    assert uni["result"] == "consumed" and scapy_of(t.last, generated=True)[ICMPv6ND_NA].tgt == LL_UPLINK
    # a solicitation for someone else's address is not answered
    assert t("r1.uplink", ns.replace("nd_target=2001:db8:ff::2", "nd_target=2001:db8:ff::3"))["drop_reason"] == \
        "nd_not_for_router"


def test_a_bridge_answers_a_solicitation_for_its_router_port_and_the_router_learns():
    t = Tracer(TOPO)
    out = t("tenant.vm1", "eth_src=02:00:00:00:00:01,ipv6_src=2001:db8:1::5,nd_target=2001:db8:1::1")
    assert out["result"] == "consumed" and out["path"] == ["tenant.vm1", "tenant"]
    s = scapy_of(t.last, generated=True)
    assert (s[ICMPv6ND_NA].S, s[ICMPv6ND_NA].O, s[ICMPv6NDOptDstLLAddr].lladdr) == (1, 1, R1_TENANT_MAC)
    _cksum_ok(s, ICMPv6ND_NA)
    back = t("r1.uplink", UPLINK.replace("2001:db8:5::1", "2001:db8:5::2") + ",ipv6_dst=2001:db8:1::5,proto=udp")
    assert back["result"] == "forward" and _out_mac(back) == "02:00:00:00:00:01"


def test_next_hop_resolution_parks_on_a_solicitation_then_resumes_on_the_advertisement():
    t = Tracer(TOPO)
    spec = VM1 + ",ipv6_dst=2001:db8:aa::1,proto=udp,tp_src=5000,tp_dst=53"
    out = t("tenant.vm1", spec)
    assert out["result"] == "parked"
    assert out["needs"] == {"type": "NeedArp", "router": "r1", "port": "r1.uplink", "ip": "2001:db8:ff::50"}
    [g] = out["generated"]
    assert g["port"] == "r1.uplink"
    s = scapy_of(t.last, generated=True)
    assert (s.src, s.dst) == (R1_UPLINK_MAC, "33:33:ff:00:00:50")
    assert (s[IPv6].src, s[IPv6].dst, s[IPv6].hlim) == (LL_UPLINK, "ff02::1:ff00:50", 255)
    assert s[ICMPv6ND_NS].tgt == "2001:db8:ff::50" and s[ICMPv6NDOptSrcLLAddr].lladdr == R1_UPLINK_MAC
    _cksum_ok(s, ICMPv6ND_NS)
    # the advertisement arrives (to the link-local address the solicitation came from)
    na = t("r1.uplink", f"eth_src=02:0b:00:00:00:50,eth_dst={R1_UPLINK_MAC},ipv6_src=2001:db8:ff::50,"
           f"ipv6_dst={LL_UPLINK},icmpv6_type=136,nd_target=2001:db8:ff::50,nd_tll=02:0b:00:00:00:50")
    assert na["result"] == "consumed"
    again = t("tenant.vm1", spec)
    assert again["result"] == "forward" and _out_mac(again) == "02:0b:00:00:00:50"
    # the entry expires (no one refreshed it): the next packet asks again
    t.session.advance(t.session.state.arp_expiry_s + 1)
    assert t("tenant.vm1", spec)["result"] == "parked"


def test_a_link_local_gateway_is_solicited_on_the_routes_port():
    t = Tracer(TOPO)
    spec = VM1 + ",ipv6_dst=2001:db8:100::1,proto=tcp,tp_dst=22"
    out = t("tenant.vm1", spec)
    assert out["needs"]["ip"] == "fe80::1" and out["generated"][0]["port"] == "r1.uplink"
    s = scapy_of(t.last, generated=True)
    assert (s[ICMPv6ND_NS].tgt, s[IPv6].dst, s.dst) == ("fe80::1", "ff02::1:ff00:1", "33:33:ff:00:00:01")
    t("r1.uplink", f"eth_src=02:0b:00:00:00:99,eth_dst={R1_UPLINK_MAC},ipv6_src=fe80::1,ipv6_dst={LL_UPLINK},"
      "icmpv6_type=136,nd_target=fe80::1,nd_tll=02:0b:00:00:00:99")
    again = t("tenant.vm1", spec)
    assert again["result"] == "forward" and _out_mac(again) == "02:0b:00:00:00:99"


def test_an_advertisement_without_a_link_layer_address_teaches_nothing():
    t = Tracer(TOPO)
    na = t("r1.uplink", f"eth_src=02:0b:00:00:00:50,eth_dst={R1_UPLINK_MAC},ipv6_src=2001:db8:ff::50,"
           f"ipv6_dst={LL_UPLINK},icmpv6_type=136,nd_target=2001:db8:ff::50,nd_tll=none")
    assert na["drop_reason"] == "nd_no_link_address"
    assert t("tenant.vm1", VM1 + ",ipv6_dst=2001:db8:aa::1,proto=udp")["result"] == "parked"


def test_router_solicitation_is_answered_with_the_ports_prefixes():
    t = Tracer(TOPO)
    out = t("r1.uplink", "eth_src=02:0b:00:00:00:31,ipv6_src=fe80::31,icmpv6_type=133")
    assert out["result"] == "consumed"
    s = scapy_of(t.last, generated=True)
    ra = s[ICMPv6ND_RA]
    assert ra.routerlifetime > 0 and (s[IPv6].src, s[IPv6].dst, s[IPv6].hlim) == (LL_UPLINK, "fe80::31", 255)
    pi = s[ICMPv6NDOptPrefixInfo]
    assert (pi.prefix, pi.prefixlen, pi.L, pi.A) == ("2001:db8:ff::", 64, 1, 1)
    _cksum_ok(s, ICMPv6ND_RA)


def test_a_router_filter_reject_answers_admin_prohibited():
    topo = (TOPO + """
    inbound_filter: r1-in
chains:
  r1-in:
    - {match: {proto: udp, dst_port: 9}, action: reject}
    - {match: {proto: udp, dst_port: 10}, action: drop}
    - {match: {proto: tcp, dst_port: 22}, action: reject}
""")
    t = Tracer(topo)
    out = t("tenant.vm1", VM1 + ",ipv6_dst=2001:db8:4242::1,proto=udp,tp_dst=9")
    assert out["drop_reason"] == "filter_reject"
    s = scapy_of(t.last, generated=True)
    assert (s[ICMPv6DestUnreach].type, s[ICMPv6DestUnreach].code) == (1, 1)
    assert t("tenant.vm1", VM1 + ",ipv6_dst=2001:db8:4242::1,proto=udp,tp_dst=10")["drop_reason"] == "filter_drop"
    assert t("tenant.vm1", VM1 + ",ipv6_dst=2001:db8:4242::1,proto=udp,tp_dst=11")["result"] == "forward"
    # TCP is answered with a reset, as from the destination, as for IPv4 (a RST itself with ICMPv6)
    out = t("tenant.vm1", VM1 + ",ipv6_dst=2001:db8:4242::1,proto=tcp,tp_src=40000,tp_dst=22,tcp_flags=syn,"
                                "tcp_seq=1000")
    assert out["drop_reason"] == "filter_reject"
    s = scapy_of(t.last, generated=True)
    assert s[TCP].flags == "RA" and (s[TCP].sport, s[TCP].dport, s[TCP].ack) == (22, 40000, 1001)
    assert (s[IPv6].src, s[IPv6].dst) == ("2001:db8:4242::1", "2001:db8:1::5")
    assert (s[Ether].src, s[Ether].dst) == ("02:0a:00:00:00:01", "02:00:00:00:00:01")
    _cksum_ok(s, TCP)
    t("tenant.vm1", VM1 + ",ipv6_dst=2001:db8:4242::1,proto=tcp,tp_dst=22,tcp_flags=rst")
    assert scapy_of(t.last, generated=True)[ICMPv6DestUnreach].code == 1


# -- megaflows -------------------------------------------------------------------------------------------------
def test_two_destinations_in_one_routed_64_share_one_megaflow():
    t = Tracer(TOPO)
    a = parse_spec(VM1 + ",ipv6_dst=2001:db8:55::1,proto=udp,tp_src=5000,tp_dst=53")
    b = a._replace(ipv6_dst=ip6_2int("2001:db8:55::ffff:1234"), tp_src=6000)
    c = a._replace(ipv6_dst=ip6_2int("2001:db8:55:1::1"))          # the next /64: the default route
    ra = t.session.run("tenant.vm1", a)
    rb = t.session.run("tenant.vm1", b)
    assert ra.result == rb.result == "forward"
    ma, mb = flow_match(ra), flow_match(rb)
    assert ma == mb and dict(ma)["ipv6_dst"] == ((1 << 128) - 1) ^ ((1 << 64) - 1)
    mask = slot_mask(ma)
    assert masked_key(flow_key(a, "tenant.vm1"), mask) == masked_key(flow_key(b, "tenant.vm1"), mask)
    assert masked_key(flow_key(c, "tenant.vm1"), mask) != masked_key(flow_key(a, "tenant.vm1"), mask)
    assert ra.outputs[0].packet.eth_dst == rb.outputs[0].packet.eth_dst == mac2int("02:0b:00:00:00:07")
    assert result_json(ra, a, "tenant.vm1")["megaflow"]["ipv6_dst"] == "2001:db8:55::/64"
