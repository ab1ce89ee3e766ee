"""A connection's first packet also sets up the flow of the reply it draws (workers/worker.py ``_reply_ahead``):
a TCP SYN's SYN-ACK, an echo request's reply.  In process (tests/inprocess.py: real workers, the real datapath
process logic and codec, an in-memory store).

The oracle is the one ``simulate()``: the flow set up ahead must carry what a fresh simulation of the reply, as
its receiver sends it, decides then; and a reply the flow does not match takes the usual upcall."""

from __future__ import annotations

import pytest

from backchannel import messages as m
from packet.addr import ip2int
from packet.codec import parse
from packet.flowkey import SLOT_INDEX
from tests.inprocess import TOPO, VM1, VM2, Wire, frame, from_internet, vm1_to_vm2, vm2_to_vm1
from workers.megaflow import flow_match
from workers.plan import output_actions
from workers.simulation.result import FORWARD
from workers.simulation.simulate import simulate


def _upcalls(wire) -> int:
    return sum(len(b.upcalls) for b in wire.sent_to_workers(m.UpcallBatch))


def _fresh(wire, worker: int, port: str, data: bytes):
    """What a fresh simulation of ``data`` arriving on ``port`` decides now, with the worker's state."""
    w = wire.workers[worker]
    pkt = parse(data)
    res = simulate(pkt, port, w.topo, w.state, wire.now, w.cfg.host, w.cfg.replicate_hosts)
    assert res.result == FORWARD
    return output_actions(pkt, res.outputs, w._tunnel_ip), flow_match(res)


@pytest.fixture
def wire():
    w = Wire()
    yield w
    w.close()


def test_a_syn_sets_up_its_syn_ack_and_the_syn_ack_is_no_upcall(wire):
    wire.inject("tenant.vm1", vm1_to_vm2(2000))
    [ahead] = wire.answers(m.FlowAhead)
    [put] = wire.answers(m.FlowPut)
    assert ahead.flow_id < 0 < put.seq
    # the flow is what a fresh simulation of the real SYN-ACK decides, matching what that walk read
    assert (ahead.actions, ahead.match) == _fresh(wire, ahead.worker, "tenant.vm2", vm2_to_vm1(2000))
    assert ahead.key[0] == "tenant.vm2" and any(t.startswith("ct:") for t in ahead.tags)
    assert wire.dp.counters["datapath_flows_ahead"] == 1
    n = _upcalls(wire)
    wire.inject("tenant.vm2", vm2_to_vm1(2000))
    [back] = wire.outputs("tenant.vm1")
    assert (back.tp_src, back.tp_dst, back.ip_dst) == (80, 2000, ip2int("10.0.0.2"))
    assert _upcalls(wire) == n                                     # the SYN-ACK hit the flow set up for it
    w = wire.workers[ahead.worker]
    assert w.c["replies_ahead"] == 1 and ahead.flow_id in w.flows.flows
    # a reply on another connection is an upcall as before
    wire.inject("tenant.vm2", vm2_to_vm1(2001))
    assert _upcalls(wire) == n + 1 and not wire.outputs("tenant.vm1")        # no such connection: dropped


def test_udp_and_non_opening_tcp_set_nothing_up_ahead(wire):
    wire.inject("tenant.vm1", vm1_to_vm2(2000, "ack"), vm1_to_vm2(2001, "syn|ack"), vm1_to_vm2(2002, "rst"),
                frame(f"{VM1},eth_dst=02:00:00:00:00:02,ip_src=10.0.0.2,ip_dst=10.0.0.3,proto=udp,tp_src=5,"
                      f"tp_dst=53"))
    assert len(wire.answers(m.FlowPut)) == 4 and not wire.answers(m.FlowAhead)
    assert sum(w.c["reply_simulations"] for w in wire.workers) == 0


def test_an_echo_request_sets_up_its_reply(wire):
    req = (f"{VM1},eth_dst=02:00:00:00:00:02,ip_src=10.0.0.2,ip_dst=10.0.0.3,proto=icmp,"
           "icmp_type=8,icmp_code=0,icmp_id=77")
    rep = (f"{VM2},eth_dst=02:00:00:00:00:01,ip_src=10.0.0.3,ip_dst=10.0.0.2,proto=icmp,"
           "icmp_type=0,icmp_code=0,icmp_id=77")
    wire.inject("tenant.vm1", frame(req))
    [ahead] = wire.answers(m.FlowAhead)
    assert (ahead.actions, ahead.match) == _fresh(wire, ahead.worker, "tenant.vm2", frame(rep))
    n = _upcalls(wire)
    wire.inject("tenant.vm2", frame(rep))
    assert len(wire.outputs("tenant.vm1")) == 1 and _upcalls(wire) == n


