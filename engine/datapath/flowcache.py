"""The datapath's flow cache (megaflows): the analogue of the kernel/userspace datapath's flow table (OVS dpcls).

Owns: the installed flows (masked key → compiled actions), their ids, hit counters and timestamps, and the
counters of hits, misses and executions.  Lookup is OVS-style: an exact-match cache (EMC, full key → flow) in
front, then one hash table per distinct mask (a *subtable*: masked key → flow, with its projection function
compiled once, packet.flowkey.projector), tried in order of hits (re-sorted at each ``expire``).  The first
subtable that matches wins: correctness rests on the invariant that every flow's actions are what the
simulation decides for every packet it matches, so overlapping flows agree.  An EMC entry is never trusted
blindly: a flow that leaves is marked dead and its EMC entries miss (and are dropped) the next time they are
probed; the EMC is bounded (cleared when full).  A flow is also known by its *origin key* (the full key of the
upcall that made it; ``flows`` is keyed by it): a newer install from the same key or into the same masked slot
replaces the older flow.  It makes no decisions: a miss is reported to the caller (who emits an upcall);
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

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from packet.flowkey import EXACT_MASK, projector, slot_mask
from packet.packet import Packet
from packet.rewrite import rewrite

COMPILED_CACHE = 4096                  # distinct action lists kept compiled (cleared when full)
EXPIRY_TICK = 0.5                      # s: the granularity of the expiry wheel (FlowCache.expire)

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
    key: tuple                 # the origin key (the upcall's full key)
    compiled: Compiled
    worker: int
    idle_s: float
    hard_s: float
    installed_at: float
    last_used: float
    tags: tuple = ()
    hits: int = 0
    id: int = 0
    mask: tuple = EXACT_MASK   # the slot mask (packet.flowkey): which key slots it matches, and how much
    mkey: tuple = ()           # the masked key: its key in its subtable
    dead: bool = False         # left the cache (an EMC entry that still points here misses)


def _deadline(f: Flow) -> float:
    """When ``f`` expires, as of its last use: the earlier of its idle and hard deadlines (those it has)."""
    if f.idle_s:
        d = f.last_used + f.idle_s
        return min(d, f.installed_at + f.hard_s) if f.hard_s else d
    return f.installed_at + f.hard_s


class Subtable:
    """The flows of one mask: masked key → Flow, and ``project`` (full key → masked key)."""

    __slots__ = ("mask", "project", "flows", "hits")

    def __init__(self, mask: tuple):
        self.mask = mask
        self.project = projector(mask)
        self.flows: dict[tuple, Flow] = {}
        self.hits = 0


class FlowCache:
    """Masked flows with a size bound.  ``emit(kind, target, key, frame)`` is the caller's output function
    (kind "output": target = port name; "tunnel": target = host ip, key = tunnel key)."""

    def __init__(self, emit: Callable[[str, object, int | None, bytes], None], max_flows: int = 200_000,
                 emc_max: int = 8192):
        self.flows: dict[tuple, Flow] = {}         # origin key → flow
        self.by_id: dict[int, tuple] = {}          # flow id → origin key
        self.removed: list[tuple[Flow, str]] = []  # left without a worker's word: (flow, "evicted"|"replaced")
        self.subtables: list[Subtable] = []        # in lookup order (most hit first)
        self._by_mask: dict[tuple, Subtable] = {}
        self.emc: dict[tuple, Flow] = {}           # full key → flow (only flows of masked subtables)
        self.emc_max = emc_max
        self._compiled: dict[tuple, Compiled] = {}   # actions → compiled (flows of a megaflow, a bridge: alike)
        self._masks: dict[tuple, tuple] = {}       # wire match → its slot mask (a bridge's matches: alike)
        self._exact: Subtable | None = None        # the exact-match subtable, while there is one
        # expiry: flows with a timeout by the tick their deadline falls in (``_schedule``, ``expire``)
        self._wheel: dict[int, list[Flow]] = {}
        self._wheel_n = 0                          # entries in the wheel, dead flows included
        self._wheel_tick: int | None = None        # the first tick ``expire`` looks at next
        self._order: deque[Flow] = deque()         # flows in install order, dead ones too (eviction)
        self.emit = emit
        self.max_flows = max_flows
        self.counters = {"datapath_hits": 0, "datapath_misses": 0, "datapath_installs": 0,
                         "datapath_deletes": 0, "datapath_expired": 0, "datapath_evicted": 0,
                         "datapath_executes": 0, "datapath_bad_actions": 0, "datapath_bad_rewrites": 0,
                         "datapath_emc_hits": 0, "datapath_megaflow_hits": 0, "datapath_bad_matches": 0,
                         "datapath_subtables": 0}

    def lookup(self, key: tuple, now: float) -> Flow | None:
        emc = self.emc
        f = emc.get(key) if emc else None            # exact match only: the EMC stays empty, no probe
        if f is not None:
            if not f.dead:
                c = self.counters
                c["datapath_hits"] += 1
                c["datapath_emc_hits"] += 1
                f.hits += 1
                f.last_used = now
                return f
            del emc[key]
        for sub in self.subtables:
            f = sub.flows.get(sub.project(key))
            if f is not None:
                sub.hits += 1
                c = self.counters
                c["datapath_hits"] += 1
                if sub.mask is not EXACT_MASK:
                    c["datapath_megaflow_hits"] += 1
                    if len(emc) >= self.emc_max:
                        emc.clear()
                    emc[key] = f
                f.hits += 1
                f.last_used = now
                return f
        self.counters["datapath_misses"] += 1
        return None

    def install(self, key: tuple, actions, worker: int, idle_s: float, hard_s: float, now: float,
                tags: tuple = (), flow_id: int = 0, match=()) -> Flow | None:
        """Install the flow of the upcall whose full key is ``key``, matching ``match`` (a wire match,
        packet.flowkey: () = exactly ``key``)."""
        if not match:                              # exact match: its subtable without hashing the 36-slot mask
            sub = self._exact or self._subtable(EXACT_MASK)
        else:
            try:
                mask = self._masks.get(match)
            except TypeError:                      # an unhashable element: not a wire match
                mask = None
            if mask is None:
                mask = slot_mask(match)
                if mask is None:
                    self.counters["datapath_bad_matches"] += 1
                    return None
                if len(self._masks) >= COMPILED_CACHE:
                    self._masks.clear()
                self._masks[match] = mask
            sub = self._subtable(mask)
        if type(actions) is not tuple:
            actions = tuple(actions)
        try:
            compiled = self._compiled.get(actions)
        except TypeError:                          # an unhashable element: not a wire action list
            self.counters["datapath_bad_actions"] += 1
            return None
        if compiled is None:
            try:
                compiled = compile_actions(actions)
            except (ValueError, IndexError, TypeError):
                self.counters["datapath_bad_actions"] += 1
                return None
            if len(self._compiled) >= COMPILED_CACHE:
                self._compiled.clear()
            self._compiled[actions] = compiled
        mkey = sub.project(key)
        flows = self.flows
        # a newer install replaces the flow of the same origin key and the one in the same masked slot (in the
        # exact subtable that is the same flow: its masked key is its origin key)
        old = flows.get(key)
        if old is not None and not old.dead:
            self._unlink(old)
            if old.id != flow_id:
                self.removed.append((old, "replaced"))
        if sub.mask is not EXACT_MASK:
            old = sub.flows.get(mkey)
            if old is not None and not old.dead:
                self._unlink(old)
                if old.id != flow_id:
                    self.removed.append((old, "replaced"))
        if len(flows) >= self.max_flows:
            # evict the oldest flow: the first live one of ``_order`` (install order, as ``flows`` keeps it).
            # Not next(iter(flows)): after many deletions at its front a dict iterates past their empty slots
            # until it is resized, ~50 µs an install with a full table of 200k flows.
            order = self._order
            gone = order.popleft()
            while gone.dead:
                gone = order.popleft()
            self._unlink(gone)
            self.removed.append((gone, "evicted"))
            self.counters["datapath_evicted"] += 1
        if not sub.flows:                          # emptied just now, so gone from the cache: again
            sub = self._subtable(sub.mask)
        f = Flow(key, compiled, worker, idle_s, hard_s, now, now, tags, 0, flow_id, sub.mask, mkey)
        flows[key] = f
        sub.flows[mkey] = f
        order = self._order
        order.append(f)
        if len(order) > 2 * len(flows) + 1024:     # mostly flows that left: rebuilt from the live ones
            self._order = deque(flows.values())
        if flow_id:
            self.by_id[flow_id] = key
        if idle_s or hard_s:                       # into the wheel at its deadline's tick
            self._schedule(f, now + (min(idle_s, hard_s) if idle_s and hard_s else idle_s or hard_s))
        self.counters["datapath_installs"] += 1
        return f

    def _subtable(self, mask: tuple) -> Subtable:
        sub = self._by_mask.get(mask)
        if sub is None:
            if mask == EXACT_MASK:
                mask = EXACT_MASK                  # the canonical object: lookup tells it by identity
            sub = self._by_mask[mask] = Subtable(mask)
            if mask is EXACT_MASK:
                self._exact = sub
            self.subtables.append(sub)
            self.counters["datapath_subtables"] = len(self.subtables)
        return sub

    def _unlink(self, f: Flow) -> None:
        """Take ``f`` out of every index (its EMC entries die with it: ``dead``)."""
        f.dead = True
        if self.flows.get(f.key) is f:
            del self.flows[f.key]
        if f.id and self.by_id.get(f.id) == f.key:
            del self.by_id[f.id]
        sub = self._by_mask.get(f.mask)
        if sub is not None and sub.flows.get(f.mkey) is f:
            del sub.flows[f.mkey]
            if not sub.flows:
                del self._by_mask[f.mask]
                if sub is self._exact:
                    self._exact = None
                self.subtables.remove(sub)
                self.counters["datapath_subtables"] = len(self.subtables)

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
        """Delete flows by origin key."""
        n = 0
        for k in keys:
            f = self.flows.get(k)
            if f is not None:
                self._unlink(f)
                n += 1
        self.counters["datapath_deletes"] += n
        return n

    def delete_ids(self, ids) -> int:
        """Delete flows by id (a worker's FlowDelete); unknown ids (already gone) are ignored."""
        by_id = self.by_id
        return self.delete([k for k in map(by_id.get, ids) if k is not None])

    def _schedule(self, f: Flow, deadline: float) -> None:
        """Put ``f`` in the wheel at the tick of ``deadline`` (the earliest it may expire)."""
        t = int(deadline // EXPIRY_TICK)
        if self._wheel_tick is not None and t < self._wheel_tick:
            t = self._wheel_tick
        lst = self._wheel.get(t)
        if lst is None:
            self._wheel[t] = [f]
        else:
            lst.append(f)
        self._wheel_n += 1

    def expire(self, now: float) -> list[Flow]:
        """Remove the flows past their idle or hard timeout (returned), and re-sort the subtables by their hits
        since the last call (the most hit first), as OVS's dpcls does periodically.

        Only the flows whose deadline has come are looked at, not the whole table: each flow with a timeout
        waits in a timer wheel at the tick (EXPIRY_TICK) of its deadline as of its install; when that tick is
        reached it expires, or (used since) moves to the tick of its new deadline.  A flow is thus looked at
        about once per idle timeout rather than at every call.  Flows that left meanwhile are skipped, and the
        wheel is rebuilt from the live flows when they are most of it (bounded memory under churn)."""
        gone = []
        wheel = self._wheel
        tick = int(now // EXPIRY_TICK)
        start = self._wheel_tick
        if start is None or tick - start > len(wheel):
            due = sorted(t for t in wheel if t <= tick)
        else:
            due = [t for t in range(start, tick + 1) if t in wheel]
        self._wheel_tick = tick                    # the current tick is looked at again next time
        for t in due:
            batch = wheel.pop(t)
            self._wheel_n -= len(batch)
            for f in batch:
                if f.dead:
                    continue
                d = _deadline(f)
                if now > d:
                    self._unlink(f)
                    gone.append(f)
                else:
                    self._schedule(f, d)
        self.counters["datapath_expired"] += len(gone)
        if self._wheel_n > 2 * len(self.flows) + 1024:
            self._rebuild_wheel()
        if len(self.subtables) > 1:
            self.subtables.sort(key=lambda s: -s.hits)
        for s in self.subtables:
            s.hits = 0
        return gone

    def _rebuild_wheel(self) -> None:
        self._wheel, self._wheel_n = {}, 0
        for f in self.flows.values():
            if f.idle_s or f.hard_s:
                self._schedule(f, _deadline(f))

    @property
    def wheel_size(self) -> int:
        """Entries in the expiry wheel (dead flows not yet reached included): at most about twice the flows."""
        return self._wheel_n

    def purge_worker(self, worker: int) -> int:
        keys = [k for k, f in self.flows.items() if f.worker == worker]
        self.removed = [(f, r) for f, r in self.removed if f.worker != worker]
        return self.delete(keys)
