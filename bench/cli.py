"""``shardnet bench`` (CONTRACTS §4): the command line of the bench harness.

    shardnet bench --scenario {l2,l3,full} --workers N|1,2,4 --flows F [--repeat-ratio R] [--json OUT]
                   [--plot OUT.png] [--pcap FILE [--pcap-port PORT]] [--store URI] [--megaflows on|off] [--ipv6]
    shardnet bench --datapath real --pipeline {l2,ct,l3,full} [--rates 5000,10000,20000,40000] [--duration S]
                   [--peer ovs] [--json OUT] [--plot OUT.png] [--ipv6] (bench.realbench: wire to wire, root)

``--ipv6``: the same scenario / pipeline with IPv6 traffic (bench.scenarios ``l2-v6``, ``l3-v6``; the real rig's VMs on
2001:db8::/32 sending distinct IPv6 UDP 5-tuples); only where an IPv6 variant exists (an error otherwise).
    shardnet bench --datapath real --overload|--soak [--pipeline ct] [--duration S] [--new-rate R]
                   [--sustained R] [--senders N] [--json OUT]          (bench.overload: RSS, drops, fds; root)

``add_bench_parser(subparsers)`` adds the subcommand to the shardnet parser: it is registered in the
``shardnet.commands`` entry-point group (pyproject.toml), which engine/cli.py loads (engine never imports bench);
``python -m bench.cli ...`` runs it alone.  One run writes the contract's JSON object; a sweep
(``--workers 1,2,4``) writes the last run's object with ``sweep`` (every run) and ``scaling`` (setups/s and CPU
per upcall by workers).
A short summary goes to stdout; the progress bar to stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import json
import sys

SCENARIO_NAMES = ("l2", "l3", "full")


def _agent_opt(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE in TOML → (key, value); the key and value are checked against AgentConfig."""
    import tomllib

    from bench.realbench import FIXED_AGENT_OPTS
    from engine.config import AgentConfig, ConfigError

    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if key in FIXED_AGENT_OPTS:
        raise argparse.ArgumentTypeError(f"{key}: set by the harness ({', '.join(sorted(FIXED_AGENT_OPTS))})")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()                         # a bare word: a string (log_level=DEBUG)
    try:
        AgentConfig.from_dict({key: parsed}, source="--agent-opt")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return key, parsed


def _workers(text: str) -> list[int]:
    try:
        ws = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or a list like 1,2,4, got {text!r}") from None
    if not ws or any(w < 1 or w > 64 for w in ws):
        raise argparse.ArgumentTypeError(f"worker counts must be between 1 and 64: {text!r}")
    return ws


