"""IPv6 through chains, conntrack and reject (issue 15, filters part), through the trace entry point: IPv6
CIDR matches with ``!``, a rule of one family never matching the other, an IPv6 TCP connection's forward and
return flows through a stateful filter, an ICMPv6 error finding the connection it reports, reject answered by a
TCP RST or an ICMPv6 unreachable (checked with scapy), neighbor discovery through a stateful filter, and an
IPv6 VIP of a router's load balancer: DNAT to a member, the reply from the VIP, its ICMPv6 errors, sticky
clients."""

from __future__ import annotations

from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoRequest, IPerror6, IPv6, TCPerror, UDPerror
from scapy.layers.l2 import Ether

from backchannel import codec
from backchannel import messages as m
from packet.addr import ip6_2int
from packet.codec import build
from packet.flowkey import FULL, flow_key, match_dict, slot_mask
from packet.spec import parse_spec
from tests.scenario.conftest import Tracer, scapy_of
from workers.megaflow import flow_match
from workers.trace import result_json

HOSTS = """
version: 1
hosts:
  host-a: {tunnel_ip: 127.0.0.11}
  host-b: {tunnel_ip: 127.0.0.12}
"""
BRIDGE = HOSTS + """
bridges:
  tenant:
    ports:
      vm1: {host: host-a, interface: tap-vm1}
      vm2: {host: host-b, interface: tap-vm2}
      vm3: {host: host-b, interface: tap-vm3}
    inbound_filter: fw
    mac_table: {"02:00:00:00:00:01": vm1, "02:00:00:00:00:02": vm2, "02:00:00:00:00:03": vm3}
"""


class Tracer6(Tracer):
    def megaflow(self, port: str, spec: str) -> dict:
        """The megaflow of the last result (as ``shardnet trace --megaflows`` shows it)."""
        return match_dict(flow_key(parse_spec(spec), port), slot_mask(flow_match(self.last)))


def L2(a: int, b: int) -> str:
    return f"eth_src=02:00:00:00:00:0{a},eth_dst=02:00:00:00:00:0{b}"


def V6(a: int, b: int, src: str = "2001:db8:a::", dst: str = "2001:db8:a::") -> str:
    return L2(a, b) + f",ipv6_src={src}{a},ipv6_dst={dst}{b}"


def V4(a: int, b: int) -> str:
    return L2(a, b) + f",ip_src=10.0.0.{a},ip_dst=10.0.0.{b}"


# -- CIDR matches --------------------------------------------------------------------------------------------
CIDR = BRIDGE + """
chains:
  fw:
    - {match: {src: "2001:db8:66::/48", proto: tcp, dst_port: 22}, action: drop}
    - {match: {dst: "!2001:db8:77::/48", proto: udp}, action: drop}
    - {match: {src: "10.0.0.0/8", proto: tcp, dst_port: 23}, action: drop}       # an IPv4 rule
    - {match: {dst: "!198.51.100.0/24", proto: tcp, dst_port: 24}, action: drop} # a negated IPv4 rule
"""
def test_ipv6_cidr_condition_matches_ipv6_sources_in_the_prefix_only():
    t = Tracer6(CIDR)
    inside = V6(1, 2, src="2001:db8:66:5::") + ",proto=tcp,tp_src=4000,tp_dst=22"
    out = t("tenant.vm1", inside)
    assert out["result"] == "drop" and out["drop_reason"] == "filter_drop"
    # the decision read the source only up to the prefix, as for IPv4
    assert ("ipv6_src", 48) in t.last.prefixes_read
    assert t.megaflow("tenant.vm1", inside)["ipv6_src"] == "2001:db8:66::/48"
    outside = V6(1, 2, src="2001:db8:67:5::") + ",proto=tcp,tp_src=4000,tp_dst=22"
    assert t("tenant.vm1", outside)["result"] == "forward"


def test_negated_ipv6_cidr_matches_ipv6_outside_the_prefix_and_never_ipv4():
    t = Tracer6(CIDR)
    out = t("tenant.vm1", V6(1, 2, dst="2001:db8:78::") + ",proto=udp,tp_src=5,tp_dst=53")
    assert out["result"] == "drop"                       # outside 2001:db8:77::/48: dropped
    assert t("tenant.vm1", V6(1, 2, dst="2001:db8:77::") + ",proto=udp,tp_src=5,tp_dst=53")["result"] == "forward"
    # an IPv4 packet has no IPv6 destination: the negated IPv6 condition fails for it (no drop)
    assert t("tenant.vm1", V4(1, 2) + ",proto=udp,tp_src=5,tp_dst=53")["result"] == "forward"


