"""The datapath's exact-match flow cache: the analogue of the kernel datapath's flow table.

Owns: the installed flows (key → compiled actions), their hit counters and timestamps, and the counters of
hits, misses and executions.  It makes no decisions: a miss is reported to the caller (who emits an upcall);
flows are installed and deleted only on a worker's word, or expired here by idle/hard timeouts (the caller
reports those removals to the installing worker).

Actions (as workers send them, backchannel FlowInstall.actions):
    ("set", field, value)           rewrite a Packet field (applied cumulatively, in order)
    ("output", port)                emit the current packet on a local port
    ("tunnel", host_ip, key)        emit the current packet toward another host with VXLAN key ``key``
    ("drop",)                       nothing (an explicit drop flow)
Execution rewrites the raw frame with incremental checksum updates (packet.rewrite), not a rebuild.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from packet.packet import Packet
from packet.rewrite import rewrite

# A compiled action list: ((fields to set, "output"|"tunnel", target, tunnel key), ...)
Compiled = tuple[tuple[dict, str, object, int | None], ...]


def compile_actions(actions) -> Compiled:
    out = []
    pending: dict = {}
    for a in actions:
        kind = a[0]
        if kind == "set":
            pending[a[1]] = a[2]
        elif kind == "output":
            out.append((dict(pending), "output", a[1], None))
        elif kind == "tunnel":
            out.append((dict(pending), "tunnel", a[1], a[2]))
        elif kind != "drop":
            raise ValueError(f"unknown action {kind!r}")
    return tuple(out)


@dataclass(slots=True)
class Flow:
    key: tuple
    compiled: Compiled
    worker: int
    idle_s: float
    hard_s: float
    installed_at: float
    last_used: float
    tags: tuple = ()
    hits: int = 0


class FlowCache:
    """Exact-match flows with a size bound.  ``emit(kind, target, key, frame)`` is the caller's output
    function (kind "output": target = port name; "tunnel": target = host ip, key = tunnel key)."""

    def __init__(self, emit: Callable[[str, object, int | None, bytes], None], max_flows: int = 200_000):
        self.flows: dict[tuple, Flow] = {}
        self.emit = emit
        self.max_flows = max_flows
        self.counters = {"datapath_hits": 0, "datapath_misses": 0, "datapath_installs": 0,
                         "datapath_deletes": 0, "datapath_expired": 0, "datapath_evicted": 0,
                         "datapath_executes": 0, "datapath_bad_actions": 0}

    def lookup(self, key: tuple, now: float) -> Flow | None:
        f = self.flows.get(key)
        if f is None:
            self.counters["datapath_misses"] += 1
            return None
        self.counters["datapath_hits"] += 1
        f.hits += 1
        f.last_used = now
        return f

    def install(self, key: tuple, actions, worker: int, idle_s: float, hard_s: float, now: float,
                tags: tuple = ()) -> Flow | None:
        try:
            compiled = compile_actions(actions)
        except (ValueError, IndexError, TypeError):
            self.counters["datapath_bad_actions"] += 1
            return None
        if key not in self.flows and len(self.flows) >= self.max_flows:
            # evict the oldest flow (dicts keep insertion order)
            self.flows.pop(next(iter(self.flows)))
            self.counters["datapath_evicted"] += 1
        f = Flow(key, compiled, worker, idle_s, hard_s, now, now, tags)
        self.flows[key] = f
        self.counters["datapath_installs"] += 1
        return f

    def execute(self, compiled: Compiled, frame: bytes, pkt: Packet) -> None:
        self.counters["datapath_executes"] += 1
        for fields, kind, target, tkey in compiled:
            out = rewrite(frame, pkt, pkt._replace(**fields)) if fields else frame
            self.emit(kind, target, tkey, out)

    def delete(self, keys) -> int:
        n = 0
        for k in keys:
            if self.flows.pop(k, None) is not None:
                n += 1
        self.counters["datapath_deletes"] += n
        return n

    def expire(self, now: float) -> list[Flow]:
        gone = [f for f in self.flows.values()
                if (f.idle_s and now - f.last_used > f.idle_s) or (f.hard_s and now - f.installed_at > f.hard_s)]
        for f in gone:
            del self.flows[f.key]
        self.counters["datapath_expired"] += len(gone)
        return gone

    def purge_worker(self, worker: int) -> int:
        keys = [k for k, f in self.flows.items() if f.worker == worker]
        return self.delete(keys)
