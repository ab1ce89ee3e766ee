"""Bounded tables (issue 12, item 4): every table a VM or a peer can grow is capped, and what the cap refuses
is counted.  The worker caps run through ``Wire`` (workers and a datapath in one process, real codec)."""

from __future__ import annotations

from backchannel import messages as m
from engine import pool
from engine.config import AgentConfig
from engine.dispatcher import Dispatcher
from engine.dpproc import DatapathConfig, DatapathProcess
from engine.portmap import PortMap
from packet.codec import parse
from tests.unit.test_worker_inprocess import frame


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


def test_the_held_back_caps_come_from_the_agent_config():
    cfg = AgentConfig(max_held=3, max_held_total=99)
    dp_cfg = pool.datapath_config(cfg, "/run/x", PortMap({}, {}, {}), None)
    dp = DatapathProcess(dp_cfg, [], None)
    assert (dp.disp.max_held, dp.disp.max_held_total) == (3, 99)
    assert DatapathProcess(DatapathConfig(runtime_dir="", n_workers=1), [], None).disp.max_held == 16
    assert "dispatcher_held_overflow" in dp.counters


# -- pending supervisor requests -------------------------------------------------------------------------------
def _service(**kw):
    from engine.service import Service

    counters: dict = {}
    svc = Service(AgentConfig(**kw), counters)
    sent = []
    svc._send = lambda target, msg: sent.append((target, msg)) or True
    return svc, counters, sent


def test_an_unanswered_request_expires_with_a_counter_and_a_late_answer_is_dropped():
    import time

    import pytest

    from engine.service import RequestExpired

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
    import pytest

    from engine.service import ServiceBusy

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
    from concurrent.futures import Future

    from engine.persistence import Persistence
    from engine.service import RequestExpired

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
