"""A local mirror of the leaves of a store subtree, kept fresh by watches: the read side of replicated tables.

Owns ``TreeMirror``: a dict ``{key: bytes}`` of every leaf node at a fixed depth under ``base`` (depth 1:
``base/<leaf>``; depth 2: ``base/<dir>/<leaf>``), with the subscriptions that keep it fresh — a children
watch per directory (to learn of new and removed names) and a data watch per leaf (to see value changes and a
delete+create under the same name, which a children watch may coalesce away on ZooKeeper).  Keys are tuples of
node names (``(leaf,)`` or ``(dir, leaf)``).

Lookups (``get``, ``items``) are local: no store read.  The constructor reads the subtree once, synchronously,
so a fresh mirror is complete; after that every change is applied on the store's dispatcher thread and reported
to ``on_change(key, old, new)`` (bytes or None), in the order the store delivers them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from topology.store.base import EventKind, NoNode, Store, Subscription, WatchEvent

ChangeCallback = Callable[[tuple[str, ...], bytes | None, bytes | None], object]


class TreeMirror:
    def __init__(self, store: Store, base: str, depth: int, on_change: ChangeCallback | None = None):
        if depth not in (1, 2):
            raise ValueError("depth must be 1 or 2")
        self.store, self.base, self.depth = store, base, depth
        self._on_change = on_change
        self._lock = threading.RLock()
        self._values: dict[tuple[str, ...], bytes] = {}
        self._dirs: dict[tuple[str, ...], Subscription] = {}
        self._leaves: dict[tuple[str, ...], Subscription] = {}
        self._closed = False
        self._preload(())
        self._watch_dir(())

    # -- reads ----------------------------------------------------------------------------------------
    def get(self, key: tuple[str, ...]) -> bytes | None:
        with self._lock:
            return self._values.get(key)

    def items(self) -> list[tuple[tuple[str, ...], bytes]]:
        with self._lock:
            return list(self._values.items())

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            subs = [*self._dirs.values(), *self._leaves.values()]
            self._dirs.clear()
            self._leaves.clear()
        for s in subs:
            if s is not None:                          # None: a watch still being set (it cancels itself)
                s.cancel()

    # -- machinery ------------------------------------------------------------------------------------
    def _path(self, key: tuple[str, ...]) -> str:
        return "/".join((self.base, *key))

    def _preload(self, prefix: tuple[str, ...]) -> None:
        try:
            names = self.store.children(self._path(prefix))
        except NoNode:
            return
        for n in names:
            key = (*prefix, n)
            if len(key) < self.depth:
                self._preload(key)
                continue
            try:
                self._values[key] = self.store.get(self._path(key))[0]
            except NoNode:
                pass

    def _watch_dir(self, prefix: tuple[str, ...]) -> None:
        with self._lock:
            if self._closed or prefix in self._dirs:
                return
            # registered before subscribing: the initial event may run on the dispatcher at once
            self._dirs[prefix] = None  # type: ignore[assignment]
        sub = self.store.watch_children(self._path(prefix), lambda ev: self._on_children(prefix, ev))
        with self._lock:
            if self._closed or prefix not in self._dirs:
                sub.cancel()
            else:
                self._dirs[prefix] = sub

    def _watch_leaf(self, key: tuple[str, ...]) -> None:
        with self._lock:
            if self._closed or key in self._leaves:
                return
            self._leaves[key] = None  # type: ignore[assignment]
        sub = self.store.watch_data(self._path(key), lambda ev: self._on_data(key, ev))
        with self._lock:
            if self._closed or key not in self._leaves:
                sub.cancel()
            else:
                self._leaves[key] = sub

    def _on_children(self, prefix: tuple[str, ...], ev: WatchEvent) -> None:
        names = set(ev.children or ())
        leaf_level = len(prefix) + 1 == self.depth
        table = self._leaves if leaf_level else self._dirs
        with self._lock:
            if self._closed:
                return
            i = len(prefix)
            watched = {k[i] for k in table if len(k) == i + 1 and k[:i] == prefix}
            # preloaded values count too: a leaf deleted before its watch was set must go as well
            held = {k[i] for k in self._values if k[:i] == prefix}
        for name in sorted(names - watched):
            (self._watch_leaf if leaf_level else self._watch_dir)((*prefix, name))
        for name in sorted((watched | held) - names):
            self._drop((*prefix, name))

    def _drop(self, key: tuple[str, ...]) -> None:
        """A name vanished from its directory: stop watching it (and its subtree), forget its values."""
        with self._lock:
            subs = [s for k, s in [*self._leaves.items(), *self._dirs.items()] if k[:len(key)] == key]
            for k in [k for k in self._leaves if k[:len(key)] == key]:
                del self._leaves[k]
            for k in [k for k in self._dirs if k[:len(key)] == key]:
                del self._dirs[k]
            gone = [(k, v) for k, v in self._values.items() if k[:len(key)] == key]
            for k, _ in gone:
                del self._values[k]
        for s in subs:
            if s is not None:
                s.cancel()
        for k, v in gone:
            self._notify(k, v, None)

    def _on_data(self, key: tuple[str, ...], ev: WatchEvent) -> None:
        with self._lock:
            if self._closed or key not in self._leaves:
                return
            old = self._values.get(key)
            if ev.kind is EventKind.DELETED or ev.value is None:
                self._values.pop(key, None)
                new = None
            else:
                new = self._values[key] = ev.value
        if old != new:
            self._notify(key, old, new)

    def _notify(self, key: tuple[str, ...], old: bytes | None, new: bytes | None) -> None:
        if self._on_change is not None:
            self._on_change(key, old, new)
