"""The datapath's exact-match flow cache: the analogue of the kernel datapath's flow table.

Owns: the installed flows (key → compiled actions), their ids, hit counters and timestamps, and the counters
of hits, misses and executions.  It makes no decisions: a miss is reported to the caller (who emits an upcall);
flows are installed and deleted only on a worker's word, or expired here by idle/hard timeouts.  A flow is
named by its id (the seq of the upcall that made it): workers delete by id.  Flows that leave the cache
without a worker's word (expired, evicted, replaced by a newer install of the same key) are reported to the
caller (``expire``'s result, ``take_removed``), who tells the installing worker.

Actions (as workers send them: backchannel FlowPut, Execute, PacketOut):
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
    id: int = 0


class FlowCache:
    """Exact-match flows with a size bound.  ``emit(kind, target, key, frame)`` is the caller's output
    function (kind "output": target = port name; "tunnel": target = host ip, key = tunnel key)."""

    def __init__(self, emit: Callable[[str, object, int | None, bytes], None], max_flows: int = 200_000):
        self.flows: dict[tuple, Flow] = {}
        self.by_id: dict[int, tuple] = {}          # flow id → key
        self.removed: list[tuple[Flow, str]] = []  # left without a worker's word: (flow, "evicted"|"replaced")
        self.emit = emit
        self.max_flows = max_flows
        self.counters = {"datapath_hits": 0, "datapath_misses": 0, "datapath_installs": 0,
                         "datapath_deletes": 0, "datapath_expired": 0, "datapath_evicted": 0,
                         "datapath_executes": 0, "datapath_bad_actions": 0, "datapath_bad_rewrites": 0}

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
                tags: tuple = (), flow_id: int = 0) -> Flow | None:
        try:
            compiled = compile_actions(actions)
        except (ValueError, IndexError, TypeError):
            self.counters["datapath_bad_actions"] += 1
            return None
        old = self.flows.pop(key, None)
        if old is not None:
            self.by_id.pop(old.id, None)
            if old.id != flow_id:
                self.removed.append((old, "replaced"))
        elif len(self.flows) >= self.max_flows:
            # evict the oldest flow (dicts keep insertion order)
            gone = self.flows.pop(next(iter(self.flows)))
            self.by_id.pop(gone.id, None)
            self.removed.append((gone, "evicted"))
            self.counters["datapath_evicted"] += 1
        f = Flow(key, compiled, worker, idle_s, hard_s, now, now, tags, 0, flow_id)
        self.flows[key] = f
        if flow_id:
            self.by_id[flow_id] = key
        self.counters["datapath_installs"] += 1
        return f

    def take_removed(self) -> list[tuple[Flow, str]]:
        """The flows evicted or replaced since the last call (their workers must forget them)."""
        out, self.removed = self.removed, []
        return out

    def execute(self, compiled: Compiled, frame: bytes, pkt: Packet) -> None:
        """Emit ``frame`` (parsed as ``pkt``) rewritten for each output.  An output whose rewrite does not
        apply to this packet (an L3 field of a non-IPv4 frame, ports of a protocol without them) is skipped and
        counted ``datapath_bad_rewrites``."""
        self.counters["datapath_executes"] += 1
        for fields, kind, target, tkey in compiled:
            try:
                out = rewrite(frame, pkt, pkt._replace(**fields)) if fields else frame
            except ValueError:
                self.counters["datapath_bad_rewrites"] += 1
                continue
            self.emit(kind, target, tkey, out)

    def delete(self, keys) -> int:
        n = 0
        for k in keys:
            f = self.flows.pop(k, None)
            if f is not None:
                self.by_id.pop(f.id, None)
                n += 1
        self.counters["datapath_deletes"] += n
        return n

    def delete_ids(self, ids) -> int:
        """Delete flows by id (a worker's FlowDelete); unknown ids (already gone) are ignored."""
        by_id = self.by_id
        return self.delete([k for k in map(by_id.get, ids) if k is not None])

    def expire(self, now: float) -> list[Flow]:
        gone = [f for f in self.flows.values()
                if (f.idle_s and now - f.last_used > f.idle_s) or (f.hard_s and now - f.installed_at > f.hard_s)]
        for f in gone:
            del self.flows[f.key]
            self.by_id.pop(f.id, None)
        self.counters["datapath_expired"] += len(gone)
        return gone

    def purge_worker(self, worker: int) -> int:
        keys = [k for k, f in self.flows.items() if f.worker == worker]
        self.removed = [(f, r) for f, r in self.removed if f.worker != worker]
        return self.delete(keys)
