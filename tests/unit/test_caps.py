"""Bounded tables (issue 12, item 4): every table a VM or a peer can grow is capped, and what the cap refuses
is counted.  The worker caps run through ``Wire`` (workers and a datapath in one process, real codec)."""

from __future__ import annotations

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
