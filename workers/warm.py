"""When an idle process keeps its setup path warm (``keep_warm_ms``: workers/worker.py ``Worker.keep_warm``,
engine/dpproc.py ``DatapathProcess.keep_warm``).  Pure bookkeeping, no I/O.

A setup that runs after an idle gap is slower than one right after another: on this machine a small Python
workload takes ~1.6–2× as long 5 ms after its last run as back to back, and ~1.2× 1 ms after (bench/RESULTS.md,
"Keeping the setup path warm").  So an idle process runs its part of a setup once more every ``keep_warm_ms``,
changing nothing, but only

- for KEEP_WARM_FOR_S after its last setup: a host with no new flows burns nothing;
- while setups are sparse (``WarmGate``): fewer than KEEP_WARM_BUSY in the last KEEP_WARM_WINDOW_S.  Frequent
  setups keep the path warm themselves, and a warm run then only takes CPU from them.
"""

from __future__ import annotations

KEEP_WARM_FOR_S = 10.0          # keep warm this long after the last setup
KEEP_WARM_WINDOW_S = 0.1        # the window setups are counted over ...
KEEP_WARM_BUSY = 50             # ... and this many or more in it: busy, no warm run (500 setups/s)


class WarmGate:
    """Whether setups came often lately: ``busy(now, count)`` with the process's running count of setups.  The
    verdict is the rate since the last one, renewed at most every KEEP_WARM_WINDOW_S."""

    def __init__(self) -> None:
        self._start = 0.0              # when the current span began
        self._at = 0                   # the count then
        self._busy = False             # the verdict of the last span

    def busy(self, now: float, count: int) -> bool:
        span = now - self._start
        if span >= KEEP_WARM_WINDOW_S:
            self._busy = count - self._at >= KEEP_WARM_BUSY * span / KEEP_WARM_WINDOW_S
            self._start, self._at = now, count
        return self._busy
