"""Bounded tables (issue 12, item 4): every table a VM or a peer can grow is capped, and what the cap refuses
is counted.  The worker caps run through ``Wire`` (workers and a datapath in one process, real codec)."""

from __future__ import annotations

import time
from concurrent.futures import Future

import pytest

from backchannel import messages as m
from backchannel.codec import encode
from engine import pool
from engine.config import AgentConfig
from engine.dispatcher import Dispatcher
from engine.dpproc import DatapathConfig, DatapathProcess
from engine.persistence import Persistence
from engine.portmap import PortMap
from engine.service import RequestExpired, Service, ServiceBusy
from packet.addr import ip2int
from packet.codec import parse
from tests.inprocess import VM1, Wire, frame, vm1_to_vm2, vm2_to_vm1
from workers.worker import Worker, WorkerConfig


# -- held-back frames (the dispatcher, in the datapath) -------------------------------------------------------
def _pkt(sport: int):
    return parse(frame(f"eth_src=02:00:00:00:00:01,eth_dst=02:00:00:00:00:02,ip_src=10.0.0.2,ip_dst=10.0.0.3,"
                       f"proto=udp,tp_src={sport},tp_dst=53"))


def test_held_back_frames_are_capped_per_flow_and_in_all():
    sent = []
    d = Dispatcher(1, lambda w, b: sent.append(b) or True, max_held=2, max_held_total=3)
    a, b = _pkt(1), _pkt(2)
    assert d.upcall("p", b"a", a, ("a",), 0.0) and d.upcall("p", b"b", b, ("b",), 0.0)
    for _ in range(4):
        d.upcall("p", b"a", a, ("a",), 0.0)            # 2 held, 2 over the per-flow cap
    for _ in range(2):
        d.upcall("p", b"b", b, ("b",), 0.0)            # 1 held, 1 over the total
    assert d.counters["dispatcher_held"] == 3 and d.counters["dispatcher_held_overflow"] == 3
    assert d.held_frames == 3
    _rec, held = d.answered(1)
    assert len(held) == 2 and d.held_frames == 1
    d.upcall("p", b"b", b, ("b",), 0.0)                # room again
    assert d.held_frames == 2 and d.counters["dispatcher_held"] == 4
    d.forget_worker(0)
    assert d.held_frames == 0 and not d.held


def test_the_dispatcher_is_saturated_only_when_every_worker_is_full():
    d = Dispatcher(2, lambda w, b: True, max_inflight=1, batch=1)
    assert not d.saturated()
    seqs, sport = [], 0
    while len(seqs) < 2 and sport < 100:                # one upcall in flight on each worker
        sport += 1
        pkt = _pkt(sport)
        w = d.worker_for(pkt, "p")
        if d.inflight[w] == 0:
            assert d.upcall("p", b"x", pkt, (sport,), 0.0)
            seqs.append(d.seq)
            assert d.saturated() == (len(seqs) == 2)
    assert d.saturated()
    d.answered(seqs[0])
    assert not d.saturated()
    m = Dispatcher(1, lambda w, b: True, max_inflight=20, batch=16)     # a margin of batch // 4 = 4 upcalls
    for sport in range(1, 17):
        assert not m.saturated()
        assert m.upcall("p", b"x", _pkt(sport), (sport,), 0.0)
    assert m.saturated() and m.inflight == [16]
    small = Dispatcher(1, lambda w, b: True, max_inflight=2, batch=64)  # a margin never past max_inflight / 4
    assert small.upcall("p", b"x", _pkt(1), (1,), 0.0) and not small.saturated()
    assert small.upcall("p", b"x", _pkt(2), (2,), 0.0) and small.saturated()


def test_the_held_back_caps_come_from_the_agent_config():
    cfg = AgentConfig(max_held=3, max_held_total=99)
    dp_cfg = pool.datapath_config(cfg, "/run/x", PortMap({}, {}, {}), None)
    dp = DatapathProcess(dp_cfg, [], None)
    assert (dp.disp.max_held, dp.disp.max_held_total) == (3, 99)
    assert DatapathProcess(DatapathConfig(runtime_dir="", n_workers=1), [], None).disp.max_held == 16
    assert "dispatcher_held_overflow" in dp.counters


