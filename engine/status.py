"""The status line of `shardnet run` on a terminal: one line every few seconds from the agent's counters.

    shardnet 12:00:05  flows 41  setups/s 120  hit 85.3%  drops 2  parked 0  store connected

Owns nothing but the previous reading (``StatusLine``): rates (setups/s: flows installed in the datapath; the
hit ratio of the packets seen since the last line) are differences between two ``Agent.stats()``.  Drops are
the total since start (engine/metrics.py ``drops``: the workers' and the datapath's), parked the simulations
parked now.  Restarts show once there was one.
"""

from __future__ import annotations

import time

from engine.metrics import drops


def _sum(workers: list, key: str) -> int:
    return sum(w.get(key, 0) for w in workers)


class StatusLine:
    def __init__(self, now: float):
        self.prev = (now, 0, 0, 0)                     # when, datapath installs, hits, misses

    def line(self, stats: dict, store_state: str, now: float, clock: float | None = None) -> str:
        dp, workers, sup = stats.get("datapath") or {}, stats.get("workers") or [], stats.get("supervisor") or {}
        installs, hits, misses = (dp.get(k, 0) for k in ("datapath_installs", "datapath_hits", "datapath_misses"))
        then, i0, h0, m0 = self.prev
        self.prev = (now, installs, hits, misses)
        dt = max(now - then, 1e-9)
        seen = (hits - h0) + (misses - m0)
        hit = f"{100.0 * (hits - h0) / seen:.1f}%" if seen > 0 else "-"
        parts = [f"shardnet {time.strftime('%H:%M:%S', time.localtime(clock))}",
                 f"flows {dp.get('datapath_flows', 0)}",
                 f"setups/s {max(0, installs - i0) / dt:,.0f}",
                 f"hit {hit}",
                 f"drops {sum(drops(stats).values())}",
                 f"parked {_sum(workers, 'worker_parked_now')}",
                 f"store {store_state}"]
        restarts = sup.get("supervisor_worker_restarts", 0)
        if restarts:
            parts.append(f"restarts {restarts}")
        if sup.get("supervisor_datapath_restarts", 0):
            parts.append(f"datapath restarts {sup['supervisor_datapath_restarts']}")
        if sup.get("supervisor_crashes", 0):
            parts.append(f"crashes {sup['supervisor_crashes']}")
        return "  ".join(parts)
