"""What the handler and simulation property tests found (tests/fuzz/test_handlers_fuzz.py,
tests/fuzz/test_simulation_fuzz.py), pinned: well-formed messages with contents a handler could not take."""

from __future__ import annotations

from backchannel import messages as m
from backchannel.codec import encode
from engine.datapath.flowcache import FlowCache, compile_actions
from packet.codec import build as build_frame
from packet.codec import parse
from tests.inprocess import VM1, Wire, frame, vm1_to_vm2
from topology.loader import loads_topology
from workers.simulation.result import CONSUMED, FORWARD, FlowStateWrite, MacTableWrite
from workers.simulation.simulate import simulate
from workers.simulation.state import LocalState
from workers.topocache import TopologyCache


def test_a_fragment_record_that_does_not_decode_or_is_not_what_it_names_is_refused_and_counted():
    cache = TopologyCache()
    for kind, name, data in [("bridge", "b", b"\xd3 not json"), ("bridge", "b", b"[" * 100_000),
                             ("router", "b", b'{"v": 1, "kind": "bridge"}'), ("port", "b.p", b"{}"),
                             ("port_groups", "*", b'{"b.p": 5}'), ("port_groups", "*", b"[]")]:
        assert cache.add(kind, name, data) is False
    assert cache.counters["topology_bad_records"] == 6
    wire = Wire()
    try:
        tenant = wire.mirror.fragment("bridge", "tenant")
        assert cache.add("bridge", "tenant", tenant[0][2]) is True
        assert cache.add("bridge", "other", tenant[0][2]) is False           # a record filed under another name
    finally:
        wire.close()


def test_a_worker_refuses_a_junk_fragment_and_does_not_resume_on_it():
    wire = Wire()
    try:
        w = wire.workers[0]
        w.handle(m.Fragment("bridge", "tenant", (("bridge", "tenant", b"junk"),)), wire.now)
        assert w.stats()["topology_bad_records"] == 1 and w.topo.bridge("tenant") is None
    finally:
        wire.close()


def test_an_action_the_frame_cannot_take_is_skipped_and_counted_at_every_execution():
    out = []
    cache = FlowCache(lambda kind, target, key, frame: out.append((target, frame)))
    arp = frame(f"{VM1},eth_dst=ff:ff:ff:ff:ff:ff,arp_op=1,arp_spa=10.0.0.2,arp_tpa=10.0.0.1")
    compiled = compile_actions((("set", "ip_src", 1), ("output", "a"), ("output", "b")))
    cache.execute(compiled, arp, parse(arp))                # an IP rewrite of an ARP frame: both outputs
    assert out == [] and cache.counters["datapath_bad_rewrites"] == 2
    cache.execute(compile_actions((("output", "c"),)), arp, parse(arp))
    assert out == [("c", arp)]


def test_purging_a_worker_that_is_not_one_is_refused_and_counted():
    wire = Wire()
    try:
        wire.inject("tenant.vm1", vm1_to_vm2(2000))
        for bad in (2, -1, 2**40):
            wire.dp.handle(m.PurgeWorker(0, bad), wire.now)
        assert wire.dp.counters["datapath_bad_worker"] == 3
        # the SYN's flow and its SYN-ACK's, set up ahead (worker _reply_ahead)
        assert wire.dp.disp.inflight == [0, 0] and len(wire.dp.dp.cache.flows) == 2
    finally:
        wire.close()


def test_a_learned_mac_on_a_port_the_bridge_does_not_have_floods():
    topo = loads_topology("""
version: 1
hosts: {h: {tunnel_ip: 192.0.2.1}}
bridges:
  b0: {ports: {p0: {host: h, interface: i0}, p1: {host: h, interface: i1}}}
  b1: {ports: {p0: {host: h, interface: i2}}}
""")
    pkt = parse(frame("eth_src=02:00:00:00:00:01,eth_dst=02:00:00:00:00:09,ip_src=10.0.0.1,ip_dst=10.0.0.9"))
    for bogus in ("b1.p0", "b0.nope", "b0", ""):
        state = LocalState()
        state.apply([MacTableWrite("b0", 0, 0x020000000009, bogus)], 0.0)
        res = simulate(pkt, "b0.p0", topo, state, 0.0)
        assert res.result == FORWARD and [o.port for o in res.outputs] == ["b0.p1"]


def test_encoded_hostile_contents_are_refused_before_any_handler():
    """The one that started it: a well-formed FlowStateBatch whose entry key has two elements."""
    wire = Wire()
    try:
        raw = bytes(encode(m.FlowStateBatch((m.FlowStateEntry("conntrack", (1, 2, 6, 3, 4, "x"), None, 1.0),), 0)))
        short = raw.replace(b"\x96\x01\x02\x06\x03\x04\xa1x", b"\x92\x01\x02")      # the key (6 items → 2)
        assert short != raw
        wire.to_workers[0].send(short)
        wire.pump()
        assert wire.workers[0].stats()["worker_backchannel_rejected_field_type"] == 1
        assert not wire.workers[0].state.flow_state
    finally:
        wire.close()


