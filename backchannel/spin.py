"""An optional short busy-poll before a blocking poll (``poll_spin_us``, issue 13).

A process that has just handled work polls without blocking (timeout 0) for up to ``spin_s`` seconds, so a
message arriving soon after is taken without the scheduler's wake-up (this machine's floor: ENVIRONMENT.md).
Then it blocks as before, for what is left of its timeout: deadlines (parking, housekeeping) keep their time.
Between two looks it yields the core: a pinned process's ZMQ I/O thread inherits its single-CPU affinity, and
a spinner that never yields keeps that thread (which carries every message in and out) off the core.
The loops call this only when the setting is on and the previous round had work; at 0 they call
``poller.poll`` directly, as before.
"""

from __future__ import annotations

import os
import time

__all__ = ["spin_poll"]


def spin_poll(poller, timeout_ms: int, spin_s: float) -> list:
    """``poller.poll(timeout_ms)``, preceded by ``poller.poll(0)`` repeated for at most ``spin_s`` seconds
    (never longer than the timeout itself).  Returns the events of the first poll that has any."""
    start = time.monotonic()
    end = start + min(spin_s, timeout_ms / 1000.0)
    while True:
        events = poller.poll(0)
        if events:
            return events
        now = time.monotonic()
        if now >= end:
            break
        os.sched_yield()               # let a thread on this core run (ZMQ's I/O thread shares the pinned core)
    left = timeout_ms - int((now - start) * 1000)
    return poller.poll(left) if left > 0 else []