def test_an_ipv4_rule_never_matches_ipv6_even_negated():
    t = Tracer6(CIDR)
    # IPv4 10.0.0.1 → tcp/23 is dropped by the IPv4 rule; IPv6 to the same port is not
    assert t("tenant.vm1", V4(1, 2) + ",proto=tcp,tp_src=4000,tp_dst=23")["result"] == "drop"
    assert t("tenant.vm1", V6(1, 2) + ",proto=tcp,tp_src=4000,tp_dst=23")["result"] == "forward"
    # "!198.51.100.0/24": IPv4 from outside it is dropped, IPv6 (no IPv4 address at all) is not
    assert t("tenant.vm1", V4(1, 2) + ",proto=tcp,tp_src=4000,tp_dst=24")["result"] == "drop"
    assert t("tenant.vm1", V6(1, 2) + ",proto=tcp,tp_src=4000,tp_dst=24")["result"] == "forward"


def test_an_ipv6_rule_never_matches_ipv4():
    t = Tracer6(CIDR.replace("2001:db8:66::/48", "::/0"))       # every IPv6 source
    assert t("tenant.vm1", V6(1, 2) + ",proto=tcp,tp_src=4000,tp_dst=22")["result"] == "drop"
    out = t("tenant.vm1", L2(1, 2) + ",ip_src=10.66.0.1,ip_dst=10.0.0.2,proto=tcp,tp_src=4000,tp_dst=22")
    assert out["result"] == "forward"


PROTO = BRIDGE + """
chains:
  fw:
    - {match: {proto: icmpv6}, action: drop}
    - {match: {proto: udp, src_port: "1000-1999"}, action: drop}
    - {match: {tos: 32}, action: drop}
"""


def test_proto_ports_and_traffic_class_conditions_on_ipv6():
    t = Tracer6(PROTO)
    assert t("tenant.vm1", V6(1, 2) + ",proto=icmpv6,icmpv6_type=128,icmp_id=1")["drop_reason"] == "filter_drop"
    assert t("tenant.vm1", V6(1, 2) + ",proto=udp,tp_src=1500,tp_dst=9")["result"] == "drop"
    assert t("tenant.vm1", V6(1, 2) + ",proto=udp,tp_src=2500,tp_dst=9")["result"] == "forward"
    assert t("tenant.vm1", V6(1, 2) + ",proto=tcp,tp_src=2500,tp_dst=9,tclass=32")["result"] == "drop"
    assert t("tenant.vm1", V6(1, 2) + ",proto=tcp,tp_src=2500,tp_dst=9,tclass=33")["result"] == "forward"


# -- conntrack -----------------------------------------------------------------------------------------------
STATEFUL = BRIDGE + """
chains:
  fw:
    - {match: {ethertype: arp}, action: accept}
    - {match: {ct: forward, in_port: tenant.vm1}, action: accept}
    - {match: {ct: return}, action: accept}
    - {action: drop}
"""
SYN = V6(1, 2) + ",proto=tcp,tp_src=40000,tp_dst=22,tcp_flags=syn"
SYNACK = V6(2, 1) + ",proto=tcp,tp_src=22,tp_dst=40000,tcp_flags=syn|ack"


def test_ipv6_tcp_connection_forward_and_return_flows_through_a_stateful_filter():
    t = Tracer6(STATEFUL)
    assert t("tenant.vm2", SYNACK)["drop_reason"] == "filter_drop"       # no connection yet
    out = t("tenant.vm1", SYN)
    assert out["result"] == "forward" and [o["port"] for o in out["outputs"]] == ["tenant.vm2"]
    assert [(s["type"], s["key"]) for s in out["flow_state"]] == [
        ("conntrack", "[2001:db8:a::2]:22>[2001:db8:a::1]:40000/6@tenant")]
    # the forward flow matches this connection's whole 5-tuple, IPv6 addresses included
    mf = t.megaflow("tenant.vm1", SYN)
    assert (mf["ipv6_src"], mf["ipv6_dst"], mf["tp_src"], mf["tp_dst"]) == (
        "2001:db8:a::1", "2001:db8:a::2", 40000, 22)
    out = t("tenant.vm2", SYNACK)
    assert out["result"] == "forward" and out["flow_state"] == [] and out["outputs"][0]["port"] == "tenant.vm1"
    assert t.megaflow("tenant.vm2", SYNACK)["ipv6_src"] == "2001:db8:a::2"
    s = scapy_of(t.last)
    assert s[IPv6].src == "2001:db8:a::2" and s[TCP].dport == 40000
    # another IPv6 connection from vm2, or the same ports from another address, is refused
    assert t("tenant.vm2", SYNACK.replace("tp_src=22", "tp_src=23"))["result"] == "drop"
    assert t("tenant.vm3", V6(3, 1) + ",proto=tcp,tp_src=22,tp_dst=40000")["result"] == "drop"
    # the IPv4 connection with the same ports is another connection
    assert t("tenant.vm2", V4(2, 1) + ",proto=tcp,tp_src=22,tp_dst=40000")["result"] == "drop"


