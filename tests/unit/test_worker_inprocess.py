"""Workers and the datapath wired together in one process (as Faucet drives a Valve against a fake table).

``Wire`` builds N ``Worker``s and one ``DatapathProcess`` (in-memory datapath) and passes every message between
them through the real codec: the datapath's links to the workers are lists of encoded frames, the workers'
outboxes go to ``DatapathProcess.handle``, and what they send the supervisor is served here by the real store
parts (StoreMirror fragments, StoreNatAllocator leases) over an in-process store.  No sockets, no processes,
no clock: ``now`` is passed in, so parking deadlines and expiry are exact.
"""

from __future__ import annotations

import pytest

from backchannel import messages as m
from backchannel.codec import encode
from packet.addr import ip2int
from packet.codec import parse
from tests.inprocess import VM1, Wire, frame, from_internet, to_internet, vm1_to_vm2


@pytest.fixture
def wire():
    w = Wire()
    yield w
    w.close()


def test_a_new_flow_is_answered_by_seq_and_installed_under_the_datapaths_own_key(wire):
    wire.dp.handle(m.TakeLatencies(0), wire.now)           # a reader of the setup latencies: they are kept
    wire.inject("tenant.vm1", vm1_to_vm2(2000))
    [up] = [u for b in wire.sent_to_workers(m.UpcallBatch) for u in b.upcalls]
    assert up._fields == ("seq", "port", "frame")
    [put] = wire.answers(m.FlowPut)
    # the match: what the decision read (a conntrack filter: the whole 5-tuple, the bridge: its MACs, VLAN)
    fields = dict(put.match)
    assert put.seq == up.seq and put.actions == (("output", "tenant.vm2"),)
    assert {"in_port", "eth_src", "eth_dst", "vlan", "ip_src", "ip_dst", "proto", "tp_src", "tp_dst"} <= set(fields)
    assert "ttl" not in fields and "tos" not in fields and set(fields.values()) == {-1}
    assert "bridge:tenant" in put.tags and "port:tenant.vm1" in put.tags
    [flow] = [f for f in wire.dp.dp.cache.flows.values() if f.id > 0]
    assert flow.id == up.seq and flow.key[0] == "tenant.vm1" and flow.tags == put.tags
    # a SYN: its SYN-ACK's flow is set up with it, under the worker's own id (test_replies_ahead.py)
    [ahead] = wire.answers(m.FlowAhead)
    assert ahead.flow_id < 0 and ahead.key[0] == "tenant.vm2" and ahead.actions == (("output", "tenant.vm1"),)
    assert [p.tp_src for p in wire.outputs("tenant.vm2")] == [2000]
    assert wire.dp.latencies and wire.dp.counters["datapath_late_answers"] == 0
    # the worker's table names the flow by the same id
    assert [up.seq in w.flows.flows for w in wire.workers].count(True) == 1


def test_packets_held_back_while_the_first_is_simulated_are_executed_with_its_actions(wire):
    wire.dp.handle(m.Inject("tenant.vm1", (vm1_to_vm2(2001), vm1_to_vm2(2001, "ack"), vm1_to_vm2(2001, "ack"))),
                   wire.now)
    wire.pump()
    assert len([u for b in wire.sent_to_workers(m.UpcallBatch) for u in b.upcalls]) == 1
    assert wire.dp.disp.counters["dispatcher_held"] == 2
    assert len(wire.outputs("tenant.vm2")) == 3


def test_a_consumed_packet_is_executed_not_installed_and_its_reply_is_a_packet_out(wire):
    arp = frame(f"{VM1},eth_dst=ff:ff:ff:ff:ff:ff,arp_op=1,arp_spa=10.0.0.2,arp_tpa=10.0.0.1")
    wire.inject("tenant.vm1", arp)
    [ex] = wire.answers(m.Execute)
    assert ex.actions == () and not wire.answers(m.FlowPut) and not wire.dp.dp.cache.flows
    [out] = wire.answers(m.PacketOut)
    assert out.actions == (("output", "tenant.vm1"),)
    [reply] = wire.outputs("tenant.vm1")
    assert reply.arp_op == 2 and reply.arp_spa == ip2int("10.0.0.1")


