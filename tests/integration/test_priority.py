"""The datapath's priority over the workers (AgentConfig ``datapath_nice`` / ``worker_nice``), with real
processes: every thread of each child runs at its configured nice value (read from /proc), a restarted child
gets it again, a value the process may not take leaves it unchanged and running, and the config refuses
values outside setpriority(2)'s range."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from engine.config import AgentConfig, ConfigError
from engine.supervisor import Agent
from tests.integration.test_engine import wait_for
from tests.integration.test_process_faults import LEARNING

ROOT = os.geteuid() == 0


def thread_nices(pid: int) -> list[int]:
    """The nice value of every thread of ``pid`` (field 19 of /proc/PID/task/TID/stat)."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            out.append(int(f.read().rsplit(")", 1)[1].split()[16]))
    return out


def autogroup(pid: int) -> tuple[str, int] | None:
    """(name, nice) of the scheduling autogroup of ``pid`` ("/autogroup-N nice K"); None where the kernel reports
    none (the file is missing or empty: autogroups compiled out or off, as on some CI hosts)."""
    try:
        with open(f"/proc/{pid}/autogroup") as f:
            fields = f.read().split()
    except OSError:
        return None
    if len(fields) != 3:
        return None
    return fields[0], int(fields[2])


@pytest.mark.skipif(not ROOT, reason="a negative nice value needs root")
def test_the_datapath_runs_niced_before_the_workers_and_keeps_it_across_a_restart(tmp_path):
    (tmp_path / "lan.yaml").write_text(LEARNING)
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    a = Agent(topology=str(tmp_path / "lan.yaml"), host="host-a", store=f"memory://{tmp_path.name}", workers=2,
              runtime_base=str(tmp_path), datapath_nice=-7, worker_nice=3).start()
    try:
        dp = a.pids[-1]
        assert set(thread_nices(dp)) == {-7} and len(thread_nices(dp)) > 1     # ZMQ's I/O thread too
        for w in (0, 1):
            assert set(thread_nices(a.pids[w])) == {3}
        assert os.getpriority(os.PRIO_PROCESS, 0) == mine                  # the supervisor is not touched
        # a session (hence an autogroup) of its own, weighted by its nice value; the workers stay in ours
        assert os.getsid(dp) == dp and all(os.getsid(a.pids[w]) == os.getsid(0) for w in (0, 1))
        if autogroup(os.getpid()) is not None:
            group = autogroup(dp)
            assert group[1] == -7 and group[0] != autogroup(os.getpid())[0]
            assert all(autogroup(a.pids[w]) == autogroup(os.getpid()) for w in (0, 1))
        os.kill(dp, signal.SIGKILL)
        wait_for(lambda: a.pids[-1] != dp and a.stats()["datapath"].get("datapath_pid") == a.pids[-1],
                 what="the datapath restarted")
        assert set(thread_nices(a.pids[-1])) == {-7} and os.getsid(a.pids[-1]) == a.pids[-1]
    finally:
        a.stop()


def test_the_default_puts_the_datapath_before_the_workers():
    cfg = AgentConfig()
    assert cfg.datapath_nice < cfg.worker_nice


@pytest.mark.skipif(not ROOT, reason="drops to an unprivileged user to show the refusal")
def test_a_nice_value_the_process_may_not_take_leaves_it_unchanged_with_a_warning():
    code = ("import logging, os, sys; logging.basicConfig(stream=sys.stdout, level=logging.WARNING); "
            "from engine.procmain import _set_nice; "          # imported first: nobody cannot read root's Python
            "os.setgid(65534); os.setuid(65534); os.environ['SHARDNET_NICE'] = '-5'; "
            "_set_nice(); print('nice', os.getpriority(os.PRIO_PROCESS, 0))")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd="/")
    assert r.returncode == 0, r.stderr
    assert "nice 0" in r.stdout and "cannot set nice -5" in r.stdout


@pytest.mark.parametrize("bad", [-21, 20, 1.5, "x", True])
def test_the_config_refuses_nice_values_outside_setprioritys_range(bad):
    for name in ("datapath_nice", "worker_nice"):
        with pytest.raises(ConfigError, match=name):
            AgentConfig(**{name: bad})