def test_ipv6_echo_connection_uses_the_echo_id():
    t = Tracer6(STATEFUL)
    out = t("tenant.vm1", V6(1, 2) + ",icmpv6_type=128,icmp_id=77,icmp_seq=1")
    assert [s["key"] for s in out["flow_state"]] == ["[2001:db8:a::2]:77>[2001:db8:a::1]:77/58@tenant"]
    assert t("tenant.vm2", V6(2, 1) + ",icmpv6_type=129,icmp_id=77,icmp_seq=1")["result"] == "forward"
    assert t("tenant.vm2", V6(2, 1) + ",icmpv6_type=129,icmp_id=78,icmp_seq=1")["result"] == "drop"


UDP_OUT = V6(1, 2) + ",proto=udp,tp_src=5353,tp_dst=9999"


def test_an_icmpv6_error_reaches_the_connection_it_reports():
    t = Tracer6(STATEFUL)
    err = (V6(2, 1) + ",icmpv6_type=1,icmpv6_code=4,inner_ipv6_src=2001:db8:a::1,inner_ipv6_dst=2001:db8:a::2,"
           "inner_proto=udp,inner_tp_src=5353,inner_tp_dst=9999")
    assert t("tenant.vm2", err)["drop_reason"] == "filter_drop"          # no connection: not related
    t("tenant.vm1", UDP_OUT)
    out = t("tenant.vm2", err)
    assert out["result"] == "forward" and out["flow_state"] == []        # related; writes nothing
    assert out["outputs"][0]["port"] == "tenant.vm1"
    s = scapy_of(t.last)
    assert s[ICMPv6DestUnreach].code == 4 and s[IPerror6].src == "2001:db8:a::1" and s[UDPerror].dport == 9999
    # an error carrying another connection's header is not related
    other = err.replace("inner_tp_dst=9999", "inner_tp_dst=9998")
    assert t("tenant.vm2", other)["result"] == "drop"
    # the megaflow of the related error matches the carried addresses whole
    mf = t.megaflow("tenant.vm2", err)
    assert (mf["inner_ipv6_src"], mf["inner_ipv6_dst"], mf["inner_tp_dst"]) == (
        "2001:db8:a::1", "2001:db8:a::2", 9999)


def test_a_later_ipv6_fragment_is_tracked_with_ports_0_as_for_ipv4():
    t = Tracer6(STATEFUL)
    frag = V6(1, 2) + ",proto=udp,frag=later"
    out = t("tenant.vm1", frag)
    assert [s["key"] for s in out["flow_state"]] == ["[2001:db8:a::2]:0>[2001:db8:a::1]:0/17@tenant"]
    assert t("tenant.vm2", V6(2, 1) + ",proto=udp,frag=later")["result"] == "forward"


# -- neighbor discovery ------------------------------------------------------------------------------------
def test_neighbor_discovery_passes_a_stateful_filter_and_writes_no_conntrack():
    t = Tracer6(STATEFUL)
    # vm2 may not open connections, yet its solicitation and advertisement pass
    ns = "eth_src=02:00:00:00:00:02,ipv6_src=2001:db8:a::2,nd_target=2001:db8:a::1"
    out = t("tenant.vm2", ns)
    assert out["result"] == "forward" and out["flow_state"] == []
    assert sorted(o["port"] for o in out["outputs"]) == ["tenant.vm1", "tenant.vm3"]
    na = V6(2, 1) + ",icmpv6_type=136,nd_target=2001:db8:a::2"
    out = t("tenant.vm2", na)
    assert out["result"] == "forward" and out["flow_state"] == []
    out = t("tenant.vm1", V6(1, 2) + ",icmpv6_type=136,nd_target=2001:db8:a::1")
    assert out["result"] == "forward" and out["flow_state"] == []       # vm1's ND is no connection either
    rs = "eth_src=02:00:00:00:00:02,ipv6_src=fe80::2,icmpv6_type=133"
    assert t("tenant.vm2", rs)["result"] == "forward"
    # the NA did not open anything: an echo from vm2 is still refused
    assert t("tenant.vm2", V6(2, 1) + ",icmpv6_type=128,icmp_id=3")["result"] == "drop"


