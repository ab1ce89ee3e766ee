"""Measurements around a bench run that are not the pipeline itself: the in-process simulation floor, CPU time
of processes (/proc/<pid>/stat), counter deltas, percentiles, and a description of the machine.

Owns no process and no socket; bench.harness calls these before/after its measured phase.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from datetime import UTC, datetime

import numpy as np

from workers.simulation.result import PARKED, NeedLease
from workers.simulation.simulate import simulate
from workers.trace import TraceSession

CLK_TCK = os.sysconf("SC_CLK_TCK")
PERCENTILES = (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9))


def percentiles_us(samples_ns) -> dict:
    """{"p50", "p90", "p99", "p999", "max", "mean", "n"} in µs (zeros when there is no sample)."""
    a = np.asarray(samples_ns, dtype=np.float64) / 1000.0
    if a.size == 0:
        return {**{k: 0.0 for k, _ in PERCENTILES}, "max": 0.0, "mean": 0.0, "n": 0}
    ps = np.percentile(a, [q for _, q in PERCENTILES])
    out = {k: round(float(v), 1) for (k, _), v in zip(PERCENTILES, ps, strict=True)}
    out.update(max=round(float(a.max()), 1), mean=round(float(a.mean()), 1), n=int(a.size))
    return out


def simulation_floor(topology, host: str | None, warm, sample) -> dict:
    """Per-packet cost of ``simulate`` in this process for ``sample`` [(port, Packet)], after the ``warm``
    packets went through the same state (leases granted at once, effects applied, as a worker would)."""
    sess = TraceSession(topology, host=host)
    for port, pkt in warm:
        if pkt is not None:
            sess.run(port, pkt)
    clock = time.perf_counter_ns
    times = []
    for port, pkt in sample:
        if pkt is None:
            continue
        t0 = clock()
        res = simulate(pkt, port, topology, sess.state, sess.now, host)
        dt = clock() - t0
        if res.result == PARKED and isinstance(res.needs, NeedLease):
            sess.run(port, pkt)                        # a lease: not steady state, not timed
            continue
        sess.state.apply(res.effects, sess.now)
        times.append(dt)
    r = percentiles_us(times)
    return {"simulation_us_p50": r["p50"], "simulation_us_p99": r["p99"], "simulation_us_mean": r["mean"],
            "simulation_samples": r["n"]}


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, in seconds (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def numeric(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def delta(after: dict, before: dict) -> dict:
    a, b = numeric(after), numeric(before)
    return {k: a[k] - b.get(k, 0) for k in a}


def summed(dicts) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in numeric(d).items():
            out[k] = out.get(k, 0) + v
    return out


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpus_allowed": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "implementation": sys.implementation.name,
            "cpu_model": model, "kernel": platform.release(),
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