def test_a_malformed_frame_is_answered_with_an_execute_drop(wire):
    wire.dp.disp.upcall("tenant.vm1", b"\x00" * 10, parse(vm1_to_vm2(1)), ("bogus",), wire.now)
    wire.pump()
    [ex] = wire.answers(m.Execute)
    assert ex.actions == (("drop",),) and not wire.dp.dp.cache.flows
    assert sum(w.drops["malformed_truncated"] for w in wire.workers) == 1


def test_a_missing_fragment_parks_is_requested_once_and_resumes(wire):
    wire.inject("tenant.vm1", vm1_to_vm2(3000), vm1_to_vm2(3001), vm1_to_vm2(3002))
    requests = [r for r in wire.to_supervisor if type(r) is m.FragmentRequest]
    # each worker asked for what its simulations needed, once per object
    for w in range(2):
        names = [(r.kind, r.name) for r in requests if r.worker == w]
        assert len(names) == len(set(names))
    assert sum(w.c["fragment_requests"] for w in wire.workers) == len(requests) > 0
    assert len(wire.answers(m.FlowPut)) == 3 and len(wire.outputs("tenant.vm2")) == 3
    assert sum(w.parking.size for w in wire.workers) == 0


def test_a_parked_simulation_past_its_deadline_becomes_a_temporary_drop(wire):
    w = wire.workers[0]
    wire.dp.disp.n = 1
    w.topo.add("port", "tenant.vm1", None)             # the port is "absent": the packet waits for it
    w.topo.is_absent = lambda kind, name: True
    wire.dp.handle(m.Inject("tenant.vm1", (vm1_to_vm2(3100),)), wire.now)
    wire.pump()
    assert w.parking.size == 1 and not wire.answers(m.FlowPut)
    assert w.parking.next_deadline() == pytest.approx(wire.now + w.cfg.park_timeout_s)
    wire.tick(w.cfg.park_timeout_s + 0.1)
    [put] = wire.answers(m.FlowPut)
    assert put.actions == (("drop",),) and put.hard_s == w.cfg.drop_flow_s
    assert w.parking.size == 0 and w.parking.next_deadline() is None
    assert w.drops["parked_timeout_fragment"] == 1


def test_snat_waits_for_a_lease_then_rewrites_with_a_port_of_the_block(wire):
    wire.inject("tenant.vm1", *[to_internet(4000 + i) for i in range(3)])
    leases = [r for r in wire.to_supervisor if type(r) is m.LeaseRequest]
    assert leases and all(r.device == "r1" for r in leases)
    granted = wire.sent_to_workers(m.LeaseGranted)
    # blocks are 64-aligned: the one holding 5000 (4992) sticks out of the range 5000-65535 and may be granted
    assert granted and all(g.block + 64 > 5000 for g in granted)
    outs = wire.outputs("r1.uplink")
    assert len(outs) == 3
    blocks = {g.block for g in granted}
    for p in outs:
        assert p.ip_src == ip2int("198.51.100.100")
        assert p.tp_src - p.tp_src % 64 in blocks and 5000 <= p.tp_src <= 65535     # never outside the range


def test_an_exhausted_range_fails_the_waiting_packets():
    wire = Wire()
    try:
        wire.leases.lease = lambda *a: None              # the allocator has nothing left
        wire.inject("tenant.vm1", to_internet(4100))
        [put] = wire.answers(m.FlowPut)
        assert put.actions == (("drop",),)
        assert sum(w.drops["nat_exhausted"] for w in wire.workers) == 1
    finally:
        wire.close()


