"""Micro-benchmark of the datapath process's own work per flow setup, in one process, no sockets.

    PYTHONPATH=. .venv/bin/python bench/dp_micro.py [--scenario l2] [--flows 20000] [--against OTHER_TREE]
                                                    [--rounds N] [--profile]

A DatapathProcess (memory mode) with fake worker links is fed the bench's Inject messages (64 frames each, as
``shardnet bench`` sends them) and answered with the FlowPut batches its workers would send: each answer comes
from simulating the packet once beforehand (untimed, workers.simulation), with the worker's actions, tags,
timeouts and match (``--megaflows``), encoded as one batch frame per upcall batch, as a worker replies.  Timed:
decoding the inbox frames, handling them (parse, key, lookup, dispatcher, flush + encode of the upcall
batches, FlowPut decode, install, execute) and the housekeeping after each burst: the datapath's Python work per
setup, without the ZMQ sends and the poll loop (those the full bench measures).  ``--against`` alternates this
tree with another ``--rounds`` times (a subprocess each), so both see the same drift of a shared machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

INJECT_BATCH = 64            # frames per Inject message (bench/harness.py)
WINDOW = 1024                # upcalls outstanding before the answers are fed back (the bench's window)


class _Link:
    """A worker or supervisor link: keeps what was sent."""

    def __init__(self):
        self.sent: list[bytes] = []

    def send(self, data, flags=0):
        self.sent.append(bytes(data))


def _answers(scenario: str, flows: int, megaflows: bool, ipv6: bool):
    """The frames of ``flows`` new flows by ingress port, and frame → the worker's FlowPut fields."""
    from bench import scenarios
    from bench.traffic import synthetic_feed
    from topology.loader import load_topology
    from workers.megaflow import flow_match
    from workers.plan import DROP_ACTIONS, output_actions
    from workers.simulation.result import FORWARD
    from workers.trace import TraceSession

    sc = scenarios.get(scenario, ipv6)
    topo = load_topology(str(sc.topology))
    warm = synthetic_feed(sc, 0, 200)
    main = synthetic_feed(sc, 200, flows)
    sess = TraceSession(topo, host=scenarios.HOST)
    for port, pkt in warm.packets:
        if pkt is not None:
            sess.run(port, pkt)
    answer = {}
    frames = list(zip(main.ports, main.frames, strict=True))
    pkts = dict(zip(main.frames, (pkt for _, pkt in main.packets), strict=True))
    for port, frame in frames:
        pkt = pkts[frame]
        res = sess.run(port, pkt)
        if res.result == FORWARD:
            actions = output_actions(pkt, res.outputs, lambda h: 0)
            match = flow_match(res) if megaflows else ()
        else:
            actions, match = DROP_ACTIONS, ()
        answer[frame] = (match, actions, tuple(res.tags), 60.0, 0.0)
    return frames, answer