# -- pending supervisor requests -------------------------------------------------------------------------------
def _service(**kw):
    counters: dict = {}
    svc = Service(AgentConfig(**kw), counters)
    sent = []
    svc._send = lambda target, msg: sent.append((target, msg)) or True
    return svc, counters, sent


def test_an_unanswered_request_expires_with_a_counter_and_a_late_answer_is_dropped():
    svc, counters, sent = _service(request_timeout_s=2.0)
    fut = svc._ask([0, 1], m.StatsRequest)
    quick = svc._ask([0], m.StatsRequest, 0.5)
    [(_, first), *_] = sent
    svc._answered(first.req_id, 0, {"a": 1})           # worker 1 never answers (dead, restarted)
    now = time.monotonic()
    assert svc.expire_pending(now + 1.0) == 1          # the one with its own 0.5 s timeout
    with pytest.raises(RequestExpired, match=r"no answer from \[0\]"):
        quick.result(0)
    assert not fut.done() and svc.expire_pending(now + 2.5) == 1
    with pytest.raises(RequestExpired, match=r"no answer from \[1\]"):
        fut.result(0)
    assert counters["supervisor_requests_expired"] == 2 and not svc._pending
    svc._answered(first.req_id, 1, {"b": 2})
    assert counters["supervisor_late_answers"] == 1


def test_answered_requests_complete_and_pending_ones_are_capped():
    svc, counters, sent = _service(max_pending_requests=2)
    a, b = svc._ask([0], m.StatsRequest), svc._ask([0], m.StatsRequest)
    c = svc._ask([0], m.StatsRequest)
    with pytest.raises(ServiceBusy):
        c.result(0)
    assert counters["supervisor_requests_refused"] == 1 and len(sent) == 2
    svc._answered(sent[0][1].req_id, 0, "x")
    assert a.result(0) == {0: "x"} and not b.done()
    assert svc._ask([0], m.StatsRequest) is not None and len(svc._pending) == 2


def test_an_expired_snapshot_is_not_written_and_is_counted(tmp_path):
    cfg = AgentConfig(state_file=str(tmp_path / "s.state"))
    counters: dict = {}
    p = Persistence(cfg, counters, None)
    asked = []

    def ask(targets, make_msg, timeout=None):
        asked.append(timeout)
        f = Future()
        f.set_exception(RequestExpired("no answer"))
        return f

    then = Future()
    p.snapshot(ask, then=then)
    assert counters["supervisor_state_snapshot_failed"] == 1 and not (tmp_path / "s.state").exists()
    assert isinstance(then.exception(0), RequestExpired) and asked == [5.0]


# -- the worker's tables (Wire: workers and a datapath in one process) --------------------------------------
@pytest.fixture
def wire1():
    w = Wire(n_workers=1)
    yield w
    w.close()


def test_the_worker_caps_come_from_the_agent_config():
    cfg = AgentConfig(max_flow_state=11, max_macs_per_bridge=12, max_macs_per_port=13, max_arps_per_router=14,
                      max_parked=15)
    w = Worker(pool.worker_config(cfg, 0, "/run/x"))
    st = w.state
    assert (st.max_flow_state, st.max_macs_per_bridge, st.max_macs_per_port, st.max_arps_per_router) == (
        11, 12, 13, 14)
    assert w.parking.max_parked == 15
    d = Worker(WorkerConfig(index=0, n_workers=1, runtime_dir="")).state
    assert (d.max_flow_state, d.max_macs_per_bridge, d.max_macs_per_port, d.max_arps_per_router) == (
        300_000, 4096, 1024, 4096)