def test_state_is_relayed_to_the_worker_that_sees_the_reply_before_the_install():
    # the uplink is pinned to worker 1: a reply from the internet is simulated there, with worker 0's state
    wire = Wire(port_workers={"r1.uplink": 1})
    try:
        sport = next(p for p in range(5000, 6000) if wire.dp.disp.worker_for(parse(to_internet(p)), "x") == 0)
        wire.inject("tenant.vm1", to_internet(sport))
        # the Fanout with the state left worker 0 before its FlowPut
        kinds = [type(msg) for msg in wire.to_dp if type(msg) in (m.Fanout, m.FlowPut)]
        assert kinds.index(m.Fanout) < kinds.index(m.FlowPut)
        got = [b for b in (msg for msg in wire.seen[1]) if type(b) is m.FlowStateBatch]
        assert got and {e.kind for b in got for e in b.entries} >= {"conntrack", "rev_snat"}
        [out] = wire.outputs("r1.uplink")
        wire.inject("r1.uplink", from_internet("198.51.100.100", out.tp_src))
        [back] = wire.outputs("tenant.vm1")
        assert back.ip_dst == ip2int("10.0.0.2") and back.tp_dst == sport
        ports = [{u.port for msg in seen if type(msg) is m.UpcallBatch for u in msg.upcalls} for seen in wire.seen]
        assert "r1.uplink" in ports[1] and "r1.uplink" not in ports[0]
    finally:
        wire.close()


def test_a_topology_change_invalidates_the_flows_tagged_with_the_object(wire):
    wire.inject("tenant.vm1", vm1_to_vm2(2100, "ack"), to_internet(2101))      # no SYN: no reply set up ahead
    assert len(wire.dp.dp.cache.flows) == 2
    routed = [f for f in wire.dp.dp.cache.flows.values() if "router:r1" in f.tags]
    assert len(routed) == 1
    for i in range(2):
        wire.to_workers[i].send(encode(m.TopologyChanged("router", "r1")))
    wire.pump()
    deletes = [fid for d in wire.answers(m.FlowDelete) for fid in d.flows]
    assert deletes == [routed[0].id]
    assert [f.key[0] for f in wire.dp.dp.cache.flows.values()] == ["tenant.vm1"]
    assert all("router:r1" not in f.tags for f in wire.dp.dp.cache.flows.values())


def test_a_relayed_mac_move_invalidates_the_flows_that_read_it(wire):
    mac9 = "02:00:00:00:00:09"
    to9 = f"{VM1},eth_dst={mac9},ip_src=10.0.0.2,ip_dst=10.0.0.9,proto=udp,tp_src=7,tp_dst=7"
    for i in range(2):                                   # another agent learned it behind vm2
        wire.to_workers[i].send(encode(m.MacLearned("tenant", 0, 0x020000000009, "tenant.vm2", -1)))
    wire.inject("tenant.vm1", frame(to9))
    [flow] = [f for f in wire.dp.dp.cache.flows.values() if f.key[0] == "tenant.vm1"]
    assert "mac:tenant:0:020000000009" in flow.tags and wire.answers(m.FlowPut)[-1].actions == (
        ("output", "tenant.vm2"),)
    moved = m.MacLearned("tenant", 0, 0x020000000009, "tenant.vm3", -1)
    for i in range(2):
        wire.to_workers[i].send(encode(moved))
    wire.pump()
    assert not [f for f in wire.dp.dp.cache.flows.values() if f.key[0] == "tenant.vm1"]
    # the next packet goes where the MAC is now (vm3, on host-b: through the tunnel)
    wire.inject("tenant.vm1", frame(to9))
    assert wire.answers(m.FlowPut)[-1].actions[-1][0] == "tunnel"


def test_expired_state_invalidates_the_flows_that_used_it(wire):
    wire.inject("tenant.vm1", vm1_to_vm2(2300))
    [flow] = [f for f in wire.dp.dp.cache.flows.values() if f.key[0] == "tenant.vm1"]
    assert any(t.startswith("ct:") for t in flow.tags)
    # idle in the datapath and in the state: the datapath reports the removal, the state expires
    wire.tick(70.0)
    wire.tick(70.0)
    assert not wire.dp.dp.cache.flows
    assert sum(len(w.flows) for w in wire.workers) == 0
    assert sum(w.c["state_expired"] for w in wire.workers) >= 1


