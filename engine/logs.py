"""Logging of every shardnet process: one setup, one line format, repeated messages collapsed.

Owns the root logger's shardnet handler in this process (stderr, or a file all the agent's processes append
to) and its collapse filter; nothing else.  The supervisor calls ``setup`` (``shardnet run`` before the agent
starts; an embedding program's own logging is left alone unless it asks for a file), each child calls it from
engine/procmain.py with the settings the pool put in its command line (``child_settings``).  Modules log through
``logging.getLogger(__name__)``; kazoo logs as ``kazoo.client`` through the same handler.

Line format: ``2025-01-01 12:00:00,123 shardnet[worker-1] WARNING engine.pool: message``.

Collapsing (``Collapse``): a message (same logger, level and text) seen again within ``repeat_s`` of its first
showing is held back and counted; at the end of that interval one line ``<message> … repeated N times``
stands for them, and the count starts again — so a store outage gives one kazoo line per interval, not hundreds,
and a refused flow-state datagram per reason at most one line per interval.  A message that stopped repeating is
forgotten, and shows in full the next time.

``Every`` gates a log line on a path a peer can drive (refused datagrams): at most one per interval per key,
decided before any record is built.

``set_level(level)`` (workers/logs.py, re-exported here) changes a process's level at run time: the ctl
``log-level`` command calls it in the supervisor, the datapath and the workers.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from workers.logs import LEVELS, check_level, set_level  # noqa: F401 - the level API of every process

REPEAT_S = 10.0                    # a repeated message: one line per this many seconds
MAX_KEYS = 1024                    # distinct messages remembered at once (oldest forgotten first)
FORMAT = "%(asctime)s shardnet[%(role)s] %(levelname)s %(name)s: %(message)s"


class Collapse(logging.Filter):
    """A handler filter: the first of a repeated message passes, the rest within ``repeat_s`` are counted and
    reported by one line at the end of the interval (from a timer thread, or by the next repeat after it)."""

    def __init__(self, emit, repeat_s: float = REPEAT_S, clock=time.monotonic):
        super().__init__()
        self.emit = emit                   # the handler's emit (bypasses this filter)
        self.repeat_s = repeat_s
        self.clock = clock
        self._seen: dict[tuple, list] = {}  # key → [interval end, count held back, last record]
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self.repeat_s <= 0:
            return True
        key = (record.name, record.levelno, record.getMessage())
        now = self.clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or (now >= seen[0] and seen[1] == 0):
                if seen is None and len(self._seen) >= MAX_KEYS:
                    self._seen.pop(next(iter(self._seen)))
                self._seen[key] = [now + self.repeat_s, 0, record]
                return True
            if now >= seen[0]:             # the interval is over: report it, this one opens the next
                summary = self._summary(seen)
                seen[:] = [now + self.repeat_s, 1, record]
            else:
                summary = None
                seen[1] += 1
                seen[2] = record
            self._arm(seen[0] - now)
        if summary is not None:
            self.emit(summary)
        return False

    def flush(self) -> None:
        """Report the intervals that are over (the timer calls it; tests may too)."""
        now = self.clock()
        out, wait = [], None
        with self._lock:
            self._timer = None
            for key, seen in list(self._seen.items()):
                if now < seen[0]:
                    if seen[1]:
                        wait = seen[0] - now if wait is None else min(wait, seen[0] - now)
                    continue
                if seen[1]:
                    out.append(self._summary(seen))
                    seen[:] = [now + self.repeat_s, 0, seen[2]]
                else:
                    del self._seen[key]
            if wait is not None:
                self._arm(wait)
        for record in out:
            self.emit(record)

    def _summary(self, seen: list) -> logging.LogRecord:
        last, n = seen[2], seen[1]
        rec = logging.makeLogRecord(dict(last.__dict__))
        rec.msg, rec.args = f"{last.getMessage()} … repeated {n} times", None
        return rec

    def _arm(self, delay: float) -> None:
        """Make sure a flush is due within ``delay`` (lock held)."""
        if self._timer is None:
            self._timer = threading.Timer(max(0.0, delay) + 0.01, self.flush)
            self._timer.daemon = True
            self._timer.start()

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


class Every:
    """A cheap gate for log lines on paths a sender can drive (no record is built when it says no): ``due(key,
    now)`` is True at most once per ``seconds`` per key."""

    __slots__ = ("seconds", "_next")

    def __init__(self, seconds: float = REPEAT_S):
        self.seconds = seconds
        self._next: dict = {}

    def due(self, key, now: float) -> bool:
        if now < self._next.get(key, 0.0):
            return False
        if len(self._next) >= MAX_KEYS:
            self._next.clear()
        self._next[key] = now + self.seconds
        return True


class _RoleFilter(logging.Filter):
    def __init__(self, role: str):
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        return True


def _handler_of_ours(root: logging.Logger) -> logging.Handler | None:
    return next((h for h in root.handlers if getattr(h, "shardnet", False)), None)


def setup(role: str, level="INFO", log_file: str | None = None, *, repeat_s: float = REPEAT_S,
          force: bool = True) -> bool:
    """Log this process's records (every logger's) as ``role`` to stderr or ``log_file`` (appended), at
    ``level``, repeated messages collapsed.  Replaces an earlier setup of ours.  With ``force`` False and no
    ``log_file``, a root logger someone else configured (an embedding program) is left as it is: False."""
    root = logging.getLogger()
    ours = _handler_of_ours(root)
    if not force and ours is None and log_file is None and root.handlers:
        return False
    numeric = check_level(level)
    handler = logging.FileHandler(log_file, mode="a", encoding="utf-8") if log_file else \
        logging.StreamHandler(sys.stderr)
    handler.shardnet = True
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_RoleFilter(role))
    handler.addFilter(Collapse(lambda rec: _emit_unfiltered(handler, rec), repeat_s))
    if ours is not None:
        remove(ours)
    root.addHandler(handler)
    root.setLevel(numeric)
    return True


def _emit_unfiltered(handler: logging.Handler, record: logging.LogRecord) -> None:
    record.role = getattr(record, "role", "?")
    if record.levelno >= logging.getLogger().getEffectiveLevel():
        handler.acquire()
        try:
            handler.emit(record)
        finally:
            handler.release()


def remove(handler: logging.Handler | None = None) -> None:
    """Take our handler (or ``handler``) off the root logger and close it."""
    root = logging.getLogger()
    handler = handler or _handler_of_ours(root)
    if handler is None:
        return
    root.removeHandler(handler)
    for f in handler.filters:
        if isinstance(f, Collapse):
            f.cancel()
    handler.close()


def child_settings(level, log_file: str | None, repeat_s: float = REPEAT_S) -> dict:
    """What the pool puts in a child's command line (``"log"``) for procmain's ``setup``."""
    return {"level": logging.getLevelName(check_level(level)), "file": log_file, "repeat_s": repeat_s}