def test_a_new_connection_beyond_the_flow_state_cap_is_dropped_and_counted(wire1):
    w = wire1.workers[0]
    w.state.max_flow_state = 3
    wire1.inject("tenant.vm1", *[vm1_to_vm2(2000 + i) for i in range(3)])
    assert len(w.state.flow_state) == 3 and len(wire1.outputs("tenant.vm2")) == 3
    wire1.inject("tenant.vm1", vm1_to_vm2(2003))
    put = wire1.answers(m.FlowPut)[-1]
    assert put.actions == (("drop",),) and put.hard_s == w.cfg.drop_flow_s       # a temporary drop
    assert w.drops["flow_state_full"] == 1 and len(w.state.flow_state) == 3
    assert not wire1.outputs("tenant.vm2")
    # the connections that have state go on: their replies find it
    wire1.inject("tenant.vm2", vm2_to_vm1(2001))
    assert [p.tp_dst for p in wire1.outputs("tenant.vm1")] == [2001]
    # once an entry idles out, a new connection fits again
    wire1.tick(70.0)
    wire1.tick(70.0)
    wire1.inject("tenant.vm1", vm1_to_vm2(2004))
    assert [p.tp_src for p in wire1.outputs("tenant.vm2")] == [2004]


def _replica_batch(sports, origin: int = 7) -> bytes:
    entries = tuple(m.FlowStateEntry("conntrack", (ip2int("10.0.0.3"), ip2int("10.0.0.2"), 6, 80, s, "tenant"),
                                     None, 500.0) for s in sports)
    return encode(m.FlowStateBatch(entries, origin))


def test_replicas_beyond_the_cap_evict_the_oldest_replicas_never_local_state(wire1):
    w = wire1.workers[0]
    w.state.max_flow_state = 4
    wire1.inject("tenant.vm1", vm1_to_vm2(3000))                    # one local entry
    wire1.to_workers[0].send(_replica_batch([4000, 4001, 4002]))
    wire1.pump()
    assert len(w.state.flow_state) == 4 and len(w.state.replicas) == 3
    # the reply of replica 4000's connection is simulated here: its flow reads (and is tagged with) the replica
    wire1.inject("tenant.vm2", vm2_to_vm1(4000))
    [back] = wire1.outputs("tenant.vm1")
    assert back.tp_dst == 4000
    [used] = [f for f in wire1.dp.dp.cache.flows.values() if f.key[0] == "tenant.vm2" and 4000 in f.key]
    wire1.to_workers[0].send(_replica_batch([4003, 4004]))         # evicts 4000 and 4001, oldest first
    wire1.pump()
    assert w.state.counters["state_replicas_evicted"] == 2
    assert sorted(k[1][4] for k in w.state.replicas) == [4002, 4003, 4004]
    assert ("conntrack", (ip2int("10.0.0.3"), ip2int("10.0.0.2"), 6, 80, 3000, "tenant")) in w.state.flow_state
    assert used.id in [fid for d in wire1.answers(m.FlowDelete) for fid in d.flows]   # its flow went with it
    # a local connection makes room by evicting a replica too
    wire1.inject("tenant.vm1", vm1_to_vm2(3001))
    assert len(w.state.replicas) == 2 and w.state.counters["state_replicas_evicted"] == 3
    # a table of local entries only: replicas are refused, new local connections dropped
    wire1.inject("tenant.vm1", vm1_to_vm2(3002), vm1_to_vm2(3003))
    assert not w.state.replicas and len(w.state.flow_state) == 4
    wire1.to_workers[0].send(_replica_batch([4005]))
    wire1.pump()
    assert w.state.counters["state_replicas_refused"] == 1 and len(w.state.flow_state) == 4
    wire1.inject("tenant.vm1", vm1_to_vm2(3004))
    assert w.drops["flow_state_full"] == 1
    assert w.stats()["state_replicas_refused"] == 1 and w.stats()["worker_state_entries"] == 4


def _from_vm1(src_mac: str, dst_mac: str = "02:00:00:00:00:02", sport: int = 7) -> bytes:
    return frame(f"eth_src={src_mac},eth_dst={dst_mac},ip_src=10.0.0.2,ip_dst=10.0.0.3,proto=udp,"
                 f"tp_src={sport},tp_dst=7")


