"""In-process store with the ZooKeeper contract: the embedded default and the twin of ZkStore in tests.

Owns: ``MemoryBackend`` (the tree, one lock, the registered watches; a named backend is shared by every handle
opened on it) and ``MemoryStore`` (one client handle = one session, with its own dispatcher thread).  Several
handles on one backend model several agents on one ZooKeeper: each has a session, its ephemerals vanish when
it is closed or ``expire_session()`` is called, and every handle's watches see every change.

Every mutation runs under the backend lock and posts its events to the subscribers' dispatchers while still
holding it, so each handle receives events in exactly the order the mutations happened (no coalescing).
Callbacks run later, on the dispatcher threads, never under the lock.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field

from topology.store.base import (
    BadVersion,
    CallbackDispatcher,
    ConnState,
    EventKind,
    InvalidPath,
    NoChildrenForEphemerals,
    NodeExists,
    NoNode,
    NotEmpty,
    StateCallback,
    Store,
    StoreClosed,
    Subscription,
    WatchCallback,
    WatchEvent,
    check_path,
    check_value,
    parent_of,
)


@dataclass(slots=True)
class _Node:
    value: bytes = b""
    version: int = 0
    owner: int = 0                         # session id of an ephemeral's owner, 0 for persistent
    children: set[str] = field(default_factory=set)
    cversion: int = 0                      # child creations + deletions (sequence suffix source)


@dataclass(eq=False, slots=True)
class _Watch:
    store: MemoryStore
    path: str                              # as the subscriber named it (relative to its root)
    callback: WatchCallback
    sub: Subscription | None = None


class MemoryBackend:
    """The shared tree.  Thread-safe; every method expects full (un-rooted) paths."""

    def __init__(self, name: str = ""):
        self.name = name
        self.lock = threading.RLock()
        self.nodes: dict[str, _Node] = {"/": _Node()}
        self.data_watches: dict[str, list[_Watch]] = {}
        self.child_watches: dict[str, list[_Watch]] = {}
        self._sessions = itertools.count(0x5EED0001)

    def new_session(self) -> int:
        return next(self._sessions)

    # All below: call with self.lock held.
    def fire_data(self, full: str, kind: EventKind) -> None:
        node = self.nodes.get(full)
        for w in self.data_watches.get(full, ()):
            ev = WatchEvent(kind, w.path, node.value if node else None, node.version if node else None)
            w.store._post(w, ev)

    def fire_children(self, full: str) -> None:
        watches = self.child_watches.get(full)
        if not watches:
            return
        node = self.nodes.get(full)
        kids = tuple(sorted(node.children)) if node else ()
        for w in watches:
            w.store._post(w, WatchEvent(EventKind.CHILDREN, w.path, children=kids))

    def add(self, full: str, value: bytes, owner: int) -> None:
        parent = self.nodes[parent_of(full)]
        parent.children.add(full.rsplit("/", 1)[1])
        parent.cversion += 1
        self.nodes[full] = _Node(value=value, owner=owner)
        self.fire_data(full, EventKind.CREATED)
        self.fire_children(parent_of(full))

    def remove(self, full: str) -> None:
        del self.nodes[full]
        parent = self.nodes[parent_of(full)]
        parent.children.discard(full.rsplit("/", 1)[1])
        parent.cversion += 1
        self.fire_data(full, EventKind.DELETED)
        self.fire_children(parent_of(full))

    def drop_session(self, session: int) -> None:
        for full in sorted((p for p, n in self.nodes.items() if n.owner == session), reverse=True):
            self.remove(full)


_backends: dict[str, MemoryBackend] = {}
_backends_lock = threading.Lock()


def backend(name: str = "") -> MemoryBackend:
    """The process-global backend called ``name`` ('' is the default one), created on first use."""
    with _backends_lock:
        if name not in _backends:
            _backends[name] = MemoryBackend(name)
        return _backends[name]


def drop_backend(name: str) -> None:
    """Forget a named backend (tests: free a private tree).  Open handles keep working on the old object."""
    with _backends_lock:
        _backends.pop(name, None)


class MemoryStore(Store):
    """One session on a MemoryBackend, optionally rooted at ``root`` (a chroot, which must exist)."""

    def __init__(self, backend: MemoryBackend | None = None, root: str = "/"):
        self._b = backend if backend is not None else MemoryBackend()
        self._root = "" if root == "/" else check_path(root)
        self._closed = False
        self._watches: list[_Watch] = []
        self._listeners: list[tuple[Subscription, StateCallback]] = []
        self._dispatcher = CallbackDispatcher(f"memstore-{self._b.name or 'default'}")
        self._session = self._b.new_session()
        self._counters = {"store_sessions_expired": 0}

    # -- helpers ------------------------------------------------------------------------------------------
    def _full(self, path: str) -> str:
        if self._closed:
            raise StoreClosed("store handle is closed")
        check_path(path)
        return (self._root + path) if path != "/" else (self._root or "/")

    def _rel(self, full: str) -> str:
        return full[len(self._root):] or "/"

    def _post(self, w: _Watch, ev: WatchEvent) -> None:
        self._dispatcher.post(self._deliver, w, ev)

    @staticmethod
    def _deliver(w: _Watch, ev: WatchEvent) -> None:
        if w.sub is not None and w.sub.active:
            w.callback(ev)

    def _node(self, full: str, path: str) -> _Node:
        node = self._b.nodes.get(full)
        if node is None:
            raise NoNode(path)
        return node

    # -- Store --------------------------------------------------------------------------------------------
    def create(self, path: str, value: bytes = b"", ephemeral: bool = False, sequence: bool = False,
               makepath: bool = True) -> str:
        full, value = self._full(path), check_value(value)
        if full == "/":
            raise NodeExists(path)
        with self._b.lock:
            parent = parent_of(full)
            if parent not in self._b.nodes:
                if not makepath:
                    raise NoNode(f"parent of {path} does not exist")
                missing = []
                while parent not in self._b.nodes:
                    missing.append(parent)
                    parent = parent_of(parent)
                if self._b.nodes[parent].owner:
                    raise NoChildrenForEphemerals(self._rel(parent))
                for p in reversed(missing):
                    self._b.add(p, b"", 0)
            elif self._b.nodes[parent].owner:
                raise NoChildrenForEphemerals(self._rel(parent))
            if sequence:
                full = f"{full}{self._b.nodes[parent_of(full)].cversion:010d}"
            if full in self._b.nodes:
                raise NodeExists(self._rel(full))
            self._b.add(full, value, self._session if ephemeral else 0)
            return self._rel(full)

    def get(self, path: str) -> tuple[bytes, int]:
        full = self._full(path)
        with self._b.lock:
            node = self._node(full, path)
            return node.value, node.version

    def set(self, path: str, value: bytes, version: int = -1) -> int:
        full, value = self._full(path), check_value(value)
        with self._b.lock:
            node = self._node(full, path)
            if version != -1 and version != node.version:
                raise BadVersion(f"{path}: version {node.version}, expected {version}")
            node.value, node.version = value, node.version + 1
            self._b.fire_data(full, EventKind.CHANGED)
            return node.version

    def delete(self, path: str, version: int = -1, recursive: bool = False) -> None:
        full = self._full(path)
        if path == "/":
            raise InvalidPath("cannot delete the root")
        with self._b.lock:
            node = self._node(full, path)
            if version != -1 and version != node.version:
                raise BadVersion(f"{path}: version {node.version}, expected {version}")
            if node.children and not recursive:
                raise NotEmpty(path)
            self._remove_tree(full)

    def _remove_tree(self, full: str) -> None:
        """Children first (depth-first, sorted), then the node: the order ZooKeeper clients delete in."""
        for child in sorted(self._b.nodes[full].children):
            self._remove_tree(f"{full}/{child}" if full != "/" else f"/{child}")
        self._b.remove(full)

    def exists(self, path: str) -> int | None:
        full = self._full(path)
        with self._b.lock:
            node = self._b.nodes.get(full)
            return None if node is None else node.version

    def children(self, path: str) -> list[str]:
        full = self._full(path)
        with self._b.lock:
            return sorted(self._node(full, path).children)

    def _watch(self, table: dict[str, list[_Watch]], path: str, callback: WatchCallback,
               children: bool) -> Subscription:
        full = self._full(path)
        w = _Watch(self, path, callback)

        def cancel() -> None:
            with self._b.lock:
                lst = table.get(full, [])
                if w in lst:
                    lst.remove(w)
                    if not lst:
                        table.pop(full, None)
                if w in self._watches:
                    self._watches.remove(w)

        w.sub = Subscription(cancel)
        with self._b.lock:
            node = self._b.nodes.get(full)
            if not children:
                kind = EventKind.CHANGED if node else EventKind.DELETED
                ev = WatchEvent(kind, path, node.value if node else None, node.version if node else None,
                                initial=True)
            else:
                kids = tuple(sorted(node.children)) if node else ()
                ev = WatchEvent(EventKind.CHILDREN, path, children=kids, initial=True)
            table.setdefault(full, []).append(w)
            self._watches.append(w)
            self._post(w, ev)
        return w.sub

    def watch_data(self, path: str, callback: WatchCallback) -> Subscription:
        return self._watch(self._b.data_watches, path, callback, children=False)

    def watch_children(self, path: str, callback: WatchCallback) -> Subscription:
        return self._watch(self._b.child_watches, path, callback, children=True)

    def add_state_listener(self, callback: StateCallback) -> Subscription:
        entry: list = []
        sub = Subscription(lambda: self._listeners.remove(entry[0]) if entry[0] in self._listeners else None)
        entry.append((sub, callback))
        self._listeners.append(entry[0])
        return sub

    def _post_state(self, state: ConnState) -> None:
        for sub, cb in list(self._listeners):
            self._dispatcher.post(lambda s=sub, c=cb: c(state) if s.active else None)

    @property
    def session_id(self) -> int:
        return self._session

    @property
    def counters(self) -> dict[str, int]:
        return {**self._dispatcher.counters, **self._counters}

    def expire_session(self) -> None:
        """Fault injection: the session expires (ephemerals dropped, watchers see it), listeners get LOST,
        then a new session starts (CONNECTED) — what a ZooKeeper client sees."""
        with self._b.lock:
            self._b.drop_session(self._session)
            self._counters["store_sessions_expired"] += 1
            self._post_state(ConnState.LOST)
            self._session = self._b.new_session()
            self._post_state(ConnState.CONNECTED)

    def close(self) -> None:
        if self._closed:
            return
        with self._b.lock:
            for w in list(self._watches):
                if w.sub is not None:
                    w.sub.cancel()
            self._b.drop_session(self._session)
            self._closed = True
        self._listeners.clear()
        self._dispatcher.stop()
