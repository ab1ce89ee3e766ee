"""Store calls off the service thread: a small executor with bounded queues, its results handed back as events.

Owns the store-call threads and their queues.  The supervisor's service thread (engine/service.py) must never
wait on the store: a ZooKeeper call can take up to the store's ``op_timeout`` (10 s by default) while the
quorum is lost, and the service thread meanwhile answers the workers (fragments come from the mirror), the
datapath and the public API.  So the store shell (engine/storeshell.py) submits every store call here:

- a *lane* is a bounded queue and the threads that serve it.  ``leases`` (several threads: SNAT block leases
  and releases are independent, and the allocator is thread-safe) and ``tables`` (one thread: the replicated
  tables' writes, ticks and subscriptions, in order; SharedTables is not thread-safe);
- ``submit(lane, fn, *args, done=cb)`` queues ``fn(*args)`` and returns at once: False (and ``cb`` is never
  called) when the lane's queue is full (``supervisor_store_calls_refused``);
- when the call returns or raises, ``(cb, result, error)`` goes to the results queue and the service is woken;
  ``drain()`` (service thread) runs the callbacks there: ``cb(result, None)`` or ``cb(None, exception)``.

Each call is bounded by the store itself (ZkStore retries until its ``op_timeout``, then raises
StoreUnavailable).  Counters (read and written on the service thread only): ``supervisor_store_calls``,
``supervisor_store_call_errors``, ``supervisor_store_calls_refused``; ``in_flight()`` is the gauge
``supervisor_store_calls_in_flight`` (submitted, not drained yet).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

LANES = {"leases": 4, "tables": 1}          # lane → threads
MAX_QUEUED = 1024                           # calls waiting per lane; beyond, submit refuses
Done = Callable[[object, BaseException | None], None]


class StoreCalls:
    def __init__(self, counters: dict, wake: Callable[[], None], lanes: dict[str, int] | None = None,
                 max_queued: int = MAX_QUEUED):
        self.counters = counters
        for name in ("supervisor_store_calls", "supervisor_store_call_errors", "supervisor_store_calls_refused"):
            counters.setdefault(name, 0)
        counters["supervisor_store_calls_in_flight"] = 0
        self._wake = wake
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._queues: dict[str, queue.Queue] = {}
        self._threads: list[tuple[queue.Queue, threading.Thread]] = []
        self._submitted = 0
        self._completed = 0
        self._closed = False
        for lane, n in (lanes or LANES).items():
            q = self._queues[lane] = queue.Queue(max_queued)
            for i in range(n):
                t = threading.Thread(target=self._serve, args=(q,), name=f"shardnet-store-{lane}-{i}", daemon=True)
                t.start()
                self._threads.append((q, t))

    # -- service thread -------------------------------------------------------------------------------------
    def submit(self, lane: str, fn: Callable, *args, done: Done | None = None) -> bool:
        """Queue ``fn(*args)`` on ``lane``; False when its queue is full (nothing will happen then)."""
        if self._closed:
            return False
        try:
            self._queues[lane].put_nowait((fn, args, done))
        except queue.Full:
            self.counters["supervisor_store_calls_refused"] += 1
            return False
        self._submitted += 1
        self.counters["supervisor_store_calls_in_flight"] = self._submitted - self._completed
        return True

    def drain(self, guard) -> int:
        """Run the callbacks of the calls that finished (each under the service's guard); how many."""
        n = 0
        while True:
            try:
                done, result, error = self._results.get_nowait()
            except queue.Empty:
                break
            n += 1
            self._completed += 1
            self.counters["supervisor_store_calls"] += 1
            if error is not None:
                self.counters["supervisor_store_call_errors"] += 1
            if done is not None:
                guard.call("_store_call_done", done, result, error)
        self.counters["supervisor_store_calls_in_flight"] = self._submitted - self._completed
        return n

    def in_flight(self) -> int:
        return self._submitted - self._completed

    def close(self, timeout: float = 1.0) -> None:
        """Stop the threads (a call in progress finishes in its thread, bounded by the store's op timeout)."""
        self._closed = True
        for q, _t in self._threads:
            try:
                q.put_nowait(None)                     # one stop per thread
            except queue.Full:
                pass                                   # daemon threads: they end with the process
        deadline = time.monotonic() + timeout
        for _q, t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # -- store-call threads ---------------------------------------------------------------------------------
    def _serve(self, q: queue.Queue) -> None:
        while True:
            item = q.get()
            if item is None:
                return
            fn, args, done = item
            try:
                result, error = fn(*args), None
            except BaseException as e:                 # noqa: BLE001 - handed to the callback, never lost
                result, error = None, e
            self._results.put((done, result, error))
            self._wake()