def _relayed_mac(mac: int, port: str) -> bytes:
    return encode(m.MacLearned("tenant", 0, mac, port, -1))        # learned by another agent


def test_macs_beyond_the_port_and_bridge_caps_are_not_learned_and_are_flooded_to(wire1):
    w = wire1.workers[0]
    w.state.max_macs_per_port, w.state.max_macs_per_bridge = 3, 5
    wire1.inject("tenant.vm1", _from_vm1("02:00:00:00:00:01", sport=6))   # a static MAC: the topology fetched
    wire1.outputs("tenant.vm2")
    sprayed = [f"02:00:00:01:00:{i:02x}" for i in range(6)]
    wire1.inject("tenant.vm1", *[_from_vm1(mac) for mac in sprayed])
    # every frame is forwarded (to vm2, a static MAC); only 3 of its source MACs are learned
    assert len(wire1.outputs("tenant.vm2")) == 6
    assert w.state.macs_per_port == {"tenant.vm1": 3} and w.state.counters["macs_refused_port"] == 3
    learned = [msg for msg in wire1.to_supervisor if type(msg) is m.MacLearned]
    assert len(learned) == 3                                       # only learned MACs reach the store
    # the bridge cap: another agent's MACs behind vm3 fill it
    for i in range(3):
        wire1.to_workers[0].send(_relayed_mac(0x020000020000 + i, "tenant.vm3"))
    wire1.pump()
    assert w.state.macs_per_bridge == {"tenant": 5} and w.state.counters["macs_refused_bridge"] == 1
    # a learned MAC is unicast to, a refused one flooded to (vm2 and the tunnel to vm3's host)
    wire1.inject("tenant.vm1", _from_vm1("02:00:00:00:00:01", "02:00:00:02:00:00", 8))
    assert wire1.answers(m.FlowPut)[-1].actions[-1][0] == "tunnel" and not wire1.outputs("tenant.vm2")
    wire1.inject("tenant.vm1", _from_vm1("02:00:00:00:00:01", "02:00:00:02:00:02", 9))
    actions = wire1.answers(m.FlowPut)[-1].actions
    assert ("output", "tenant.vm2") in actions and any(a[0] == "tunnel" for a in actions)


def test_a_mac_moving_to_a_full_port_is_forgotten_and_flooded_to(wire1):
    w = wire1.workers[0]
    w.state.max_macs_per_port = 2
    moving = 0x020000030000
    wire1.to_workers[0].send(_relayed_mac(moving, "tenant.vm3"))
    wire1.pump()
    wire1.inject("tenant.vm1", _from_vm1("02:00:00:00:00:01", "02:00:00:03:00:00", 10))
    [to_moving] = [f for f in wire1.dp.dp.cache.flows.values() if f.key[0] == "tenant.vm1"]
    assert wire1.answers(m.FlowPut)[-1].actions[-1][0] == "tunnel"          # unicast to vm3's host
    wire1.inject("tenant.vm1", _from_vm1("02:00:00:01:00:01", sport=11), _from_vm1("02:00:00:01:00:02", sport=12))
    assert w.state.macs_per_port["tenant.vm1"] == 2
    # the MAC shows up behind vm1, which is full: not learned there, and no longer believed behind vm3
    wire1.inject("tenant.vm1", _from_vm1("02:00:00:03:00:00", sport=13))
    assert w.state.mac_lookup("tenant", 0, moving) is None and w.state.counters["macs_refused_port"] == 1
    assert to_moving.id in [fid for d in wire1.answers(m.FlowDelete) for fid in d.flows]
    assert w.state.macs_per_port == {"tenant.vm1": 2}


def _arp_reply(ip: str, mac: str) -> bytes:
    return frame(f"eth_src={mac},eth_dst=02:0a:00:00:00:02,arp_op=2,arp_sha={mac},arp_spa={ip},"
                 "arp_tha=02:0a:00:00:00:02,arp_tpa=198.51.100.2")


