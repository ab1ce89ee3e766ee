"""Workers and the datapath wired together in one process (as Faucet drives a Valve against a fake table).

``Wire`` builds N ``Worker``s and one ``DatapathProcess`` (in-memory datapath) and passes every message between
them through the real codec: the datapath's links to the workers are lists of encoded frames, the workers'
outboxes go to ``DatapathProcess.handle``, and what they send the supervisor is served here by the real store
parts (StoreMirror fragments, StoreNatAllocator leases) over an in-process store.  No sockets, no processes,
no clock: ``now`` is passed in, so parking deadlines and expiry are exact.  The wiring lives in
tests/inprocess.py (the handler property tests use it too).
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
    wire.inject("tenant.vm1", vm1_to_vm2(2000))
    [up] = [u for b in wire.sent_to_workers(m.UpcallBatch) for u in b.upcalls]
    assert up._fields == ("seq", "port", "frame")
    [put] = wire.answers(m.FlowPut)
    assert put.seq == up.seq and put.match == () and put.actions == (("output", "tenant.vm2"),)
    assert "bridge:tenant" in put.tags and "port:tenant.vm1" in put.tags
    [flow] = wire.dp.dp.cache.flows.values()
    assert flow.id == up.seq and flow.key[0] == "tenant.vm1" and flow.tags == put.tags
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
    assert granted and all(g.block >= 5000 for g in granted)
    outs = wire.outputs("r1.uplink")
    assert len(outs) == 3
    blocks = {g.block for g in granted}
    for p in outs:
        assert p.ip_src == ip2int("198.51.100.100")
        assert p.tp_src - p.tp_src % 64 in blocks


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
    wire.inject("tenant.vm1", vm1_to_vm2(2100), to_internet(2101))
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
    [flow] = wire.dp.dp.cache.flows.values()
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
        wire.inject("tenant.vm1", vm1_to_vm2(1), vm1_to_vm2(2), vm1_to_vm2(3))
        removed = wire.sent_to_workers(m.FlowRemoved)
        assert [(r.flows, r.reason) for r in removed] == [((1,), "evicted")]
        assert sorted(wire.workers[0].flows.flows) == [2, 3]
    finally:
        wire.close()


def test_stats_and_state_commands_have_their_own_answers(wire):
    wire.inject("tenant.vm1", vm1_to_vm2(2400))
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
