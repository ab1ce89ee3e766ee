"""Process faults with real processes (in-memory datapath), caused by ``kill -9`` by pid: the datapath is
restarted and gets its flows back from the workers; a killed worker leaves its sibling's flows alone; a killed
``shardnet run`` or embedding program leaves no process and no runtime directory behind.  Times are measured
and printed (``-s`` shows them), never asserted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from backchannel import messages as m
from engine.pool import backoff_s
from engine.supervisor import Agent
from packet.codec import build
from packet.spec import parse_spec
from tests.integration.test_engine import Outputs, wait_for
from tests.integration.test_logs_agent import restore_root_logger  # noqa: F401 - a fixture used here

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


def udp(src_mac: str, dst_mac: str, sport: int) -> bytes:
    src, dst = ("10.0.0.2", "10.0.0.3") if src_mac == MAC1 else ("10.0.0.3", "10.0.0.2")
    return build(parse_spec(f"eth_src={src_mac},eth_dst={dst_mac},ip_src={src},ip_dst={dst},proto=udp,"
                            f"tp_src={sport},tp_dst=53"))


@pytest.fixture
def agent(tmp_path):
    (tmp_path / "lan.yaml").write_text(LEARNING)
    a = Agent(topology=str(tmp_path / "lan.yaml"), host="host-a", store=f"memory://{tmp_path.name}", workers=2,
              runtime_base=str(tmp_path), max_inflight=100_000, port_rate=1e6, port_burst=1e6,
              megaflows=False).start()                 # exact match: one flow per 5-tuple to count
    yield a
    a.stop()


def worker_flows(agent: Agent) -> list[int]:
    return [w.get("worker_flows", 0) for w in agent.stats()["workers"]]


def learn(agent: Agent, out: Outputs) -> None:
    agent.inject("lan.vm2", [udp(MAC2, MAC1, 7)])
    out.wait("lan.vm1", 1)                               # flooded: vm2's MAC learned
    agent.inject("lan.vm1", [udp(MAC1, MAC2, 7)])
    out.wait("lan.vm2", 1)


def test_a_killed_datapath_is_restarted_and_gets_its_flows_back_from_the_workers(agent):
    out = Outputs(agent)
    learn(agent, out)
    frames = [udp(MAC1, MAC2, 10_000 + i) for i in range(500)]
    agent.inject("lan.vm1", frames)
    out.wait("lan.vm2", 501)
    flows = len(agent.flows())
    old = agent.pids[-1]
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()
    probe = Outputs(agent)
    gap = None
    while time.monotonic() - t0 < 30:                   # a cached flow's packet, every 10 ms, until it passes
        agent.inject("lan.vm1", [frames[0]])
        try:
            if agent.query([-1], "outputs", "lan.vm2", timeout=0.2)[-1].get("lan.vm2"):
                gap = time.monotonic() - t0
                break
        except Exception:                                # noqa: BLE001 - the datapath is down: try again
            pass
        time.sleep(0.01)
    assert gap is not None, "forwarding never resumed"
    print(f"\nforwarding resumed {gap * 1000:.0f} ms after kill -9 of the datapath")
    assert agent.pids[-1] != old and agent.health()["datapath_restarts"] == 1
    wait_for(lambda: len(agent.flows()) >= flows, what="the flows re-installed")
    dp = agent.stats()["datapath"]
    assert dp["datapath_reinstalled"] >= flows - 1
    upcalls = dp["dispatcher_upcalls"]
    agent.inject("lan.vm1", frames)                      # cache hits, not upcalls
    probe.wait("lan.vm2", 500)
    dp = agent.stats()["datapath"]
    assert dp["dispatcher_upcalls"] == upcalls and dp["datapath_hits"] >= 500
    agent.inject("lan.vm1", [udp(MAC1, MAC2, 60_000)])   # a new flow: simulated by a worker of the old epoch
    probe.wait("lan.vm2", 501)


def test_a_killed_worker_leaves_its_siblings_flows_and_counts_its_crashes(agent):
    """The reported collapse: one worker killed under load, the other's table lost half of its flows."""
    out = Outputs(agent)
    learn(agent, out)
    agent.inject("lan.vm1", [udp(MAC1, MAC2, 10_000 + i) for i in range(2000)])
    agent.inject("lan.vm2", [udp(MAC2, MAC1, 10_000 + i) for i in range(2000)])
    wait_for(lambda: sum(worker_flows(agent)) >= 3990, what="flows on both workers")
    for victim in (0, 1):
        survivor = 1 - victim
        before = worker_flows(agent)[survivor]
        old = agent.pids[victim]
        os.kill(old, signal.SIGKILL)
        base = 20_000 + 5000 * victim
        for k in range(10):                              # load while it is dead and after its restart
            agent.inject("lan.vm1", [udp(MAC1, MAC2, base + 100 * k + i) for i in range(100)])
            agent.inject("lan.vm2", [udp(MAC2, MAC1, base + 100 * k + i) for i in range(100)])
            time.sleep(0.05)
        wait_for(lambda v=victim, o=old: agent.pids[v] != o and agent.stats()["workers"][v].get("worker_pid")
                 == agent.pids[v], what="the worker restarted")
        agent.inject("lan.vm1", [udp(MAC1, MAC2, base + 4000 + i) for i in range(200)])   # it re-learns the MACs
        agent.inject("lan.vm2", [udp(MAC2, MAC1, base + 4000 + i) for i in range(200)])
        wait_for(lambda v=victim: agent.stats()["workers"][v].get("worker_flows", 0) > 50, what="new flows")
        after = worker_flows(agent)[survivor]
        print(f"\nworker {victim} killed: worker {survivor} had {before} flows, has {after}")
        assert after >= 0.99 * before
    assert [agent.children()[i]["crashes"] for i in (0, 1)] == [1, 1]
    assert agent.stats()["supervisor"]["supervisor_crashes"] == 2


