"""Flow-state persistence (real datapath): the snapshot the workers' state is saved to, and its restore.

Owns the snapshot schedule (every ``state_snapshot_s``, one at a time) and the decisions around the state file
(engine/statefile.py owns its format):

- **restore**, at start, before any port is bound: the saved entries go to every worker, chunk by chunk
  (a FlowStateBatch of at most statefile.CHUNK entries per message: messages are capped at 4 MiB).  Restored
  SNAT bindings use ports of blocks leased by the previous run: those exact blocks are leased again and
  granted to the workers (round robin); the bindings of a block another agent took meanwhile are dropped — a
  lost connection, never a duplicate binding.  A chunk that does not decode is skipped and counted
  (``supervisor_state_chunks_bad``).
- **restore_worker**, when a worker was restarted (service thread): the saved entries whose packets hash to it
  (its shard, as of the last snapshot); SNAT bindings only from blocks it still holds.
- **snapshot**, on the service thread, incrementally: each worker is paged through (DumpStatePage: at most
  MAX_STATE_PAGE entries and ~1 MiB an answer; the next page is asked when one arrives, so the workers handle
  upcalls between pages and the service thread its other work), each page appended to a new state file
  (engine/statefile.StateWriter); when every worker's last page is in, the file replaces ``cfg.state_path()``
  (atomically).  A page not answered within SNAPSHOT_GIVE_UP_S expires (the service fails it): that snapshot
  is not written (``supervisor_state_snapshot_failed``).

It sends nothing itself: ``send(target, msg)`` and ``ask(targets, make_msg)`` are the service's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future

from backchannel import messages as m
from engine.config import AgentConfig
from engine.statefile import StateFileError, StateWriter, decode_chunk, read_chunks, read_state
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
        """Send the flow state saved by the previous run to every worker, chunk by chunk; the number of entries
        restored."""
        path = self.cfg.state_path()
        try:
            chunks = read_chunks(path)
        except StateFileError:
            self._count("supervisor_state_file_bad")
            return 0
        if chunks is None:
            return 0
        claimed: dict = {}
        n = 0
        for data in chunks:
            try:
                msg = decode_chunk(data, path)
            except StateFileError:
                self._count("supervisor_state_chunks_bad")
                continue
            msg = self.reclaim_snat_blocks(msg, send, claimed)
            for i in range(self.cfg.workers):
                send(i, msg)
            n += len(msg.entries)
        return n

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

    def reclaim_snat_blocks(self, msg: m.FlowStateBatch, send: Callable[[int, tuple], object],
                            claimed: dict | None = None) -> m.FlowStateBatch:
        """Lease again the blocks of the restored SNAT bindings and grant them to the workers; the batch without
        the bindings whose block is lost.  ``claimed`` (block → claimed or not) carries what was done for the
        earlier chunks of one restore, so a block is claimed once."""
        claimed = {} if claimed is None else claimed
        blocks = {b for b in map(snat_block, msg.entries) if b is not None}
        for device, ip, block in sorted(blocks - claimed.keys()):
            w = len(claimed) % self.cfg.workers
            ok = claimed[(device, ip, block)] = self.allocator.claim(self.cfg.lease_owner(w), device, ip, block)
            if ok:
                send(w, m.LeaseGranted(device, ip, block))
            else:
                self._count("supervisor_restored_snat_lost")
        lost = {b for b in blocks if not claimed[b]}
        if lost:
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
        """Page through every worker's flow state and write it; then complete ``then`` (an explicit save).  A
        periodic snapshot is skipped while an earlier one is under way (and its pages keep coming)."""
        now = time.monotonic()
        if then is None and self._busy_since and now - self._busy_since < SNAPSHOT_GIVE_UP_S:
            return
        self._busy_since = now
        _Snapshot(self, ask, then).start()

    def _done(self, ok: bool, entries: int = 0, file_error: bool = False) -> None:
        self._busy_since = 0.0
        if ok:
            self._count("supervisor_state_snapshots")
            self.counters["supervisor_state_snapshot_entries"] = entries
        else:
            self._count("supervisor_state_file_errors" if file_error else "supervisor_state_snapshot_failed")


class _Snapshot:
    """One snapshot under way: the first page of every worker is asked at once, each next one when its page
    came (callbacks on the service thread), each page appended to the new file."""

    def __init__(self, owner: Persistence, ask: Callable[..., Future], then: Future | None):
        self.owner, self.ask, self.then = owner, ask, then
        self.left = set(range(owner.cfg.workers))
        self.writer: StateWriter | None = None
        self.finished = False

    def start(self) -> None:
        try:
            self.writer = StateWriter(self.owner.cfg.state_path())
        except OSError as e:
            self._finish(e, file_error=True)
            return
        self.owner._busy_since = time.monotonic()
        fut = self.ask(sorted(self.left), lambda req: m.DumpStatePage(req, 0, m.MAX_STATE_PAGE), SNAPSHOT_GIVE_UP_S)
        fut.add_done_callback(self._pages)

    def _next(self, worker: int, cursor: int) -> None:
        fut = self.ask([worker], lambda req: m.DumpStatePage(req, cursor, m.MAX_STATE_PAGE), SNAPSHOT_GIVE_UP_S)
        fut.add_done_callback(self._pages)

    def _pages(self, fut: Future) -> None:
        if self.finished:
            return
        if fut.exception() is not None:                # a worker did not answer (expired), or too busy
            self._finish(fut.exception())
            return
        for worker, body in sorted(fut.result().items()):
            if not isinstance(body, dict) or "error" in body or not isinstance(body.get("entries"), (list, tuple)):
                self._finish(RuntimeError(f"worker {worker}: no state page: {body!r:.200}"))
                return
            try:
                self.writer.add(body["entries"])
            except OSError as e:
                self._finish(e, file_error=True)
                return
            except (TypeError, ValueError, IndexError) as e:
                self._finish(RuntimeError(f"worker {worker}: bad state page: {e}"))
                return
            self.owner._busy_since = time.monotonic()   # progress: a big snapshot is not a stuck one
            if body.get("cursor"):
                self._next(worker, int(body["cursor"]))
            else:
                self.left.discard(worker)
        if not self.left:
            try:
                self.writer.commit()
            except OSError as e:
                self._finish(e, file_error=True)
                return
            self._finish(None)

    def _finish(self, error: BaseException | None, file_error: bool = False) -> None:
        self.finished = True
        if error is not None and self.writer is not None:
            self.writer.abort()
        self.owner._done(error is None, self.writer.entries if self.writer else 0, file_error)
        if self.then is not None and not self.then.done():
            if error is None:
                self.then.set_result(True)
            else:
                self.then.set_exception(error)
