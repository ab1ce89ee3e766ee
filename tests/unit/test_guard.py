"""The loop guard (backchannel/guard.py): one message that raises is counted by type and logged, rate-limited;
the others are handled; and each process loop runs its handlers under it."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

from backchannel import messages as m
from backchannel.guard import Guard

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_message_that_raises_is_counted_by_type_and_the_rest_are_handled(caplog):
    counters: dict = {}
    guard = Guard("datapath", counters)
    seen = []

    def handle(msg, now):
        if type(msg) is m.Ping and msg.seq == 2:
            raise KeyError("boom")
        seen.append((msg, now))

    msgs = [m.Ping(1, 1), m.Ping(1, 2), m.Shutdown(), m.Ping(1, 3)]
    with caplog.at_level(logging.ERROR, logger="shardnet.datapath"):
        guard.run(handle, msgs, 7.0)
    assert [s[0] for s in seen] == [msgs[0], msgs[2], msgs[3]] and all(s[1] == 7.0 for s in seen)
    assert counters == {"datapath_handler_errors": 1, "datapath_handler_errors_Ping": 1}
    [rec] = caplog.records
    assert "Ping" in rec.getMessage() and "KeyError" in rec.getMessage()
    assert rec.exc_info is not None and rec.exc_info[0] is KeyError       # the traceback is logged


def test_logging_is_rate_limited_and_says_how_many_it_left_out(caplog):
    clock = Clock()
    counters: dict = {}
    guard = Guard("worker", counters, prefix="", burst=2, interval_s=10.0, clock=clock)

    def boom(msg, now):
        raise ValueError(msg.seq)

    with caplog.at_level(logging.ERROR, logger="shardnet.worker"):
        guard.run(boom, [m.Ping(0, i) for i in range(5)], 0.0)
        assert len(caplog.records) == 2
        clock.t = 11.0
        guard.call("housekeeping", lambda: 1 / 0)
    assert len(caplog.records) == 3 and "3 more not logged" in caplog.records[-1].getMessage()
    assert counters == {"handler_errors": 6, "handler_errors_Ping": 5, "handler_errors_housekeeping": 1}


def test_call_returns_the_result_or_none():
    guard = Guard("supervisor", {})
    assert guard.call("x", lambda a, b: a + b, 1, 2) == 3
    assert guard.call("x", lambda: [][0]) is None
    assert guard.counters["supervisor_handler_errors_x"] == 1


def _calls_in(path: str, func: str) -> set[str]:
    """The dotted names called inside function ``func`` of ``path``."""
    tree = ast.parse((ROOT / path).read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == func)
    return {ast.unparse(n.func) for n in ast.walk(fn) if isinstance(n, ast.Call)}


def test_every_process_loop_handles_its_inbox_under_the_guard():
    """The loops hand their handlers to the guard; none calls a handler bare."""
    worker = _calls_in("workers/loop.py", "worker_main")
    assert {"guard.run", "guard.call"} <= worker and "w.handle" not in worker and "w.housekeeping" not in worker
    dp = _calls_in("engine/dpproc.py", "datapath_main")
    assert {"guard.run", "guard.call"} <= dp and not {"proc.handle", "proc.poll_fd", "proc.housekeeping"} & dp
    sup = _calls_in("engine/service.py", "_run")
    assert {"guard.run", "guard.call"} <= sup and "self._handle" not in sup
