"""Process faults, in one process (tests/inprocess.py Wire): what a worker's and the datapath's restart leave of
the others' flows and state.  The real-process versions (kill -9 by pid) are in tests/integration and tests/e2e.
"""

from __future__ import annotations

import dataclasses

import pytest

from backchannel import messages as m
from tests.inprocess import Wire, frame, from_internet, to_internet

# two VMs on one bridge with no static MAC table: every MAC is learned
LEARNING = """
version: 1
hosts:
  host-a: {tunnel_ip: 127.0.0.11}
bridges:
  lan:
    ports:
      vm1: {host: host-a, interface: tap-vm1}
      vm2: {host: host-a, interface: tap-vm2}
"""
MAC1, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


def udp(src_mac: str, dst_mac: str, sport: int, dport: int = 53) -> bytes:
    src, dst = ("10.0.0.2", "10.0.0.3") if src_mac == MAC1 else ("10.0.0.3", "10.0.0.2")
    return frame(f"eth_src={src_mac},eth_dst={dst_mac},ip_src={src},ip_dst={dst},proto=udp,tp_src={sport},"
                 f"tp_dst={dport}")


@pytest.fixture
def learning():
    w = Wire(topo=LEARNING, megaflows=False)        # exact match: one flow per 5-tuple, as in the reported figures
    yield w
    w.close()


def test_a_restarted_datapath_gets_the_megaflows_back_with_their_masks():
    w = Wire(topo=LEARNING, megaflows=True)
    try:
        w.inject("lan.vm2", udp(MAC2, MAC1, 7))
        w.inject("lan.vm1", *[udp(MAC1, MAC2, 10_000 + i) for i in range(50)])
        old = {f.key: (f.id, f.worker, f.compiled, f.tags) for f in w.dp.dp.cache.flows.values()}
        assert 0 < len(old) < 50                                   # megaflows: not one flow per 5-tuple
        dp = w.restart_datapath()
        assert {f.key: (f.id, f.worker, f.compiled, f.tags) for f in dp.dp.cache.flows.values()} == old
        w.inject("lan.vm1", *[udp(MAC1, MAC2, 60_000 + i) for i in range(50)])     # new 5-tuples, same MACs
        assert dp.disp.counters["dispatcher_upcalls"] == 0       # the re-installed flows kept their masks
        assert len(w.outputs("lan.vm2")) >= 50
    finally:
        w.close()


def test_a_restarted_worker_relearning_known_macs_leaves_the_other_workers_flows(learning):
    """The reported collapse: a restarted worker re-learns every MAC it sees and relays MacLearned; a sibling
    that knows the MAC behind the same port must refresh it, not delete every flow that read it."""
    w = learning
    w.inject("lan.vm2", udp(MAC2, MAC1, 7))                     # vm2's MAC learned first (no flooding after)
    w.inject("lan.vm1", *[udp(MAC1, MAC2, 10_000 + i) for i in range(300)])
    w.inject("lan.vm2", *[udp(MAC2, MAC1, 20_000 + i) for i in range(300)])
    before = [len(x.flows) for x in w.workers]
    assert min(before) > 100                                   # both workers hold flows to and from both MACs
    new = w.restart_worker(0)
    assert new.state.macs.keys() == w.workers[1].state.macs.keys()   # its peer told it what it had learned
    new.state.macs.clear()                                     # as if it had not: it re-learns them from traffic
    w.inject("lan.vm1", *[udp(MAC1, MAC2, 30_000 + i) for i in range(40)])     # new flows: worker 0 re-learns
    w.inject("lan.vm2", *[udp(MAC2, MAC1, 40_000 + i) for i in range(40)])
    relayed = [x for x in w.seen[1] if type(x) is m.MacLearned]
    assert relayed, "worker 0 re-learned the MACs and told worker 1"
    assert len(w.workers[1].flows) >= before[1]               # none of worker 1's flows went
    assert w.workers[1].c["macs_refreshed"] >= len(relayed)
    # a MAC that moves still invalidates what read it
    moved = len(w.workers[1].flows)
    w.workers[1].handle(m.MacLearned("lan", 0, int(MAC1.replace(":", ""), 16), "lan.vm2", 0), w.now)
    assert len(w.workers[1].flows) < moved / 4


