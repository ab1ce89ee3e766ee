"""``shardnet bench --datapath real --overload`` and ``--soak``: the agent's memory and drops under 10× its
sustained new-flow rate, and its memory and file descriptors over minutes of mixed traffic (issue 11 item 6).

Reuses the wire rig of ``--datapath real`` (bench.wirerig: two namespaces and their veths; bench.wireproc:
the sender and the sink; bench.realbench.RealBench: the warm-up), on the ``ct`` pipeline by default (the bridge
with a stateful filter: every new 5-tuple is an upcall and a conntrack entry).  The agent is a separate
``shardnet run`` process (memory store, real datapath, N workers, its control socket in a temp dir), so that
the supervisor, the datapath and each worker are processes of their own whose RSS this harness samples from
/proc; its counters come through the control socket (``stats``, ``health``).

overload:
1. ``cached_flows`` established flows (each sent once, so the filter has admitted them and their flows are
   installed), then sent round robin at ``cached_rate`` frames/s for ``unloaded_s``: the unloaded delivered rate;
2. the same cached stream for ``duration`` s while ``senders`` processes offer ``new_rate`` new 5-tuples/s in
   all (default 10 × ``sustained``): the cached flows' delivered rate under load, the offered rate actually
   achieved, the new flows delivered, every agent counter that names a drop (delta over the load), and each
   process's peak RSS (VmRSS every ``sample_s``) against its ceiling (``ceilings``);
soak:
   ``duration`` s (default 600) of cached flows plus new flows at ``new_rate`` (default sustained / 4) with
   short idle timeouts in the agent (flows ``flow_idle_s``, flow state ``flow_state_idle_s``: the new flows'
   state keeps expiring), RSS and open fds of every agent process every ``sample_s`` (10); per process the
   least-squares slope over the second half, max − min, and a verdict (``flatness``).

Every loop is bounded (counts and ``max_s`` in every child); everything started is removed at the end (the
rig's namespaces, veths and children; the agent by SIGTERM, then SIGKILL of its process group and children).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from bench import probes
from bench.realbench import RealBench, RealBenchError, RealConfig
from bench.wireproc import DST_PORTS, SRC_PORTS
from bench.wirerig import BENCH_ROOT, WireRig
from bench.wiretopo import HOST, topology_yaml

KIB = 1024
MIB = 1024 * KIB
DISTINCT = SRC_PORTS * DST_PORTS               # distinct 5-tuples of the frame layout
# counters that name a reason a frame, an upcall or an entry was given up (a whole word of the name)
DROP_RE = re.compile(r"(^|_)(drop|dropped|drops|limited|quarantined|timeout|overflow|full|rejected|malformed|"
                     r"errors?|evicted|shed|lost|failed|overflowed)(_|$)")

# Per-entry memory budgets behind the stated ceilings (generous upper bounds of one Python entry, key + value):
# RSS ceiling of a process = its RSS at idle (before any load) + Σ cap × budget of what it holds.
BUDGET = {"flow": 2 * KIB, "flow_state": 1 * KIB, "parked": 2 * KIB, "inflight": 2 * KIB, "held": 2 * KIB,
          "mac": 512, "arp": 512}


class OverloadError(RealBenchError):
    pass


@dataclass
class OverloadConfig:
    mode: str = "overload"                      # "overload" or "soak"
    pipeline: str = "ct"
    duration: float | None = None               # overload 30, soak 600
    sustained: int = 16_000                     # the sustained new-flow rate (bench/RESULTS.md: ct, 16k/s)
    new_rate: int | None = None                 # overload: 10 × sustained; soak: sustained / 4
    senders: int = 2                            # new-flow sender processes (the rate is split between them)
    cached_flows: int = 200
    cached_rate: int = 2000                     # frames/s of the cached flows, round robin
    unloaded_s: float = 10.0
    sample_s: float | None = None               # overload 0.5, soak 10
    highwater_s: float = 60.0                   # soak: RSS high-water windows (``highwater``)
    workers: int = 2
    flow_idle_s: float | None = None            # overload 10, soak 2
    flow_state_idle_s: float | None = None      # overload 60, soak 5
    drain_s: float = 2.0
    target_ratio: float = 0.9
    sender: str = "ring"                        # ring: bench.txring (PACKET_TX_RING); socket: bench.wireproc send
    sender_nice: int | None = -5                # ring senders' nice value (and their autogroups'); None: unchanged
    agent_opts: dict = field(default_factory=dict)   # AgentConfig settings of the agent (--agent-opt)

    def resolved(self) -> OverloadConfig:
        soak = self.mode == "soak"
        d = asdict(self)
        d["duration"] = self.duration or (600.0 if soak else 30.0)
        d["new_rate"] = self.new_rate or (max(1, self.sustained // 4) if soak else 10 * self.sustained)
        d["sample_s"] = self.sample_s or (10.0 if soak else 0.5)
        d["flow_idle_s"] = self.flow_idle_s or (2.0 if soak else 10.0)
        d["flow_state_idle_s"] = self.flow_state_idle_s or (5.0 if soak else 60.0)
        return OverloadConfig(**d)


# --- the agent, a process of its own ---------------------------------------------------------------------

class AgentProcess:
    """``shardnet run`` bound to the rig's root ends; the system interface RealBench's steps use."""

    name = "shardnet"

    def __init__(self, rig: WireRig, cfg: OverloadConfig, tmp: str):
        self.rig, self.cfg, self.tmp = rig, cfg, tmp
        self.proc: subprocess.Popen | None = None
        self.ctl = os.path.join(tmp, "ctl.sock")
        self.names: dict[int, str] = {}
        self.seen_pids: set[int] = set()
        self.agent_config: dict = {}

    def start(self) -> None:
        topo = os.path.join(self.tmp, "topology.yaml")
        tunnel_ip = f"127.{random.randrange(64, 250)}.{random.randrange(1, 250)}.1"
        with open(topo, "w") as f:
            f.write(topology_yaml(self.cfg.pipeline, self.rig.sender_if, self.rig.sink_if, tunnel_ip))
        from engine.config import AgentConfig

        self.agent_config = {"store": "memory://", "host": HOST, "workers": self.cfg.workers, "datapath": "real",
                             "topology": topo, "tunnel_port": random.randrange(30000, 60000),
                             "runtime_base": self.tmp, "state_file": os.path.join(self.tmp, "bench.state"),
                             "state_snapshot_s": 0.0, "flow_idle_s": self.cfg.flow_idle_s,
                             "flow_state_idle_s": self.cfg.flow_state_idle_s, "log_level": "WARNING",
                             "log_file": os.path.join(self.tmp, "agent.log"), "ctl": self.ctl,
                             **self.cfg.agent_opts}
        full = AgentConfig(**self.agent_config)            # the caps the ceilings come from
        self.caps = {k: getattr(full, k) for k in ("max_flows", "max_flow_state", "max_parked", "max_inflight",
                                                    "max_held_total", "max_macs_per_bridge", "max_arps_per_router",
                                                    "park_timeout_s", "port_rate", "port_burst")}
        path = os.path.join(self.tmp, "agent.toml")
        with open(path, "w") as f:
            f.write("[agent]\n")
            for k, v in self.agent_config.items():
                f.write(f"{k} = {json.dumps(v)}\n")
        env = dict(os.environ)
        env["PYTHONPATH"] = BENCH_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.out = open(os.path.join(self.tmp, "agent.out"), "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "--config", path, "--no-status"],
                                     stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise OverloadError(f"shardnet run exited {self.proc.returncode}: {self._tail()}")
            try:
                h = self.request("health", timeout=5)
                if h.get("ok") and len(h.get("pids", {})) == self.cfg.workers + 1:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        else:
            raise OverloadError(f"the agent did not answer on {self.ctl} in 60 s: {self._tail()}")
        self.refresh_names()

    def _tail(self) -> str:
        try:
            with open(os.path.join(self.tmp, "agent.out"), "rb") as f:
                return f.read()[-800:].decode(errors="replace")
        except OSError:
            return ""

    def request(self, cmd: str, args: dict | None = None, timeout: float = 30.0):
        from engine.ctlclient import request

        r = request(self.ctl, cmd, args, timeout=timeout)
        if not r.get("ok"):
            raise OverloadError(f"ctl {cmd}: {r.get('error')}")
        return r["result"]

    def refresh_names(self) -> dict[int, str]:
        h = self.request("health")
        self.names = {self.proc.pid: "supervisor"}
        for k, pid in h["pids"].items():
            self.names[int(pid)] = "datapath" if int(k) < 0 else f"worker {k}"
        self.seen_pids |= set(self.names)
        self.health = h
        return self.names

    def child_pids(self) -> list[int]:
        """The supervisor's children now (from /proc: cheap, and it sees a restarted worker's new pid)."""
        out: list[int] = []
        try:
            for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
                with open(f"/proc/{self.proc.pid}/task/{tid}/children") as f:
                    out += [int(x) for x in f.read().split()]
        except OSError:
            pass
        return out

    def process_pids(self) -> dict[int, str]:
        """pid → name of every agent process now: the supervisor and its children."""
        kids = self.child_pids()
        if any(p not in self.names for p in kids):
            try:
                self.refresh_names()
            except (OSError, OverloadError, ValueError):
                pass
        self.seen_pids |= set(kids)
        return {self.proc.pid: "supervisor", **{p: self.names.get(p, f"pid {p}") for p in kids}}

    # the interface of RealBench.step / warm_up: summed counters, the forwarding processes' pids
    def pids(self) -> list[int]:
        return [p for p, n in self.process_pids().items() if n != "supervisor"]

    def process_names(self) -> list[str]:
        return [n for n in self.process_pids().values() if n != "supervisor"]

    def flat_counters(self) -> dict:
        return self.request("stats")

    def counters(self) -> dict:
        out: dict = {}
        for k, v in self.flat_counters().items():
            name = k.split(".", 1)[1]
            out[name] = out.get(name, 0) + v
        return out

    def stop(self) -> dict:
        """SIGTERM, wait; then SIGKILL of what is left.  Returns how it went (exit code, leftovers)."""
        if self.proc is None:
            return {}
        kids = set(self.child_pids()) | self.seen_pids - {self.proc.pid}
        rc = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in kids):
            time.sleep(0.1)
        left = sorted(p for p in kids if _alive(p))
        for p in left:                                    # ours: the agent's children, by pid
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.out.close()
        self.proc = None
        return {"exit_code": rc, "children_left_after_stop": left, "agent_log_tail": self._log_tail()}

    def _log_tail(self) -> list[str]:
        try:
            with open(os.path.join(self.tmp, "agent.log"), errors="replace") as f:
                return [ln.rstrip() for ln in f.readlines()[-15:]]
        except OSError:
            return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# --- sampling -------------------------------------------------------------------------------------------

def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


TABLE_GAUGES = {"datapath": ("datapath_flows", "datapath_inflight"),
                "worker": ("worker_flows", "worker_state_entries", "worker_state_replicas", "worker_parked_now")}


def table_sizes(flat: dict) -> dict[str, dict[str, int]]:
    """The table-size gauges of a ``stats`` answer, by the sampler's process names ("datapath", "worker 0")."""
    out: dict[str, dict[str, int]] = {}
    for k, v in flat.items():
        proc, _, name = k.partition(".")
        kind = "worker" if proc.startswith("worker-") else proc
        if name in TABLE_GAUGES.get(kind, ()):
            out.setdefault(proc.replace("-", " "), {})[name] = v
    return out