def _ratio(text: str) -> float:
    try:
        r = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= r <= 0.95:
        raise argparse.ArgumentTypeError("must be between 0 and 0.95")
    return r


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def _rates(text: str) -> list[int]:
    try:
        rs = [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a list of rates like 5000,10000, got {text!r}") from None
    if not rs or any(r < 1 or r > 2_000_000 for r in rs):
        raise argparse.ArgumentTypeError(f"rates must be between 1 and 2000000 frames/s: {text!r}")
    return sorted(set(rs))


def _seconds(text: str, longest: float = 600) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.05 <= v <= longest:
        raise argparse.ArgumentTypeError(f"must be between 0.05 and {longest:g} seconds")
    return v


def _duration(text: str) -> float:
    """--duration: up to an hour (a soak); the other time options stay within 600 s."""
    return _seconds(text, 3600)


def _cpu_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a list of cpu numbers, got {text!r}") from None


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    b = subparsers.add_parser("bench", help="measure flow setup through the real process pipeline",
                              description="Measure flow-setup latency and throughput (CONTRACTS §4).")
    configure(b)
    return b


def configure(b: argparse.ArgumentParser) -> None:
    b.add_argument("--scenario", choices=SCENARIO_NAMES, default="full")
    b.add_argument("--workers", type=_workers, default=[2], metavar="N|N,N,...",
                   help="worker processes, or a comma list for a sweep (default 2)")
    b.add_argument("--flows", type=_positive, default=10_000, metavar="F", help="distinct new flows (10000)")
    b.add_argument("--repeat-ratio", type=_ratio, default=0.0, metavar="R",
                   help="fraction of frames that repeat an installed flow (datapath hits), 0..0.95")
    b.add_argument("--json", metavar="OUT", help="write the results as JSON")
    b.add_argument("--plot", metavar="OUT.png", help="write a latency CDF (and setups/s against workers)")
    b.add_argument("--pcap", metavar="FILE", help="replay a tcpdump (libpcap, Ethernet) file instead")
    b.add_argument("--pcap-port", metavar="PORT", help="ingress port for every replayed frame "
                   "(default: chosen by source MAC from the scenario's VMs)")
    b.add_argument("--store", default="memory://", metavar="URI", help="topology store (memory:// default)")
    b.add_argument("--batch", type=_positive, default=64, help="frames per Inject message (64)")
    b.add_argument("--window", type=_positive, default=256, help="new flows in flight at most (256)")
    b.add_argument("--warmup", type=int, default=1000, help="warm-up flows, not measured (1000)")
    b.add_argument("--probe", type=int, default=300, help="flows of the unloaded latency probe (300)")
    b.add_argument("--cpus", type=_cpu_list, default=None, help="cpus to pin workers to (default: all)")
    b.add_argument("--datapath-cpu", type=int, default=None, help="pin the datapath process to a cpu")
    b.add_argument("--megaflows", choices=("on", "off"), default="off",
                   help="the agent's megaflows (default off: every new 5-tuple is a setup; on: new 5-tuples a "
                        "megaflow matches are datapath hits, and upcalls and packets/s are reported apart)")
    b.add_argument("--ipv6", action="store_true",
                   help="IPv6 traffic: the scenario's IPv6 variant (memory: l2, l3; real: l2, ct, l3; full has "
                        "none: no NAT66)")
    b.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    r = b.add_argument_group("wire to wire (--datapath real: namespaces, veths, a real agent; needs root)")
    r.add_argument("--datapath", choices=("memory", "real"), default="memory",
                   help="memory: the in-memory pipeline (default); real: UDP 5-tuples through veths")
    r.add_argument("--pipeline", choices=("l2", "ct", "l3", "full"), default=None,
                   help="real: one bridge, the bridge with a stateful filter, a router, router + SNAT "
                        "(l2; ct with --overload/--soak)")
    r.add_argument("--rates", type=_rates, default=[5000, 10000, 20000, 40000], metavar="R,R,...",
                   help="real: offered rates of new 5-tuples per second (5000,10000,20000,40000)")
    r.add_argument("--duration", type=_duration, default=None, metavar="S",
                   help="real: seconds per rate (2); --overload: seconds of load (30); --soak: seconds (600)")
    r.add_argument("--peer", choices=("ovs",), default=None,
                   help="real: the same traffic through Open vSwitch's userspace datapath, side by side")
    r.add_argument("--ovs-variants", default=None, metavar="V,V",
                   help="real: OVS pipelines to run (default per pipeline, e.g. normal,normal-nomf for l2)")
    r.add_argument("--ovs-rcvbuf", type=_positive, default=None, metavar="BYTES",
                   help="real: net.core.rmem_default while OVS opens its ports (put back at once), so that its "
                        "AF_PACKET sockets get the buffer shardnet's datapath asks (8388608); default: as is")
    r.add_argument("--probes", type=_positive, default=200, help="real: latency probe pairs (200)")
    r.add_argument("--spacing-ms", type=float, default=5.0, help="real: spacing of the probes, ms (5)")
    r.add_argument("--tcp-connects", type=_positive, default=200, help="real: TCP connects timed (200)")
    r.add_argument("--search-steps", type=int, default=3, help="real: bisection steps for the lossless rate (3)")
    r.add_argument("--drain", type=float, default=1.0, metavar="S",
                   help="real: seconds waited after each rate for the last frames (1)")
    r.add_argument("--agent-opt", action="append", type=_agent_opt, default=[], metavar="KEY=VALUE",
                   help="real: an AgentConfig setting of the shardnet agent, VALUE in TOML (poll_spin_us=50, "
                        "cpus=[1], datapath_cpu=0); repeatable")
    o = b.add_argument_group("overload and soak (--datapath real; bench.overload)")
    mode = o.add_mutually_exclusive_group()
    mode.add_argument("--overload", action="store_true",
                      help="cached flows unloaded, then under --new-rate new 5-tuples/s: RSS, drops by reason")
    mode.add_argument("--soak", action="store_true",
                      help="mixed traffic for --duration (600 s): RSS and open fds every --sample-s, flatness")
    o.add_argument("--sustained", type=_positive, default=16_000, metavar="R",
                   help="the sustained new-flow rate the overload multiplies (16000: ct in bench/RESULTS.md)")
    o.add_argument("--new-rate", type=_positive, default=None, metavar="R",
                   help="new 5-tuples/s offered (overload: 10 x --sustained; soak: --sustained / 4)")
    o.add_argument("--senders", type=_positive, default=2, help="new-flow sender processes (2)")
    o.add_argument("--sender", choices=("ring", "socket"), default="ring",
                   help="the load generator: ring (PACKET_TX_RING, bench.txring) or socket (a send() per frame)")
    o.add_argument("--sender-nice", type=int, default=-5, metavar="N",
                   help="ring senders' nice value, theirs and their autogroups' (-5: traffic from a wire must not "
                        "be starved by what it measures)")
    o.add_argument("--cached-flows", type=_positive, default=200, help="established flows sent round robin (200)")
    o.add_argument("--cached-rate", type=_positive, default=2000, help="their frames/s in all (2000)")
    o.add_argument("--unloaded", type=_seconds, default=10.0, metavar="S",
                   help="overload: seconds of the unloaded cached-flow measurement (10)")
    o.add_argument("--sample-s", type=_seconds, default=None, metavar="S",
                   help="RSS (and fd) sampling period (overload 0.5, soak 10)")
    o.add_argument("--flow-idle", type=_seconds, default=None, metavar="S",
                   help="the agent's flow_idle_s (overload 10, soak 2)")
    o.add_argument("--flow-state-idle", type=_seconds, default=None, metavar="S",
                   help="the agent's flow_state_idle_s (overload 60, soak 5)")
    b.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    if getattr(args, "overload", False) or getattr(args, "soak", False):
        if args.datapath != "real":
            print("shardnet bench: --overload and --soak need --datapath real", file=sys.stderr)
            return 2
        return cmd_overload(args)
    if getattr(args, "datapath", "memory") == "real":
        return cmd_real(args)
    from bench.harness import BenchConfig, BenchError, build_feeds, measure_floors, run_bench
    from bench.pcap import PcapError
    from bench.scenarios import ScenarioError
    from topology.loader import load_topology

    progress = sys.stderr.isatty() if args.progress is None else args.progress
    if args.pcap_port and not args.pcap:
        print("shardnet bench: --pcap-port needs --pcap", file=sys.stderr)
        return 2
    results = []
    try:
        floors = feeds = None
        for n in args.workers:
            cfg = BenchConfig(scenario=args.scenario, workers=n, flows=args.flows, repeat_ratio=args.repeat_ratio,
                              batch=args.batch, window=args.window, warmup=max(0, args.warmup),
                              probe=max(0, args.probe), store=args.store, pcap=args.pcap, pcap_port=args.pcap_port,
                              cpus=args.cpus, datapath_cpu=args.datapath_cpu, progress=progress,
                              megaflows=args.megaflows == "on", ipv6=args.ipv6)
            if feeds is None:
                feeds = build_feeds(cfg)
                if args.pcap_port and load_topology(str(feeds[0].topology)).port(args.pcap_port) is None:
                    print(f"shardnet bench: unknown port {args.pcap_port!r} in scenario {args.scenario}",
                          file=sys.stderr)
                    return 2
                floors = measure_floors(cfg, load_topology(str(feeds[0].topology)), feeds[1], feeds[3])
            results.append(run_bench(cfg, floors, feeds))
    except (BenchError, PcapError, ScenarioError, ValueError, OSError) as e:
        print(f"shardnet bench: {e}", file=sys.stderr)
        return 1
    out = public(results[-1])
    if len(results) > 1:
        out["sweep"] = [public(r) for r in results]
        out["scaling"] = [{"workers": r["workers"], "setups_per_s": r["setups_per_s"],
                           "p50_us": r["setup_latency_us"]["p50"], "p99_us": r["setup_latency_us"]["p99"],
                           **{k: r["cpu"].get(k) for k in ("datapath_us_per_upcall", "worker_us_per_upcall",
                                                           "workers_per_dispatcher")}} for r in results]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
    if args.plot:
        from bench.plot import plot_results

        plot_results(results, args.plot)
    for r in results:
        print(summary(r))
    return 0


def cmd_real(args) -> int:
    import os
    import signal

    from bench.ovspeer import VARIANTS, OvsError, OvsMissing
    from bench.realbench import RealBenchError, RealConfig, expected_stages, progress_bar, public, run_real, table
    from bench.wirerig import RigError
    from engine.datapath.netdev import NetdevError

    variants = None
    if args.ovs_variants:
        variants = [v.strip() for v in args.ovs_variants.split(",") if v.strip()]
        pipeline = args.pipeline or "l2"
        bad = [v for v in variants if v not in VARIANTS[pipeline]]
        if bad:
            print(f"shardnet bench: OVS variants of {pipeline}: {', '.join(VARIANTS[pipeline])} "
                  f"(not {', '.join(bad)})", file=sys.stderr)
            return 2
    if args.spacing_ms <= 0 or args.spacing_ms > 1000 or args.search_steps < 0 or not 0 <= args.drain <= 60:
        print("shardnet bench: --spacing-ms in (0, 1000], --search-steps >= 0, --drain in [0, 60]", file=sys.stderr)
        return 2
    cfg = RealConfig(pipeline=args.pipeline or "l2", rates=args.rates, duration=args.duration or 2.0, peer=args.peer,
                     ovs_variants=variants, workers=args.workers[0], probes=args.probes,
                     spacing_s=args.spacing_ms / 1000.0, tcp_connects=args.tcp_connects,
                     search_steps=args.search_steps, drain_s=args.drain, ovs_rcvbuf=args.ovs_rcvbuf,
                     megaflows=args.megaflows == "on", agent_opts=dict(args.agent_opt), ipv6=args.ipv6)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    bar = progress_bar(expected_stages(cfg), f"{cfg.pipeline}") if show else None

    owner = os.getpid()

    def terminate(*_):
        if os.getpid() != owner:         # a forked helper (pyroute2's netns proxy) inherited this handler:
            os._exit(143)                # it must die as SIGTERM would make it, not unwind our stack
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, terminate)        # cleaned up like Ctrl-C: the finally blocks run
    try:
        res = run_real(cfg, bar)
    except OvsMissing as e:
        print(f"shardnet bench: {e}", file=sys.stderr)
        return 3
    except (RealBenchError, RigError, NetdevError, OvsError, OSError, ValueError, RuntimeError) as e:
        print(f"\nshardnet bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nshardnet bench: interrupted (namespaces, veths and processes removed)", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
        if bar is not None:
            sys.stderr.write("\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(public(res), f, indent=1)
            f.write("\n")
    if args.plot:
        try:
            from bench.realplot import plot_real
        except ImportError as e:
            print(f"shardnet bench: no plot ({e}); install matplotlib", file=sys.stderr)
        else:
            plot_real(res, args.plot)
    print(table(res))
    return 0


def _signal_guard():
    """SIGTERM unwinds like Ctrl-C (the finally blocks remove namespaces, veths, processes); the old handler."""
    import os
    import signal

    owner = os.getpid()

    def terminate(*_):
        if os.getpid() != owner:         # a forked helper (pyroute2's netns proxy) inherited this handler
            os._exit(143)
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, terminate)


def cmd_overload(args) -> int:
    import signal

    from bench.overload import OverloadConfig, OverloadError, run_overload, table
    from bench.realbench import progress_bar
    from bench.realbench import public as public_real
    from bench.wirerig import RigError
    from engine.datapath.netdev import NetdevError

    mode = "overload" if args.overload else "soak"
    cfg = OverloadConfig(mode=mode, pipeline=args.pipeline or "ct", duration=args.duration,
                         sustained=args.sustained, new_rate=args.new_rate, senders=args.senders,
                         cached_flows=args.cached_flows, cached_rate=args.cached_rate, unloaded_s=args.unloaded,
                         sample_s=args.sample_s, workers=args.workers[0], flow_idle_s=args.flow_idle,
                         flow_state_idle_s=args.flow_state_idle, sender=args.sender, sender_nice=args.sender_nice,
                         agent_opts=dict(args.agent_opt))
    show = sys.stderr.isatty() if args.progress is None else args.progress
    bar = progress_bar(5 if mode == "overload" else 4, f"{mode} {cfg.pipeline}") if show else None
    old = _signal_guard()
    try:
        res = run_overload(cfg, bar)
    except (OverloadError, RigError, NetdevError, OSError, ValueError, RuntimeError) as e:
        print(f"\nshardnet bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nshardnet bench: interrupted (namespaces, veths and processes removed)", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
        if bar is not None:
            sys.stderr.write("\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(public_real(res), f, indent=1)
            f.write("\n")
    print(table(res))
    return 0


def public(r: dict) -> dict:
    return {k: v for k, v in r.items() if not k.startswith("_")}


def summary(r: dict) -> str:
    lat, f, u = r["setup_latency_us"], r["floor"], r["setup_latency_unloaded_us"]
    return (f"{r['scenario']} workers={r['workers']} flows={r['flows']}: {r['setups_per_s']:,.0f} setups/s, "
            f"setup p50 {lat['p50']:.0f} µs p99 {lat['p99']:.0f} µs (unloaded p50 {u['p50']:.0f} µs); "
            f"floor rtt p50 {f['zmq_rtt_us_p50']:.0f} µs + simulation p50 {f['simulation_us_p50']:.0f} µs; "
            f"parked {r['parked']} dropped {r['dropped']} offbox {r['offbox_read_ratio']:.4f}; "
            f"megaflows {'on' if r['megaflows'] else 'off'}: {r['upcalls']} upcalls for {r['frames']} frames, "
            f"{r['packets_per_s']:,.0f} packets/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shardnet bench", description="Measure flow setup (CONTRACTS §4).")
    configure(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