def _syn_out(sport: int) -> bytes:
    return frame(f"{VM1},eth_dst=02:0a:00:00:00:01,ip_src=10.0.0.2,ip_dst=203.0.113.5,proto=tcp,tp_src={sport},"
                 "tp_dst=443,tcp_flags=syn")


def test_a_snat_connection_sets_up_the_reverse_translation(wire):
    # the first reply teaches the bridge the router's MAC (on its port to the router): a walk that learns is
    # not set up ahead (the real reply must be simulated to learn it), so that one is an upcall
    wire.inject("tenant.vm1", _syn_out(2999))
    [out] = wire.outputs("r1.uplink")
    assert not wire.answers(m.FlowAhead) and sum(w.c["replies_not_ahead"] for w in wire.workers) == 1
    wire.inject("r1.uplink", from_internet("198.51.100.100", out.tp_src))
    assert len(wire.outputs("tenant.vm1")) == 1
    wire.inject("tenant.vm1", _syn_out(3000))
    [out] = wire.outputs("r1.uplink")
    assert out.ip_src == ip2int("198.51.100.100")
    [ahead] = wire.answers(m.FlowAhead)
    assert ahead.key[0] == "r1.uplink"
    reply = from_internet("198.51.100.100", out.tp_src)
    assert (ahead.actions, ahead.match) == _fresh(wire, ahead.worker, "r1.uplink", reply)
    n = _upcalls(wire)
    wire.inject("r1.uplink", reply)
    [back] = wire.outputs("tenant.vm1")
    assert (back.ip_src, back.ip_dst, back.tp_dst) == (ip2int("203.0.113.5"), ip2int("10.0.0.2"), 3000)
    assert _upcalls(wire) == n


def test_a_reply_the_policy_drops_or_that_leaves_through_a_tunnel_is_not_set_up():
    # no ct: return rule: vm2's reply would be dropped, so nothing is set up for it
    wire = Wire(topo=TOPO.replace("    - {match: {ct: return}, action: accept}\n", ""))
    try:
        wire.inject("tenant.vm1", vm1_to_vm2(2000))
        assert len(wire.outputs("tenant.vm2")) == 1 and not wire.answers(m.FlowAhead)
        assert sum(w.c["replies_not_ahead"] for w in wire.workers) == 1
    finally:
        wire.close()
    wire = Wire()
    try:                                         # vm3 lives on host-b: its reply comes in there, not here
        wire.inject("tenant.vm1", frame(f"{VM1},eth_dst=02:00:00:00:00:03,ip_src=10.0.0.2,ip_dst=10.0.0.4,"
                                        "proto=tcp,tp_src=1,tp_dst=80,tcp_flags=syn"))
        [put] = wire.answers(m.FlowPut)
        assert put.actions[-1][0] == "tunnel" and not wire.answers(m.FlowAhead)
        assert sum(w.c["reply_simulations"] for w in wire.workers) == 0
    finally:
        wire.close()


def test_off_sets_nothing_up():
    wire = Wire(replies_ahead=False)
    try:
        wire.inject("tenant.vm1", vm1_to_vm2(2000))
        n = _upcalls(wire)
        wire.inject("tenant.vm2", vm2_to_vm1(2000))
        assert not wire.answers(m.FlowAhead) and _upcalls(wire) == n + 1 and len(wire.outputs("tenant.vm1")) == 1
    finally:
        wire.close()


def test_a_reply_with_another_ttl_misses_the_exact_flow_and_is_upcalled_as_before():
    wire = Wire(megaflows=False)                 # exact match: the key holds the TTL (the ahead flow: 64)
    try:
        wire.inject("tenant.vm1", vm1_to_vm2(2000))
        [ahead] = wire.answers(m.FlowAhead)
        assert ahead.match == ()
        n = _upcalls(wire)
        odd = frame(f"{VM2},eth_dst=02:00:00:00:00:01,ip_src=10.0.0.3,ip_dst=10.0.0.2,ttl=63,proto=tcp,tp_src=80,"
                    "tp_dst=2000,tcp_flags=syn|ack")
        wire.inject("tenant.vm2", odd)
        assert _upcalls(wire) == n + 1 and len(wire.outputs("tenant.vm1")) == 1
        wire.inject("tenant.vm2", vm2_to_vm1(2000))                  # TTL 64: the flow set up ahead
        assert _upcalls(wire) == n + 1 and len(wire.outputs("tenant.vm1")) == 1
    finally:
        wire.close()