class Sampler:
    """A thread reading every agent process's VmRSS (and open fds) every ``every`` seconds, bounded in count;
    with ``tables``, also the sizes of the tables each process holds (``TABLE_GAUGES``, one ctl ``stats``), so
    a reader can tell RSS that follows the live tables from RSS that grows with time."""

    def __init__(self, agent: AgentProcess, every: float, fds: bool, max_samples: int, tables: bool = False):
        self.agent, self.every, self.fds, self.max_samples = agent, every, fds, max_samples
        self.tables = tables
        self.samples: list[dict] = []                # {"t": s, "rss_kib": {name: kib}, "fds": {name: n}}
        self.stop_ev = threading.Event()
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> Sampler:
        self.thread.start()
        return self

    def sample(self) -> None:
        procs = self.agent.process_pids()
        s = {"t": round(time.monotonic() - self.t0, 2), "rss_kib": {}, "pids": {}}
        if self.fds:
            s["fds"] = {}
        for pid, name in sorted(procs.items(), key=lambda x: x[1]):
            r = rss_kib(pid)
            if r is None:
                continue
            s["rss_kib"][name] = r
            s["pids"][name] = pid
            if self.fds:
                s["fds"][name] = fd_count(pid)
        if self.tables:
            try:
                s["tables"] = table_sizes(self.agent.flat_counters())
            except (OSError, OverloadError, ValueError):
                s["tables"] = None
        self.samples.append(s)

    def _run(self) -> None:
        while not self.stop_ev.is_set() and len(self.samples) < self.max_samples:
            self.sample()
            self.stop_ev.wait(self.every)

    def stop(self) -> list[dict]:
        self.stop_ev.set()
        self.thread.join(10)
        return self.samples


