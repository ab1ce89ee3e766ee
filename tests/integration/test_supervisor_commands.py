"""The supervisor's side of the command protocol, against fake children (threads on the real ZMQ sockets).

Each fake stands in for ``python -m engine.procmain ROLE JSON``: it binds its role's inbox, says Ready, and
answers the supervisor's commands as CONTRACTS say the datapath and the workers do.  What the real processes
do with the commands is tested in test_engine.py; this checks what the Agent sends and how it reads answers.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest
import zmq

from backchannel import messages as m
from backchannel.codec import Decoder, decode
from backchannel.sockets import (
    DATAPATH,
    SUPERVISOR,
    RuntimeDir,
    pull_bind,
    push_connect,
    recv_msgs,
    send_msg,
    worker_role,
)
from engine.pool import ProcessPool
from engine.supervisor import Agent

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
"""
FLOW = [[1, 2], 0, 3, ["bridge:b"], 9]


class FakeChild:
    """A Popen look-alike running a child's inbox loop on a thread; ``received`` is what it was sent."""

    started: list[FakeChild] = []

    def __init__(self, argv, **_):
        role, raw = argv[-2], json.loads(argv[-1])
        self.index = m.DATAPATH_INDEX if role == "datapath" else raw["index"]
        self.config = raw
        self.pid = 900_000 + len(FakeChild.started)
        self.received: list = []
        self.done = threading.Event()
        FakeChild.started.append(self)
        self._thread = threading.Thread(target=self._run, args=(RuntimeDir.attach(raw["runtime_dir"]),),
                                        daemon=True)
        self._thread.start()

    def _answer(self, msg):
        t, i = type(msg), self.index
        if t is m.StatsRequest:
            return m.StatsReply(msg.req_id, i, {"fake_pid": self.pid})
        body = {m.DumpFlows: lambda: [FLOW], m.TakeOutputs: lambda: {msg[1] or "b.p1": [b"out"]},
                m.TakeLatencies: lambda: [10, 20],
                m.DumpState: lambda: [["conntrack", [i, 2, 6, 3, 4, "b"], None, 50.0]],      # a real state key
                m.DumpStatePage: lambda: {"entries": [["conntrack", [i, 2, 6, 3, 4, "b"], None, 50.0]], "cursor": 0,
                                          "total": 1},
                m.DumpFlowTable: lambda: {"total": 1, "flows": [{"key": FLOW[0], "worker": FLOW[1], "hits": FLOW[2],
                                                                 "tags": FLOW[3], "id": FLOW[4]}]},
                m.SetPortMap: lambda: {"ports": [p for p, _ in msg.ports], "errors": []},
                m.SetStateAuth: lambda: {"keys": len(msg.keys)}}.get(t)
        return None if body is None else m.Answer(msg.req_id, i, body())

    def _run(self, rt):
        ctx = zmq.Context.instance()
        inbox = pull_bind(ctx, rt, DATAPATH if self.index == m.DATAPATH_INDEX else worker_role(self.index))
        sup = push_connect(ctx, rt, SUPERVISOR)
        send_msg(sup, m.Ready(self.index, self.pid))
        decoder = Decoder()
        while not self.done.is_set():
            if inbox.poll(20):
                for msg in recv_msgs(inbox, decoder):
                    self.received.append(msg)
                    if type(msg) is m.Shutdown:
                        self.done.set()
                    elif getattr(msg, "req_id", 0) != 0 and (ans := self._answer(msg)) is not None:
                        send_msg(sup, ans)
        inbox.close(0)
        sup.close(0)

    def poll(self):
        return None if self._thread.is_alive() else 0

    def wait(self, timeout=None):
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise subprocess.TimeoutExpired("fake child", timeout)

    def terminate(self):
        self.done.set()

    kill = terminate


def sent(child: FakeChild, kind: type) -> list:
    return [x for x in child.received if type(x) is kind]