def test_restarts_back_off_after_quick_deaths():
    assert [backoff_s(n) for n in (1, 2, 3, 4)] == [0.0, 0.25, 0.5, 1.0]
    assert backoff_s(50) == 30.0


def _children_of(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(x) for x in f.read().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _runtime_dir(child: int) -> str:
    with open(f"/proc/{child}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    return json.loads(argv[argv.index(b"engine.procmain") + 2])["runtime_dir"]


def _kill_and_watch(proc: subprocess.Popen, children: list[int]) -> float:
    """kill -9 ``proc``; the seconds until none of ``children`` is alive (bounded wait)."""
    rundir = _runtime_dir(children[0])
    assert os.path.isdir(rundir)
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    while any(map(_alive, children)) and time.monotonic() - t0 < 20:
        time.sleep(0.01)
    gone = time.monotonic() - t0
    left = [c for c in children if _alive(c)]
    for c in left:                                       # never leave them behind, even when the test fails
        os.kill(c, signal.SIGKILL)
    assert not left, f"children {left} outlived their supervisor"
    wait_for(lambda: not os.path.exists(rundir), timeout=5, what="the runtime directory removed")
    return gone


def test_kill_9_of_shardnet_run_under_traffic_leaves_no_process_and_no_runtime_directory(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "--store", "memory://", "--demo",
                             "--rate", "2000", "--duration", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        assert b"agent up" in proc.stdout.readline()
        time.sleep(1.0)                                  # traffic flows
        children = _children_of(proc.pid)
        assert len(children) == 3                        # the datapath and two workers
        gone = _kill_and_watch(proc, children)
        print(f"\nkill -9 of shardnet run: its 3 children gone after {gone * 1000:.0f} ms")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


EMBEDDER = """
import sys, threading, time
from engine.supervisor import Agent
box = []
t = threading.Thread(target=lambda: box.append(Agent(topology=sys.argv[1], host="host-a", store="memory://e",
                                                     workers=2).start()))
t.start(); t.join()                      # the thread that started the agent is gone: its children stay
time.sleep(0.5)
print("up", flush=True)
time.sleep(60)
"""


def test_kill_9_of_an_embedding_program_leaves_no_process_behind(tmp_path):
    (tmp_path / "lan.yaml").write_text(LEARNING)
    proc = subprocess.Popen([sys.executable, "-c", EMBEDDER, str(tmp_path / "lan.yaml")], stdout=subprocess.PIPE,
                            env={**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdout.readline().strip() == b"up"
        children = _children_of(proc.pid)
        assert len(children) == 3 and all(map(_alive, children))   # alive after the starting thread ended
        gone = _kill_and_watch(proc, children)
        print(f"\nkill -9 of an embedding program: its 3 children gone after {gone * 1000:.0f} ms")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_shardnet_run_outlives_its_datapath_and_stops_cleanly_with_a_summary(tmp_path):
    """The report: SIGINT after a datapath death printed ``shardnet run: `` (an empty message)."""
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "--store", "memory://", "--demo",
                             "--rate", "500", "--duration", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        assert b"agent up" in proc.stdout.readline()
        dp = min(_children_of(proc.pid), key=lambda c: b"datapath" not in open(f"/proc/{c}/cmdline", "rb").read())
        os.kill(dp, signal.SIGKILL)
        time.sleep(2.0)
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"flows installed" in out and b"datapath restarted" in err
    assert not any(line.rstrip() == "shardnet run:" for line in err.decode().splitlines())


def test_an_error_of_shardnet_run_is_never_an_empty_line():
    from engine.run import describe

    assert describe(TimeoutError()) and describe(RuntimeError()) == "RuntimeError"
    assert describe(OSError("no such interface")) == "no such interface"


@pytest.mark.usefixtures("restore_root_logger")
def test_a_restarted_datapath_gets_the_log_level_set_at_run_time(tmp_path):
    (tmp_path / "lan.yaml").write_text(LEARNING)
    log_file = tmp_path / "agent.log"
    with Agent(topology=str(tmp_path / "lan.yaml"), host="host-a", store=f"memory://{tmp_path.name}", workers=1,
               log_file=str(log_file)) as a:
        a.command([-1], lambda req: m.SetLogLevel(req, "WARNING"))
        old = a.pids[-1]
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: a.pids[-1] != old and a.stats()["datapath"].get("datapath_pid") == a.pids[-1],
                 what="the datapath restarted")
        new = a.pids[-1]
        wait_for(lambda: f"datapath started (pid {new})" in log_file.read_text(), what="its first line")
    text = log_file.read_text()
    assert "worker 0 stopped" in text                  # INFO still logged by the worker
    assert f"datapath stopped (pid {new})" not in text  # not by the new datapath: it got WARNING again
