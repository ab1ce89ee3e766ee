"""The bench harness: runs the real pipeline (engine.supervisor.Agent: datapath + dispatcher process, N pinned
workers, ZeroMQ) under a traffic feed and measures flow setup (CONTRACTS §4).

Owns one run at a time: the Agent, a PUSH socket into the datapath's inbox (the traffic source: Inject
messages of ``batch`` frames, grouped by ingress port), and the measurement phases:

1. floors, before the agent starts: ZMQ round trip between two pinned processes (bench.floors) and in-process
   ``simulate`` of the same packets (bench.probes);
2. warm-up: ``warmup`` flows not measured — the first packets park on topology fragments and NAT leases;
3. probe: ``probe`` flows paced one per millisecond: the setup latency of an unloaded pipeline;
4. measured phase: the feed, with at most ``window`` new flows in flight (sent, not yet answered), so the
   pipeline is loaded but never overruns admission control.  Progress is read by draining the datapath's
   latency samples (one per answered upcall); counters and /proc CPU times are read before and after.

Frames are pushed straight to the datapath's inbox, not through the supervisor's service thread; progress
and counters are read with the public ``Agent.latencies_ns()`` and ``Agent.stats()`` (a public call wakes the
service thread at once).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from backchannel import messages as m
from backchannel.codec import encode
from backchannel.sockets import DATAPATH, push_connect
from bench import probes, scenarios
from bench.floors import measure_zmq_rtt
from bench.pcap import read_pcap
from bench.traffic import Feed, pcap_feed, synthetic_feed
from engine.supervisor import Agent
from topology.loader import load_topology

DROP_COUNTERS = ("dispatcher_queue_full", "dispatcher_rate_limited", "dispatcher_held_overflow",
                 "dispatcher_send_full", "datapath_relay_full", "datapath_bad_actions")


class BenchError(RuntimeError):
    pass


@dataclass
class BenchConfig:
    scenario: str = "full"
    ipv6: bool = False                # the scenario's IPv6 variant (bench.scenarios.get(scenario, ipv6=True))
    workers: int = 2
    flows: int = 10_000
    repeat_ratio: float = 0.0
    batch: int = 64                   # frames per Inject message
    window: int = 256                 # new flows in flight during the measured phase
    warmup: int = 1000
    probe: int = 300
    store: str = "memory://"
    pcap: str | None = None
    pcap_port: str | None = None
    cpus: list[int] | None = None     # worker cpus (default: all allowed)
    datapath_cpu: int | None = None
    floor_rtt_n: int = 2000
    poll_s: float = 0.0005            # pause between progress queries that found less than a batch
    stall_s: float = 3.0              # no answer for this long: the outstanding flows are counted lost
    progress: bool = False
    megaflows: bool = False           # the agent's megaflows: off, every new 5-tuple is a setup (an upcall);
                                      # on, new 5-tuples a megaflow matches are datapath hits: progress is read
                                      # from the datapath's frame counters and setups/s counts real upcalls


class Run:
    def __init__(self, agent: Agent, cfg: BenchConfig, progress: Callable[[int, int, float], None] | None):
        self.agent, self.cfg, self.progress = agent, cfg, progress
        self.ctx = zmq.Context()
        self.inject = push_connect(self.ctx, agent.rt, DATAPATH)
        self.inject.setsockopt(zmq.SNDTIMEO, 5000)
        self.lost = 0

    def close(self) -> None:
        self.inject.close(0)
        self.ctx.term()

    def latencies(self) -> list[int]:
        return self.agent.latencies_ns()

    def stats(self) -> dict:
        s = self.agent.stats()
        return {"datapath": s["datapath"], "workers": s["workers"]}

    def _send(self, feed: Feed, lo: int, hi: int) -> None:
        by_port: dict[str, list[bytes]] = {}
        for i in range(lo, hi):
            by_port.setdefault(feed.ports[i], []).append(feed.frames[i])
        for port, frames in by_port.items():
            try:
                self.inject.send(encode(m.Inject(port, tuple(frames))))
            except zmq.Again:
                raise BenchError("the datapath does not take frames (inbox full for 5 s)") from None

    def frames_done(self) -> int:
        """Frames the datapath has looked up so far (hits + misses)."""
        dp = self.agent.stats()["datapath"]
        return dp.get("datapath_hits", 0) + dp.get("datapath_misses", 0)

    def feed_counted(self, feed: Feed, window: int) -> tuple[list[int], float]:
        """Send the feed with at most ``window`` frames not yet looked up by the datapath (megaflows on: a new
        5-tuple may be a hit, so answers cannot pace it); returns (latency samples of the upcalls, seconds)."""
        samples: list[int] = []
        batch, n = self.cfg.batch, len(feed)
        base = self.frames_done()
        sent = done = 0
        t0 = last_move = time.monotonic()
        while done < n:
            while sent < n and sent - done < window:
                hi = min(n, sent + batch)
                self._send(feed, sent, hi)
                sent = hi
            time.sleep(self.cfg.poll_s * 4)
            now_done = self.frames_done() - base
            samples.extend(self.latencies())
            now = time.monotonic()
            if now_done > done:
                done, last_move = now_done, now
            elif now - last_move > self.cfg.stall_s:
                self.lost += sent - done                  # never looked up: dropped before the datapath
                break
            if self.progress is not None:
                self.progress(done, n, now - t0)
        seconds = last_move - t0
        deadline = time.monotonic() + 0.2                 # the last answers
        while time.monotonic() < deadline:
            samples.extend(self.latencies())
            time.sleep(0.01)
        return samples, seconds

    def feed(self, feed: Feed, window: int, label: str = "") -> tuple[list[int], float]:
        """Send the feed with at most ``window`` new flows unanswered; returns (latency samples, seconds)."""
        if self.cfg.megaflows:
            return self.feed_counted(feed, window)
        samples: list[int] = []
        batch, n = self.cfg.batch, len(feed)
        sent = new_sent = answered = 0
        t0 = last_answer = time.monotonic()
        next_report = 0.0
        while sent < n or new_sent - answered > 0:
            while sent < n:
                hi = min(n, sent + batch)
                k = sum(feed.new[sent:hi])
                if new_sent - answered + k > window and new_sent > answered:
                    break
                self._send(feed, sent, hi)
                sent, new_sent = hi, new_sent + k
            got = self.latencies()
            now = time.monotonic()
            if len(got) < batch:
                time.sleep(self.cfg.poll_s)               # few answers yet: leave the cpus to the pipeline
            if got:
                samples.extend(got)
                answered += len(got)
                last_answer = now
            elif now - last_answer > self.cfg.stall_s:
                self.lost += new_sent - answered          # dropped by admission control or never answered
                answered = new_sent
                last_answer = now
            if self.progress is not None and (now >= next_report or sent >= n and answered >= new_sent):
                next_report = now + 0.25
                self.progress(min(answered, feed.n_new), feed.n_new, now - t0)
        return samples, last_answer - t0

    def paced(self, feed: Feed, interval_s: float) -> list[int]:
        """Open loop, one frame per ``interval_s``: the unloaded setup latency."""
        nxt = time.monotonic()
        for i in range(len(feed)):
            wait = nxt - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._send(feed, i, i + 1)
            nxt += interval_s
        deadline = time.monotonic() + self.cfg.stall_s
        out: list[int] = []
        while len(out) < feed.n_new and time.monotonic() < deadline:
            out.extend(self.latencies())
            time.sleep(0.002)
        return out


def build_feeds(cfg: BenchConfig):
    sc = scenarios.get(cfg.scenario, cfg.ipv6)
    warm = synthetic_feed(sc, 0, cfg.warmup)
    probe = synthetic_feed(sc, cfg.warmup, cfg.probe)
    if cfg.pcap:
        main = pcap_feed(read_pcap(cfg.pcap), sc.mac_ports, cfg.pcap_port)
        if not len(main):
            raise BenchError(f"{cfg.pcap}: no frame to replay ({main.skipped or 'empty file'})")
    else:
        main = synthetic_feed(sc, cfg.warmup + cfg.probe, cfg.flows, cfg.repeat_ratio, lag=2 * cfg.window)
    return sc, warm, probe, main


def run_bench(cfg: BenchConfig, floors: dict | None = None, feeds=None) -> dict:
    """One run; ``floors``/``feeds`` can be shared between the runs of a sweep."""
    if cfg.window > 4096:
        raise BenchError("window: at most 4096 (the dispatcher's in-flight bound per worker)")
    sc, warm, probe, main = feeds or build_feeds(cfg)
    topo = load_topology(str(sc.topology))
    if floors is None:
        floors = measure_floors(cfg, topo, warm, main)
    progress = _bar(cfg) if cfg.progress else None
    with Agent(workers=cfg.workers, topology=str(sc.topology), host=scenarios.HOST, store=cfg.store,
               cpus=cfg.cpus, datapath_cpu=cfg.datapath_cpu, keep_outputs=False, megaflows=cfg.megaflows) as agent:
        run = Run(agent, cfg, progress)
        try:
            run.feed(warm, cfg.window)
            run.latencies()
            unloaded = run.paced(probe, 0.001) if len(probe) and not cfg.megaflows else []
            before = run.stats()
            pids = [before["datapath"]["datapath_pid"], *(w["worker_pid"] for w in before["workers"])]
            cpu0 = [probes.cpu_seconds(p) for p in (*pids, agent_pid())]
            lost0 = run.lost
            samples, seconds = run.feed(main, cfg.window)
            cpu1 = [probes.cpu_seconds(p) for p in (*pids, agent_pid())]
            after = run.stats()
        finally:
            run.close()
        if progress is not None:
            print(file=sys.stderr)
    return _result(cfg, sc, main, floors, samples, unloaded, seconds, before, after, cpu0, cpu1,
                   run.lost - lost0)


def agent_pid() -> int:
    import os

    return os.getpid()


def measure_floors(cfg: BenchConfig, topo, warm: Feed, main: Feed) -> dict:
    import os

    allowed = sorted(os.sched_getaffinity(0))
    pair = (allowed[0], allowed[1 % len(allowed)])
    rtt = measure_zmq_rtt(cfg.floor_rtt_n, cpus=pair)
    sim = probes.simulation_floor(topo, scenarios.HOST, warm.packets, main.packets[:5000])
    return {"zmq_rtt_us_p50": round(rtt["p50_us"], 1), "zmq_rtt_us_p99": round(rtt["p99_us"], 1), **sim,
            "zmq_rtt_cpus": list(pair)}


def _result(cfg, sc, main, floors, samples, unloaded, seconds, before, after, cpu0, cpu1, lost) -> dict:
    dp = probes.delta(after["datapath"], before["datapath"])
    ws = [probes.delta(a, b) for a, b in zip(after["workers"], before["workers"], strict=True)]
    wsum = probes.summed(ws)
    installed = len(samples)
    drops = {k: dp.get(k, 0) for k in DROP_COUNTERS if dp.get(k, 0)}
    drops.update({k: v for k, v in dp.items() if k.startswith("datapath_malformed_") and v})
    drops.update({k: v for k, v in wsum.items() if (k.startswith("worker_drops_") or k == "worker_send_full")
                  and v})
    if lost:
        drops["bench_unanswered"] = lost
    lat = probes.percentiles_us(samples)
    cpu = _cpu(cpu0, cpu1, dp, ws, installed, seconds)
    floor_sum = floors["zmq_rtt_us_p50"] + floors["simulation_us_p50"]
    res = {
        "scenario": sc.name, "ipv6": cfg.ipv6, "workers": cfg.workers, "flows": main.n_new,
        "setup_latency_us": {k: lat[k] for k in ("p50", "p90", "p99", "p999", "max")},
        "setups_per_s": round(installed / seconds, 1) if seconds > 0 else 0.0,
        "floor": {k: v for k, v in floors.items()},
        "offbox_read_ratio": round(wsum.get("worker_offbox_reads", 0) / max(1, wsum.get("worker_simulations", 0)),
                                   6),
        "parked": int(wsum.get("parked", 0)),
        "dropped": int(sum(drops.values())),
        "machine": probes.machine(),
        # -- extra keys ---------------------------------------------------------------------------------------
        "setup_latency_unloaded_us": probes.percentiles_us(unloaded),
        "ratios": {"p50_over_floor": round(lat["p50"] / floor_sum, 2) if floor_sum else None,
                   "p50_target_us": round(1.5 * floor_sum, 1),
                   "unloaded_p50_over_floor": round(probes.percentiles_us(unloaded)["p50"] / floor_sum, 2)
                   if floor_sum else None},
        "megaflows": cfg.megaflows,
        "upcalls": int(dp.get("dispatcher_upcalls", 0)),
        "packets_per_s": round(len(main) / seconds, 1) if seconds > 0 else 0.0,
        "datapath_hits": {k: int(dp.get(f"datapath_{k}", 0)) for k in ("hits", "megaflow_hits", "emc_hits", "misses")},
        "drops": drops, "frames": len(main), "repeat_frames": len(main) - main.n_new, "installed": installed,
        "seconds": round(seconds, 3), "window": cfg.window, "batch": cfg.batch, "warmup_flows": cfg.warmup,
        "warmup": f"{cfg.warmup} flows sent and answered before measuring (topology fragments, NAT leases)",
        "cpu": cpu,
        "counters": {"datapath": dp, "workers": wsum},
    }
    if main.skipped:
        res["pcap_skipped"] = main.skipped
    if cfg.pcap:
        res["pcap"] = cfg.pcap
    res["_samples_us"] = [s / 1000.0 for s in samples]
    res["_unloaded_us"] = [s / 1000.0 for s in unloaded]
    return res


def _cpu(cpu0, cpu1, dp, ws, installed, seconds) -> dict:
    used = [None if a is None or b is None else b - a for a, b in zip(cpu0, cpu1, strict=True)]
    upcalls = max(1, dp.get("dispatcher_upcalls", 0))
    out = {"datapath_s": used[0], "workers_s": used[1:-1], "bench_and_supervisor_s": used[-1],
           "datapath_us_per_upcall": None if used[0] is None else round(used[0] * 1e6 / upcalls, 1),
           "worker_us_per_upcall": [None if u is None else round(u * 1e6 / max(1, w.get("worker_upcalls", 0)), 1)
                                    for u, w in zip(used[1:-1], ws, strict=True)]}
    wk = [x for x in out["worker_us_per_upcall"] if x]
    if out["datapath_us_per_upcall"] and wk:
        per_worker = sum(wk) / len(wk)
        out["workers_per_dispatcher"] = round(per_worker / out["datapath_us_per_upcall"], 2)
        out["dispatcher_ceiling_setups_per_s"] = round(1e6 / out["datapath_us_per_upcall"])
        out["worker_ceiling_setups_per_s"] = round(1e6 / per_worker)
    if seconds > 0:
        out["datapath_busy"] = None if used[0] is None else round(used[0] / seconds, 2)
        out["workers_busy"] = [None if u is None else round(u / seconds, 2) for u in used[1:-1]]
    return out


def _bar(cfg: BenchConfig) -> Callable[[int, int, float], None]:
    def show(done: int, total: int, elapsed: float) -> None:
        frac = done / total if total else 1.0
        filled = int(30 * frac)
        rate = done / elapsed if elapsed > 0 else 0.0
        sys.stderr.write(f"\r{cfg.scenario} w={cfg.workers} [{'#' * filled}{'.' * (30 - filled)}] "
                         f"{done}/{total} flows  {rate:,.0f}/s")
        sys.stderr.flush()
    return show