def test_neighbor_discovery_passes_even_a_drop_everything_chain():
    t = Tracer6(BRIDGE + "chains:\n  fw:\n    - {action: drop}\n")
    assert t("tenant.vm2", V6(2, 1) + ",icmpv6_type=136,nd_target=2001:db8:a::2")["result"] == "forward"
    assert t("tenant.vm2", V6(2, 1) + ",icmpv6_type=128,icmp_id=3")["result"] == "drop"


# -- reject --------------------------------------------------------------------------------------------------
REJECT = BRIDGE + """
chains:
  fw:
    - {match: {proto: tcp, dst_port: 22}, action: reject}
    - {match: {proto: udp, dst_port: 9}, action: reject}
"""


def _valid_checksums(frame: Ether) -> bytes:
    """The frame rebuilt by scapy with every checksum recomputed (compare with the frame as built)."""
    f = frame.copy()
    for layer, name in ((TCP, "chksum"), (UDP, "chksum"), (ICMPv6DestUnreach, "cksum")):
        if f.haslayer(layer):
            delattr(f[layer], name)
    return bytes(Ether(bytes(f)))


def test_reject_of_ipv6_tcp_is_a_rst_from_the_destination():
    t = Tracer6(REJECT)
    out = t("tenant.vm1", V6(1, 2) + ",proto=tcp,tp_src=40000,tp_dst=22,tcp_flags=syn,tcp_seq=1000")
    assert out["result"] == "drop" and out["drop_reason"] == "filter_reject"
    assert [g["port"] for g in out["generated"]] == ["tenant.vm1"]
    s = scapy_of(t.last, generated=True)
    assert (s[IPv6].src, s[IPv6].dst, s[TCP].sport, s[TCP].dport) == ("2001:db8:a::2", "2001:db8:a::1", 22, 40000)
    assert s[TCP].flags == "RA" and s[TCP].ack == 1001
    assert s[Ether].src == "02:00:00:00:00:02" and s[Ether].dst == "02:00:00:00:00:01"
    assert bytes(s) == _valid_checksums(s)


def test_reject_of_ipv6_udp_is_icmpv6_admin_prohibited_carrying_the_packet():
    t = Tracer6(REJECT)
    out = t("tenant.vm1", V6(1, 2) + ",proto=udp,tp_src=5000,tp_dst=9,hop_limit=17")
    assert out["result"] == "drop" and out["drop_reason"] == "filter_reject"
    s = scapy_of(t.last, generated=True)
    assert s[IPv6].src == "2001:db8:a::2" and s[IPv6].dst == "2001:db8:a::1" and s[IPv6].nh == 58
    assert (s[ICMPv6DestUnreach].type, s[ICMPv6DestUnreach].code) == (1, 1)
    assert (s[IPerror6].src, s[IPerror6].dst, s[IPerror6].hlim) == ("2001:db8:a::1", "2001:db8:a::2", 17)
    assert (s[UDPerror].sport, s[UDPerror].dport) == (5000, 9)
    assert bytes(s) == _valid_checksums(s)
    # the generated error is itself related to the connection it reports (it parses back to it)
    gen = t.last.generated[0].packet
    assert gen.is_icmpv6_error and gen.inner_tp_dst == 9


