"""The waiting room: simulations parked on a need (topology fragment, ARP entry, NAT block).

Owns the parked items of one worker, grouped by need (under ``result.need_key``), each with a deadline.
``park`` says whether the need is new (so the caller sends exactly one request per need); ``satisfy`` hands back
every item waiting on a need (the caller simulates each again from scratch); ``expire`` hands back the items
past their deadline (dropped and counted by the caller).  Bounded: beyond ``max_parked`` items a park is refused
(counted as a drop).
"""

from __future__ import annotations

from workers.simulation.result import need_key


class ParkingLot:
    def __init__(self, timeout_s: float = 5.0, max_parked: int = 10_000):
        self.timeout_s = timeout_s
        self.max_parked = max_parked
        self.waiting: dict[tuple, list[tuple[object, float]]] = {}
        self.size = 0
        self.counters = {"parked": 0, "parked_resumed": 0, "parked_timeout": 0, "parked_overflow": 0}

    def park(self, need, item, now: float) -> bool | None:
        """Park ``item`` on ``need``.  True: a new need (request it); False: already requested; None: full."""
        if self.size >= self.max_parked:
            self.counters["parked_overflow"] += 1
            return None
        key = need_key(need)
        items = self.waiting.get(key)
        new = items is None
        if new:
            items = self.waiting[key] = []
        items.append((item, now + self.timeout_s))
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
            items = items[:limit]
        self.size -= len(items)
        self.counters["parked_resumed"] += len(items)
        return [i for i, _ in items]

    def waiting_on(self, key: tuple) -> int:
        return len(self.waiting.get(key, ()))

    def expire(self, now: float) -> list[tuple[tuple, list]]:
        out = []
        for key in list(self.waiting):
            items = self.waiting[key]
            late = [i for i, d in items if d <= now]
            if not late:
                continue
            keep = [(i, d) for i, d in items if d > now]
            if keep:
                self.waiting[key] = keep
            else:
                del self.waiting[key]
            self.size -= len(late)
            self.counters["parked_timeout"] += len(late)
            out.append((key, late))
        return out

    def next_deadline(self) -> float | None:
        return min((d for items in self.waiting.values() for _, d in items), default=None)
