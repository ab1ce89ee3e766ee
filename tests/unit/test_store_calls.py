"""The store-call executor (engine/storecalls.py) and what the workers do when the store fails them."""

from __future__ import annotations

import threading

from backchannel import messages as m
from backchannel.guard import Guard
from engine.storecalls import StoreCalls
from tests.integration.test_engine import wait_for
from workers.simulation.result import NeedLease
from workers.worker import Worker, WorkerConfig


def test_calls_run_off_the_calling_thread_and_their_results_come_back_on_drain():
    counters: dict = {}
    woken = threading.Event()
    calls = StoreCalls(counters, woken.set, lanes={"a": 2}, max_queued=4)
    release = threading.Event()
    seen = []
    try:
        assert calls.submit("a", lambda: (release.wait(10), threading.current_thread().name)[1],
                            done=lambda r, e: seen.append((r, e)))
        assert calls.submit("a", lambda: 1 / 0, done=lambda r, e: seen.append((r, type(e))))
        wait_for(woken.is_set, what="the failing call to finish")
        calls.drain(Guard("t", counters))
        assert seen == [(None, ZeroDivisionError)]                 # the blocked one is still running
        assert counters["supervisor_store_calls_in_flight"] == 1
        release.set()
        wait_for(lambda: calls.drain(Guard("t", counters)) or seen[1:], what="the blocked call")
        assert seen[1][0].startswith("shardnet-store-a-") and seen[1][1] is None
        assert counters["supervisor_store_calls"] == 2 and counters["supervisor_store_call_errors"] == 1
        assert counters["supervisor_store_calls_in_flight"] == 0
    finally:
        release.set()
        calls.close()


def test_a_full_lane_refuses_at_once_and_counts():
    counters: dict = {}
    calls = StoreCalls(counters, lambda: None, lanes={"a": 1}, max_queued=2)
    running, release = threading.Event(), threading.Event()
    try:
        assert calls.submit("a", lambda: (running.set(), release.wait(10)))
        assert running.wait(10)                                     # the thread is busy with it
        results = [calls.submit("a", release.wait, 10) for _ in range(4)]   # 2 queued, 2 refused
        assert results == [True, True, False, False] and counters["supervisor_store_calls_refused"] == 2
    finally:
        release.set()
        calls.close()


def test_a_failed_lease_drops_what_waits_with_its_reason_and_an_outage_names_the_timeouts():
    w = Worker(WorkerConfig(index=0, n_workers=1, runtime_dir="/nonexistent"))
    w.handle(m.StoreStatus("suspended"), 0.0)
    assert w.store_ok is False
    w.handle(m.StoreStatus("connected"), 0.0)
    assert w.store_ok is True
    key = ("lease", "r1", 0xB4000164)
    # the supervisor answers the lease with LeaseFailed: what waits for it drops with that reason
    w.parking.park(_need(), ("port", None), 0.0)
    w.leases_out[key] = 1
    w.handle(m.LeaseFailed("r1", 0xB4000164, "store_unavailable"), 1.0)
    assert w.drops["generated_lease_store_unavailable"] == 1 and w.leases_out[key] == 0
    # parked on a lease while the store is down: the timeout is named for the store
    w.handle(m.StoreStatus("suspended"), 1.0)
    w.parking.park(_need(), ("port", None), 1.0)
    w.housekeeping(1.0 + w.cfg.park_timeout_s + 0.1)
    assert w.drops["generated_store_down_lease"] == 1
    w.handle(m.StoreStatus("connected"), 10.0)
    w.parking.park(_need(), ("port", None), 10.0)
    w.housekeeping(10.0 + w.cfg.park_timeout_s + 0.1)
    assert w.drops["generated_parked_timeout_lease"] == 1


def _need():
    return NeedLease("r1", 0xB4000164, 5000, 65535)