def peaks(samples: list[dict], key: str = "rss_kib") -> dict[str, int]:
    out: dict[str, int] = {}
    for s in samples:
        for name, v in s.get(key, {}).items():
            if v is not None:
                out[name] = max(out.get(name, 0), v)
    return out


def ceilings(idle_kib: dict[str, int], caps: dict, workers: int) -> dict:
    """Per process: idle RSS + Σ cap × per-entry budget of what that process holds (stated with the result)."""
    b = BUDGET
    dp = caps["max_flows"] * b["flow"] + caps["max_held_total"] * b["held"] + \
        workers * caps["max_inflight"] * b["inflight"]
    wk = caps["max_flows"] * b["flow"] + caps["max_flow_state"] * b["flow_state"] + \
        caps["max_parked"] * b["parked"] + caps["max_inflight"] * b["inflight"] + \
        caps["max_macs_per_bridge"] * b["mac"] + caps["max_arps_per_router"] * b["arp"]
    sup = 64 * MIB                                # no per-flow table: store cache, ctl, logs
    out = {}
    for name, idle in idle_kib.items():
        extra = sup if name == "supervisor" else dp if name == "datapath" else wk
        out[name] = {"idle_kib": idle, "allowance_kib": extra // KIB, "ceiling_kib": idle + extra // KIB}
    return out


def ceiling_rule(caps: dict) -> str:
    return ("ceiling = RSS at idle + allowance; datapath: max_flows × 2 KiB + max_held_total × 2 KiB + "
            "workers × max_inflight × 2 KiB; worker: max_flows × 2 KiB + max_flow_state × 1 KiB + max_parked × 2 KiB"
            " + max_inflight × 2 KiB + max_macs_per_bridge × 512 B + max_arps_per_router × 512 B; supervisor: 64 MiB"
            f" (caps: max_flows {caps['max_flows']:,}, max_flow_state {caps['max_flow_state']:,}, max_parked "
            f"{caps['max_parked']:,}, max_inflight {caps['max_inflight']:,}, max_held_total "
            f"{caps['max_held_total']:,})")


def slope_per_min(ts: list[float], vs: list[float]) -> float | None:
    """Least-squares slope of vs over ts (seconds), per minute."""
    n = len(ts)
    if n < 2:
        return None
    mt, mv = sum(ts) / n, sum(vs) / n
    den = sum((t - mt) ** 2 for t in ts)
    if den == 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in zip(ts, vs, strict=True)) / den * 60.0


