"""The waiting room: simulations parked on a need (topology fragment, ARP entry, NAT block).

Owns the parked items of one worker, grouped by need (under ``result.need_key``), each with a deadline.
``park`` says whether the need is new (so the caller sends exactly one request per need); ``satisfy`` hands back
every item waiting on a need (the caller simulates each again from scratch); ``expire`` hands back the items
past their deadline (dropped and counted by the caller).  Bounded: beyond ``max_parked`` items a park is refused
(counted as a drop).

Deadlines: every item waits ``timeout_s``, so a need's items are in deadline order; a heap holds one entry
(earliest deadline, need) per waiting need, so ``next_deadline`` and ``expire`` look at the due needs only,
not at every parked item.  Entries left behind by a need satisfied meanwhile are skipped as they surface.
"""

from __future__ import annotations

import heapq

from workers.simulation.result import need_key


class ParkingLot:
    def __init__(self, timeout_s: float = 5.0, max_parked: int = 10_000):
        self.timeout_s = timeout_s
        self.max_parked = max_parked
        self.waiting: dict[tuple, list[tuple[object, float]]] = {}
        self.size = 0
        self._heap: list[tuple[float, tuple]] = []      # (earliest deadline, need key); stale ones skipped
        self.counters = {"parked": 0, "parked_resumed": 0, "parked_timeout": 0, "parked_overflow": 0}

    def park(self, need, item, now: float) -> bool | None:
        """Park ``item`` on ``need``.  True: a new need (request it); False: already requested; None: full."""
        if self.size >= self.max_parked:
            self.counters["parked_overflow"] += 1
            return None
        key = need_key(need)
        items = self.waiting.get(key)
        new = items is None
        deadline = now + self.timeout_s
        if new:
            items = self.waiting[key] = []
            heapq.heappush(self._heap, (deadline, key))
        items.append((item, deadline))
        self.size += 1
        self.counters["parked"] += 1
        return new

    def satisfy(self, key: tuple, limit: int | None = None) -> list:
        """Hand back the items waiting on ``key`` (at most ``limit``, oldest first; the rest keep waiting)."""
        items = self.waiting.pop(key, None)
        if not items:
            return []
        if limit is not None and len(items) > limit:
            self.waiting[key] = items[limit:]
            heapq.heappush(self._heap, (items[limit][1], key))
            items = items[:limit]
        self.size -= len(items)
        self.counters["parked_resumed"] += len(items)
        return [i for i, _ in items]

    def waiting_on(self, key: tuple) -> int:
        return len(self.waiting.get(key, ()))

    def _live(self, deadline: float, key: tuple) -> bool:
        items = self.waiting.get(key)
        return items is not None and items[0][1] == deadline

    def expire(self, now: float) -> list[tuple[tuple, list]]:
        """Hand back, per need, the items whose deadline passed (oldest first)."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, key = heapq.heappop(heap)
            if not self._live(deadline, key):
                continue
            items = self.waiting[key]
            n = 0
            while n < len(items) and items[n][1] <= now:
                n += 1
            late = [i for i, _ in items[:n]]
            if n < len(items):
                self.waiting[key] = items[n:]
                heapq.heappush(heap, (items[n][1], key))
            else:
                del self.waiting[key]
            self.size -= n
            self.counters["parked_timeout"] += n
            out.append((key, late))
        return out

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and not self._live(*heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None
