"""Flow-state persistence (real datapath): the snapshot the workers' state is saved to, and its restore.

Owns the snapshot schedule (every ``state_snapshot_s``, one at a time) and the decisions around the state file
(engine/statefile.py owns its format):

- **restore**, at start, before any port is bound: the saved entries go to every worker.  Restored SNAT
  bindings use ports of blocks leased by the previous run: those exact blocks are leased again and granted to
  the workers (round robin); the bindings of a block another agent took meanwhile are dropped — a lost
  connection, never a duplicate binding.
- **restore_worker**, when a worker was restarted (service thread): the saved entries whose packets hash to it
  (its shard, as of the last snapshot); SNAT bindings only from blocks it still holds.
- **snapshot**, on the service thread: DumpState to every worker; when all answered, the entries are written
  to ``cfg.state_path()`` (atomically).  A snapshot not answered by every worker within SNAPSHOT_GIVE_UP_S
  expires (the service fails it) and is not written (``supervisor_state_snapshot_failed``).

It sends nothing itself: ``send(target, msg)`` and ``ask(targets, make_msg)`` are the service's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future

from backchannel import messages as m
from engine.config import AgentConfig
from engine.statefile import StateFileError, read_state, write_state
from packet.flowkey import tuple_hash
from workers.simulation.state import snat_block as entry_snat_block

SNAPSHOT_GIVE_UP_S = 5.0
RESTORE_CHUNK = 2000                                   # entries per FlowStateBatch to a restarted worker


def snat_block(e: m.FlowStateEntry) -> tuple | None:
    """(device, ip, first port of the block) of the SNAT binding an entry holds, None for other entries."""
    return entry_snat_block(e.kind, e.key, e.value)


class Persistence:
    def __init__(self, cfg: AgentConfig, counters: dict, allocator):
        self.cfg = cfg
        self.counters = counters                       # the agent's: supervisor_state_* counters
        self.allocator = allocator
        self.next_snapshot: float | None = None        # None: no periodic snapshot (memory datapath)
        self._busy_since = 0.0

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # -- restore (agent's caller thread, at start) ---------------------------------------------------------
    def restore(self, send: Callable[[int, tuple], object]) -> int:
        """Send the flow state saved by the previous run to every worker; the number of entries restored."""
        try:
            msg = read_state(self.cfg.state_path())
        except StateFileError:
            self._count("supervisor_state_file_bad")
            return 0
        if msg is None:
            return 0
        msg = self.reclaim_snat_blocks(msg, send)
        for i in range(self.cfg.workers):
            send(i, msg)
        return len(msg.entries)

    def restore_worker(self, worker: int, blocks: set, send: Callable[[int, tuple], object]) -> int:
        """A restarted worker's shard from the last snapshot: the entries whose packets hash to it, SNAT
        bindings only of the blocks it holds (``blocks``: (device, ip, block)); the number sent."""
        try:
            msg = read_state(self.cfg.state_path())
        except StateFileError:
            self._count("supervisor_state_file_bad")
            return 0
        if msg is None:
            return 0
        n = self.cfg.workers
        mine = []
        for e in msg.entries:
            src, dst, proto, sport, dport, _device = e.key
            if tuple_hash(proto, src, sport, dst, dport) % n != worker:
                continue
            blk = snat_block(e)
            if blk is None or blk in blocks:
                mine.append(e)
        for i in range(0, len(mine), RESTORE_CHUNK):
            send(worker, m.FlowStateBatch(tuple(mine[i:i + RESTORE_CHUNK]), msg.origin))
        return len(mine)

    def reclaim_snat_blocks(self, msg: m.FlowStateBatch, send: Callable[[int, tuple], object]) -> m.FlowStateBatch:
        """Lease again the blocks of the restored SNAT bindings and grant them to the workers; the batch without
        the bindings whose block is lost."""
        blocks = {b for b in map(snat_block, msg.entries) if b is not None}
        lost = set()
        for n, (device, ip, block) in enumerate(sorted(blocks)):
            w = n % self.cfg.workers
            if self.allocator.claim(self.cfg.lease_owner(w), device, ip, block):
                send(w, m.LeaseGranted(device, ip, block))
            else:
                lost.add((device, ip, block))
        if lost:
            self.counters["supervisor_restored_snat_lost"] = len(lost)
            msg = m.FlowStateBatch(tuple(e for e in msg.entries if snat_block(e) not in lost), msg.origin)
        return msg

    # -- snapshot (service thread) -------------------------------------------------------------------------
    def schedule(self, now: float) -> None:
        """Start the periodic snapshot (after the restore)."""
        self.next_snapshot = now + self.cfg.state_snapshot_s

    def due(self, now: float) -> bool:
        """Whether the periodic snapshot is due now (then the next one is scheduled)."""
        if self.next_snapshot is None or self.cfg.state_snapshot_s <= 0 or now < self.next_snapshot:
            return False
        self.next_snapshot = now + self.cfg.state_snapshot_s
        return True

    def snapshot(self, ask: Callable[..., Future], then: Future | None = None) -> None:
        """Ask every worker for its flow state and write it; then complete ``then`` (an explicit save).  A
        periodic snapshot is skipped while an earlier one waits for its answers."""
        now = time.monotonic()
        if then is None and self._busy_since and now - self._busy_since < SNAPSHOT_GIVE_UP_S:
            return
        self._busy_since = now
        fut = ask(range(self.cfg.workers), m.DumpState, SNAPSHOT_GIVE_UP_S)
        fut.add_done_callback(self._write)
        if then is not None:
            fut.add_done_callback(lambda f: then.set_result(True) if f.exception() is None
                                  else then.set_exception(f.exception()))

    def _write(self, fut: Future) -> None:
        self._busy_since = 0.0
        if fut.exception() is not None:                # a worker did not answer (expired), or too busy
            self._count("supervisor_state_snapshot_failed")
            return
        entries = []
        for body in fut.result().values():
            if isinstance(body, (list, tuple)):
                entries.extend(m.FlowStateEntry(k, tuple(key), v, float(exp)) for k, key, v, exp in body)
        try:
            write_state(self.cfg.state_path(), entries)
            self._count("supervisor_state_snapshots")
        except OSError:
            self._count("supervisor_state_file_errors")