def test_arp_entries_beyond_the_router_cap_are_refused_unless_this_worker_asked(wire1):
    w = wire1.workers[0]
    w.state.max_arps_per_router = 2
    # unsolicited: two learned, the third refused (but still relayed and sent: another may be waiting for it)
    wire1.inject("r1.uplink", _arp_reply("198.51.100.50", "02:0b:00:00:00:50"))
    wire1.tick(1.0)
    wire1.inject("r1.uplink", _arp_reply("198.51.100.51", "02:0b:00:00:00:51"),
                 _arp_reply("198.51.100.52", "02:0b:00:00:00:52"))
    assert w.state.arps_per_router == {"r1": 2} and w.state.counters["arps_refused"] == 1
    assert len([msg for msg in wire1.to_supervisor if type(msg) is m.ArpLearned]) == 3
    # a packet for a neighbor with no entry: parked, the router ARPs; the answer is taken although full
    wire1.inject("tenant.vm1", frame(f"{VM1},eth_dst=02:0a:00:00:00:01,ip_src=10.0.0.2,ip_dst=198.51.100.77,"
                                     "proto=udp,tp_src=5,tp_dst=6"))
    assert w.parking.size == 1 and ("r1", ip2int("198.51.100.77")) in w.arp.pending
    [req] = wire1.outputs("r1.uplink")
    assert req.arp_tpa == ip2int("198.51.100.77")
    wire1.inject("r1.uplink", _arp_reply("198.51.100.77", "02:0b:00:00:00:77"))
    assert w.state.counters["arps_evicted"] == 1 and w.state.arps_per_router == {"r1": 2}
    assert w.state.arp_lookup("r1", ip2int("198.51.100.50"), wire1.now) is None       # the oldest went
    assert w.state.arp_lookup("r1", ip2int("198.51.100.77"), wire1.now) is not None
    [out] = wire1.outputs("r1.uplink")
    assert out.ip_dst == ip2int("198.51.100.77") and w.parking.size == 0


def test_parked_simulations_are_capped_and_counted(wire1):
    w = wire1.workers[0]
    w.parking.max_parked = 2
    w.topo.add("port", "tenant.vm1", None)             # the port is "absent": packets wait for it
    w.topo.is_absent = lambda kind, name: True
    wire1.inject("tenant.vm1", *[vm1_to_vm2(5000 + i) for i in range(5)])
    assert w.parking.size == 2 and w.parking.counters["parked_overflow"] == 3
    assert w.drops["parked_overflow"] == 3 and len(wire1.answers(m.Execute)) == 3
    assert w.stats()["parked_overflow"] == 3


# -- LocalState bookkeeping -------------------------------------------------------------------------------------
def test_local_state_counts_follow_learning_moves_forgetting_and_expiry():
    from workers.simulation.result import MacTableWrite
    from workers.simulation.state import LocalState

    s = LocalState(max_macs_per_port=2, max_macs_per_bridge=3, mac_expiry_s=10)
    assert s.apply([MacTableWrite("b", 0, 1, "b.p1"), MacTableWrite("b", 0, 2, "b.p1")], 0) == []
    assert s.learn_mac("b", 0, 1, "b.p2", 1)                   # a move: the bridge count stays
    assert s.macs_per_port == {"b.p1": 1, "b.p2": 1} and s.macs_per_bridge == {"b": 2}
    s.forget_mac("b", 0, 2)
    assert s.macs_per_port == {"b.p2": 1} and s.macs_per_bridge == {"b": 1}
    assert s.learn_mac("b", 0, 1, "b.p2", 5)                   # a refresh
    s.expire(16)
    assert not s.macs and not s.macs_per_port and not s.macs_per_bridge
    assert s.learn_arp("r", 1, 9, 0) == (True, None) and s.arps_per_router == {"r": 1}
    s.forget_arp("r", 1)
    assert not s.arps_per_router