def test_datapath_eviction_and_replacement_are_reported_to_the_installing_worker():
    wire = Wire(n_workers=1)
    try:
        wire.dp.dp.cache.max_flows = 2
        wire.inject("tenant.vm1", vm1_to_vm2(1, "ack"), vm1_to_vm2(2, "ack"), vm1_to_vm2(3, "ack"))
        removed = wire.sent_to_workers(m.FlowRemoved)
        assert [(r.flows, r.reason) for r in removed] == [((1,), "evicted")]
        assert sorted(wire.workers[0].flows.flows) == [2, 3]
    finally:
        wire.close()


def test_stats_and_state_commands_have_their_own_answers(wire):
    wire.inject("tenant.vm1", vm1_to_vm2(2400, "ack"))
    for i in range(2):
        wire.to_workers[i].send(encode(m.StatsRequest(7)))
        wire.to_workers[i].send(encode(m.DumpState(8)))
        wire.to_workers[i].send(encode(m.DumpState(0)))          # req_id 0: no answer wanted
    wire.dp.handle(m.StatsRequest(7), wire.now)
    wire.dp.handle(m.DumpFlows(9), wire.now)
    wire.pump()
    replies = [r for r in wire.to_supervisor if type(r) is m.StatsReply]
    assert sorted(r.worker for r in replies) == [-1, 0, 1]
    states = [r for r in wire.to_supervisor if type(r) is m.Answer and r.req_id == 8]
    assert len(states) == 2 and sum(len(r.body) for r in states) >= 1
    [flows] = [r for r in wire.to_supervisor if type(r) is m.Answer and r.req_id == 9]
    [[key, worker, hits, tags, flow_id]] = flows.body
    assert key[0] == "tenant.vm1" and flow_id == wire.answers(m.FlowPut)[0].seq


def test_outputs_to_ports_no_host_binds_are_dropped_and_counted(wire):
    wire.inject("tenant.vm1", frame(f"{VM1},eth_dst=ff:ff:ff:ff:ff:ff,ip_src=10.0.0.2,ip_dst=10.0.0.255,"
                                    "proto=udp,tp_src=9,tp_dst=9"))
    [put] = wire.answers(m.FlowPut)
    outs = [a for a in put.actions if a[0] in ("output", "tunnel")]
    assert ("output", "tenant.vm2") in outs and any(a[0] == "tunnel" for a in outs)
    assert all(a != ("output", "tenant.vm4") for a in outs)
    assert sum(w.c["unbound_outputs"] for w in wire.workers) == 1


# Issue 16, item 4: two routers sharing a bridge through their interior ports; the edge router's default route
# points at its interior port with no gateway.  The worker carries what a device generates on an interior port
# into the peer device, as the trace does (tests/scenario/test_trace_fidelity.py).
TWO_ROUTERS = """
version: 1
hosts: {host-a: {tunnel_ip: 127.0.0.11}}
bridges:
  br:
    ports:
      edge: {peer: edge.in}
      tenant: {peer: tenant.in}
routers:
  edge:
    ports:
      ext: {address: 180.0.1.2/24, mac: "02:0a:00:00:01:02", host: host-a, interface: t1}
      in: {address: 10.0.0.254/24, mac: "02:0a:00:00:00:fe"}
    routes:
      - {dst: 0.0.0.0/0, port: in}
  tenant:
    ports:
      in: {address: 10.0.2.254/24, mac: "02:0a:00:00:02:fe"}
    routes:
      - {dst: 0.0.0.0/0, port: in}
"""
PINGER = "eth_src=02:00:00:00:01:17,eth_dst=02:0a:00:00:01:02,ip_src=180.0.1.23"