def test_no_icmpv6_answer_to_an_icmpv6_error_or_a_multicast_packet():
    t = Tracer6(BRIDGE + "chains:\n  fw:\n    - {match: {proto: icmpv6}, action: reject}\n")
    err = V6(1, 2) + ",icmpv6_type=1,icmpv6_code=4,inner_proto=udp,inner_tp_src=1,inner_tp_dst=2"
    out = t("tenant.vm1", err)
    assert out["drop_reason"] == "filter_reject" and out["generated"] == []
    out = t("tenant.vm1", "eth_src=02:00:00:00:00:01,ipv6_src=2001:db8:a::1,ipv6_dst=ff02::1,icmpv6_type=128")
    assert out["drop_reason"] == "filter_reject" and out["generated"] == []
    echo = V6(1, 2) + ",icmpv6_type=128,icmp_id=9,icmp_seq=2"
    out = t("tenant.vm1", echo)
    s = scapy_of(t.last, generated=True)
    assert s[ICMPv6DestUnreach].code == 1 and bytes(s) == _valid_checksums(s)
    # the carried echo header is the one the sender sent, its checksum included
    sent = Ether(build(parse_spec(echo)))
    assert s[ICMPv6EchoRequest].cksum == sent[ICMPv6EchoRequest].cksum
    assert s[ICMPv6EchoRequest].id == 9 and s[ICMPv6EchoRequest].seq == 2


def test_the_icmpv6_error_built_for_a_reject_round_trips_through_the_codec():
    from packet.codec import parse
    t = Tracer6(REJECT)
    t("tenant.vm1", V6(1, 2) + ",proto=udp,tp_src=5000,tp_dst=9")
    gen = t.last.generated[0].packet
    assert parse(build(gen)) == gen
    assert ip6_2int("2001:db8:a::1") == gen.ipv6_dst
    assert result_json(t.last)["generated"][0]["packet"]["icmpv6_type"] == 1


def test_megaflow_of_ipv6_prefix_is_128_bit():
    t = Tracer6(CIDR)
    spec = V6(1, 2, src="2001:db8:66:5::") + ",proto=tcp,tp_src=4000,tp_dst=22"
    t("tenant.vm1", spec)
    m = dict(flow_match(t.last))
    assert m["ipv6_src"] == ((1 << 48) - 1) << 80 and m["eth_type"] == FULL



# -- the load balancer on an IPv6 router ---------------------------------------------------------------------
LB = HOSTS + """
bridges:
  tenant:
    ports:
      be1: {host: host-a, interface: tap-be1}
      be2: {host: host-b, interface: tap-be2}
      r1: {peer: r1.tenant}
    mac_table: {"02:00:00:00:00:11": be1, "02:00:00:00:00:12": be2}
routers:
  r1:
    ports:
      tenant: {address: [10.0.0.1/24, "2001:db8:1::1/64"], mac: "02:0a:00:00:00:01"}
      uplink: {address: "2001:db8:ff::2/64", mac: "02:0a:00:00:00:02", host: host-a, interface: up0}
    routes:
      - {dst: "::/0", gateway: "2001:db8:ff::1", port: uplink}
    nd_table:
      "2001:db8:ff::1": "02:0b:00:00:00:01"
      "2001:db8:1::11": "02:00:00:00:00:11"
      "2001:db8:1::12": "02:00:00:00:00:12"
    inbound_filter: r1-in
    load_balancer: lb1
chains:
  r1-in:
    - {match: {ct: return}, action: accept}
    - {match: {in_port: r1.tenant}, action: accept}
    - {action: drop}
load_balancers:
  lb1:
    vips:
      - {address: "2001:db8:ff::10", port: 80, pool: web}
      - {address: "2001:db8:ff::20", port: 443, pool: tls, sticky_source_ip: true}
    pools:
      web:
        members:
          - {address: "2001:db8:1::11", port: 8080}
          - {address: "2001:db8:1::12", port: 8080}
      tls:
        members:
          - {address: "2001:db8:1::11", port: 8443}
          - {address: "2001:db8:1::12", port: 8443}
"""
MEMBERS = {"2001:db8:1::11": ("tenant.be1", "02:00:00:00:00:11"), "2001:db8:1::12": ("tenant.be2", "02:00:00:00:00:12")}


def _to_vip(client: int, sport: int, vip: str = "2001:db8:ff::10", port: int = 80) -> str:
    return (f"eth_src=02:0b:00:00:00:01,eth_dst=02:0a:00:00:00:02,ipv6_src=2001:db8:99::{client:x},"
            f"ipv6_dst={vip},proto=tcp,tp_src={sport},tp_dst={port},tcp_flags=syn,hop_limit=60")