def test_a_local_write_without_room_is_refused_and_a_replica_update_keeps_an_entry_local():
    from workers.simulation.result import FlowStateWrite
    from workers.simulation.state import LocalState

    s = LocalState(max_flow_state=2)
    a, b, c = (("conntrack", (1, 2, 6, p, 80, "br")) for p in (1, 2, 3))
    assert s.apply([FlowStateWrite(*a, None), FlowStateWrite(*b, None)], 0) == []
    refused = s.apply([FlowStateWrite(*c, None)], 0)           # the trace's path: no room made, refused
    assert refused == [FlowStateWrite(*c, None)] and s.counters["state_writes_refused"] == 1
    assert s.make_room(1) is None                                # nothing evictable
    written, evicted = s.add_replicas([(*a, (5, 5))], 1)         # another's update of our own entry
    assert written == [a] and not evicted and not s.replicas and s.flow_state[a].value == (5, 5)
    assert s.add_replicas([(*c, None)], 1) == ([], []) and s.counters["state_replicas_refused"] == 1
    s.expire(1000)
    assert not s.flow_state and not s.replicas


# -- the store's shared tables (the supervisor's writes) ---------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def shared():
    import uuid

    from engine.tables import SharedTables
    from topology.store.uri import open_store

    store = open_store(f"memory://caps-{uuid.uuid4().hex}")
    clock = _Clock()
    made = []

    def make(**kw):
        t = SharedTables(store, "host-a", lambda msg: None, clock=clock, **kw)
        made.append(t)
        return t

    yield make, clock, store
    for t in made:
        t.close()
    store.close()


def _mac_nodes(store, bridge: str = "tenant") -> int:
    try:
        return len(store.children(f"/tables/mac/{bridge}/0"))
    except Exception:                                           # noqa: BLE001 - no node yet
        return 0


def test_learning_writes_are_rate_limited_per_port_and_refreshes_are_free(shared):
    make, clock, store = shared
    t = make(learn_rate=1.0, learn_burst=3)
    assert [t.learned(m.MacLearned("tenant", 0, 0x0200_0000_1000 + i, "tenant.vm1", 0)) for i in range(5)] == [
        True, True, True, False, False]
    assert t.counters["tables_learn_rate_limited"] == 2 and t.counters["tables_local_writes"] == 3
    assert t.learned(m.MacLearned("tenant", 0, 0x0200_0000_2000, "tenant.vm2", 0))      # another port's bucket
    assert t.learned(m.MacLearned("tenant", 0, 0x0200_0000_1000, "tenant.vm1", 0))      # a refresh: no token
    clock.t = 1.0
    assert t.learned(m.MacLearned("tenant", 0, 0x0200_0000_1003, "tenant.vm1", 0))      # one token back
    assert not t.learned(m.MacLearned("tenant", 0, 0x0200_0000_1004, "tenant.vm1", 0))
    assert _mac_nodes(store) == 5


def test_the_store_table_of_a_bridge_or_router_is_capped(shared, wait_until):
    make, clock, store = shared
    t = make(max_macs_per_bridge=3, max_arps_per_router=2, learn_burst=1000)
    for i in range(3):
        assert t.learned(m.MacLearned("tenant", 0, 0x0200_0000_3000 + i, "tenant.vm1", 0))
    wait_until(lambda: len(t.macs["tenant"]) == 3)
    assert not t.learned(m.MacLearned("tenant", 0, 0x0200_0000_3003, "tenant.vm1", 0))
    assert t.counters["tables_full_refused"] == 1 and _mac_nodes(store) == 3
    assert t.learned(m.MacLearned("tenant", 0, 0x0200_0000_3000, "tenant.vm2", 0))      # a move: same key
    assert [t.learned(m.ArpLearned("r1", 10 + i, 0x0200_0000_4000, 0)) for i in range(2)] == [True, True]
    wait_until(lambda: len(t.arps["r1"]) == 2)
    assert not t.learned(m.ArpLearned("r1", 12, 0x0200_0000_4000, 0))
    assert t.learned(m.ArpLearned("r1", 10, 0x0200_0000_4001, 0))                       # an update
    assert t.counters["tables_full_refused"] == 2 and t.stats()["tables_full_refused"] == 2
