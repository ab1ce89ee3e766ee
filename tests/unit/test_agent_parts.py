"""The supervisor's pure parts: child configs built from the AgentConfig, and the port map of a host."""

from __future__ import annotations

import dataclasses
import os

import pytest

from backchannel import messages as m
from backchannel.codec import decode
from engine import pool, portmap
from engine.config import AgentConfig
from engine.dpproc import DatapathConfig
from topology.loader import loads_topology
from workers.worker import WorkerConfig

# fields of a child config that no AgentConfig setting feeds (they keep the child's own default)
DATAPATH_OWN_DEFAULTS = {"reclaim_s"}


def _changed(value):
    """A value different from ``value``, of a type the field takes."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 3
    if isinstance(value, list):
        return [v + 1 for v in value]
    if isinstance(value, dict):
        return {**value, "x.y": 1}
    return "changed"


def _children(cfg: AgentConfig) -> list:
    pm = portmap.PortMap({"b.p": "tap0"}, {5: "b.p"}, {"host-a": 1})
    return [dataclasses.asdict(pool.datapath_config(cfg, "/run/x", pm, 99)),
            *(dataclasses.asdict(pool.worker_config(cfg, i, "/run/x")) for i in range(cfg.workers))]


class _Recorder:
    """Stands in for a child config class: fails on positional arguments, records the keywords."""

    def __init__(self, real):
        self.real, self.keywords = real, set()

    def __call__(self, *args, **kwargs):
        assert not args, f"{self.real.__name__} built with positional arguments {args!r}"
        self.keywords |= kwargs.keys()
        return self.real(**kwargs)


@pytest.mark.parametrize("datapath", ["memory", "real"])
def test_child_configs_get_every_field_by_keyword(monkeypatch, datapath):
    dp, wk = _Recorder(DatapathConfig), _Recorder(WorkerConfig)
    monkeypatch.setattr(pool, "DatapathConfig", dp)
    monkeypatch.setattr(pool, "WorkerConfig", wk)
    _children(AgentConfig(workers=2, datapath=datapath))
    assert dp.keywords == {f.name for f in dataclasses.fields(DatapathConfig)} - DATAPATH_OWN_DEFAULTS
    assert wk.keywords == {f.name for f in dataclasses.fields(WorkerConfig)}


# AgentConfig fields that are the supervisor's own business, not a child's
SUPERVISOR_ONLY = {"store", "topology", "runtime_base", "restart_workers", "state_file", "state_snapshot_s",
                   "start_timeout_s", "request_timeout_s", "max_pending_requests", "learn_rate", "learn_burst",
                   "flow_state_keys", "metrics", "ctl"}
# AgentConfig fields every child gets on its command line next to its config (engine/procmain.py: "log")
COMMAND_LINE = {"log_level", "log_file", "log_repeat_s"}
# AgentConfig fields every child gets in its environment (engine/pool.py NICE_ENV): test below
ENVIRONMENT = {"datapath_nice", "worker_nice"}


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(AgentConfig)      # the mode: parametrized
                                  if f.name not in SUPERVISOR_ONLY | COMMAND_LINE | ENVIRONMENT | {"datapath"}])
@pytest.mark.parametrize("datapath", ["memory", "real"])
def test_a_changed_agent_setting_reaches_a_child_config(name, datapath):
    base = AgentConfig(workers=2, host="host-a", datapath=datapath, cpus=[0, 1], datapath_cpu=0,
                       port_workers={"b.p": 0}, poll_spin_us=50)     # spinning on: poll_spin_workers matters
    changed = dataclasses.replace(base, **{name: _changed(getattr(base, name))})
    if name == "keep_outputs" and datapath == "real":
        assert _children(changed) == _children(base)   # the real datapath keeps no outputs
        return
    assert _children(changed) != _children(base), f"AgentConfig.{name} reaches no child config"


def test_the_nice_settings_reach_every_child_environment():
    class Fake:
        pid = 4242

    envs: list[dict] = []

    def popen(argv, **kw):
        envs.append(kw["env"])
        return Fake()

    cfg = AgentConfig(workers=2, datapath_nice=-3, worker_nice=4)
    procs = pool.ProcessPool(cfg, {})
    procs.popen = popen
    p2 = None
    procs.start(pool.datapath_config(cfg, "/run/x", portmap.PortMap({}, {}, {}), None), "/run/x")
    try:
        dp, *workers = envs
        assert dp[pool.NICE_ENV] == "-3" and dp[pool.OWN_GROUP_ENV] == "1"
        assert [w[pool.NICE_ENV] for w in workers] == ["4", "4"] and not any(pool.OWN_GROUP_ENV in w for w in workers)
        envs.clear()
        same = AgentConfig(workers=1, datapath_nice=0, worker_nice=0)      # no priority: no group of its own
        p2 = pool.ProcessPool(same, {})
        p2.popen = popen
        p2.start(pool.datapath_config(same, "/run/x", portmap.PortMap({}, {}, {}), None), "/run/x")
        assert envs[0][pool.NICE_ENV] == "0" and pool.OWN_GROUP_ENV not in envs[0]
    finally:
        for p in (procs, p2):
            for fd in (p._lifeline or ()) if p is not None else ():
                os.close(fd)


def test_the_log_settings_reach_every_child_command_line():
    import json

    cfg = AgentConfig(workers=2, log_level="debug", log_file="/tmp/agent.log", log_repeat_s=2.5)
    procs = pool.ProcessPool(cfg, {})
    pm = portmap.PortMap({}, {}, {})
    lines = [procs._command("datapath", pool.datapath_config(cfg, "/run/x", pm, None)),
             *(procs._command("worker", pool.worker_config(cfg, i, "/run/x")) for i in range(2))]
    assert [json.loads(argv[-1])["log"] for argv in lines] == [{"level": "DEBUG", "file": "/tmp/agent.log",
                                                                     "repeat_s": 2.5}] * 3
    assert [argv[-2] for argv in lines] == ["datapath", "worker", "worker"]


def test_child_config_values():
    cfg = AgentConfig(workers=3, cpus=[4, 5], drop_flow_s=2.5, max_flows=10, datapath="real", tunnel_port=5000)
    pm = portmap.PortMap({}, {7: "b.p"}, {"host-b": 12})
    dp = pool.datapath_config(cfg, "/run/x", pm, 11)
    assert (dp.n_workers, dp.max_flows, dp.mode, dp.tunnel_ip, dp.tunnel_port) == (3, 1024, "real", 11, 5000)
    assert dp.tunnel_ports == {7: "b.p"} and dp.hosts == {"host-b": 12} and dp.ports is None
    assert dp.keep_outputs is False
    w = [pool.worker_config(cfg, i, "/run/x") for i in range(3)]
    assert [x.cpu for x in w] == [4, 5, 4] and [x.index for x in w] == [0, 1, 2]
    assert all(x.drop_flow_s == 2.5 and x.replicate_hosts and not x.pinned_ports for x in w)
    memory = pool.datapath_config(AgentConfig(), "/run/x", pm, 11)
    assert memory.mode == "memory" and memory.tunnel_ip is None and memory.keep_outputs is True


TOPO = """
version: 1
hosts:
  host-a: {tunnel_ip: 127.0.0.11}
  host-b: {tunnel_ip: 127.0.0.12}
