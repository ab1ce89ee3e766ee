"""How long a flow-state snapshot stalls a worker, with N entries in its shard (issue 11, persistence at scale).

Two measurements, printed as one JSON object:

- ``inprocess``: a real ``Worker`` holding N entries answers the snapshot's pages (DumpStatePage) one loop turn
  at a time, as the process loop runs them: handle the message, housekeeping, encode the outbox.  Reported:
  the longest and the median turn of the snapshot, the pages, and — for comparison — the one turn the old
  single-message dump (DumpState: every entry in one answer, refused past 20k entries now) would take.
- ``process``: the real processes (Agent, memory store, in-memory datapath, 1 worker): N entries pushed into
  the worker, then ``save_state`` while a probe thread asks the worker for its stats every 5 ms; the longest
  probe round trip during the snapshot, against the idle round trip measured just before, bounds the longest
  pause of the worker loop; the same probing for as long without a snapshot shows the pauses the worker has
  anyway (its housekeeping's pass over the shard, in slices of ``SWEEP_PER_TURN`` per turn).
  Also the snapshot's wall time and file size.

    PYTHONPATH=. .venv/bin/python -m bench.snapshot_pause --entries 500000 [--json OUT]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import threading
import time

from backchannel import messages as m
from backchannel.codec import encode, encode_many
from workers.simulation.state import StateEntry
from workers.worker import Worker, WorkerConfig

TOPO = """
version: 1
hosts:
  host-a: {tunnel_ip: 127.0.0.11}
bridges:
  tenant:
    ports:
      vm1: {host: host-a, interface: tap-vm1}
"""


def _key(i: int) -> tuple:
    return (0x0A000000 + i % 50_000, 0xCB007100 + i // 50_000, 6, 1024 + i % 60_000, 443, "r1")


def sweep_turns(w: Worker, now: float) -> dict:
    """Housekeeping's pass over the flow-state shard, turn by turn as the loop runs it (the first turn has the
    once-a-second part, which begins the pass; the loop does not sleep while ``w.background``)."""
    w._next_slow = 0.0
    turns = []
    while True:
        t0 = time.perf_counter()
        w.housekeeping(now)
        turns.append(time.perf_counter() - t0)
        if not w.background or len(turns) > 10_000:
            break
    return {"turns": len(turns), "turn_max_ms": round(max(turns) * 1e3, 2),
            "turn_p50_ms": round(statistics.median(turns) * 1e3, 2), "pass_total_ms": round(sum(turns) * 1e3, 1)}


def inprocess(n: int) -> dict:
    gc.collect()
    gc.freeze()                                           # as the worker process does (workers/loop.py)
    gc.set_threshold(50_000, 20, 50)
    w = Worker(WorkerConfig(index=0, n_workers=1, runtime_dir="/nonexistent", max_flow_state=n + 10))
    for i in range(n):
        k = _key(i)
        w.state.flow_state[("conntrack", k)] = StateEntry("conntrack", k, None, 100.0, 60.0)
    sweep = {"young": sweep_turns(w, 100.0), "aged": sweep_turns(w, 140.0)}   # age 0 / past half the idle time
    turns, cursor, req = [], 0, 1
    t_all = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        w.handle(m.DumpStatePage(req, cursor, m.MAX_STATE_PAGE), 100.0)
        w.housekeeping(100.0)
        encode_many(w.out_sup)
        body = w.out_sup[-1].body
        w.out_sup.clear()
        turns.append(time.perf_counter() - t0)
        req += 1
        cursor = body["cursor"]
        if not cursor:
            break
    total = time.perf_counter() - t_all
    t0 = time.perf_counter()
    whole = encode(m.Answer(1, 0, w.state_entries()))            # the old one-message dump
    one_turn = time.perf_counter() - t0
    return {"entries": n, "pages": len(turns), "turn_max_ms": round(max(turns) * 1e3, 2),
            "turn_p50_ms": round(statistics.median(turns) * 1e3, 2), "snapshot_total_s": round(total, 3),
            "housekeeping_sweep": sweep,
            "single_message_turn_ms": round(one_turn * 1e3, 1), "single_message_bytes": len(whole)}


def process(n: int) -> dict:
    from engine.supervisor import Agent

    d = tempfile.mkdtemp(prefix="shardnet-snap-")
    topo = os.path.join(d, "t.yaml")
    with open(topo, "w") as f:
        f.write(TOPO)
    agent = Agent(workers=1, host="host-a", topology=topo, store=f"memory://snap-{os.getpid()}",
                  state_file=os.path.join(d, "a.state"), flow_state_idle_s=3600.0, max_flow_state=n + 10,
                  runtime_base=d, log_level="WARNING").start()
    try:
        for i in range(0, n, 4000):
            batch = tuple(m.FlowStateEntry("conntrack", _key(j), None, 0.0) for j in range(i, min(n, i + 4000)))
            agent._call("send", (0, m.FlowStateBatch(batch, 1)))
        deadline = time.monotonic() + 300
        while agent.stats()["workers"][0]["worker_state_entries"] < n and time.monotonic() < deadline:
            time.sleep(0.2)

        def rtt() -> float:
            t0 = time.perf_counter()
            agent.command([0], m.StatsRequest, timeout=30)
            return time.perf_counter() - t0

        time.sleep(1.5)                                   # past the worker's once-a-second housekeeping
        idle = sorted(rtt() for _ in range(200))
        probes: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set():                      # bounded by the snapshot's duration
                probes.append(rtt())
                time.sleep(0.005)

        t = threading.Thread(target=probe, daemon=True)
        t.start()
        t0 = time.perf_counter()
        agent.save_state(timeout=300)
        took = time.perf_counter() - t0
        stop.set()
        t.join(35)
        during = list(probes)
        probes.clear()                                    # the same probing for as long, with no snapshot
        stop.clear()
        t = threading.Thread(target=probe, daemon=True)
        t.start()
        time.sleep(max(took, 2.0))
        stop.set()
        t.join(35)
        quiet, probes = list(probes), during
        size = os.path.getsize(agent.cfg.state_path())
        return {"entries": n, "snapshot_s": round(took, 3), "file_bytes": size,
                "idle_rtt_p50_ms": round(idle[len(idle) // 2] * 1e3, 2), "idle_rtt_max_ms": round(idle[-1] * 1e3, 2),
                "probes": len(probes), "probe_rtt_p50_ms": round(statistics.median(probes) * 1e3, 2),
                "probe_rtt_max_ms": round(max(probes) * 1e3, 2),
                "no_snapshot_probes": len(quiet), "no_snapshot_probe_rtt_max_ms": round(max(quiet) * 1e3, 2)}
    finally:
        agent.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=500_000)
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--skip-process", action="store_true")
    a = ap.parse_args(argv)
    out = {"inprocess": inprocess(a.entries)}
    if not a.skip_process:
        out["process"] = process(a.entries)
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
