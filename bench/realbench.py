"""``shardnet bench --datapath real``: distinct UDP 5-tuples wire to wire through a shardnet agent with the real
datapath (and, with ``--peer ovs``, through Open vSwitch's userspace datapath on the same veths), per pipeline.

Owns one run: the rig (bench.wirerig: two namespaces and their veths, removed at the end, also on Ctrl-C or
an error), one system at a time between the rig's root ends (a shardnet ``Agent`` — memory store, real
datapath, N workers — or a private OVS instance, bench.ovspeer), the child processes of the traffic
(bench.wireproc: sender, sink, TCP server and client; killed by pid) and the measurements, per system:

1. warm-up: a few hundred frames at a low rate until every one arrives, plus a TCP connect (MACs learned,
   the router's ARP entry, nothing parked later);
2. latency: ``probes`` fresh 5-tuples, each sent twice ``spacing_s`` apart, timed by the kernel on the two
   root veth ends (bench.wireprobe): first packet (a flow setup) vs cached, wire to wire; right after it the
   ZMQ round-trip floor at the same spacing (it moves within minutes on a shared machine);
3. TCP connect: ``tcp_connects`` connects from the sender namespace to a server in the sink namespace, each
   a new connection (two setups: SYN and SYN-ACK);
4. rates: at each offered rate, ``rate × duration`` frames, every one a new 5-tuple, paced by the sender;
   delivered = distinct frames of that step counted at the sink; loss = 1 − delivered/sent; CPU = utime +
   stime (/proc/<pid>/stat) of the forwarder's processes over the step (sender start to ``drain_s`` after it
   ended) divided by the new 5-tuples it set up (``setups``: frames delivered at the sink, every one a new
   5-tuple forwarded, and at most what its counters say it read off the sender's end: frames the kernel dropped
   before it read them cost it nothing, and frames it read and then dropped — admission control, shedding —
   cost it some CPU but set nothing up), and net of its idle CPU (measured for 2 s with no traffic);
5. search: the highest lossless rate of the sweep and the lowest lossy one above it are bisected
   ``search_steps`` times (to 500/s): the sustained rate without loss.

Floors of the same run, before any system: the ZMQ round trip between two pinned processes at the probe
spacing (bench.floors) and the same latency probe through a bare AF_PACKET echo loop (recv → send).
"""

from __future__ import annotations

import json
import os
import random
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from bench import probes
from bench.floors import measure_zmq_rtt
from bench.ovspeer import VARIANTS, OvsPeer
from bench.wireprobe import probe_latency
from bench.wirerig import SENDER_MAC, SINK_MAC, WireRig, in_netns, ip_int, mac_int
from bench.wiretopo import HOST, topology_yaml

TCP_PORT = 5201
DROP_PREFIXES = ("dispatcher_", "datapath_malformed_", "afpacket_rx_dropped", "worker_drops_")


# AgentConfig settings the harness sets itself (not settable by --agent-opt; --workers sets workers)
FIXED_AGENT_OPTS = frozenset({"store", "host", "workers", "datapath", "topology", "tunnel_port", "runtime_base",
                              "state_file", "state_snapshot_s"})


class RealBenchError(RuntimeError):
    pass


@dataclass
class RealConfig:
    pipeline: str = "l2"
    rates: list[int] = field(default_factory=lambda: [5000, 10000, 20000, 40000])
    duration: float = 2.0
    peer: str | None = None
    ovs_variants: list[str] | None = None      # default: VARIANTS[pipeline]
    workers: int = 2
    probes: int = 200
    spacing_s: float = 0.005
    tcp_connects: int = 200
    search_steps: int = 3
    loss_tolerance: float = 0.0
    drain_s: float = 1.0
    floors: bool = True
    ovs_rcvbuf: int | None = None              # net.core.rmem_default while OVS opens its ports (None: as is)
    progress: bool = False
    megaflows: bool = False                    # the agent's megaflows (off: every new 5-tuple is a setup)
    agent_opts: dict = field(default_factory=dict)   # AgentConfig settings of the shardnet agent (--agent-opt)
    ipv6: bool = False                         # IPv6 UDP 5-tuples (the rig's VMs on 2001:db8:ff::/64; l2, ct)