bridges:
  b:
    ports:
      p1: {host: host-a, interface: tap1}
      p2: {host: host-b, interface: tap2}
      p3: {}
      up: {peer: r.down}
routers:
  r:
    ports:
      down: {address: 10.0.0.1/24, mac: "02:00:00:00:00:01"}
      out: {address: 198.51.100.2/24, mac: "02:00:00:00:00:02", host: host-a, interface: up0}
"""


def objects(text: str) -> dict:
    """What the agent's store mirror holds: (kind, name) → record."""
    t = loads_topology(text)
    return {**{("host", n): h for n, h in t.hosts.items()}, **{("bridge", n): b for n, b in t.bridges.items()},
            **{("router", n): r for n, r in t.routers.items()}}


def test_port_map_of_a_host():
    objs = objects(TOPO)
    assert portmap.bindings(objs) == {"b.p1": "host-a", "b.p2": "host-b", "r.out": "host-a"}
    pm = portmap.port_map(objs, "host-a")
    assert pm.ports == {"b.p1": "tap1", "r.out": "up0"}
    keys = {p.id: p.tunnel_key for (k, _), d in objs.items() if k != "host" for p in d.ports.values()}
    assert pm.keys == {keys["b.p1"]: "b.p1", keys["r.out"]: "r.out"}
    assert pm.hosts == {"host-a": 0x7F00000B, "host-b": 0x7F00000C}
    assert portmap.port_map(objs, None).ports == {} and portmap.port_map(objs, None).keys == {}
    msg = portmap.set_port_map(9, pm)
    assert msg == m.SetPortMap(9, (("b.p1", "tap1"), ("r.out", "up0")), tuple(sorted(pm.keys.items())),
                               (("host-a", 0x7F00000B), ("host-b", 0x7F00000C)))


def test_a_port_moved_here_asks_its_previous_host_for_state():
    before = portmap.bindings(objects(TOPO))
    moved = objects(TOPO.replace("p2: {host: host-b", "p2: {host: host-a").replace("p1: {host: host-a",
                                                                                  "p1: {host: host-b"))
    now, requests = portmap.moved_state_requests(before, moved, "host-a")
    assert now == {"b.p1": "host-b", "b.p2": "host-a", "r.out": "host-a"}
    assert portmap.moved_here(before, now, "host-b") == [("b.p1", "host-a")]
    assert len(requests) == 1 and requests[0].hosts == ("host-b",)
    assert decode(requests[0].payload) == m.StateRequest("host-a", "b.p2")
    assert portmap.moved_state_requests(now, moved, "host-a")[1] == []
