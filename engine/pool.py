"""The agent's process pool: the datapath process and the N simulation workers, as plain subprocesses.

Owns the children: their configs (built here, by keyword, from the AgentConfig: ``datapath_config``,
``worker_config``), their ``subprocess.Popen`` handles and pids, and their readiness.  A child is started as
``python -m engine.procmain ROLE CONFIG_JSON`` (no multiprocessing, so an embedding program needs no
``__main__`` guard) and says Ready(sender, pid) on the supervisor's inbox once its sockets are up.

Index ``DATAPATH_INDEX`` (-1) is the datapath, 0..N-1 are the workers.  A dead worker is restarted in place
with the config it was started with, after the datapath was told to forget it (PurgeWorker: its flows and its
unanswered upcalls).  A dead datapath is not restarted (yet).  ``stop`` waits for the children that were sent
Shutdown, then terminates, then kills them, by pid.

Called from two threads: ``start``/``wait_ready``/``stop``/``health`` from the agent's caller, ``ready`` and
``restart_dead`` from the service thread.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict

from backchannel import messages as m
from engine import logs
from engine.config import AgentConfig
from engine.dpproc import DatapathConfig
from engine.portmap import PortMap
from workers.worker import WorkerConfig

DP = m.DATAPATH_INDEX
STOP_WAIT_S = 5.0              # after Shutdown, before SIGTERM
TERM_WAIT_S = 2.0              # after SIGTERM, before SIGKILL (and after SIGKILL)
log = logging.getLogger(__name__)


# -- child configs: every field by keyword, so a renamed or added field cannot shift the others ------------
def datapath_config(cfg: AgentConfig, runtime_dir: str, pm: PortMap, tunnel_ip: int | None) -> DatapathConfig:
    """The datapath's config.  ``pm`` is this host's port map at start (its tunnel keys and the hosts' tunnel
    addresses); the real datapath's ports are bound later, by SetPortMap, once the saved flow state is restored
    into the workers.  ``reclaim_s`` keeps the datapath's own default (no agent setting)."""
    real = cfg.datapath == "real"
    return DatapathConfig(
        runtime_dir=runtime_dir,
        n_workers=cfg.workers,
        cpu=cfg.datapath_cpu,
        max_flows=max(cfg.max_flows * 2, 1024),
        max_inflight=cfg.max_inflight,
        port_rate=cfg.port_rate,
        port_burst=cfg.port_burst,
        max_held=cfg.max_held,
        max_held_total=cfg.max_held_total,
        batch=cfg.batch,
        keep_outputs=cfg.keep_outputs and not real,
        port_workers=cfg.port_workers,
        tunnel_ports=dict(pm.keys),
        mode=cfg.datapath,
        ports=None,
        tunnel_ip=tunnel_ip if real else None,
        tunnel_port=cfg.tunnel_port,
        hosts=dict(pm.hosts),
    )


def worker_config(cfg: AgentConfig, index: int, runtime_dir: str) -> WorkerConfig:
    """Worker ``index``'s config; it is pinned to ``cfg.cpus`` round robin."""
    return WorkerConfig(
        index=index,
        n_workers=cfg.workers,
        runtime_dir=runtime_dir,
        host=cfg.host,
        cpu=cfg.cpus[index % len(cfg.cpus)] if cfg.cpus else None,
        park_timeout_s=cfg.park_timeout_s,
        max_parked=cfg.max_parked,
        max_flows=cfg.max_flows,
        flow_idle_s=cfg.flow_idle_s,
        flow_hard_s=cfg.flow_hard_s,
        drop_flow_s=cfg.drop_flow_s,
        flow_state_idle_s=cfg.flow_state_idle_s,
        max_flow_state=cfg.max_flow_state,
        max_macs_per_bridge=cfg.max_macs_per_bridge,
        max_macs_per_port=cfg.max_macs_per_port,
        max_arps_per_router=cfg.max_arps_per_router,
        megaflows=cfg.megaflows,
        arp_retry_s=cfg.arp_retry_s,
        arp_timeout_s=cfg.arp_timeout_s,
        batch=cfg.batch,
        pinned_ports=bool(cfg.port_workers),
        replicate_hosts=cfg.datapath == "real",
    )


def child_name(i: int) -> str:
    return "datapath" if i == DP else f"worker {i}"