def test_state_that_goes_takes_the_flow_set_up_ahead_with_it(wire):
    wire.inject("tenant.vm1", vm1_to_vm2(2000))
    [ahead] = wire.answers(m.FlowAhead)
    wire.tick(70.0)                              # idle: the flows (the one ahead: after 10 s) and the state go
    wire.tick(70.0)
    assert not wire.dp.dp.cache.flows and sum(len(w.flows) for w in wire.workers) == 0
    n = _upcalls(wire)
    wire.inject("tenant.vm2", vm2_to_vm1(2000))
    assert _upcalls(wire) == n + 1 and not wire.outputs("tenant.vm1")   # no connection any more: dropped


def test_a_key_installed_already_is_left_alone_and_the_worker_forgets_the_id(wire):
    wire.inject("tenant.vm1", vm1_to_vm2(2000))
    [ahead] = wire.answers(m.FlowAhead)
    w = wire.workers[ahead.worker]
    again = ahead._replace(flow_id=ahead.flow_id - 1000)
    w.flows.add(again.flow_id, again.tags, wire.now)
    wire.dp.handle(again, wire.now)               # as if the reply had been upcalled and answered first
    wire.pump()
    assert wire.dp.counters["datapath_flows_ahead_skipped"] == 1
    assert again.flow_id not in w.flows.flows and ahead.flow_id in w.flows.flows
    assert [f.id for f in wire.dp.dp.cache.flows.values() if f.key == ahead.key] == [ahead.flow_id]


def test_a_restarted_datapath_gets_the_flows_set_up_ahead_again(wire):
    wire.inject("tenant.vm1", vm1_to_vm2(2000))
    [ahead] = wire.answers(m.FlowAhead)
    wire.restart_datapath()
    again = [r for r in wire.answers(m.Reinstall) if r.flow_id == ahead.flow_id]
    assert [(r.key, r.match, r.actions) for r in again] == [(ahead.key, ahead.match, ahead.actions)]
    n = _upcalls(wire)
    wire.inject("tenant.vm2", vm2_to_vm1(2000))
    assert len(wire.outputs("tenant.vm1")) == 1 and _upcalls(wire) == n



def test_an_ipv6_syn_and_an_icmpv6_echo_set_up_their_replies(wire):
    v6 = "ipv6_src=2001:db8::2,ipv6_dst=2001:db8::3"
    back6 = "ipv6_src=2001:db8::3,ipv6_dst=2001:db8::2"
    wire.inject("tenant.vm1", frame(f"{VM1},eth_dst=02:00:00:00:00:02,{v6},proto=tcp,tp_src=4000,tp_dst=80,"
                                    "tcp_flags=syn"),
                frame(f"{VM1},eth_dst=02:00:00:00:00:02,{v6},proto=icmpv6,icmpv6_type=128,icmpv6_code=0,"
                      "icmp_id=9"))
    assert len(wire.outputs("tenant.vm2")) == 2
    aheads = wire.answers(m.FlowAhead)
    assert len(aheads) == 2 and all(a.key[0] == "tenant.vm2" for a in aheads)
    replies = (frame(f"{VM2},eth_dst=02:00:00:00:00:01,{back6},proto=tcp,tp_src=80,tp_dst=4000,tcp_flags=syn|ack"),
               frame(f"{VM2},eth_dst=02:00:00:00:00:01,{back6},proto=icmpv6,icmpv6_type=129,icmpv6_code=0,"
                     "icmp_id=9"))
    by_proto = {a.key[SLOT_INDEX["proto"]]: a for a in aheads}
    for ahead, reply in zip((by_proto[6], by_proto[58]), replies, strict=True):
        assert (ahead.actions, ahead.match) == _fresh(wire, ahead.worker, "tenant.vm2", reply)
    n = _upcalls(wire)
    wire.inject("tenant.vm2", *replies)
    assert len(wire.outputs("tenant.vm1")) == 2 and _upcalls(wire) == n


def test_under_load_replies_are_not_set_up_ahead(wire):
    from workers.warm import SPARSE_PER_S

    wire.inject("tenant.vm1", vm1_to_vm2(2000))
    [ahead] = wire.answers(m.FlowAhead)
    w = wire.workers[ahead.worker]
    w.c["upcalls"] += 10 * SPARSE_PER_S              # as if a flood of upcalls came within the next second
    wire.now += 1.0
    sports = [p for p in range(2001, 2200) if wire.dp.disp.worker_for(parse(vm1_to_vm2(p)), "x") == ahead.worker]
    wire.inject("tenant.vm1", *(vm1_to_vm2(p) for p in sports[:5]))
    assert len(wire.answers(m.FlowAhead)) == 1 and w.c["replies_ahead"] == 1      # a setup's CPU counts now
    wire.now += 10.0                                  # sparse again
    wire.inject("tenant.vm1", vm1_to_vm2(sports[5]))
    assert len(wire.answers(m.FlowAhead)) == 2