def test_an_ipv6_vip_is_dnated_to_a_member_and_the_reply_comes_back_from_the_vip():
    t = Tracer6(LB)
    out = t("r1.uplink", _to_vip(5, 40000))
    assert out["result"] == "forward" and len(out["outputs"]) == 1
    o = out["outputs"][0]
    member = o["packet"]["ipv6_dst"]
    port, mac = MEMBERS[member]
    assert o["port"] == port and o["packet"]["eth_dst"] == mac and o["packet"]["tp_dst"] == 8080
    s = scapy_of(t.last)
    assert (s[IPv6].src, s[IPv6].dst, s[IPv6].hlim, s[TCP].dport) == ("2001:db8:99::5", member, 59, 8080)
    assert bytes(s) == _valid_checksums(s)
    kinds = {st["kind"]: st for st in out["flow_state"]}
    assert kinds["fwd_dnat"]["key"] == "[2001:db8:99::5]:40000>[2001:db8:ff::10]:80/6@r1"
    assert kinds["fwd_dnat"]["binding"] == f"[{member}]:8080"
    assert kinds["rev_dnat"]["key"] == f"[{member}]:8080>[2001:db8:99::5]:40000/6@r1"
    assert kinds["rev_dnat"]["binding"] == "[2001:db8:ff::10]:80"
    # the entries replicate as any flow state: a FlowStateBatch carries the 128-bit keys and bindings intact
    batch = m.FlowStateBatch(tuple(m.FlowStateEntry(e.kind, tuple(e.key), e.value, 60.0)
                                   for e in t.last.flow_state), 0)
    assert codec.decode(codec.encode(batch)) == batch
    # the member's reply leaves the uplink from the VIP
    reply = (f"eth_src={mac},eth_dst=02:0a:00:00:00:01,ipv6_src={member},ipv6_dst=2001:db8:99::5,proto=tcp,"
             "tp_src=8080,tp_dst=40000,tcp_flags=syn|ack")
    out = t(port, reply)
    assert out["result"] == "forward" and [o["port"] for o in out["outputs"]] == ["r1.uplink"]
    s = scapy_of(t.last)
    assert (s[IPv6].src, s[TCP].sport, s[IPv6].dst, s[TCP].dport) == ("2001:db8:ff::10", 80, "2001:db8:99::5", 40000)
    assert s[Ether].dst == "02:0b:00:00:00:01" and bytes(s) == _valid_checksums(s)
    # the same connection again goes to the same member
    again = t("r1.uplink", _to_vip(5, 40000).replace("tcp_flags=syn", "tcp_flags=ack"))
    assert again["outputs"][0]["packet"]["ipv6_dst"] == member


def test_an_icmpv6_error_from_a_member_about_a_vip_connection_is_translated_back():
    t = Tracer6(LB)
    member = t("r1.uplink", _to_vip(5, 40000))["outputs"][0]["packet"]["ipv6_dst"]
    port, mac = MEMBERS[member]
    err = (f"eth_src={mac},eth_dst=02:0a:00:00:00:01,ipv6_src={member},ipv6_dst=2001:db8:99::5,icmpv6_type=1,"
           f"icmpv6_code=4,inner_ipv6_src=2001:db8:99::5,inner_ipv6_dst={member},inner_proto=tcp,"
           "inner_tp_src=40000,inner_tp_dst=8080")
    out = t(port, err)
    assert out["result"] == "forward" and [o["port"] for o in out["outputs"]] == ["r1.uplink"]
    s = scapy_of(t.last)
    assert s[IPv6].src == "2001:db8:ff::10" and s[IPerror6].dst == "2001:db8:ff::10"
    assert s[TCPerror].dport == 80 and s[TCPerror].sport == 40000


def test_ipv6_vip_connections_spread_and_a_sticky_vip_keeps_each_client_on_one_member():
    t = Tracer6(LB)
    members = {t("r1.uplink", _to_vip(c, 40000))["outputs"][0]["packet"]["ipv6_dst"] for c in range(1, 30)}
    assert members == set(MEMBERS)
    chosen = set()
    for c in range(1, 16):
        firsts = {t("r1.uplink", _to_vip(c, sp, "2001:db8:ff::20", 443))["outputs"][0]["packet"]["ipv6_dst"]
                  for sp in (41000, 41001, 41002, 41003)}
        assert len(firsts) == 1                           # every connection of one client: one member
        chosen |= firsts
    assert chosen == set(MEMBERS)


def test_an_ipv6_packet_to_another_address_is_not_the_vip_and_meets_the_filter():
    t = Tracer6(LB)
    out = t("r1.uplink", _to_vip(5, 40000, vip="2001:db8:1::11", port=8080))
    assert out["result"] == "drop" and out["drop_reason"] == "filter_drop"
