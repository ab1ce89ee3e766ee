"""`shardnet run`: start an agent, optionally drive the demo traffic, stop after a duration with a summary.

A thin shell over the embedding API (engine.supervisor.Agent).  SIGINT/SIGTERM stop it cleanly.  Logging is
set up first (engine/logs.py: stderr or ``--log-file``, ``--log-level``); on a terminal (or with ``--status``)
a status line is printed every ``--status-every`` seconds (engine/status.py) from a thread of its own.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import threading
import time

from engine import logs
from engine.config import AgentConfig, ConfigError
from engine.demo import DEMO_TOPOLOGY
from engine.status import StatusLine
from engine.supervisor import Agent, AgentError

SUMMARY_KEYS = [("upcalls", "worker_upcalls"), ("simulations", "worker_simulations"),
                ("flows installed", "flows_installed"), ("flows now", "worker_flows"), ("parked", "parked"),
                ("state entries", "worker_state_entries"), ("state relayed", "worker_state_relayed"),
                ("fragments", "worker_fragment_requests"), ("backchannel msgs", "worker_backchannel_decoded")]


def _config(args) -> AgentConfig:
    over = {"store": args.store, "host": args.host, "workers": args.workers,
            "topology": args.topology or (str(DEMO_TOPOLOGY) if args.demo else None)}
    if args.demo and over["host"] is None:
        over["host"] = "host-a"
    over["datapath"] = getattr(args, "datapath", None)
    if over["datapath"] is None and args.host and not args.demo and not args.config:
        over["datapath"] = "real"                      # an agent for a host binds that host's interfaces
    over["tunnel_port"] = getattr(args, "tunnel_port", None)
    over["state_file"] = getattr(args, "state_file", None)
    over["ctl"] = getattr(args, "ctl", None)
    for name in ("metrics", "log_file", "log_level"):
        over[name] = getattr(args, name, None)
    if args.config:
        return AgentConfig.from_toml(args.config, **over)
    return AgentConfig(**{k: v for k, v in over.items() if v is not None})


def run_agent(args) -> int:
    try:
        cfg = _config(args)
    except (ConfigError, TypeError) as e:
        print(f"shardnet run: {e}", file=sys.stderr)
        return 2
    try:
        logs.setup("supervisor", cfg.log_level, cfg.log_file, repeat_s=cfg.log_repeat_s)
    except (OSError, ValueError) as e:
        print(f"shardnet run: log file: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    show_status = sys.stdout.isatty() if getattr(args, "status", None) is None else args.status
    try:
        with Agent(cfg) as agent:
            print(f"shardnet: agent up: {cfg.workers} workers, store {cfg.store}, host {cfg.host}, "
                  f"datapath {cfg.datapath}, pids {agent.pids}"
                  + (f", metrics {agent.metrics.url}" if agent.metrics else ""),
                  flush=True)
            t0 = time.monotonic()
            done = threading.Event()
            status = None
            if show_status:
                status = threading.Thread(target=_status_loop, name="shardnet-status", daemon=True,
                                          args=(agent, done, getattr(args, "status_every", 5.0), t0))
                status.start()
            try:
                if args.demo:
                    _drive_demo(agent, args, stop, t0)
                else:
                    while not stop.is_set() and (args.duration is None or time.monotonic() - t0 < args.duration):
                        stop.wait(0.2)
            finally:
                done.set()
                if status is not None:
                    status.join(5.0)
            time.sleep(0.3)                            # let the last answers land before reading counters
            try:
                stats = agent.stats()
            except Exception as e:                     # noqa: BLE001 - the summary is not worth a failed stop
                print(f"shardnet run: no summary: {describe(e)}", file=sys.stderr)
            else:
                _summary(stats, time.monotonic() - t0)
    except (AgentError, ConfigError, OSError, ValueError) as e:
        print(f"shardnet run: {describe(e)}", file=sys.stderr)
        return 1
    return 0


def describe(e: BaseException) -> str:
    """An error for the operator: never empty (a bare TimeoutError says nothing by itself)."""
    text = str(e).strip()
    if isinstance(e, TimeoutError) and not text:
        return "the agent's processes did not answer in time (TimeoutError)"
    return text or type(e).__name__


def _status_loop(agent: Agent, done: threading.Event, every: float, t0: float) -> None:
    """One status line every ``every`` seconds until ``done`` (its own thread: the agent's API is thread-safe)."""
    line = StatusLine(t0)
    while not done.wait(max(0.5, every)):
        try:
            stats = agent.stats(timeout=max(1.0, every))
        except Exception as e:                         # noqa: BLE001 - the status line never stops the agent
            print(f"shardnet {time.strftime('%H:%M:%S')}  no answer from the agent ({type(e).__name__})", flush=True)
            continue
        print(line.line(stats, agent.store_state, time.monotonic()), flush=True)


def _drive_demo(agent: Agent, args, stop: threading.Event, t0: float) -> None:
    from engine.demo.traffic import flow, warmup_frames

    rng = random.Random(1)
    for port, frame in warmup_frames():
        agent.inject(port, [frame])
    n = 0
    tick = 0.02
    per_tick = max(1, int(args.rate * tick))
    sent: list[tuple[str, bytes]] = []
    while not stop.is_set() and (args.duration is None or time.monotonic() - t0 < args.duration):
        batch: dict[str, list[bytes]] = {}
        for _ in range(per_tick):
            port, frame = flow(rng, n)
            n += 1
            batch.setdefault(port, []).append(frame)
            if len(sent) < 4096:
                sent.append((port, frame))
        for _ in range(per_tick):                      # repeats of earlier flows: cache hits
            port, frame = sent[rng.randrange(len(sent))]
            batch.setdefault(port, []).append(frame)
        for port, frames in batch.items():
            agent.inject(port, frames)
        stop.wait(tick)


def _summary(stats: dict, elapsed: float) -> None:
    workers = stats["workers"]
    names = [f"worker {w.get('worker_index', i)}" for i, w in enumerate(workers)]
    print(f"\nshardnet: summary after {elapsed:.1f} s")
    print(f"{'':20}" + "".join(f"{n:>14}" for n in names))
    for label, key in SUMMARY_KEYS:
        print(f"{label:20}" + "".join(f"{w.get(key, 0):>14}" for w in workers))
    drops = [sum(v for k, v in w.items() if k.startswith("worker_drops_")) for w in workers]
    print(f"{'drops':20}" + "".join(f"{d:>14}" for d in drops))
    dp = stats["datapath"]
    print(f"\ndatapath: rx {dp.get('datapath_rx', 0)}  hits {dp.get('datapath_hits', 0)}  "
          f"misses {dp.get('datapath_misses', 0)}  flows {dp.get('datapath_flows', 0)}  "
          f"tx {dp.get('datapath_tx', 0)}  tunnel tx {dp.get('datapath_tunnel_tx', 0)}")
    reasons: dict[str, int] = {}
    for w in workers:
        for k, v in w.items():
            if k.startswith("worker_drops_"):
                reasons[k[len("worker_drops_"):]] = reasons.get(k[len("worker_drops_"):], 0) + v
    if reasons:
        print("drops by reason: " + json.dumps(dict(sorted(reasons.items()))))
