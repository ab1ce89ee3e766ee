"""`shardnet topology apply|show`: write a topology file into a store (a diff), print what a store holds.

Owns the two subcommands and their exit codes: 0 done, 2 bad input (unreadable or invalid file, bad store URI)
or store unreachable.  Wiring: ``add_topology_parser(subparsers)`` on the ``add_subparsers()`` object of the
``shardnet`` parser; each subcommand sets ``func`` (called with the parsed args, returns the exit status).

``apply FILE --store URI`` loads the file keeping the tunnel keys already in the store (so unchanged ports keep
their keys), writes the records that changed (``topo.write_topology``: records and tunnel keys) and the port
bindings (``registry.write_bindings``), and prints the counts as one JSON object.  ``show --store URI`` prints
the stored topology in the file format (tunnel keys are not part of the file: they stay in the store).
On a terminal, an ``apply`` that takes longer than a second shows its progress on stderr (``Progress``).
memory:// lives in one process, so apply-then-show round-trips across commands only on zk://.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from topology.errors import TopologyError
from topology.store.base import StoreError

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def _store_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default="memory://", metavar="URI",
                   help="topology store: memory:// (embedded default) or zk://HOST:PORT/ROOT "
                        "(options: ?connect_timeout=S&op_timeout=S)")


def add_topology_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``topology {apply,show}`` to a ``shardnet`` parser's subcommands; return the ``topology`` parser."""
    t = subparsers.add_parser("topology", help="write a topology into a store, or show what a store holds")
    sub = t.add_subparsers(dest="topology_command", required=True, metavar="{apply,show}")
    a = sub.add_parser("apply", help="write FILE into the store (only what changed); print counts as JSON")
    a.add_argument("file", metavar="FILE", help="topology file (YAML or JSON)")
    _store_option(a)
    a.set_defaults(func=cmd_topology_apply)
    s = sub.add_parser("show", help="print the stored topology in the file format")
    _store_option(s)
    s.set_defaults(func=cmd_topology_show)
    return t


def _fail(what: str, err: object) -> int:
    print(f"shardnet topology {what}: {err}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _open(uri: str):
    from topology.store.uri import open_store

    return open_store(uri)


class Progress:
    """``topology apply`` on a terminal: after SHOW_AFTER_S, one stderr line rewritten in place with the
    records written so far (at most every EVERY_S); a final newline once it showed."""

    SHOW_AFTER_S, EVERY_S = 1.0, 0.1

    def __init__(self, out, clock=time.monotonic):
        self.out, self.clock = out, clock
        self.t0 = clock()
        self.next = self.t0 + self.SHOW_AFTER_S
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if now < self.next and done < total:
            return
        if not self.shown and now < self.t0 + self.SHOW_AFTER_S:
            return                                     # short runs show nothing
        self.next = now + self.EVERY_S
        self.shown = True
        self.out.write(f"\rshardnet topology apply: {done}/{total} records ({100 * done // max(1, total)}%) "
                       f"{now - self.t0:.1f} s")
        self.out.flush()

    def close(self) -> None:
        if self.shown:
            self.out.write("\n")
            self.out.flush()


def apply_topology(store, path: str, progress=None) -> dict:
    """Load ``path`` keeping the store's tunnel keys, write it (a diff) and its bindings; return counts.
    ``progress(done, total)``: called per record (``write_topology``)."""
    from topology.loader import load_topology
    from topology.store.registry import write_bindings
    from topology.store.topo import read_tunnel_keys, write_topology

    topo = load_topology(path, tunnel_keys=read_tunnel_keys(store))
    records = write_topology(store, topo, progress=progress)
    bindings = write_bindings(store, topo)
    keys = sum(1 for p in topo.all_ports().values() if p.tunnel_key is not None)
    return {"records": records, "bindings": bindings, "tunnel_keys": keys}


def cmd_topology_apply(args) -> int:
    try:
        store = _open(args.store)
    except (StoreError, ValueError) as e:
        return _fail("apply", e)
    progress = Progress(sys.stderr) if sys.stderr.isatty() else None
    try:
        counts = apply_topology(store, args.file, progress=progress)
    except TopologyError as e:
        return _fail("apply", e)
    except StoreError as e:
        return _fail("apply", f"store error: {e}")
    finally:
        if progress is not None:
            progress.close()
        store.close()
    print(json.dumps(counts, sort_keys=True), flush=True)
    return EXIT_OK


def cmd_topology_show(args) -> int:
    from topology.dump import dump_yaml
    from topology.store.topo import read_topology

    try:
        store = _open(args.store)
    except (StoreError, ValueError) as e:
        return _fail("show", e)
    try:
        text = dump_yaml(read_topology(store))
    except StoreError as e:
        return _fail("show", f"store error: {e}")
    finally:
        store.close()
    sys.stdout.write(text)
    sys.stdout.flush()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m engine.topology_cmd apply FILE --store URI``) until engine.cli wires it."""
    parser = argparse.ArgumentParser(prog="shardnet")
    add_topology_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["topology", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