class ProcessPool:
    popen = staticmethod(subprocess.Popen)             # how a child is started (a test may run fakes instead)

    def __init__(self, cfg: AgentConfig, counters: dict):
        self.cfg = cfg
        self.counters = counters                       # the agent's: supervisor_worker_restarts
        self.counters.setdefault("supervisor_worker_restarts", 0)
        self.procs: dict[int, subprocess.Popen] = {}
        self.pids: dict[int, int] = {}
        self.stopping = False
        self._argv: dict[int, list[str]] = {}           # index → its command line (kept for restarts)
        self.restarts: dict[int, int] = {}              # index → how many times it was restarted
        self.last_exit: dict[int, tuple[int, float]] = {}   # index → (exit status, wall time seen dead)
        self._ready: dict[int, threading.Event] = {}
        self._reported: set[int] = set()               # pids of dead children not restarted (logged once)

    def start(self, dp_cfg: DatapathConfig, runtime_dir: str) -> None:
        """Spawn the datapath and every worker (they connect to each other by themselves)."""
        self._argv[DP] = self._command("datapath", dp_cfg)
        for i in range(self.cfg.workers):
            self._argv[i] = self._command("worker", worker_config(self.cfg, i, runtime_dir))
        for i in (DP, *range(self.cfg.workers)):
            self._spawn(i)

    def _command(self, role: str, child_cfg) -> list[str]:
        raw = {**asdict(child_cfg),
               "log": logs.child_settings(self.cfg.log_level, self.cfg.log_file, self.cfg.log_repeat_s)}
        return [sys.executable, "-m", "engine.procmain", role, json.dumps(raw)]

    def _spawn(self, i: int) -> None:
        self._ready[i] = threading.Event()
        p = self.popen(self._argv[i], stdin=subprocess.DEVNULL)
        self.procs[i] = p
        self.pids[i] = p.pid

    def ready(self, sender: int, pid: int) -> None:
        """A child said Ready (service thread)."""
        ev = self._ready.get(sender)
        if ev is not None:
            ev.set()

    def wait_ready(self, timeout: float) -> str | None:
        """Wait until every child said Ready; the name of the first one that did not, else None."""
        deadline = time.monotonic() + timeout
        for i, ev in list(self._ready.items()):
            if not ev.wait(max(0.0, deadline - time.monotonic())):
                return child_name(i)
        return None

    def restart_dead(self, send_dp: Callable[[tuple], object]) -> list[int]:
        """Restart every dead worker in place (service thread): the datapath first forgets it (PurgeWorker, no
        answer wanted).  Returns the restarted indices.  Each death is logged once."""
        if self.stopping:
            return []
        restarted = []
        for i, p in list(self.procs.items()):
            status = p.poll()
            if status is None or p.pid in self._reported:
                continue
            if i == DP or not self.cfg.restart_workers:
                self._reported.add(p.pid)
                log.error("%s (pid %d) died with exit status %s; it is not restarted", child_name(i), p.pid, status)
                continue
            log.warning("%s (pid %d) died with exit status %s; restarting it", child_name(i), p.pid, status)
            send_dp(m.PurgeWorker(0, i))
            self.counters["supervisor_worker_restarts"] += 1
            self.restarts[i] = self.restarts.get(i, 0) + 1
            self.last_exit[i] = (getattr(p, "returncode", None), time.time())
            self._spawn(i)
            log.info("%s restarted (pid %d)", child_name(i), self.pids[i])
            restarted.append(i)
        return restarted

    def children(self) -> dict[int, dict]:
        """Per child: pid, alive, CPU seconds used (from /proc), restarts, last exit (status, time)."""
        out = {}
        for i, p in list(self.procs.items()):
            out[i] = {"name": child_name(i), "pid": p.pid, "alive": p.poll() is None, "cpu_s": _cpu_s(p.pid),
                      "restarts": self.restarts.get(i, 0), "last_exit": self.last_exit.get(i)}
        return out

    def health(self) -> dict:
        return {"alive": {i: p.poll() is None for i, p in list(self.procs.items())}, "pids": dict(self.pids),
                "restarts": self.counters["supervisor_worker_restarts"]}

    def stop(self) -> None:
        """Wait for the children (Shutdown was sent), then SIGTERM, then SIGKILL, by pid."""
        self.stopping = True
        for p in list(self.procs.values()):
            for signal_it, wait_s in ((None, STOP_WAIT_S), (p.terminate, TERM_WAIT_S), (p.kill, TERM_WAIT_S)):
                if signal_it is not None:
                    signal_it()
                try:
                    p.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue


def _cpu_s(pid: int) -> float | None:
    """utime + stime of a process in seconds (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