def measure(scenario: str = "l2", flows: int = 20000, megaflows: bool = False, ipv6: bool = False,
            profile: bool = False, max_flows: int = 200_000) -> dict:
    from backchannel import messages as m
    from backchannel.codec import Decoder, decode_many, encode, encode_many
    from engine.dpproc import DatapathConfig, DatapathProcess

    frames, answer = _answers(scenario, flows, megaflows, ipv6)
    injects = []
    for i in range(0, len(frames), INJECT_BATCH):          # as the harness sends them: by port per chunk
        by_port: dict[str, list[bytes]] = {}
        for p, f in frames[i:i + INJECT_BATCH]:
            by_port.setdefault(p, []).append(f)
        injects.append([encode(m.Inject(p, tuple(fs))) for p, fs in by_port.items()])
    links = [_Link(), _Link()]
    proc = DatapathProcess(DatapathConfig(runtime_dir="", n_workers=2, keep_outputs=False,
                                                 max_flows=max_flows), links, _Link())
    decoder = Decoder(proc.counters)
    housekeeping = proc.housekeeping
    if hasattr(proc, "handle_all"):               # as datapath_main hands the inbox's messages over
        handle_all = proc.handle_all
    else:                                         # (a tree before handle_all)
        def handle_all(msgs, now, run=proc.guard.run, handle=proc.handle):
            run(handle, msgs, now)
    clock = time.thread_time_ns                   # CPU time: a shared machine's preemptions do not count
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)              # as datapath_main
    timed = 0
    start = time.monotonic()
    prof = None
    if profile:
        import cProfile
        prof = cProfile.Profile()

    def burst(frames: list[bytes]) -> None:
        """What one loop turn does with the inbox frames that arrived together (datapath_main)."""
        nonlocal timed
        if prof is not None:
            prof.enable()
        t0 = clock()
        now = start + 2 * timed / 1e9              # the loop's clock: the datapath about half busy
        for data in frames:
            handle_all(decoder.decode_many(data), now)
        housekeeping(now)
        timed += clock() - t0
        if prof is not None:
            prof.disable()

    def answer_all() -> None:
        batches = []
        for link in links:
            for data in link.sent:
                for msg in decode_many(data):
                    if type(msg) is m.UpcallBatch:
                        batches.append([m.FlowPut(u.seq, *answer[u.frame]) for u in msg.upcalls])
            link.sent.clear()
        for puts in batches:
            burst([encode_many(puts)])

    pending = 0
    for chunk in injects:                        # the harness sends a chunk's Injects back to back
        burst(chunk)
        pending += INJECT_BATCH
        if pending >= WINDOW:
            answer_all()
            pending = 0
    answer_all()
    proc._sync_counters()
    c = proc.counters
    installs = c["datapath_installs"]
    out = {"setups": installs, "us_per_setup": round(timed / 1000 / max(1, installs), 2),
           "upcalls": c["dispatcher_upcalls"], "batches": c["dispatcher_batches"], "tx": c["datapath_tx"]}
    out["evicted"] = c["datapath_evicted"]
    if installs != len(frames) or c["datapath_tx"] < len(frames):
        out["error"] = f"{installs} installs, {c['datapath_tx']} outputs for {len(frames)} frames"
    if prof is not None:
        import pstats
        pstats.Stats(prof, stream=sys.stderr).sort_stats(os.environ.get("DP_MICRO_SORT", "tottime")).print_stats(30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="l2")
    ap.add_argument("--flows", type=int, default=20000)
    ap.add_argument("--megaflows", action="store_true")
    ap.add_argument("--ipv6", action="store_true")
    ap.add_argument("--max-flows", type=int, default=200_000,
                    help="the flow cache's bound (below --flows: a full table, an eviction per install)")
    ap.add_argument("--profile", action="store_true", help="cProfile the timed part (to stderr)")
    ap.add_argument("--against", help="another tree: alternate with it (subprocesses)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    args = ["--scenario", a.scenario, "--flows", str(a.flows)] + ["--megaflows"] * a.megaflows + ["--ipv6"] * a.ipv6
    args += ["--max-flows", str(a.max_flows)]
    if not a.against:
        print(json.dumps(measure(a.scenario, a.flows, a.megaflows, a.ipv6, a.profile, a.max_flows)))
        return
    trees = {"this": os.getcwd(), "other": os.path.abspath(a.against)}
    got: dict[str, list[float]] = {k: [] for k in trees}
    for r in range(a.rounds):
        for name, tree in trees.items():
            # this file run by path, from the other tree's directory: that tree's engine and bench are imported
            env = dict(os.environ, PYTHONPATH=tree)
            res = subprocess.run([sys.executable, os.path.abspath(__file__), *args], env=env, check=True,
                                 capture_output=True, text=True, cwd=tree)
            d = json.loads(res.stdout.strip().splitlines()[-1])
            got[name].append(d["us_per_setup"])
            print(f"round {r + 1} {name:5s} {d}", flush=True)
    for name, xs in got.items():
        print(f"{name:5s} µs per setup: median {statistics.median(xs):.2f}  min {min(xs):.2f}  ({trees[name]})")


if __name__ == "__main__":
    main()
