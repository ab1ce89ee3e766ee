"""When a process spends CPU on latency: when an idle process keeps its setup path warm (``keep_warm_ms``:
workers/worker.py ``Worker.keep_warm``, engine/dpproc.py ``DatapathProcess.keep_warm``), and when a worker sets
up a reply's flow ahead (``replies_ahead``: ``Worker._reply_ahead``).  Pure bookkeeping, no I/O.

Both only while setups are sparse (``SparseGate``: fewer than SPARSE_PER_S per second lately).  Then a setup's
latency is what it costs; under load its CPU is, frequent setups keep the path warm themselves, and a SYN
that draws no reply (a scan, a flood, the in-memory bench) would cost a second walk for nothing.

A setup that runs after an idle gap is slower than one right after another: on this machine a small Python
workload takes ~1.6–2× as long 5 ms after its last run as back to back, and ~1.2× 1 ms after (bench/RESULTS.md,
"Keeping the setup path warm").  So an idle process runs its part of a setup once more every ``keep_warm_ms``,
changing nothing, but only

- for KEEP_WARM_FOR_S after its last setup: a host with no new flows burns nothing;
- while setups are sparse (``SparseGate``).
"""

from __future__ import annotations

KEEP_WARM_FOR_S = 10.0          # keep warm this long after the last setup
SPARSE_PER_S = 500              # setups per second (per process) from which they are not sparse
SPARSE_SPAN_S = 0.1             # the verdict is renewed at most this often


class SparseGate:
    """Whether setups came often lately: ``busy(now, count)`` with the process's running count of setups.  The
    verdict is the rate since the last one, renewed at most every SPARSE_SPAN_S."""

    def __init__(self, per_s: float = SPARSE_PER_S) -> None:
        self.per_s = per_s
        self._start = 0.0              # when the current span began
        self._at = 0                   # the count then
        self._busy = False             # the verdict of the last span

    def busy(self, now: float, count: int) -> bool:
        span = now - self._start
        if span >= SPARSE_SPAN_S:
            self._busy = count - self._at >= self.per_s * span
            self._start, self._at = now, count
        return self._busy
