"""Session handling for an agent's owned ephemerals: what an owner created comes back after a session loss.

Owns ``OwnedEntries``: the set of ephemeral nodes one store handle (one agent) created and still wants — its
host node, its learned MAC/ARP entries, its NAT block leases — each with a value (bytes, or a callable that
computes the bytes at (re-)creation time, e.g. to embed the new session id).

State handling (a state listener on the store, run on the store's dispatcher thread):

- SUSPENDED: nothing.  The session may still live; the agent keeps forwarding from its cache.
- LOST: the session expired, every ephemeral it held is gone.  Remembered.
- CONNECTED after a LOST (a new session): every remembered entry is created again, ephemeral.  If the node
  exists already, its value is compared with ours: equal means a retried create of ours went through; a
  different value means another agent took the node in between (it learned the same MAC, leased the same
  block): the entry is forgotten here and its ``on_conflict(path)`` callback runs, so the owner stops using it.

Caches (mirrors) need no help: the store re-arms every watch on CONNECTED and delivers the differences.
Counters: ``session_recreated``, ``session_conflicts``, ``session_recreate_errors``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from topology.store.base import ConnState, NodeExists, NoNode, Store, StoreError

log = logging.getLogger(__name__)

Value = bytes | Callable[[], bytes]
ConflictCallback = Callable[[str], object]


class OwnedEntries:
    """The ephemerals one owner wants to exist; re-created after every session loss.  Thread-safe."""

    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[Value, ConflictCallback | None]] = {}
        self._lost = False
        self.counters = {"session_recreated": 0, "session_conflicts": 0, "session_recreate_errors": 0}
        self._sub = store.add_state_listener(self._on_state)

    # -- bookkeeping ----------------------------------------------------------------------------------
    def add(self, path: str, value: Value, on_conflict: ConflictCallback | None = None) -> None:
        """Remember (or update) an ephemeral this owner created at ``path``."""
        with self._lock:
            self._entries[path] = (value, on_conflict)

    def discard(self, path: str) -> None:
        """Forget ``path`` (the owner deleted it, or gave it up)."""
        with self._lock:
            self._entries.pop(path, None)

    def __contains__(self, path: str) -> bool:
        with self._lock:
            return path in self._entries

    def paths(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def create(self, path: str, value: Value, on_conflict: ConflictCallback | None = None) -> str:
        """Create the ephemeral now and remember it.  Raises what ``Store.create`` raises (NodeExists...)."""
        created = self.store.create(path, _bytes(value), ephemeral=True)
        self.add(created, value, on_conflict)
        return created

    def close(self) -> None:
        self._sub.cancel()

    # -- state ----------------------------------------------------------------------------------------
    def _on_state(self, state: ConnState) -> None:
        if state is ConnState.LOST:
            self._lost = True
        elif state is ConnState.CONNECTED and self._lost:
            self._lost = False
            self.recreate()

    def recreate(self) -> list[str]:
        """Create every remembered entry that is missing; return the paths given up on conflict."""
        with self._lock:
            entries = dict(self._entries)
        conflicts = []
        for path, (value, on_conflict) in sorted(entries.items()):
            if path not in self:            # discarded meanwhile
                continue
            data = _bytes(value)
            try:
                self.store.create(path, data, ephemeral=True)
                self.counters["session_recreated"] += 1
                continue
            except NodeExists:
                pass
            except StoreError as e:         # store down again: the next LOST → CONNECTED retries
                self.counters["session_recreate_errors"] += 1
                log.warning("cannot re-create %s: %s", path, e)
                continue
            try:
                current, _ = self.store.get(path)
            except NoNode:
                current = None
            except StoreError:
                self.counters["session_recreate_errors"] += 1
                continue
            if current == data:
                continue
            self.discard(path)
            self.counters["session_conflicts"] += 1
            conflicts.append(path)
            if on_conflict is not None:
                try:
                    on_conflict(path)
                except Exception:
                    log.exception("conflict callback for %s failed", path)
        return conflicts


def _bytes(value: Value) -> bytes:
    return value() if callable(value) else value