def test_a_restarted_datapath_gets_every_flow_back_from_the_workers_not_from_upcalls(learning):
    w = learning
    w.inject("lan.vm2", udp(MAC2, MAC1, 7))
    frames = [udp(MAC1, MAC2, 10_000 + i) for i in range(200)]
    w.inject("lan.vm1", *frames)
    old = {f.key: (f.id, f.worker, f.compiled, f.tags) for f in w.dp.dp.cache.flows.values()}
    assert len(old) == 200                                     # (the first, flooded, went when MAC1 was learned)
    dp = w.restart_datapath()
    new = {f.key: (f.id, f.worker, f.compiled, f.tags) for f in dp.dp.cache.flows.values()}
    assert new == old                                          # same keys, ids, workers, actions, tags
    assert dp.counters["datapath_reinstalled"] == 200
    assert sum(x.c["flows_reinstalled"] for x in w.workers) == 200
    w.inject("lan.vm1", *frames)                               # all hits: nothing simulated again
    assert dp.disp.counters["dispatcher_upcalls"] == 0 and dp.counters["datapath_hits"] == 200
    assert len(w.outputs("lan.vm2")) == 200
    # a new flow's id carries the new incarnation: no id of the dead datapath is reused
    w.inject("lan.vm1", udp(MAC1, MAC2, 50_000))
    [put] = [x for x in w.answers(m.FlowPut) if x.seq >> m.EPOCH_SHIFT == 1]
    assert put.seq == (1 << m.EPOCH_SHIFT) + 1 and put.seq not in {v[0] for v in old.values()}
    # deleting an old flow by its id still works in the new incarnation
    victim = next(iter(old.values()))
    owner = w.workers[victim[1]]
    dp.handle(m.FlowDelete((victim[0],)), w.now)
    assert len(dp.dp.cache.flows) == 200 and victim[0] not in dp.dp.cache.by_id
    assert victim[0] in owner.flows.flows                      # (the worker's own word would delete it there)


def test_an_upcall_of_the_dead_datapath_is_not_answered_into_the_new_one(learning):
    w = learning
    w.inject("lan.vm2", udp(MAC2, MAC1, 7))
    w.dp.handle(m.Inject("lan.vm1", (udp(MAC1, MAC2, 999),)), w.now)
    w.dp.housekeeping(w.now)                                   # the upcall is on its way to a worker
    [busy] = [i for i, link in enumerate(w.to_workers) if link.frames]
    w.workers[busy].handle(m.DatapathRestarted(1), w.now)     # the restart notice is read first
    w.restart_datapath()
    assert w.workers[busy].c["upcalls_of_dead_datapath"] == 1
    assert w.dp.counters["datapath_late_answers"] == 0        # nothing was sent for it
    assert len(w.workers[busy].flows) == len([f for f in w.dp.dp.cache.flows.values() if f.worker == busy])


def test_a_flow_key_in_flight_at_two_deaths_of_its_worker_is_quarantined(learning):
    w = learning
    w.inject("lan.vm2", udp(MAC2, MAC1, 7))
    poison, other = udp(MAC1, MAC2, 666), udp(MAC1, MAC2, 667)
    for frames in ((poison, other), (poison,)):
        w.dp.handle(m.Inject("lan.vm1", frames), w.now)
        w.dp.housekeeping(w.now)
        dead = {rec.worker for rec in w.dp.disp.inflight_by_seq.values()}
        for i in dead:
            w.restart_worker(i)                                # it "crashed" with them in flight
    upcalls = w.dp.disp.counters["dispatcher_upcalls"]
    w.inject("lan.vm1", poison, poison)
    c = w.dp.disp.counters
    assert c["dispatcher_quarantined"] == 2 and c["dispatcher_upcalls"] == upcalls
    assert not w.outputs("lan.vm2")
    w.inject("lan.vm1", other)                                 # in flight at one death only: simulated
    assert len(w.outputs("lan.vm2")) == 1


