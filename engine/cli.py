"""The `shardnet` command line: subcommands share one parser and a `--store URI` option.

Subcommands: `trace` (CONTRACTS §3), `run` (an agent), `topology` (apply/show), `ctl` (a running agent,
CONTRACTS §5), and those other packages
register (`bench`, CONTRACTS §4).  The CLI is a thin shell: it parses arguments, loads the topology and hands the
work to the same entry points the tests use (workers.trace.TraceSession for `trace`, engine.supervisor.Agent
for `run`).

Registered subcommands: engine never imports bench (nor any other package built on top of it).  A package adds
a subcommand with an entry point in the ``shardnet.commands`` group (pyproject.toml)::

    [project.entry-points."shardnet.commands"]
    bench = "bench.cli:add_bench_parser"        # called with the subparsers object; adds `shardnet bench`

They are found in the installed distributions' metadata (importlib.metadata), so:
- a registered plugin that fails to import or to add its parser raises: the command fails loudly, it does not
  lose a subcommand silently;
- without metadata (the tree run as ``python -m engine.cli`` without being installed) there is nothing
  registered, and only the built-in subcommands exist.  Metadata is written at install time: after editing
  the entry points, reinstall (``make venv`` does when pyproject.toml changed).
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from engine.ctlclient import add_ctl_parser
from engine.demo import DEMO_TOPOLOGY, DEMO_TRACE
from engine.topology_cmd import add_topology_parser

COMMANDS_GROUP = "shardnet.commands"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default="memory://", metavar="URI",
                   help="topology store: memory:// (embedded default) or zk://HOST:PORT/ROOT")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardnet", description="network-virtualization packet engine")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("trace", help="simulate packets through a topology and explain each decision")
    _common(t)
    t.add_argument("topology", nargs="?", help="topology file (YAML or JSON); default: what --store holds")
    t.add_argument("--port", action="append", default=[], help="ingress port id (device.port)")
    t.add_argument("--packet", action="append", default=[], help="packet spec (key=value,...)")
    t.add_argument("--host", default=None, help="the agent's host (default: the ingress port's host)")
    t.add_argument("--stdin", action="store_true", help="read 'PORT SPEC' / 'advance S' lines from stdin")
    t.add_argument("--demo", action="store_true", help="trace the shipped demo topology and packets")
    t.set_defaults(func=cmd_trace)

    r = sub.add_parser("run", help="start an agent (datapath, dispatcher, pinned workers)")
    _common(r)
    r.add_argument("--config", help="agent configuration (TOML)")
    r.add_argument("--topology", help="topology file to write into the store first (a diff)")
    r.add_argument("--host", help="this agent's host name in the topology")
    r.add_argument("--workers", type=int, help="number of simulation workers")
    r.add_argument("--demo", action="store_true", help="load the demo topology and drive synthetic traffic")
    r.add_argument("--duration", type=float, help="stop after S seconds and print a summary")
    r.add_argument("--rate", type=float, default=2000.0, help="demo: new flows per second")
    r.add_argument("--datapath", choices=("memory", "real"),
                   help="real: bind the interfaces of the ports bound to --host and a VXLAN endpoint on its "
                        "tunnel_ip (default when --host is given without --demo/--config); memory: synthetic")
    r.add_argument("--tunnel-port", type=int, help="UDP port of the VXLAN endpoint (default 4789)")
    r.add_argument("--state-file", help="flow-state snapshot file (real datapath; restored at start)")
    r.add_argument("--ctl", metavar="PATH", help="control socket for `shardnet ctl` (default: in the private "
                                                 "runtime directory; `shardnet ctl --host NAME` finds it)")
    r.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus text at http://HOST:PORT/metrics (a PORT alone: on 127.0.0.1)")
    r.add_argument("--log-file", metavar="PATH", help="every process appends its log lines here (default: stderr)")
    r.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO (default), WARNING, ERROR or CRITICAL")
    r.add_argument("--status", action=argparse.BooleanOptionalAction, default=None,
                   help="a one-line status every few seconds on stdout (default: when stdout is a terminal)")
    r.add_argument("--status-every", type=float, default=5.0, metavar="S", help="seconds between status lines")
    r.set_defaults(func=cmd_run)

    add_topology_parser(sub)
    add_ctl_parser(sub)
    for ep in registered_commands():
        ep.load()(sub)                                 # raises: a broken plugin is an error, not a missing command
    return parser


def registered_commands() -> list:
    """The ``shardnet.commands`` entry points of the installed distributions, by name (one per name: the
    first distribution on sys.path wins, as importlib.metadata dedups distributions)."""
    return sorted(entry_points(group=COMMANDS_GROUP), key=lambda ep: ep.name)


def cmd_trace(args) -> int:
    from topology.errors import TopologyError
    from topology.loader import load_topology
    from workers.trace import TraceSession, dumps, result_json

    path = str(DEMO_TOPOLOGY) if args.demo and not args.topology else args.topology
    try:
        if path is not None:
            topo = load_topology(path)
        elif args.store != "memory://":
            topo = _topology_from_store(args.store)
        else:
            print("shardnet trace: a TOPOLOGY file is required (or --demo, or --store zk://...)", file=sys.stderr)
            return 2
    except (TopologyError, OSError, ValueError) as e:
        print(f"shardnet trace: {e}", file=sys.stderr)
        return 2
    session = TraceSession(topo, host=args.host)
    if args.demo or args.stdin:
        stream = open(DEMO_TRACE) if args.demo and not args.stdin else sys.stdin
        for line in stream:
            if line.strip() and not line.lstrip().startswith("#"):
                print(dumps(session.run_line(line)), flush=True)
        return 0
    if len(args.port) != len(args.packet) or not args.port:
        print("shardnet trace: give --port and --packet in pairs (or --stdin)", file=sys.stderr)
        return 2
    from packet.spec import SpecError, parse_spec

    try:
        packets = [parse_spec(s) for s in args.packet]
    except SpecError as e:
        print(f"shardnet trace: {e}", file=sys.stderr)
        return 2
    for port in args.port:
        if topo.port(port) is None:
            print(f"shardnet trace: unknown port: {port!r}", file=sys.stderr)
            return 2
    for port, pkt in zip(args.port, packets, strict=True):
        print(dumps(result_json(session.run(port, pkt), pkt, port)), flush=True)
    return 0


def _topology_from_store(uri: str):
    """The topology a store holds (``trace --store URI`` with no file)."""
    from topology.store.base import StoreError
    from topology.store.topo import read_topology
    from topology.store.uri import open_store

    try:
        store = open_store(uri)
    except StoreError as e:
        raise ValueError(f"cannot open {uri}: {e}") from None
    try:
        return read_topology(store)
    finally:
        store.close()


def cmd_run(args) -> int:
    from engine.run import run_agent

    return run_agent(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
