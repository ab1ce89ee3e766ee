"""The agent's process pool: the datapath process and the N simulation workers, as plain subprocesses.

Owns the children: their configs (built here, by keyword, from the AgentConfig: ``datapath_config``,
``worker_config``), their ``subprocess.Popen`` handles and pids, and their readiness.  A child is started as
``python -m engine.procmain ROLE CONFIG_JSON`` (no multiprocessing, so an embedding program needs no
``__main__`` guard) and says Ready(sender, pid) on the supervisor's inbox once its sockets are up.

Index ``DATAPATH_INDEX`` (-1) is the datapath, 0..N-1 are the workers.  Every child is supervised: a dead one
is restarted in place (``restart_dead``) with the config it was started with — the datapath with the next
``epoch`` (its incarnation, in the high bits of every seq and flow id, so ids never repeat).  A dead worker is
first forgotten by the datapath (PurgeWorker: its flows and its unanswered upcalls, whose flow keys it
remembers for the quarantine).  Restarts back off: the first death of a streak is restarted at once, each
quick death after it waits twice as long (RESTART_BACKOFF_S .. MAX_BACKOFF_S); a child that lived STABLE_S
starts a new streak.  Deaths are counted per child (``crashes``) and in ``supervisor_crashes``.  What a
restarted child needs back (port map, keys, flows, flow state, leases) is the supervisor's business, once it
says Ready (``ready`` returns True for a restarted child).

No child outlives the pool's process: every child inherits the read end of a pipe (the *lifeline*) whose write
end only this process holds; the child's watcher thread (engine/procmain.py) sees EOF when this process is
gone — however it died — and the child removes the runtime directory and exits.  ``stop`` waits for the
children that were sent Shutdown, then terminates, then kills them, by pid.

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
from dataclasses import asdict, replace

from backchannel import messages as m
from engine import logs
from engine.config import AgentConfig
from engine.dpproc import DatapathConfig
from engine.portmap import PortMap
from workers.worker import WorkerConfig

DP = m.DATAPATH_INDEX
STOP_WAIT_S = 5.0              # after Shutdown, before SIGTERM
TERM_WAIT_S = 2.0              # after SIGTERM, before SIGKILL (and after SIGKILL)
RESTART_BACKOFF_S = 0.25       # the second quick death in a row waits this long, each later one twice as long
MAX_BACKOFF_S = 30.0
STABLE_S = 30.0                # a child that lived this long starts a new streak (restarted at once)
LIFELINE_ENV = "SHARDNET_LIFELINE_FD"       # the child's end of the lifeline (engine/procmain.py)
CLEANUP_ENV = "SHARDNET_CLEANUP"            # JSON [runtime dir, ...]: what a child removes when orphaned
NICE_ENV = "SHARDNET_NICE"                  # the child's nice value (datapath_nice / worker_nice), set by itself
OWN_GROUP_ENV = "SHARDNET_OWN_GROUP"        # "1": the child leaves the session for a scheduling group of its own
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
        epoch=0,                                       # restarts count up (ProcessPool.restart_dead)
        poll_spin_us=cfg.poll_spin_us,
        keep_warm_ms=cfg.keep_warm_ms,
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
        replies_ahead=cfg.replies_ahead,
        walk_memo=cfg.walk_memo,
        keep_warm_ms=cfg.keep_warm_ms,
        snat_lease_ahead=cfg.snat_lease_ahead,
        snat_low_ports=cfg.snat_low_ports,
        arp_retry_s=cfg.arp_retry_s,
        arp_timeout_s=cfg.arp_timeout_s,
        batch=cfg.batch,
        pinned_ports=bool(cfg.port_workers),
        replicate_hosts=cfg.datapath == "real",
        restarted=False,                               # True for a restart (ProcessPool.restart_dead)
        poll_spin_us=cfg.poll_spin_us if cfg.poll_spin_workers else 0,
    )


def child_name(i: int) -> str:
    return "datapath" if i == DP else f"worker {i}"


class ProcessPool:
    popen = staticmethod(subprocess.Popen)             # how a child is started (a test may run fakes instead)

    def __init__(self, cfg: AgentConfig, counters: dict):
        self.cfg = cfg
        self.counters = counters                       # the agent's: supervisor_worker_restarts
        self.counters.setdefault("supervisor_worker_restarts", 0)
        self.counters.setdefault("supervisor_datapath_restarts", 0)
        self.counters.setdefault("supervisor_crashes", 0)
        self.procs: dict[int, subprocess.Popen] = {}
        self.pids: dict[int, int] = {}
        self.stopping = False
        self._argv: dict[int, list[str]] = {}           # index → its command line (kept for restarts)
        self.restarts: dict[int, int] = {}              # index → how many times it was restarted
        self.last_exit: dict[int, tuple[int, float]] = {}   # index → (exit status, wall time seen dead)
        self._ready: dict[int, threading.Event] = {}
        self._reported: set[int] = set()               # pids of dead children not restarted (logged once)
        self.crashes: dict[int, int] = {}               # index → deaths seen
        self.streak: dict[int, int] = {}                # index → quick deaths in a row (the backoff)
        self._started_at: dict[int, float] = {}
        self._due: dict[int, float] = {}                # index of a dead child → when it is restarted
        self._restarted: set[int] = set()               # restarted, not Ready yet
        self.epoch = 0                                  # the datapath's incarnation
        self._dp_cfg: DatapathConfig | None = None
        self.cleanup: list[str] = []                    # what an orphaned child removes (the runtime dir, ...)
        self._lifeline: tuple[int, int] | None = None

    def start(self, dp_cfg: DatapathConfig, runtime_dir: str, cleanup: list | None = None) -> None:
        """Spawn the datapath and every worker (they connect to each other by themselves).  ``cleanup``: the
        paths an orphaned child removes (default: the runtime directory; [path, content]: a file removed only
        if it still holds ``content``)."""
        self.cleanup = list(cleanup or [runtime_dir])
        if self._lifeline is None:
            self._lifeline = os.pipe()                 # both ends non-inheritable: only children get the read end
        self._dp_cfg = dp_cfg
        self._runtime_dir = runtime_dir
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
        r = self._lifeline[0]
        env = {**os.environ, LIFELINE_ENV: str(r), CLEANUP_ENV: json.dumps(self.cleanup),
               NICE_ENV: str(self.cfg.datapath_nice if i == DP else self.cfg.worker_nice)}
        if i == DP and self.cfg.datapath_nice < self.cfg.worker_nice:
            env[OWN_GROUP_ENV] = "1"
        p = self.popen(self._argv[i], stdin=subprocess.DEVNULL, pass_fds=(r,), env=env)
        self.procs[i] = p
        self.pids[i] = p.pid
        self._started_at[i] = time.monotonic()

    def ready(self, sender: int, pid: int) -> bool:
        """A child said Ready (service thread); True when it is a restarted one (then it needs its state back)."""
        ev = self._ready.get(sender)
        if ev is not None:
            ev.set()
        if sender in self._restarted and self.pids.get(sender) == pid:
            self._restarted.discard(sender)
            return True
        return False

    def wait_ready(self, timeout: float) -> str | None:
        """Wait until every child said Ready; the name of the first one that did not, else None."""
        deadline = time.monotonic() + timeout
        for i, ev in list(self._ready.items()):
            if not ev.wait(max(0.0, deadline - time.monotonic())):
                return child_name(i)
        return None

    def restart_dead(self, send_dp: Callable[[tuple], object], now: float | None = None) -> list[int]:
        """Restart the dead children whose backoff is over (service thread): a dead worker is first forgotten by
        the datapath (PurgeWorker, no answer wanted) when its death is seen.  Returns the restarted indices.
        Each death is logged once."""
        if self.stopping:
            return []
        now = time.monotonic() if now is None else now
        restarted = []
        for i, p in list(self.procs.items()):
            status = p.poll()
            if status is None or p.pid in self._reported:
                continue
            if i not in self._due:                     # a death, seen now
                self.crashes[i] = self.crashes.get(i, 0) + 1
                self.counters["supervisor_crashes"] += 1
                self.last_exit[i] = (getattr(p, "returncode", None), time.time())
                lived = now - self._started_at.get(i, now)
                self.streak[i] = 1 if lived >= STABLE_S else self.streak.get(i, 0) + 1
                if i != DP and not self.cfg.restart_workers:
                    self._reported.add(p.pid)
                    log.error("%s (pid %d) died with exit status %s; it is not restarted", child_name(i), p.pid,
                              status)
                    continue
                delay = backoff_s(self.streak[i])
                self._due[i] = now + delay
                if i != DP:
                    send_dp(m.PurgeWorker(0, i))
                log.warning("%s (pid %d) died with exit status %s; restarting it%s (it lived %.1f s; death %d, %d in "
                            "a row)", child_name(i), p.pid, status, f" in {delay:.2f} s" if delay else "", lived,
                            self.crashes[i], self.streak[i])
            if now < self._due[i]:
                continue
            del self._due[i]
            if i == DP:
                self.epoch += 1
                self._argv[DP] = self._command("datapath", replace(self._dp_cfg, epoch=self.epoch))
                self.counters["supervisor_datapath_restarts"] += 1
            else:                                      # it recovers its state before it simulates
                self._argv[i] = self._command("worker", replace(worker_config(self.cfg, i, self._runtime_dir),
                                                                restarted=True))
                self.counters["supervisor_worker_restarts"] += 1
            self.restarts[i] = self.restarts.get(i, 0) + 1
            self._spawn(i)
            self._restarted.add(i)
            log.info("%s restarted (pid %d)", child_name(i), self.pids[i])
            restarted.append(i)
        return restarted

    def children(self) -> dict[int, dict]:
        """Per child: pid, alive, CPU seconds used (from /proc), restarts, last exit (status, time)."""
        out = {}
        for i, p in list(self.procs.items()):
            out[i] = {"name": child_name(i), "pid": p.pid, "alive": p.poll() is None, "cpu_s": _cpu_s(p.pid),
                      "restarts": self.restarts.get(i, 0), "crashes": self.crashes.get(i, 0),
                      "last_exit": self.last_exit.get(i)}
        return out

    def health(self) -> dict:
        return {"alive": {i: p.poll() is None for i, p in list(self.procs.items())}, "pids": dict(self.pids),
                "restarts": self.counters["supervisor_worker_restarts"],
                "datapath_restarts": self.counters["supervisor_datapath_restarts"],
                "crashes": dict(self.crashes)}

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
        if self._lifeline is not None:                 # a child left somehow sees EOF and goes too
            for fd in self._lifeline:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._lifeline = None


def backoff_s(streak: int) -> float:
    """How long a child that died ``streak`` times in a row waits before its restart: at once the first time,
    then RESTART_BACKOFF_S, doubling, up to MAX_BACKOFF_S."""
    if streak <= 1:
        return 0.0
    return min(MAX_BACKOFF_S, RESTART_BACKOFF_S * 2 ** (streak - 2))


def _cpu_s(pid: int) -> float | None:
    """utime + stime of a process in seconds (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
