"""A worker's flow table: the flows this worker installed in the datapath, their tags and expiry.

Owns, for this worker only: flow key → (tags, installed_at, hard expiry), the reverse index tag → keys, and a
max-flow bound with eviction of the oldest flow.  It decides which flows must go (invalidation by tag, hard
expiry, eviction) and returns their keys; the worker loop sends the FlowDelete.  Idle expiry happens in the
datapath, which reports removals (FlowRemoved) so the table forgets them.

In the index a tag only one flow carries (a connection's flow-state entries: most tags of a stateful flow) maps
to that flow's key itself, not to a set of one: no set is made and kept per connection, and the collector has
fewer objects to walk.
"""

from __future__ import annotations

from collections import OrderedDict


class FlowTable:
    def __init__(self, max_flows: int = 100_000, hard_s: float = 0.0):
        self.max_flows = max_flows
        self.hard_s = hard_s
        self.flows: OrderedDict[tuple, tuple[frozenset[str], float]] = OrderedDict()
        self.by_tag: dict[str, set | object] = {}   # tag → the keys carrying it (a set), or the one key
        self.specs: dict = {}                       # flow key → how it was installed (re-installed from here)
        self.counters = {"flows_installed": 0, "flows_invalidated": 0, "flows_evicted": 0,
                         "flows_hard_expired": 0, "flows_removed_by_datapath": 0}

    def __len__(self) -> int:
        return len(self.flows)

    def add(self, key: tuple, tags: frozenset[str], now: float, spec=None) -> list[tuple]:
        """Record an installed flow (``spec``: what re-installs it in a restarted datapath); returns the keys
        evicted to make room (to delete in the datapath)."""
        if key in self.flows:
            self._drop(key)
        evicted = []
        if len(self.flows) >= self.max_flows:
            while len(self.flows) >= self.max_flows:
                old, _ = next(iter(self.flows.items()))
                self._drop(old)
                evicted.append(old)
            self.counters["flows_evicted"] += len(evicted)
        self.flows[key] = (tags, now)
        if spec is not None:
            self.specs[key] = spec
        by_tag = self.by_tag
        for t in tags:
            keys = by_tag.get(t)
            if keys is None:
                by_tag[t] = key
            elif type(keys) is set:
                keys.add(key)
            elif keys != key:
                by_tag[t] = {keys, key}
        self.counters["flows_installed"] += 1
        return evicted

    def _drop(self, key: tuple) -> bool:
        entry = self.flows.pop(key, None)
        if entry is None:
            return False
        self.specs.pop(key, None)
        by_tag = self.by_tag
        for t in entry[0]:
            keys = by_tag.get(t)
            if keys is None:
                continue
            if type(keys) is set:
                keys.discard(key)
                if not keys:
                    del by_tag[t]
            elif keys == key:
                del by_tag[t]
        return True

    def invalidate(self, tags) -> list[tuple]:
        """Remove every flow tagged with any of ``tags``; returns their keys."""
        keys: set[tuple] = set()
        by_tag = self.by_tag
        for t in tags:
            hit = by_tag.get(t)
            if hit is None:
                continue
            if type(hit) is set:
                keys |= hit
            else:
                keys.add(hit)
        if not keys:
            return []
        for k in keys:
            self._drop(k)
        self.counters["flows_invalidated"] += len(keys)
        return list(keys)

    def removed(self, keys) -> None:
        for k in keys:
            if self._drop(k):
                self.counters["flows_removed_by_datapath"] += 1

    def expire(self, now: float) -> list[tuple]:
        if not self.hard_s:
            return []
        gone = []
        for k, (_, t) in self.flows.items():
            if now - t <= self.hard_s:
                break                                   # insertion order = install order
            gone.append(k)
        for k in gone:
            self._drop(k)
        self.counters["flows_hard_expired"] += len(gone)
        return gone

    def clear(self) -> list[tuple]:
        keys = list(self.flows)
        self.flows.clear()
        self.by_tag.clear()
        self.specs.clear()
        return keys
