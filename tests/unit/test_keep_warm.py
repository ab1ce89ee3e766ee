"""``keep_warm_ms``: an idle worker or datapath runs its part of a setup once more on the last upcall, and
changes nothing (workers/worker.py ``Worker.keep_warm``, engine/dpproc.py ``DatapathProcess.keep_warm``).  In
process (tests/inprocess.py); the loops that call them are run in tests/integration/test_poll_spin.py."""

from __future__ import annotations

import copy

from tests.inprocess import Wire, to_internet, vm1_to_vm2
from workers.worker import KEEP_WARM_FOR_S


def _snapshot(w):
    st = w.state
    return (copy.deepcopy(dict(st.flow_state)), dict(w.flows.flows), list(w.out_dp), list(w.out_sup),
            {k: v for k, v in w.c.items() if k != "warm_runs"}, copy.deepcopy(st.snat_next),
            w.parking.size, dict(w.parking.counters), dict(w.leases_out))


def test_a_worker_keeps_warm_on_its_last_upcall_and_changes_nothing():
    wire = Wire()
    try:
        wire.inject("tenant.vm1", vm1_to_vm2(2000), to_internet(3000))        # conntrack, SNAT
        warm = [w for w in wire.workers if w._warm_up is not None]
        assert warm
        for w in warm:
            before = _snapshot(w)
            for _ in range(3):
                w.keep_warm(wire.now + 1.0)
            assert w.c["warm_runs"] == 3
            assert _snapshot(w) == before              # no state, flow, message, counter, lease or park
            w.keep_warm(wire.now + KEEP_WARM_FOR_S + 1)    # long after its last upcall: it sleeps as before
            assert w.c["warm_runs"] == 3
    finally:
        wire.close()


def test_a_worker_with_no_upcall_yet_has_nothing_to_keep_warm():
    wire = Wire()
    try:
        w = wire.workers[0]
        w.keep_warm(wire.now)
        assert w.c["warm_runs"] == 0 and not w.out_dp and not w.out_sup
    finally:
        wire.close()


def test_the_datapath_keeps_warm_on_its_last_miss_and_last_answer_and_changes_nothing():
    wire = Wire()
    try:
        wire.inject("tenant.vm1", vm1_to_vm2(2000))
        dp = wire.dp
        dp._warm_up = ("tenant.vm1", vm1_to_vm2(2001), None, None)     # as poll_fd keeps it (real mode)
        dp.warm_until = float("inf")
        flows = dict(dp.dp.cache.flows)
        counters = {k: v for k, v in dp.counters.items() if k != "datapath_warm_runs"}
        sent = [len(link.frames) for link in wire.to_workers]
        dp.keep_warm()
        dp.keep_warm()
        assert dp.counters["datapath_warm_runs"] == 2
        assert dict(dp.dp.cache.flows) == flows and dp.disp.inflight == [0, 0]
        assert {k: v for k, v in dp.counters.items() if k != "datapath_warm_runs"} == counters
        assert [len(link.frames) for link in wire.to_workers] == sent
        dp.warm_until = 0.0                            # long after its last miss: nothing
        dp.keep_warm()
        assert dp.counters["datapath_warm_runs"] == 2
    finally:
        wire.close()


def test_the_gate_says_busy_while_setups_come_often_and_not_once_they_are_sparse():
    from workers.warm import SPARSE_PER_S, SPARSE_SPAN_S, SparseGate

    per_span = int(SPARSE_PER_S * SPARSE_SPAN_S)                       # setups in a span at the threshold
    g, now, n = SparseGate(), 100.0, 0
    assert not g.busy(now, n)
    step = SPARSE_SPAN_S * 1.01                   # a span a little over the window
    for _ in range(5):                                 # ~10x the threshold's rate
        now += step
        n += 10 * per_span
        assert g.busy(now, n)
    assert g.busy(now + SPARSE_SPAN_S / 2, n)     # within a span: the last verdict
    now += step
    n += per_span // 5                           # a fifth of it
    assert not g.busy(now, n)
    now += 10.0                                        # a long quiet span after a burst: its mean rate
    n += 3 * per_span
    assert not g.busy(now, n)


def test_a_busy_worker_does_not_keep_warm():
    from workers.warm import SPARSE_PER_S

    wire = Wire()
    try:
        wire.inject("tenant.vm1", vm1_to_vm2(2000))
        [w] = [x for x in wire.workers if x._warm_up is not None]
        w.keep_warm(wire.now + 1.0)
        assert w.c["warm_runs"] == 1
        w.c["upcalls"] += 10 * SPARSE_PER_S            # as if a flood of upcalls came within the next second
        w.keep_warm(wire.now + 2.0)
        assert w.c["warm_runs"] == 1
    finally:
        wire.close()