# --- the systems under test ------------------------------------------------------------------------------

class ShardnetSystem:
    """A shardnet agent (memory store, real datapath) bound to the rig's root ends."""

    def __init__(self, rig: WireRig, cfg: RealConfig, tmp: str):
        self.rig, self.cfg, self.tmp = rig, cfg, tmp
        self.name = "shardnet"
        self.agent = None
        self.rx_buffers: list[int] = []

    def start(self) -> None:
        from engine.config import AgentConfig
        from engine.supervisor import Agent

        path = os.path.join(self.tmp, "topology.yaml")
        tunnel_ip = f"127.{random.randrange(64, 250)}.{random.randrange(1, 250)}.1"
        with open(path, "w") as f:
            f.write(topology_yaml(self.cfg.pipeline, self.rig.sender_if, self.rig.sink_if, tunnel_ip, self.cfg.ipv6))
        acfg = AgentConfig(store="memory://", host=HOST, workers=self.cfg.workers, datapath="real", topology=path,
                           tunnel_port=random.randrange(30000, 60000), runtime_base=self.tmp,
                           state_file=os.path.join(self.tmp, "bench.state"), state_snapshot_s=0.0,
                           **{"flow_idle_s": 10.0, "keep_outputs": False, "log_level": "WARNING",
                              "megaflows": self.cfg.megaflows, **self.cfg.agent_opts})
        self.agent = Agent(acfg).start()
        from bench.ovspeer import rx_buffers

        self.rx_buffers = rx_buffers(self.agent.pids.get(-1))

    def pids(self) -> list[int]:
        return [pid for _, pid in sorted(self.agent.pids.items())] if self.agent else []

    def process_names(self) -> list[str]:
        return [("datapath" if i < 0 else f"worker {i}") for i in sorted(self.agent.pids)] if self.agent else []

    def counters(self) -> dict:
        s = self.agent.stats()
        return {**probes.numeric(s["datapath"]), **probes.summed(s["workers"])}

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.stop()
            self.agent = None


class OvsSystem:
    """One variant of the OVS pipelines on a running private instance."""

    def __init__(self, peer: OvsPeer, variant: str):
        self.peer, self.variant = peer, variant
        self.name = f"ovs {variant}"

    def start(self) -> None:
        self.peer.use(self.variant)

    def pids(self) -> list[int]:
        return self.peer.pids()

    def process_names(self) -> list[str]:
        return ["ovs-vswitchd"]

    def counters(self) -> dict:
        return self.peer.counters()

    def stop(self) -> None:
        pass


# --- one run -----------------------------------------------------------------------------------------------