def flatness(samples: list[dict], key: str, tolerance: float) -> dict:
    """Per process over the second half of the samples: slope per minute, max − min, and flat or not.

    Flat: the slope times the second half's length is at most ``tolerance`` (a fraction of the mean for RSS,
    an absolute count for fds)."""
    half = samples[len(samples) // 2:]
    names = sorted({n for s in half for n in s.get(key, {})})
    out = {}
    for name in names:
        pts = [(s["t"], s[key][name]) for s in half if s.get(key, {}).get(name) is not None]
        ts, vs = [p[0] for p in pts], [p[1] for p in pts]
        if len(pts) < 2:
            out[name] = {"n": len(pts), "flat": None}
            continue
        sl = slope_per_min(ts, vs)
        span_min = (ts[-1] - ts[0]) / 60.0
        mean = sum(vs) / len(vs)
        growth = (sl or 0.0) * span_min
        bound = tolerance * mean if key == "rss_kib" else tolerance
        out[name] = {"n": len(pts), "slope_per_min": round(sl, 2) if sl is not None else None,
                     "growth_over_half": round(growth, 1), "max_minus_min": max(vs) - min(vs),
                     "min": min(vs), "max": max(vs), "mean": round(mean, 1), "flat": abs(growth) <= bound}
    return out


def highwater(samples: list[dict], key: str, tolerance: float, window_s: float) -> dict:
    """Per process: the maximum of each ``window_s`` window after the first half of the run, and whether that
    high-water mark climbs (least-squares growth over those windows at most ``tolerance`` × their mean).

    A table that fills and expires moves RSS up and down within a window; a leak raises every window's
    maximum.  The windows start after the first half so that warm-up growth (pools, dict sizes reaching
    their steady state) is not counted; at least three windows, or the verdict is None."""
    if not samples:
        return {}
    t_half = samples[-1]["t"] / 2
    names = sorted({n for s in samples for n in s.get(key, {})})
    out = {}
    for name in names:
        wins: dict[int, int] = {}
        for s in samples:
            v = s.get(key, {}).get(name)
            if v is None or s["t"] < t_half:
                continue
            w = int((s["t"] - t_half) // window_s)
            wins[w] = max(wins.get(w, 0), v)
        keys = sorted(wins)
        if len(keys) < 3:
            out[name] = {"windows": len(keys), "flat": None}
            continue
        ts, vs = [(k + 0.5) * window_s for k in keys], [wins[k] for k in keys]
        sl = slope_per_min(ts, vs) or 0.0
        growth = sl * (ts[-1] - ts[0]) / 60.0
        mean = sum(vs) / len(vs)
        out[name] = {"windows": len(keys), "window_s": window_s, "maxima": vs, "slope_per_min": round(sl, 2),
                     "growth": round(growth, 1), "flat": abs(growth) <= tolerance * mean}
    return out


# --- the runs --------------------------------------------------------------------------------------------

def ring_sender(rig: WireRig, arg: str) -> subprocess.Popen:
    """``python -m bench.txring ARG`` in the rig's sender namespace, own session, owned by the rig (its
    ``close`` kills it by pid like the rig's other children)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = BENCH_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = subprocess.Popen(["ip", "netns", "exec", rig.sender_ns, sys.executable, "-m", "bench.txring", arg],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE,
                         start_new_session=True, env=env)
    rig.procs.append(p)
    return p


def _sender_cpu(answers: list[dict]) -> float | None:
    """The senders' own CPU seconds (bench.txring reports it; bench.wireproc's sender does not)."""
    cpu = [a.get("cpu_s") for a in answers]
    return round(sum(cpu), 2) if cpu and None not in cpu else None


class SenderCpu:
    """The senders' CPU seconds (utime + stime from /proc/PID/stat) sampled every 0.25 s until they exit
    (either kind of sender; bounded by ``max_s``): the sum of each one's last sample."""

    def __init__(self, pids: list[int], every: float = 0.25, max_s: float = 600.0):
        self.last = dict.fromkeys(pids, 0.0)
        self.every, self.max_s = every, max_s
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sender-cpu", daemon=True)

    def start(self) -> SenderCpu:
        self.thread.start()
        return self

    def _run(self) -> None:
        end = time.monotonic() + self.max_s
        while not self.stop_ev.is_set() and time.monotonic() < end:
            for pid in self.last:
                c = probes.cpu_seconds(pid)
                if c is not None and _alive(pid):
                    self.last[pid] = c
            self.stop_ev.wait(self.every)

    def stop(self) -> float:
        self.stop_ev.set()
        self.thread.join(5)
        return round(sum(self.last.values()), 2)


class OverloadBench:
    def __init__(self, cfg: OverloadConfig, rig: WireRig, progress: Callable[[str], None] | None = None):
        self.cfg, self.rig = cfg, rig
        self.rb = RealBench(RealConfig(pipeline=cfg.pipeline, workers=cfg.workers, drain_s=1.0, tcp_connects=5,
                                       spacing_s=0.005), rig, progress)

    def _say(self, what: str) -> None:
        self.rb._say(what)

    def _sender(self, tag: str, first: int, count: int, rate: float, max_s: float, cycle: int = 0):
        arg = json.dumps({**self.rb.maker, "tag": tag, "first": first, "count": count, "rate": rate,
                          "max_s": max_s, **({"cycle": cycle} if cycle else {}), "nice": self.cfg.sender_nice})
        if self.cfg.sender == "socket":
            return self.rig.popen(self.rig.sender_ns, ["send", arg])
        return ring_sender(self.rig, arg)

    def _sink(self, tag: str, first: int, count: int, max_s: float, split: int = 0):
        p = self.rig.popen(self.rig.sink_ns, ["sink", json.dumps(
            {"tag": tag, "first": first, "count": count, "max_s": max_s, **({"split": split} if split else {})})])
        self.rb._ready(p, "the sink")
        return p

    def establish(self, system) -> tuple[int, dict]:
        """The cached flows: each sent once at a low rate until all arrive (the filter admitted them)."""
        cfg = self.cfg
        first = self.rb.take(cfg.cached_flows)
        tag = os.urandom(8).hex()
        tries = []
        for _ in range(5):
            sink = self._sink(tag, first, cfg.cached_flows, 60)
            snd = self._sender(tag, first, cfg.cached_flows, 1000, 30)
            sent = self.rb._result(snd, "the sender", 40)
            time.sleep(0.5)
            got = self.rb._result(sink, "the sink", 30, b"stop\n")
            tries.append({"sent": sent["sent"], "delivered": got["unique"]})
            if got["unique"] == cfg.cached_flows:
                break
        return first, {"tries": tries}

    def cached_run(self, cfirst: int, seconds: float, new: list[tuple[int, int, float]] | None = None) -> dict:
        """The cached flows for ``seconds`` at cached_rate; with ``new``, new-flow senders (first, count, rate)
        alongside.  The sink counts both (the cached ones apart)."""
        cfg = self.cfg
        tag = os.urandom(8).hex()
        n_cached = int(cfg.cached_rate * seconds)
        span = cfg.cached_flows if not new else max(f + c for f, c, _ in new) - cfirst
        max_s = seconds + 5
        sink = self._sink(tag, cfirst, span, max_s + cfg.drain_s + 60, split=cfg.cached_flows)
        c0 = self.flat()
        procs = self.system.process_pids()
        cpu0 = {n: probes.cpu_seconds(p) for p, n in procs.items()}
        w0 = time.monotonic()
        cached = self._sender(tag, cfirst, n_cached, cfg.cached_rate, max_s, cycle=cfg.cached_flows)
        news = [self._sender(tag, f, c, r, max_s) for f, c, r in (new or [])]
        watch = SenderCpu([p.pid for p in news]).start()
        sent_c = self.rb._result(cached, "the cached sender", max_s + 30)
        sent_n = [self.rb._result(p, "a new-flow sender", max_s + 30) for p in news]
        senders_cpu_s = watch.stop()
        window = time.monotonic() - w0
        cpu1 = {n: probes.cpu_seconds(p) for p, n in procs.items()}
        time.sleep(cfg.drain_s)
        c1 = self.flat()
        got = self.rb._result(sink, "the sink", 60, b"stop\n")
        cached_delivered = got["matched_below_split"]
        out = {"seconds": round(window, 2),
               "cached": {"flows": cfg.cached_flows, "rate": cfg.cached_rate, "sent": sent_c["sent"],
                          "send_errors": sent_c["send_errors"], "sender_seconds": round(sent_c["seconds"], 2),
                          "offered_pps": round(sent_c["sent"] / sent_c["seconds"], 1) if sent_c["seconds"] else 0,
                          "delivered": cached_delivered,
                          "delivered_pps": round(cached_delivered / sent_c["seconds"], 1) if sent_c["seconds"] else 0,
                          "delivered_ratio": round(cached_delivered / sent_c["sent"], 4) if sent_c["sent"] else None,
                          "flows_seen": got["unique_below_split"]},
               "sink_kernel_drops": got["kernel_drops"], "counters": c1 and c0 and _delta(c1, c0),
               # CPU each agent process got over the window, in cores (the machine's senders compete for them)
               "agent_cpu_cores": {n: round((cpu1[n] - cpu0[n]) / window, 3) for n in cpu0
                                   if cpu0[n] is not None and cpu1.get(n) is not None}}
        if new:
            sent = sum(s["sent"] for s in sent_n)
            secs = max(s["seconds"] for s in sent_n)
            out["new"] = {"asked_rate": sum(r for _, _, r in new), "senders": len(new), "sent": sent,
                          "sender": cfg.sender, "sender_nice": cfg.sender_nice if cfg.sender == "ring" else None,
                          "sender_nice_failed": [s.get("nice_failed") for s in sent_n if s.get("nice_failed")],
                          "sender_cpu_s": _sender_cpu(sent_n),
                          # from /proc/PID/stat every 0.25 s, the last sample before each sender exited
                          "sender_cpu_sampled_s": senders_cpu_s,
                          "sender_cpu_sampled_cores": round(senders_cpu_s / secs, 3) if secs else None,
                          "sender_cpu_cores": round(_sender_cpu(sent_n) / secs, 3)
                          if secs and _sender_cpu(sent_n) is not None else None,
                          "send_errors": sum(s["send_errors"] for s in sent_n),
                          "offered_pps": round(sent / secs, 1) if secs else 0.0,
                          "load_seconds": round(secs, 2),       # the cached flows' window is ``seconds``
                          "offered_pps_by_sender": [round(s["sent"] / s["seconds"], 1) if s["seconds"] else 0
                                                    for s in sent_n],
                          "delivered_distinct": got["unique"] - got["unique_below_split"],
                          "delivered_ratio": round((got["unique"] - got["unique_below_split"]) / sent, 4)
                          if sent else None}
        return out

    def flat(self) -> dict | None:
        try:
            return self.system.flat_counters()
        except (OSError, OverloadError, ValueError):
            return None

    def new_flows(self, rate: int, seconds: float) -> list[tuple[int, int, float]]:
        cfg = self.cfg
        total = min(int(rate * seconds), DISTINCT - self.rb.next_index - 1000)
        per = max(1, total // cfg.senders)
        first = self.rb.take(per * cfg.senders)
        return [(first + k * per, per, rate / cfg.senders) for k in range(cfg.senders)]

    def run(self, system: AgentProcess) -> dict:
        cfg = self.cfg
        self.system = system
        self._say("agent: start")
        system.start()
        res: dict = {}
        sampler = None
        try:
            self._say("warm-up")
            res["warmup"] = self.rb.warm_up(system)
            cfirst, res["establish"] = self.establish(system)
            time.sleep(1.0)
            idle = {n: rss_kib(p) for p, n in system.process_pids().items()}
            res["rss_idle_kib"] = idle
            res["ceilings"] = ceilings(idle, system.caps, cfg.workers)
            res["ceiling_rule"] = ceiling_rule(system.caps)
            res["caps"] = system.caps
            res["pids_before"] = {n: p for p, n in system.process_pids().items()}
            if cfg.mode == "overload":
                self._say(f"unloaded {cfg.unloaded_s:g} s")
                res["unloaded"] = self.cached_run(cfirst, cfg.unloaded_s)
                self._say(f"load {cfg.new_rate:,}/s for {cfg.duration:g} s")
                sampler = Sampler(system, cfg.sample_s, fds=False,
                                  max_samples=int((cfg.duration + 60) / cfg.sample_s) + 10).start()
                res["loaded"] = self.cached_run(cfirst, cfg.duration, self.new_flows(cfg.new_rate, cfg.duration))
                samples = sampler.stop()
                sampler = None
                res["rss_samples"] = samples
                res["rss_peak_kib"] = peaks(samples)
            else:
                self._say(f"soak {cfg.duration:g} s")
                sampler = Sampler(system, cfg.sample_s, fds=True, tables=True,
                                  max_samples=int((cfg.duration + 120) / cfg.sample_s) + 10).start()
                res["soak"] = self.cached_run(cfirst, cfg.duration, self.new_flows(cfg.new_rate, cfg.duration))
                time.sleep(max(cfg.sample_s, cfg.flow_state_idle_s) + 1)   # the state of the last flows expires
                sampler.sample()
                samples = sampler.stop()
                sampler = None
                res["samples"] = samples
                res["rss_peak_kib"] = peaks(samples)
                res["flatness"] = {"rss_kib": flatness(samples, "rss_kib", 0.05),
                                   "rss_highwater": highwater(samples, "rss_kib", 0.05, cfg.highwater_s),
                                   "fds": flatness(samples, "fds", 2)}
            try:
                system.refresh_names()
                res["health_after"] = system.health
            except (OSError, OverloadError, ValueError) as e:
                res["health_after"] = {"error": str(e)}
            res["pids_after"] = {n: p for p, n in system.process_pids().items()}
        finally:
            if sampler is not None:
                sampler.stop()
            res["stop"] = system.stop()
        return res


def _delta(after: dict, before: dict) -> dict:
    return {k: v for k, v in probes.delta(after, before).items() if v}


def drops(counters: dict | None) -> dict:
    """The counters (delta over a phase) that name a reason something was dropped, by process and name."""
    if not counters:
        return {}
    return {k: v for k, v in sorted(counters.items()) if DROP_RE.search(k.split(".", 1)[-1]) and v}


def not_read(phase: dict) -> int | None:
    """Frames sent (cached + new) that the datapath never read: its socket buffer overflowed (the kernel's drop,
    before any counter of the agent sees them)."""
    rx = (phase.get("counters") or {}).get("datapath.datapath_rx")
    if rx is None:
        return None
    return max(0, phase["cached"]["sent"] + phase.get("new", {}).get("sent", 0) - rx)


def summarize(res: dict, cfg: OverloadConfig) -> dict:
    out: dict = {}
    peak = res.get("rss_peak_kib", {})
    ceil = res.get("ceilings", {})
    out["rss"] = {name: {"peak_kib": peak.get(name), "ceiling_kib": c["ceiling_kib"], "idle_kib": c["idle_kib"],
                         "under_ceiling": peak.get(name) is not None and peak[name] <= c["ceiling_kib"]}
                  for name, c in ceil.items()}
    out["rss_all_under_ceiling"] = all(v["under_ceiling"] for v in out["rss"].values()) if out["rss"] else None
    out["workers_restarted"] = sorted(set(res.get("pids_after", {}).items()) - set(res.get("pids_before", {}).items()))
    if cfg.mode == "overload":
        u, lo = res["unloaded"]["cached"], res["loaded"]["cached"]
        ratio = round(lo["delivered_pps"] / u["delivered_pps"], 4) if u["delivered_pps"] else None
        out["cached_delivered_pps_unloaded"] = u["delivered_pps"]
        out["cached_delivered_pps_loaded"] = lo["delivered_pps"]
        out["cached_ratio_loaded_over_unloaded"] = ratio
        out["cached_target_met"] = ratio is not None and ratio >= cfg.target_ratio
        out["cached_sender_limited"] = lo["offered_pps"] < 0.9 * cfg.cached_rate
        out["new_offered_pps"] = res["loaded"]["new"]["offered_pps"]
        out["new_asked_pps"] = cfg.new_rate
        out["new_offered_x_sustained"] = round(res["loaded"]["new"]["offered_pps"] / cfg.sustained, 2)
        # the new flows ran out early (the frame layout's distinct 5-tuples) and the cached ones' window was
        # partly unloaded: the ratio is flattered
        out["load_covers_cached_window"] = res["loaded"]["new"]["load_seconds"] >= 0.95 * lo["sender_seconds"]
        out["drops_by_reason"] = drops(res["loaded"]["counters"])
        out["not_read_by_datapath"] = not_read(res["loaded"])
    else:
        out["cached_delivered_ratio"] = res["soak"]["cached"]["delivered_ratio"]
        out["drops_by_reason"] = drops(res["soak"]["counters"])
        out["not_read_by_datapath"] = not_read(res["soak"])
        fl = res["flatness"]
        out["rss_flat"] = all(v["flat"] for v in fl["rss_kib"].values()) if fl["rss_kib"] else None
        out["fds_flat"] = all(v["flat"] for v in fl["fds"].values()) if fl["fds"] else None
        hw = fl.get("rss_highwater") or {}
        out["rss_highwater_flat"] = all(v["flat"] for v in hw.values()) if hw and \
            all(v["flat"] is not None for v in hw.values()) else None
        out["tables_second_half"] = table_ranges(res["samples"])
    return out


def table_ranges(samples: list[dict]) -> dict[str, dict[str, list[int]]]:
    """Per process and gauge, [min, max] over the second half of a soak's samples."""
    if not samples:
        return {}
    t_half = samples[-1]["t"] / 2
    out: dict[str, dict[str, list[int]]] = {}
    for s in samples:
        if s["t"] < t_half or not s.get("tables"):
            continue
        for proc, gauges in s["tables"].items():
            for g, v in gauges.items():
                r = out.setdefault(proc, {}).setdefault(g, [v, v])
                r[0], r[1] = min(r[0], v), max(r[1], v)
    return out


def run_overload(cfg: OverloadConfig, progress: Callable[[str], None] | None = None) -> dict:
    if os.geteuid() != 0:
        raise OverloadError("--datapath real needs root (network namespaces, veths, AF_PACKET)")
    cfg = cfg.resolved()
    if cfg.mode not in ("overload", "soak"):
        raise OverloadError(f"mode: overload or soak, not {cfg.mode!r}")
    if cfg.mode == "soak" and cfg.new_rate * cfg.duration > DISTINCT - 10_000:
        raise OverloadError(f"a soak of {cfg.duration:g} s at {cfg.new_rate:,} new flows/s needs more distinct "
                            f"5-tuples than the frame layout has ({DISTINCT:,}): lower --new-rate or --duration")
    res: dict = {"mode": cfg.mode, "pipeline": cfg.pipeline, "datapath": "real", "config": asdict(cfg),
                 "machine": probes.machine()}
    with WireRig(cfg.pipeline) as rig, tempfile.TemporaryDirectory(prefix="shardnet-overload-") as tmp:
        res["rig"] = {"sender_ns": rig.sender_ns, "sink_ns": rig.sink_ns, "sender_if": rig.sender_if,
                      "sink_if": rig.sink_if}
        agent = AgentProcess(rig, cfg, tmp)
        res.update(OverloadBench(cfg, rig, progress).run(agent))
        res["agent_config"] = agent.agent_config
    res["summary"] = summarize(res, cfg)
    return res


def table(res: dict) -> str:
    s, cfg = res["summary"], res["config"]
    lines = [f"{res['mode']} on {res['pipeline']}: {cfg['duration']:g} s, {cfg['workers']} workers, "
             f"{cfg['cached_flows']} cached flows at {cfg['cached_rate']:,} frames/s, new flows asked "
             f"{cfg['new_rate']:,}/s from {cfg['senders']} senders"]
    if res["mode"] == "overload":
        lines.append(f"new flows offered {s['new_offered_pps']:,.0f}/s = {s['new_offered_x_sustained']}x the sustained "
                     f"{cfg['sustained']:,}/s for {res['loaded']['new']['load_seconds']:g} s"
                     + ("" if s["load_covers_cached_window"] else " (SHORTER than the cached flows' window)"))
        lines.append(f"cached flows delivered {s['cached_delivered_pps_unloaded']:,.0f}/s unloaded, "
                     f"{s['cached_delivered_pps_loaded']:,.0f}/s under load: "
                     f"{(s['cached_ratio_loaded_over_unloaded'] or 0) * 100:.1f} % "
                     f"(target >= {cfg['target_ratio'] * 100:.0f} %: {'MET' if s['cached_target_met'] else 'NOT MET'})")
    else:
        lines.append(f"cached flows delivered {(s['cached_delivered_ratio'] or 0) * 100:.2f} % of sent; "
                     f"RSS flat (second-half slope): {s['rss_flat']}, RSS high-water flat: "
                     f"{s['rss_highwater_flat']}, fds flat: {s['fds_flat']}")
        hw_all = res["flatness"].get("rss_highwater", {})
        for name, f in res["flatness"]["rss_kib"].items():
            fd = res["flatness"]["fds"].get(name, {})
            hw = hw_all.get(name, {})
            lines.append(f"  {name:<11} RSS second half: slope {f.get('slope_per_min')} KiB/min, max-min "
                         f"{f.get('max_minus_min')} KiB; {hw.get('window_s', 0):g}-s maxima slope "
                         f"{hw.get('slope_per_min')} KiB/min over {hw.get('windows')} windows; "
                         f"fds {fd.get('min')}..{fd.get('max')}")
            tabs = s.get("tables_second_half", {}).get(name)
            if tabs:
                lines.append(f"  {'':<11} tables (second half, min..max): " + ", ".join(
                    f"{g} {lo:,}..{hi:,}" for g, (lo, hi) in sorted(tabs.items())))
    for name, r in s["rss"].items():
        lines.append(f"  {name:<11} RSS idle {r['idle_kib'] / 1024:.1f} MiB, peak "
                     f"{(r['peak_kib'] or 0) / 1024:.1f} MiB, ceiling {r['ceiling_kib'] / 1024:.1f} MiB"
                     f" {'ok' if r['under_ceiling'] else 'OVER'}")
    phase = res.get("loaded") or res.get("soak") or {}
    if phase.get("agent_cpu_cores"):
        lines.append("agent CPU over the window (cores): " + ", ".join(
            f"{n} {v:.2f}" for n, v in sorted(phase["agent_cpu_cores"].items())))
    new = phase.get("new") or {}
    if new.get("sender_cpu_sampled_cores") is not None:
        lines.append(f"new-flow senders ({new['sender']}, nice {new.get('sender_nice')}): "
                     f"{new['sender_cpu_sampled_cores']:.2f} cores in all (sampled from /proc"
                     + (f"; {new['sender_cpu_cores']:.2f} by their own count)" if new.get("sender_cpu_cores")
                        is not None else ")"))
    if s.get("not_read_by_datapath") is not None:
        lines.append(f"frames never read by the datapath (its socket buffer overflowed): {s['not_read_by_datapath']:,}")
    lines.append("drops by reason: " + (", ".join(f"{k} {v:,}" for k, v in s["drops_by_reason"].items()) or "none"))
    if s["workers_restarted"]:
        lines.append(f"processes with a new pid: {s['workers_restarted']}")
    return "\n".join(lines)