def test_an_icmp_error_about_an_echo_carries_the_echos_first_8_bytes():
    """The carried ICMP header is type, code, checksum, id, seq (it was seq, id: 4 bytes, and a NAT rewrite of
    its id then ran past the frame)."""
    from scapy.layers.inet import ICMPerror
    from scapy.layers.l2 import Ether

    from packet.spec import parse_spec
    from workers.simulation import generate

    echo = parse_spec("ip_src=10.0.0.2,ip_dst=203.0.113.10,proto=icmp,icmp_type=8,icmp_id=203,icmp_seq=25,"
                      "payload_len=12")
    err = generate.icmp_error(echo, 11, 0, 0x020A00000001, 0x0A000001)
    carried = Ether(build_frame(err))[ICMPerror]
    original = Ether(build_frame(echo))["ICMP"]
    assert (carried.type, carried.code, carried.id, carried.seq) == (8, 0, 203, 25)
    assert carried.chksum == original.chksum
    assert parse(build_frame(err)).inner_icmp_id == 203


def test_a_packet_the_agent_answers_itself_creates_no_flow_state():
    """An echo request DNATed (in a bridge's filter) to the router's own address is answered by the router:
    consumed, and the NAT entries made on the way are not kept (no connection goes through)."""
    topo = loads_topology("""
version: 1
hosts: {h: {tunnel_ip: 192.0.2.1}}
bridges:
  b0: {ports: {p0: {host: h, interface: i0}, r: {peer: r0.b0}}, inbound_filter: c}
routers:
  r0: {ports: {b0: {address: 10.0.0.1/24, mac: "02:0a:00:00:00:01"}}}
chains:
  c: [{match: {dst: 10.9.9.9}, action: dnat, targets: [{ip: 10.0.0.1, port: 1-100}]}]
""")
    pkt = parse(frame("eth_src=02:00:00:00:00:02,eth_dst=02:0a:00:00:00:01,ip_src=10.0.0.2,ip_dst=10.9.9.9,"
                      "proto=icmp,icmp_type=8,icmp_id=7,icmp_seq=1"))
    res = simulate(pkt, "b0.p0", topo, LocalState(), 0.0)
    assert res.result == CONSUMED and res.generated
    assert not [e for e in res.effects if type(e) is FlowStateWrite]


def test_an_interface_name_the_kernel_cannot_take_is_a_port_error_not_a_crash():
    """SetPortMap names interfaces: one with a NUL raised ValueError out of the port map (real datapath)."""
    import pytest

    from engine.datapath.afpacket import AfPacketError, AfPacketPort

    with pytest.raises(AfPacketError):
        AfPacketPort("tap\x00x")


def test_a_rejected_later_fragment_is_dropped_with_nothing_generated():
    """A TCP fragment other than the first has no TCP header: a reject rule answers it with no RST (there is
    nothing to build one from) and no ICMP error (none is about a later fragment), on a bridge and on a
    router, IPv4 and IPv6.  Found by tests/unit/test_walk_memo.py's worker differential: the worker raised
    building the RST."""
    from packet.packet import ETH_TYPE_IPV6, Packet
    from workers.simulation.result import DROP

    topo = loads_topology("""
version: 1
hosts: {h: {tunnel_ip: 127.0.0.1}}
bridges:
  b0: {ports: {p0: {host: h, interface: i0}, p1: {host: h, interface: i1}}, inbound_filter: c}
  b1: {ports: {p0: {host: h, interface: i2}, r: {peer: r0.b1}}}
routers:
  r0:
    ports: {b1: {address: [198.51.100.1/24, "2001:db8:1::1/64"], mac: "02:0a:00:00:00:01"}}
    inbound_filter: c
chains:
  c: [{match: {proto: tcp}, action: reject}]
""")
    v4 = Packet(eth_src=2, eth_dst=0x020A00000001, ip_src=0xC6336402, ip_dst=0xC6336403, proto=6, ttl=64, tos=0,
                ip_id=5, frag=2, payload=b"abcdefgh")
    v6 = Packet(eth_src=2, eth_dst=0x020A00000001, eth_type=ETH_TYPE_IPV6, ip_src=None, ip_dst=None,
                ipv6_src=0x20010DB8000100000000000000000002, ipv6_dst=0x20010DB8000100000000000000000003, proto=6,
                hop_limit=64, tclass=0, flow_label=0, ipv6_ext=((44, b"\x00\x00\t\x00\x00\x00\x02"),), frag=2,
                payload=b"abcdefgh")
    for pkt in (v4, v6):
        pkt = parse(build_frame(pkt))
        assert pkt.frag == 2 and pkt.tp_src is None
        for port in ("b0.p0", "b1.p0"):
            res = simulate(pkt, port, topo, LocalState(), 0.0)
            assert (res.result, res.drop_reason, res.generated) == (DROP, "filter_reject", ())
            assert "frag" in res.fields_read                  # a first fragment is answered: the flow says so