class RealBench:
    def __init__(self, cfg: RealConfig, rig: WireRig, progress: Callable[[str], None] | None = None):
        self.cfg, self.rig, self.progress = cfg, rig, progress
        self.next_index = 0
        self.idle_cpu = 0.0                         # the system's CPU seconds per second with no traffic
        self.maker = {"eth_src": mac_int(SENDER_MAC), "eth_dst": mac_int(rig.first_hop_mac),
                      "ip_src": ip_int(rig.sender_ip), "ip_dst": ip_int(rig.sink_ip)}

    def take(self, n: int) -> int:
        """``n`` frame indexes never used before in this run: new 5-tuples."""
        first = self.next_index
        self.next_index += n
        return first

    def _say(self, what: str) -> None:
        if self.progress is not None:
            self.progress(what)

    # --- children -----------------------------------------------------------------------------------------

    def _ready(self, p: subprocess.Popen, what: str, timeout: float = 20.0) -> None:
        r, _, _ = select.select([p.stdout], [], [], timeout)
        line = p.stdout.readline() if r else b""
        if line.strip() != b"ready":
            err = p.stderr.read().decode(errors="replace")[-600:] if p.poll() is not None else ""
            raise RealBenchError(f"{what} did not start: {line!r} {err}")

    def _result(self, p: subprocess.Popen, what: str, timeout: float, stdin: bytes | None = None) -> dict:
        try:
            out, err = p.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.rig.reap(p)
            raise RealBenchError(f"{what}: no result in {timeout:.0f} s") from None
        self.rig.reap(p)
        try:
            return json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RealBenchError(f"{what} failed: {err.decode(errors='replace')[-600:]}") from None

    # --- steps --------------------------------------------------------------------------------------------

    def step(self, system, rate: int, count: int | None = None) -> dict:
        """``count`` (default rate × duration) new 5-tuples at ``rate`` frames/s; see the module doc."""
        cfg = self.cfg
        count = count or max(1, int(rate * cfg.duration))
        first = self.take(count)
        tag = os.urandom(8).hex()
        max_s = count / rate * 2 + 5
        sink = self.rig.popen(self.rig.sink_ns, ["sink", json.dumps(
            {"tag": tag, "first": first, "count": count, "max_s": max_s + cfg.drain_s + 30, "ipv6": cfg.ipv6})])
        self._ready(sink, "the sink")
        c0 = system.counters()
        pids = system.pids()
        cpu0 = [probes.cpu_seconds(p) for p in pids]
        me0 = probes.cpu_seconds(os.getpid())
        w0 = time.monotonic()
        sender = self.rig.popen(self.rig.sender_ns, ["send", json.dumps(
            {**self.maker, "tag": tag, "first": first, "count": count, "rate": rate, "max_s": max_s})])
        sent = self._result(sender, "the sender", max_s + 30)
        time.sleep(cfg.drain_s)
        cpu1 = [probes.cpu_seconds(p) for p in pids]
        me1 = probes.cpu_seconds(os.getpid())
        window = time.monotonic() - w0
        c1 = system.counters()
        got = self._result(sink, "the sink", 30, b"stop\n")
        used = [None if a is None or b is None else b - a for a, b in zip(cpu0, cpu1, strict=True)]
        cpu = sum(u for u in used if u is not None)
        n = sent["sent"]
        delta = probes.delta(c1, c0)
        out = {"rate": rate, "frames": count, "sent": n, "send_errors": sent["send_errors"],
               "offered_pps": round(n / sent["seconds"], 1) if sent["seconds"] > 0 else 0.0,
               "delivered": got["unique"], "duplicates": got["matched"] - got["unique"],
               "loss": round(1 - got["unique"] / n, 6) if n else 0.0,
               "sink_kernel_drops": got["kernel_drops"],
               "cpu_s": round(cpu, 3), "cpu_window_s": round(window, 3),
               "cpu_s_by_process": {name: None if u is None else round(u, 3)
                                    for name, u in zip(system.process_names(), used, strict=False)},
               "cpu_us_per_frame_sent": round(cpu * 1e6 / n, 1) if n else None,
               "bench_process_cpu_s": round(me1 - me0, 3) if me0 is not None and me1 is not None else None,
               "counters": {k: v for k, v in delta.items() if v and _interesting(k)}}
        read = delta.get("datapath_rx", delta.get("packets_received"))
        if read is not None:                         # frames the forwarder read off the sender's end
            out["read_by_forwarder"] = read
            out["lost_before_read"] = max(0, n - read)     # its socket buffer overflowed (the kernel dropped them)
        # per setup: per new 5-tuple the forwarder set up (delivered at the sink), not per frame the kernel
        # dropped before it read it, nor per frame it read and refused (a step with loss divided by the frames
        # read made an overloaded forwarder look cheaper per setup than it is)
        setups = min(n, read, got["unique"]) if read is not None else min(n, got["unique"])
        out["setups"] = setups
        out["cpu_us_per_setup"] = round(cpu * 1e6 / setups, 1) if setups else None
        out["cpu_us_per_setup_net"] = (round(max(0.0, cpu - self.idle_cpu * window) * 1e6 / setups, 1)
                                       if setups else None)
        out["lossless"] = out["loss"] <= cfg.loss_tolerance
        out["sender_limited"] = out["offered_pps"] < 0.9 * rate
        return out

    def warm_up(self, system) -> dict:
        """Learn the MACs, resolve the router's ARP entry: low-rate steps until every frame arrives."""
        def back() -> None:                          # one frame sink -> sender (the bridge learns the sink)
            import socket

            from bench.wireproc import FrameMaker

            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            s.bind(("eth0", 0))
            dst = SENDER_MAC if self.cfg.pipeline in ("l2", "ct") else self.rig.first_hop_mac
            fm = FrameMaker(mac_int(SINK_MAC), mac_int(dst), ip_int(self.rig.sink_ip), ip_int(self.rig.sender_ip),
                            os.urandom(8))
            s.send(fm.frame(0))
            s.close()

        if self.cfg.pipeline in ("l2", "ct"):
            in_netns(self.rig.sink_ns, back)
        tries = []
        for _ in range(8):
            r = self.step(system, 500, 100)
            tries.append(r["delivered"])
            if r["delivered"] == r["sent"]:
                break
            time.sleep(0.5)
        tcp = self.tcp_connect(5)
        return {"delivered_per_try": tries, "tcp_ok": len(tcp["connect_us"])}

    def idle(self, system, seconds: float = 2.0) -> float:
        """CPU seconds per second the system burns with no traffic (kept for the net CPU per setup)."""
        pids = system.pids()
        c0, t0 = [probes.cpu_seconds(p) for p in pids], time.monotonic()
        time.sleep(seconds)
        c1, t1 = [probes.cpu_seconds(p) for p in pids], time.monotonic()
        self.idle_cpu = sum(b - a for a, b in zip(c0, c1, strict=True) if a is not None and b is not None) / (t1 - t0)
        return round(self.idle_cpu, 3)

    def latency(self) -> dict:
        r = probe_latency(self.rig, self.maker, self.take(self.cfg.probes), self.cfg.probes, self.cfg.spacing_s,
                          os.urandom(8))
        return _latency_summary(r)

    def tcp_connect(self, n: int | None = None) -> dict:
        n = self.cfg.tcp_connects if n is None else n
        server = self.rig.popen(self.rig.sink_ns, ["tcpserver", json.dumps(
            {"port": TCP_PORT, "max_s": n * (self.cfg.spacing_s + 2.0) + 30, "ipv6": self.cfg.ipv6})])
        try:
            self._ready(server, "the TCP server")
            client = self.rig.popen(self.rig.sender_ns, ["tcpclient", json.dumps(
                {"ip": self.rig.sink_ip, "port": TCP_PORT, "n": n, "spacing_s": self.cfg.spacing_s,
                 "timeout_s": 2.0, "max_s": n * (self.cfg.spacing_s + 2.0) + 10})])
            res = self._result(client, "the TCP client", n * (self.cfg.spacing_s + 2.0) + 40)
        finally:
            self.rig.reap(server)
        return res

    def sweep(self, system) -> tuple[list[dict], dict]:
        cfg = self.cfg
        steps = []
        for rate in cfg.rates:
            self._say(f"{system.name}: {rate:,}/s")
            steps.append(self.step(system, rate))
        lo = max((s["rate"] for s in steps if s["lossless"]), default=0)
        above = [s["rate"] for s in steps if not s["lossless"] and s["rate"] > lo]
        hi = min(above) if above else None
        searched = []
        for _ in range(cfg.search_steps):
            if hi is None or hi - lo <= max(500, lo // 10):
                break
            mid = int(round((lo + hi) / 2 / 500) * 500)
            if mid <= lo or mid >= hi:
                break
            self._say(f"{system.name}: search {mid:,}/s")
            s = self.step(system, mid)
            searched.append(s)
            if s["lossless"]:
                lo = mid
            else:
                hi = mid
        sustained = {"rate": lo, "first_lossy_rate": hi, "at_least": hi is None,
                     "search": [{"rate": s["rate"], "loss": s["loss"]} for s in searched]}
        return steps + searched, sustained

    def run_system(self, system) -> dict:
        self._say(f"{system.name}: start")
        system.start()
        try:
            self._say(f"{system.name}: warm-up")
            warm = self.warm_up(system)
            idle = self.idle(system)
            self._say(f"{system.name}: latency")
            lat = self.latency()
            lat["zmq_rtt_next_to_it_us"] = self.zmq_floor()
            self._say(f"{system.name}: tcp connect")
            c0 = system.counters()
            tcp = self.tcp_connect()
            tcp_counters = {k: v for k, v in probes.delta(system.counters(), c0).items() if v and _interesting(k)}
            steps, sustained = self.sweep(system)
        finally:
            system.stop()
        return {"warmup": warm, "idle_cpu_per_s": idle, "latency": lat,
                "tcp_connect": {**_pcts(tcp["connect_us"]), "failures": tcp["failures"],
                                "_samples_us": tcp["connect_us"], "counters": tcp_counters},
                "rates": steps, "sustained": sustained}

    def zmq_floor(self) -> dict:
        """The ZMQ round trip between two pinned processes at the probe spacing, measured now."""
        allowed = sorted(os.sched_getaffinity(0))
        z = measure_zmq_rtt(max(50, self.cfg.probes), cpus=(allowed[0], allowed[1 % len(allowed)]), warmup=20,
                            spacing_s=self.cfg.spacing_s)
        return {k: round(z[k + "_us"], 1) for k in ("p50", "p90", "p99")}

    def measure_floors(self) -> dict:
        cfg = self.cfg
        out: dict = {}
        self._say("floor: zmq round trip")
        out["zmq_rtt_us"] = self.zmq_floor()
        out["zmq_rtt_spacing_s"] = cfg.spacing_s
        self._say("floor: AF_PACKET echo")
        echo = self.rig.popen(None, ["echo", json.dumps({"a": self.rig.sender_if, "b": self.rig.sink_if,
                                                         "max_s": cfg.probes * cfg.spacing_s * 2 + 60})])
        try:
            self._ready(echo, "the echo loop")
            r = probe_latency(self.rig, self.maker, self.take(cfg.probes), cfg.probes, cfg.spacing_s,
                              os.urandom(8))
        finally:
            self.rig.reap(echo)
        both = r["first_us"] + r["cached_us"]
        out["afpacket_echo_us"] = {**_pcts(both), "_samples_us": both}
        return out


def _interesting(key: str) -> bool:
    return key in ("datapath_rx", "datapath_tx",
                   "dispatcher_upcalls", "worker_upcalls", "flows_installed", "datapath_hits", "datapath_misses",
                   "parked", "miss_with_success_upcall", "miss_with_failed_upcall", "megaflow_hits",
                   "emc_hits", "packets_received", "packet_recirculations", "worker_lease_requests",
                   "worker_lease_ahead_requests", "worker_leases_granted", "worker_leases_failed",
                   "worker_parked_lease", "worker_lease_rtt_us_sum", "worker_lease_rtt_count",
                   "supervisor_lease_requests", "datapath_flows_ahead", "datapath_flows_ahead_skipped",
                   "worker_replies_ahead", "worker_replies_not_ahead", "worker_memo_hits", "worker_memo_walks")\
        or key.startswith(DROP_PREFIXES)


def _pcts(samples) -> dict:
    a = np.asarray(samples, dtype=float)
    if a.size == 0:
        return {"p50": None, "p90": None, "p99": None, "n": 0}
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": round(float(p50), 1), "p90": round(float(p90), 1), "p99": round(float(p99), 1), "n": int(a.size)}


def _latency_summary(r: dict) -> dict:
    first, cached = _pcts(r["first_us"]), _pcts(r["cached_us"])
    penalty = None if first["p50"] is None or cached["p50"] is None else round(first["p50"] - cached["p50"], 1)
    return {"first": first, "cached": cached, "setup_penalty_us_p50": penalty, "sent_pairs": r["sent_pairs"],
            "spacing_s": r["spacing_s"], "_first_us": r["first_us"], "_cached_us": r["cached_us"]}


# --- the whole command ----------------------------------------------------------------------------------------

def run_real(cfg: RealConfig, progress: Callable[[str], None] | None = None) -> dict:
    """One pipeline through shardnet (and the OVS variants with ``peer == "ovs"``); the result dictionary."""
    if os.geteuid() != 0:
        raise RealBenchError("--datapath real needs root (network namespaces, veths, AF_PACKET)")
    variants: list[str] = []
    if cfg.peer == "ovs":
        from bench.ovspeer import check_installed

        check_installed()                              # before anything is built: a clear error
        variants = list(cfg.ovs_variants or VARIANTS[cfg.pipeline])
    res: dict = {"pipeline": cfg.pipeline, "datapath": "real", "config": asdict(cfg), "machine": probes.machine(),
                 "systems": {}}
    if cfg.ipv6 and cfg.pipeline == "full":
        raise RealBenchError("--ipv6: the full pipeline has no IPv6 variant (its SNAT has no IPv6 form: no NAT66)")
    if cfg.ipv6 and cfg.peer and cfg.pipeline != "l2":
        raise RealBenchError("--ipv6 --peer ovs: only the l2 pipeline (the OVS conntrack flows match IPv4 only)")
    res["ipv6"] = cfg.ipv6
    with WireRig(cfg.pipeline, cfg.ipv6) as rig, tempfile.TemporaryDirectory(prefix="shardnet-bench-") as tmp:
        bench = RealBench(cfg, rig, progress)
        res["rig"] = {"sender_ns": rig.sender_ns, "sink_ns": rig.sink_ns, "sender_if": rig.sender_if,
                      "sink_if": rig.sink_if, "sink_ip": rig.sink_ip}
        if cfg.floors:
            res["floors"] = bench.measure_floors()
        shardnet = ShardnetSystem(rig, cfg, tmp)
        res["systems"]["shardnet"] = bench.run_system(shardnet)
        res["shardnet_rx_buffers"] = shardnet.rx_buffers
        if variants:
            with OvsPeer(rig.sender_if, rig.sink_if, f"snb{rig.tag}", cfg.ovs_rcvbuf) as peer:
                res["ovs_rx_buffers"] = peer.rx_buffers
                for v in variants:
                    res["systems"][f"ovs {v}"] = bench.run_system(OvsSystem(peer, v))
    res["comparison"] = compare(res)
    res["targets"] = targets(res)
    return res


def _at(system: dict, rate: int, key: str):
    """``key`` of the step whose rate is nearest ``rate`` (the sweep's own rates first)."""
    steps = system["rates"]
    if not steps:
        return None
    s = min(steps, key=lambda s: (abs(s["rate"] - rate), s["rate"]))
    return s.get(key)


def headline(system: dict, cpu_rate: int) -> dict:
    lat = system["latency"]
    return {"sustained_per_s": system["sustained"]["rate"], "sustained_at_least": system["sustained"]["at_least"],
            "cpu_us_per_setup": _at(system, cpu_rate, "cpu_us_per_setup"),
            "cpu_us_per_setup_net": _at(system, cpu_rate, "cpu_us_per_setup_net"),
            "cpu_rate": _at(system, cpu_rate, "rate"), "idle_cpu_per_s": system.get("idle_cpu_per_s"),
            "first_p50_us": lat["first"]["p50"], "cached_p50_us": lat["cached"]["p50"],
            "setup_penalty_us_p50": lat["setup_penalty_us_p50"], "tcp_connect_p50_us": system["tcp_connect"]["p50"],
            "zmq_rtt_next_to_it_p50_us": (lat.get("zmq_rtt_next_to_it_us") or {}).get("p50")}


def compare(res: dict, cpu_rate: int = 20000) -> dict:
    """Headline figures per system and the ratios shardnet / each OVS variant."""
    heads = {name: headline(s, cpu_rate) for name, s in res["systems"].items()}
    sn = heads.get("shardnet", {})
    ratios = {}
    for name, h in heads.items():
        if name == "shardnet":
            continue
        # a penalty under 10 µs is no setup at all (a megaflow hit): no ratio to it
        ratios[name] = {k: (round(sn[k] / h[k], 2) if isinstance(sn.get(k), int | float)
                            and isinstance(h.get(k), int | float) and h[k] >= (10 if "penalty" in k else 1e-9)
                            and sn[k] >= 0 else None)
                        for k in ("sustained_per_s", "cpu_us_per_setup", "cpu_us_per_setup_net", "setup_penalty_us_p50",
                                  "tcp_connect_p50_us", "cached_p50_us")}
    return {"cpu_rate": cpu_rate, "headline": heads, "ratios_shardnet_over": ratios}


def targets(res: dict) -> list[dict]:
    """Issue 13's targets that this run can judge, each with its figures and met / not met / not measured."""
    out = []
    heads = res["comparison"]["headline"]
    sn = heads.get("shardnet")
    if sn is None:
        return out

    def add(name, met, detail):
        out.append({"target": name, "met": met, "detail": detail})

    def at_least(a: dict, b: dict):
        """a's sustained rate >= b's: True, False, or None when the sweep did not find the limit that decides."""
        ra, rb = a["sustained_per_s"], b["sustained_per_s"]
        if ra >= rb and (not b["sustained_at_least"] or a["sustained_at_least"] and ra > rb):
            return True
        if ra < rb and not a["sustained_at_least"]:
            return False
        return None

    p = res["pipeline"]
    ovs_nomf = heads.get({"l2": "ovs normal-nomf", "ct": "ovs ct-nomf", "l3": "ovs l3-nomf",
                          "full": "ovs full-nomf"}[p])
    if p == "ct":
        if ovs_nomf:
            add("conntrack: sustained new connections/s >= OVS ct-nomf", at_least(sn, ovs_nomf),
                f"{sn['sustained_per_s']:,} vs {ovs_nomf['sustained_per_s']:,}")
            if sn["cpu_us_per_setup"] and ovs_nomf["cpu_us_per_setup"]:
                add("conntrack: CPU per setup <= 1.5x OVS ct-nomf",
                    sn["cpu_us_per_setup"] <= 1.5 * ovs_nomf["cpu_us_per_setup"],
                    f"{sn['cpu_us_per_setup']} vs {ovs_nomf['cpu_us_per_setup']} µs")
    if p == "l2":
        if ovs_nomf:
            add("plain bridge, exact match: sustained >= OVS normal-nomf", at_least(sn, ovs_nomf),
                f"{sn['sustained_per_s']:,} vs {ovs_nomf['sustained_per_s']:,}")
        add("plain bridge: >= 40k new 5-tuples/s with 0 loss (the megaflow target)",
            True if sn["sustained_per_s"] >= 40000 else (None if sn["sustained_at_least"] else False),
            f"{sn['sustained_per_s']:,}/s (megaflows {'on' if res['config'].get('megaflows') else 'off'})")
        ovs_mf = heads.get("ovs normal")
        if ovs_mf and sn["cpu_us_per_setup"] and ovs_mf["cpu_us_per_setup"]:
            add("plain bridge: CPU per packet <= 2x OVS normal (megaflows on)",
                sn["cpu_us_per_setup"] <= 2 * ovs_mf["cpu_us_per_setup"],
                f"{sn['cpu_us_per_setup']} vs {ovs_mf['cpu_us_per_setup']} µs")
    # the floor measured right after shardnet's own latency probe (else the run's), at the same spacing
    floor = (res["systems"]["shardnet"]["latency"].get("zmq_rtt_next_to_it_us")
             or res.get("floors", {}).get("zmq_rtt_us") or {}).get("p50")
    if floor and sn["setup_penalty_us_p50"] is not None and sn["setup_penalty_us_p50"] >= 10:
        # (a penalty under 10 µs is no setup at all — a megaflow hit: nothing to judge)
        add("per setup wire to wire (first minus cached, p50) <= 1.5x the ZMQ floor at the same spacing",
            sn["setup_penalty_us_p50"] <= 1.5 * floor,
            f"{sn['setup_penalty_us_p50']} µs vs floor {floor} µs measured right after")
    if ovs_nomf and sn["tcp_connect_p50_us"] and ovs_nomf["tcp_connect_p50_us"]:
        add("TCP connect <= 3x OVS (exact match)", sn["tcp_connect_p50_us"] <= 3 * ovs_nomf["tcp_connect_p50_us"],
            f"{sn['tcp_connect_p50_us']} vs {ovs_nomf['tcp_connect_p50_us']} µs")
    return out


# --- output ----------------------------------------------------------------------------------------------------

def public(obj):
    """The result without the raw samples (keys starting with ``_``), for JSON."""
    if isinstance(obj, dict):
        return {k: public(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list):
        return [public(v) for v in obj]
    return obj


def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.1f}{unit}"
    return f"{int(v):,}{unit}"


def table(res: dict) -> str:
    cfg = res["config"]
    fam = "IPv6 " if cfg.get("ipv6") else ""
    lines = [f"pipeline {res['pipeline']}: new {fam}UDP 5-tuples wire to wire, {cfg['duration']} s per rate, "
             f"{cfg['workers']} shardnet workers "
             f"({'megaflows' if cfg.get('megaflows') else 'exact-match flow cache: megaflows off'})"]
    if cfg.get("agent_opts"):
        lines.append("agent settings: " + ", ".join(f"{k}={v}" for k, v in cfg["agent_opts"].items()))
    fl = res.get("floors")
    if fl:
        lines.append(f"floors: ZMQ round trip p50 {_fmt(fl['zmq_rtt_us']['p50'])} µs at {cfg['spacing_s'] * 1e3:g} ms "
                     f"spacing; AF_PACKET echo wire to wire p50 {_fmt(fl['afpacket_echo_us']['p50'])} µs")
    nxt = [f"{name} {_fmt(h['zmq_rtt_next_to_it_p50_us'])} µs" for name, h in res["comparison"]["headline"].items()
           if h.get("zmq_rtt_next_to_it_p50_us")]
    if nxt:
        lines.append("ZMQ round trip p50 right after each latency probe: " + ", ".join(nxt))
    rates = cfg["rates"]
    head = ["system", "sustained/s"] + [f"loss@{r // 1000}k" for r in rates] + \
        ["cpu µs/setup (net)", "first p50 µs", "cached p50 µs",
         "setup +µs", "tcp connect p50 µs"]
    rows = [head]
    for name, s in res["systems"].items():
        h = res["comparison"]["headline"][name]
        by_rate = {st["rate"]: st for st in s["rates"]}
        loss = [f"{by_rate[r]['loss'] * 100:.1f}%" + ("*" if by_rate[r]["sender_limited"] else "")
                if r in by_rate else "-" for r in rates]
        rows.append([name, ("≥" if h["sustained_at_least"] else "") + _fmt(h["sustained_per_s"]), *loss,
                     f"{_fmt(h['cpu_us_per_setup'])} ({_fmt(h['cpu_us_per_setup_net'])}) @{_fmt(h['cpu_rate'])}",
                     _fmt(h["first_p50_us"]), _fmt(h["cached_p50_us"]),
                     _fmt(h["setup_penalty_us_p50"]), _fmt(h["tcp_connect_p50_us"])])
    for name, r in res["comparison"]["ratios_shardnet_over"].items():
        rows.append([f"shardnet / {name}", _ratio(r["sustained_per_s"]), *["" for _ in rates],
                     f"{_ratio(r['cpu_us_per_setup'])} ({_ratio(r['cpu_us_per_setup_net'])})", "",
                     _ratio(r["cached_p50_us"]), _ratio(r["setup_penalty_us_p50"]),
                     _ratio(r["tcp_connect_p50_us"])])
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    for row in rows:
        lines.append("  ".join(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
                               for i, c in enumerate(row)))
    if any(st["sender_limited"] for s in res["systems"].values() for st in s["rates"]):
        lines.append("* the sender offered less than 90 % of that rate (see offered_pps in the JSON)")
    for t in res["targets"]:
        verdict = {True: "MET", False: "NOT MET", None: "NOT DECIDED (no loss at any rate: raise --rates)"}
        lines.append(f"target {verdict[t['met']]}: {t['target']} ({t['detail']})")
    return "\n".join(lines)


def _ratio(v) -> str:
    return "-" if v is None else f"×{v:g}"


def progress_bar(total: int, label: str) -> Callable[[str], None]:
    """A one-line progress bar on stderr: ``total`` expected stages; each call is one stage done."""
    state = {"done": 0}

    def show(what: str) -> None:
        state["done"] = min(total, state["done"] + 1)
        filled = int(30 * state["done"] / total) if total else 30
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {what:<40.40}")
        sys.stderr.flush()
    return show


def expected_stages(cfg: RealConfig) -> int:
    systems = 1 + (len(cfg.ovs_variants or VARIANTS[cfg.pipeline]) if cfg.peer == "ovs" else 0)
    return (2 if cfg.floors else 0) + systems * (4 + len(cfg.rates) + cfg.search_steps)