def test_a_ping_across_two_routers_and_a_bridge_is_answered_end_to_end():
    wire = Wire(topo=TWO_ROUTERS)
    try:
        # the pinger ARPs for its gateway first (the edge router learns it), then pings the tenant router
        wire.inject("edge.ext", frame("eth_src=02:00:00:00:01:17,eth_dst=ff:ff:ff:ff:ff:ff,arp_op=1,"
                                      "arp_sha=02:00:00:00:01:17,arp_spa=180.0.1.23,arp_tpa=180.0.1.2"))
        [arp_reply] = wire.outputs("edge.ext")
        assert arp_reply.arp_op == 2
        for seq in (1, 2, 3):
            if seq == 3:
                # the entry vanishes: with every fragment cached now, the request is answered and learned within
                # the ping's own simulation, which parks and resumes at once
                for i in range(2):
                    wire.to_workers[i].send(encode(m.TableEntryRemoved("arp", "edge", 0, ip2int("10.0.2.254"))))
                wire.pump()
            wire.inject("edge.ext", frame(PINGER + f",ip_dst=10.0.2.254,proto=icmp,icmp_type=8,icmp_id=7,"
                                          f"icmp_seq={seq}"))
            [reply] = wire.outputs("edge.ext")
            assert (reply.ip_src, reply.ip_dst) == (ip2int("10.0.2.254"), ip2int("180.0.1.23"))
            assert (reply.icmp_type, reply.icmp_id, reply.icmp_seq, reply.ttl) == (0, 7, seq, 63)
            assert (reply.eth_src, reply.eth_dst) == (0x020A00000102, 0x020000000117)
        # the edge router's ARP request was answered inside the agent: nothing but the replies left it
        assert not any(wire.dp.dp.take_outputs(None).values())
        assert sum(w.arp.counters["arp_resolved"] for w in wire.workers) >= 2
        assert sum(w.parking.size for w in wire.workers) == 0
        assert not [k for w in wire.workers for k in w.drops if k.startswith("generated_")]
        # the pings were answered by the agent: executed, never installed as flows
        assert len(wire.answers(m.Execute)) == 4 and not wire.answers(m.FlowPut)
    finally:
        wire.close()


# Issue 16, item 5 (MidoNet's IcmpErrorNatTest): the far router has no route to the DNAT target; its net
# unreachable comes back through the near router, translated back by the bindings the dropped SYN created.
ICMP_NAT = """
version: 1
hosts: {host-a: {tunnel_ip: 127.0.0.11}}
routers:
  near:
    ports:
      left: {address: 172.19.0.2/24, mac: "02:0a:08:06:04:01", host: host-a, interface: t1}
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


def test_the_icmp_error_about_a_dropped_natted_syn_leaves_translated():
    wire = Wire(topo=ICMP_NAT)
    try:
        wire.inject("near.left", frame("eth_src=02:00:00:00:00:04,eth_dst=02:0a:08:06:04:01,ip_src=172.19.0.4,"
                                       "ip_dst=1.1.1.1,proto=tcp,tp_src=1234,tp_dst=6789,tcp_flags=syn"))
        [err] = wire.outputs("near.left")
        assert (err.ip_src, err.ip_dst, err.ttl, err.icmp_type) == (ip2int("172.20.0.3"), ip2int("172.19.0.4"),
                                                                    63, 3)
        assert (err.inner_ip_src, err.inner_tp_src, err.inner_ip_dst, err.inner_tp_dst) == (
            ip2int("172.19.0.4"), 1234, ip2int("1.1.1.1"), 6789)
        # the SYN itself is dropped (a drop flow), and its bindings are kept
        [put] = wire.answers(m.FlowPut)
        assert put.actions == (("drop",),)
        kinds = sorted(e[0] for w in wire.workers for e in w.state_entries())
        assert {"fwd_dnat", "fwd_snat", "rev_dnat", "rev_snat"} <= set(kinds)
    finally:
        wire.close()