def test_a_restarted_worker_gets_its_snat_bindings_back_from_its_peers_and_its_blocks():
    """vm1's port is pinned to worker 0, so its flow state is copied to worker 1.  Worker 0 dies: its
    replacement gets the copies back (StateRecall) and the block leased under its name (LeaseGranted): the
    connection keeps its translated port, and no second block is leased."""
    w = Wire(port_workers={"tenant.vm1": 0})
    try:
        w.inject("tenant.vm1", to_internet(3999))             # an earlier connection holds the first port
        w.inject("tenant.vm1", to_internet(4000))
        [_first, out] = w.outputs("r1.uplink")
        blocks = w.leases.held_by("w0")
        assert len(blocks) == 1
        w.restart_worker(0)
        assert w.workers[0].c["state_received"] >= 1 and w.workers[1].c["state_recalled"] >= 1
        w.inject("tenant.vm1", to_internet(4000))             # purged flow: simulated again, same binding
        [again] = w.outputs("r1.uplink")
        assert (again.ip_src, again.tp_src) == (out.ip_src, out.tp_src)
        assert w.leases.held_by("w0") == blocks
        w.inject("tenant.vm1", to_internet(4001))             # a new connection: from the re-adopted block
        [new] = w.outputs("r1.uplink")
        assert new.tp_src not in (out.tp_src, _first.tp_src) and w.leases.held_by("w0") == blocks
        w.inject("r1.uplink", from_internet("198.51.100.100", out.tp_src))
        assert len(w.outputs("tenant.vm1")) == 1               # the reply still finds its way back
    finally:
        w.close()


def test_a_restarted_worker_simulates_nothing_before_its_state_is_back():
    """The dead worker's connection sends again before its state is restored: the upcall waits for the
    peers' answers (Recover / RecallDone), then finds the old binding."""
    w = Wire(port_workers={"tenant.vm1": 0})
    try:
        w.inject("tenant.vm1", to_internet(3999))
        w.inject("tenant.vm1", to_internet(4000))
        [_first, out] = w.outputs("r1.uplink")
        new = w.restart_worker(0, early=[("tenant.vm1", to_internet(4000))])
        assert new.c["recoveries"] == 1 and new.c["recovery_held_upcalls"] == 1
        [again] = w.outputs("r1.uplink")
        assert (again.ip_src, again.tp_src) == (out.ip_src, out.tp_src)
    finally:
        w.close()


def test_a_restarted_worker_that_hears_from_nobody_simulates_after_a_deadline(learning):
    w = learning
    new = w.restart_worker(0)
    assert new._recover is None                                # its peer answered
    late = type(new)(dataclasses.replace(new.cfg, restarted=True))
    late.handle(m.UpcallBatch((m.Upcall(1, "lan.vm1", udp(MAC1, MAC2, 5)),)), w.now)
    late.housekeeping(w.now)
    assert not late.out_dp and late.stats()["worker_recovering"] == 1
    assert not late.c["simulations"]
    late.housekeeping(w.now + 1.5)
    assert late.c["recovery_timeouts"] == 1 and late.c["simulations"] == 1


def test_a_known_arp_entry_relayed_again_is_a_refresh():
    w = Wire()
    try:
        w.inject("tenant.vm1", to_internet(4000))              # r1's route: via 198.51.100.1 (a static ARP entry)
        worker = next(x for x in w.workers if len(x.flows))
        n = len(worker.flows)
        worker.state.learn_arp("r1", 0xC6336401, 0x020B00000001, w.now)
        worker.handle(m.ArpLearned("r1", 0xC6336401, 0x020B00000001, 1), w.now)
        assert len(worker.flows) == n and worker.c["arps_refreshed"] == 1
    finally:
        w.close()
