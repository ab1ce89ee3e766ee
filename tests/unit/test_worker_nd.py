"""IPv6 next-hop resolution through the worker's neighbor broker (issue 15), with workers and the datapath wired
in one process (tests/inprocess.py: the real codec, the store's fragments, no clock).

A packet routed to an IPv6 next hop whose MAC nobody knows parks; the router's neighbor solicitation leaves
the uplink once (to the solicited-node multicast address); the advertisement resumes the packet.  Unanswered,
the solicitation is retried with jitter and the packet is dropped at the timeout.  A stale entry still used by
an installed flow is solicited again before it expires.
"""

from __future__ import annotations

import pytest

from backchannel import messages as m
from backchannel.codec import encode
from packet.addr import ip6_2int, ip_text, ipv6_multicast_mac, solicited_node
from packet.packet import ND_NEIGHBOR_SOLICIT
from tests.inprocess import Wire, frame

TOPO6 = """
version: 1
hosts: {host-a: {tunnel_ip: 127.0.0.11}}
bridges:
  tenant:
    ports:
      vm1: {host: host-a, interface: tap-vm1}
      up: {peer: r1.tenant}
    mac_table: {"02:00:00:00:00:01": vm1}
routers:
  r1:
    ports:
      tenant: {address: "2001:db8:1::1/64", mac: "02:0a:00:00:00:01"}
      uplink: {address: "2001:db8:ff::2/64", mac: "02:0a:00:00:00:02", host: host-a, interface: up0}
    routes:
      - {dst: "::/0", gateway: "2001:db8:ff::1", port: uplink}
"""
GW = ip6_2int("2001:db8:ff::1")
GW_MAC = 0x020B00000001
LL_UPLINK = ip6_2int("fe80::a:ff:fe00:2")
OUT = "eth_src=02:00:00:00:00:01,eth_dst=02:0a:00:00:00:01,ipv6_src=2001:db8:1::5,ipv6_dst=2001:db8:4242::1"
NA = ("eth_src=02:0b:00:00:00:01,eth_dst=02:0a:00:00:00:02,ipv6_src=2001:db8:ff::1,ipv6_dst=fe80::a:ff:fe00:2,"
      "icmpv6_type=136,nd_target=2001:db8:ff::1,nd_tll=02:0b:00:00:00:01")


@pytest.fixture
def wire():
    w = Wire(topo=TOPO6)
    yield w
    w.close()


def _counter(wire, name: str) -> int:
    return sum(w.arp.counters[name] for w in wire.workers)


def _is_solicitation(p) -> bool:
    return (p.icmpv6_type == ND_NEIGHBOR_SOLICIT and p.nd_target == GW and p.ipv6_dst == solicited_node(GW)
            and p.eth_dst == ipv6_multicast_mac(solicited_node(GW)) and p.ipv6_src == LL_UPLINK
            and p.nd_sll == 0x020A00000002 and p.hop_limit == 255)


def test_a_packet_to_an_unresolved_ipv6_next_hop_parks_and_resumes_on_the_advertisement(wire):
    wire.inject("tenant.vm1", frame(OUT + ",proto=udp,tp_src=5000,tp_dst=53,hop_limit=9"))
    [ns] = wire.outputs("r1.uplink")
    assert _is_solicitation(ns)
    assert sum(w.parking.size for w in wire.workers) == 1
    assert _counter(wire, "nd_requests") == 1 and _counter(wire, "arp_requests") == 0
    # a second packet to the same next hop waits too: no second solicitation
    wire.inject("tenant.vm1", frame(OUT + ",proto=udp,tp_src=5001,tp_dst=53,hop_limit=9"))
    assert wire.outputs("r1.uplink") == []
    assert sum(w.parking.size for w in wire.workers) == 2
    wire.inject("r1.uplink", frame(NA))
    out = wire.outputs("r1.uplink")
    assert sorted(p.tp_src for p in out) == [5000, 5001]
    assert all((p.eth_src, p.eth_dst, p.hop_limit) == (0x020A00000002, GW_MAC, 8) for p in out)
    assert sum(w.parking.size for w in wire.workers) == 0
    assert _counter(wire, "nd_resolved") >= 1
    learned = [msg for msg in wire.to_supervisor if type(msg) is m.ArpLearned]
    assert [(msg.router, msg.ip, msg.mac) for msg in learned] == [("r1", GW, GW_MAC)]   # to the store, as ARP
    # the neighbor table as `shardnet ctl arp-table` reads it (DumpTable, through the codec), IPv6 readable
    for i in range(len(wire.workers)):
        wire.to_workers[i].send(encode(m.DumpTable(7, "arp", "r1")))
    wire.pump()
    rows = [row for a in wire.to_supervisor if type(a) is m.Answer and a.req_id == 7 for row in a.body]
    assert {(ip_text(ip), mac) for ip, mac, _age in rows} == {("2001:db8:ff::1", GW_MAC)}


def test_an_unanswered_solicitation_is_retried_then_the_packet_is_dropped_at_the_timeout(wire):
    wire.inject("tenant.vm1", frame(OUT + ",proto=tcp,tp_src=5000,tp_dst=80"))
    assert [_is_solicitation(p) for p in wire.outputs("r1.uplink")] == [True]
    sent = 1
    for _ in range(12):                                  # 6 s in half-second steps: past the 5 s timeout
        wire.tick(0.5)
        sent += sum(_is_solicitation(p) for p in wire.outputs("r1.uplink"))
    assert _counter(wire, "nd_retries") == sent - 1 >= 2
    assert _counter(wire, "nd_timeouts") == 1 and _counter(wire, "arp_timeouts") == 0
    assert sum(w.parking.size for w in wire.workers) == 0
    # dropped when its resolution timed out, or its parking deadline (as long) came first
    assert sum(w.drops["arp_timeout"] + w.drops["parked_timeout_arp"] for w in wire.workers) == 1
    # the parked upcall was answered with a (temporary) drop
    assert [a.actions for a in wire.answers(m.FlowPut)] == [(("drop",),)]
    wire.tick(5.0)
    assert wire.outputs("r1.uplink") == []              # given up: no more solicitations


def test_a_stale_ipv6_neighbor_entry_in_use_is_solicited_again(wire):
    wire.inject("tenant.vm1", frame(OUT + ",proto=udp,tp_src=5000,tp_dst=53"))
    wire.outputs("r1.uplink")
    wire.inject("r1.uplink", frame(NA))
    assert len(wire.outputs("r1.uplink")) == 1
    assert wire.answers(m.FlowPut)                       # installed, tagged with the neighbor entry
    for w in wire.workers:
        w.state.arp_stale_s = 10.0
    wire.tick(11.0)
    refresh = [p for p in wire.outputs("r1.uplink") if _is_solicitation(p)]
    assert len(refresh) == 1 and _counter(wire, "nd_refreshes") == 1
    # the answer refreshes the entry; the flow was not torn down meanwhile
    wire.inject("r1.uplink", frame(NA))
    assert _counter(wire, "nd_resolved") >= 2
