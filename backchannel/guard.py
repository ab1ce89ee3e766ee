"""The loop guard (DESIGN §7): what handling one message or frame raises is caught at the loop, counted, logged,
and the loop goes on.

One mechanism for every process loop that reads the backchannel: the worker loop (workers/loop.py), the
datapath loop (engine/dpproc.py) and the supervisor's service thread (engine/service.py).  Owns nothing but its
counters' names and the log rate limit:

- ``<prefix>handler_errors_<Type>`` counts the failures by message type (a frame poll or housekeeping by the
  name the loop gives it), ``<prefix>handler_errors`` all of them, in the part's own counters dict;
- the traceback goes to stdlib ``logging`` (logger ``shardnet.<part>``), at most ``burst`` per ``interval_s``;
  the ones left out are counted and reported with the next one logged.

The guard costs the fast path one ``try`` per message (free until something raises).  It is a net, not a
policy: decode (backchannel/codec.py) refuses what a handler could not take, so a count here is a bug.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable


class Guard:
    def __init__(self, part: str, counters: dict, prefix: str | None = None, burst: int = 5,
                 interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.part = part
        self.counters = counters
        self.prefix = f"{part}_" if prefix is None else prefix
        self.total = f"{self.prefix}handler_errors"
        counters.setdefault(self.total, 0)
        self.log = logging.getLogger(f"shardnet.{part}")
        self.burst, self.interval_s, self.clock = burst, interval_s, clock
        self._window_end = float("-inf")
        self._logged = 0
        self._suppressed = 0

    def run(self, handle: Callable, msgs: Iterable, *args) -> None:
        """``handle(msg, *args)`` for each message; one that raises is counted and logged, the rest go on."""
        for msg in msgs:
            try:
                handle(msg, *args)
            except Exception as e:                     # the net: whatever one message raises
                self.failed(type(msg).__name__, e)

    def call(self, what: str, fn: Callable, *args):
        """``fn(*args)`` under the guard (a frame poll, housekeeping); its result, or None if it raised."""
        try:
            return fn(*args)
        except Exception as e:
            self.failed(what, e)
            return None

    def failed(self, what: str, exc: BaseException) -> None:
        """Count ``exc`` (raised while handling ``what``) and log it, rate-limited."""
        c = self.counters
        key = f"{self.prefix}handler_errors_{what}"
        c[key] = c.get(key, 0) + 1
        c[self.total] = c.get(self.total, 0) + 1
        now = self.clock()
        if now >= self._window_end:
            self._window_end = now + self.interval_s
            self._logged = 0
        if self._logged >= self.burst:
            self._suppressed += 1
            return
        self._logged += 1
        suppressed, self._suppressed = self._suppressed, 0
        self.log.error("%s: handling %s raised %s: %s%s", self.part, what, type(exc).__name__, exc,
                       f" ({suppressed} more not logged)" if suppressed else "",
                       exc_info=(type(exc), exc, exc.__traceback__))