def wait_for(fn, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := fn():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def agent_factory(monkeypatch, tmp_path):
    monkeypatch.setattr(ProcessPool, "popen", FakeChild)
    monkeypatch.setattr(FakeChild, "started", [])
    (tmp_path / "t.yaml").write_text(TOPO)
    agents = []

    def make(**kw) -> Agent:
        a = Agent(workers=2, topology=str(tmp_path / "t.yaml"), host="host-a", store=f"memory://{tmp_path.name}",
                  runtime_base=str(tmp_path), **kw)
        agents.append(a.start())
        return a

    yield make
    for a in agents:
        a.stop()


def test_commands_and_answers_memory_datapath(agent_factory):
    a = agent_factory()
    dp = next(c for c in FakeChild.started if c.index == m.DATAPATH_INDEX)
    assert a.pids == {c.index: c.pid for c in FakeChild.started}
    assert dp.config["tunnel_ports"] and dp.config["mode"] == "memory"
    s = a.stats()
    assert s["datapath"] == {"fake_pid": dp.pid} and [w["fake_pid"] for w in s["workers"]] == [a.pids[0], a.pids[1]]
    assert s["supervisor"]["supervisor_worker_restarts"] == 0
    assert a.flows() == [((1, 2), 0, 3, ("bridge:b",), 9)]        # as the datapath said it (lists decode as tuples)
    assert a.outputs("b.p1") == {"b.p1": (b"out",)} and a.latencies_ns() == (10, 20)
    a.inject("b.p1", [b"frame"])
    a.inject_tunnel(7, [b"tunneled"])
    wait_for(lambda: sent(dp, m.TunnelFrames), what="tunnel frames")
    assert sent(dp, m.Inject) == [m.Inject("b.p1", (b"frame",))]
    assert sent(dp, m.TunnelFrames) == [m.TunnelFrames(7, (b"tunneled",))]
    a.apply_topology(TOPO.replace("p2: {host: host-b", "p2: {host: host-a"))    # memory: keys only, no answer
    wait_for(lambda: sent(dp, m.SetPortMap), what="port map")
    assert all(x.req_id == 0 for x in sent(dp, m.SetPortMap))


def test_a_dead_worker_is_purged_and_restarted(agent_factory):
    a = agent_factory()
    dp = next(c for c in FakeChild.started if c.index == m.DATAPATH_INDEX)
    old = a.pids[0]
    a.procs[0].done.set()
    wait_for(lambda: a.health()["restarts"] == 1 and a.pids[0] != old, what="restart")
    wait_for(lambda: sent(dp, m.PurgeWorker), what="purge")
    assert sent(dp, m.PurgeWorker) == [m.PurgeWorker(0, 0)]
    assert a.health()["alive"] == {-1: True, 0: True, 1: True}
    assert a.stats()["workers"][0] == {"fake_pid": a.pids[0]}


def test_real_datapath_restore_port_map_snapshot_and_moves(agent_factory, tmp_path):
    state = tmp_path / "a.state"
    a = agent_factory(datapath="real", state_file=str(state), state_snapshot_s=0.1)
    dp = next(c for c in FakeChild.started if c.index == m.DATAPATH_INDEX)
    assert dp.config["mode"] == "real" and dp.config["ports"] is None and dp.config["tunnel_ip"] == 0x7F00000B
    first = sent(dp, m.SetPortMap)[0]
    assert first.req_id != 0 and first.ports == (("b.p1", "tap1"),)
    [auth] = sent(dp, m.SetStateAuth)                   # the deployment key, made in the store by this agent
    assert auth.req_id != 0 and [len(k) for k in auth.keys] == [32]
    assert dp.received.index(auth) < dp.received.index(first)
    wait_for(lambda: state.exists() and a.stats()["supervisor"].get("supervisor_state_snapshots", 0) >= 2,
             what="periodic snapshots")
    a.apply_topology(TOPO.replace("p2: {host: host-b", "p2: {host: host-a"))
    wait_for(lambda: sent(dp, m.StateToHosts), what="state fetch for the moved port")
    (fetch,) = sent(dp, m.StateToHosts)
    assert fetch.hosts == ("host-b",) and decode(fetch.payload) == m.StateRequest("host-a", "b.p2")
    assert sent(dp, m.SetPortMap)[-1].req_id == 0 and ("b.p2", "tap2") in sent(dp, m.SetPortMap)[-1].ports
    a.stop()                                           # the last snapshot, then the second run restores it
    b = agent_factory(datapath="real", state_file=str(state), state_snapshot_s=0)
    assert b.restored == 2
    workers = [c for c in FakeChild.started[-3:] if c.index >= 0]
    wait_for(lambda: all(sent(w, m.FlowStateBatch) for w in workers), what="restored state delivered")
    assert all(len(sent(w, m.FlowStateBatch)[0].entries) == 2 for w in workers)
