"""The coordination-store contract: a hierarchical key-value store in the ZooKeeper mould.

Owns: the ``Store`` ABC every implementation honours (``memory.MemoryStore`` in-process, ``zk.ZkStore`` over
kazoo), the ``StoreError`` hierarchy, watch events, connection states, path validation, and the
``CallbackDispatcher`` that delivers callbacks.

Paths are absolute (``/a/b``), no trailing slash, no empty, ``.`` or ``..`` component.  Values are bytes (at
most ``MAX_VALUE`` bytes, ZooKeeper's default limit).  Versions are ZooKeeper data versions: 0 at create,
+1 per set; ``version=-1`` means "any version".

Subscriptions (``watch_data``, ``watch_children``) are persistent: they live until ``cancel()`` or
``close()``.  The first event after subscribing is ``initial=True`` and describes the current state (a data
watch on a missing node gets ``DELETED`` with ``value=None``).  After that an event is delivered whenever the
observed state changes.

Threading: every callback of one store handle (watch events and connection-state changes) runs on ONE
thread owned by that handle, the dispatcher, one callback at a time, in the order the changes happened.
Callbacks may call the store (blocking calls are fine; they only delay later events of this handle).  A
callback that raises is logged and counted (``store_callback_errors``); delivery goes on.  The dispatcher
queue is unbounded on purpose: a dropped topology event would leave a cache silently stale.

Coalescing: the in-process store delivers every change; ZooKeeper watches are one-shot and re-armed, so
several changes made while a re-arm is in flight may arrive as one event carrying the latest state.  Either
way, versions observed by one subscription never go backwards, and the last event always matches the store.
"""

from __future__ import annotations

import logging
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger(__name__)

MAX_VALUE = 1024 * 1024 - 1024      # ZooKeeper's jute.maxbuffer is 1 MiB for the whole packet


# -- errors -----------------------------------------------------------------------------------------------
class StoreError(Exception):
    """Base of every store error."""


class NoNode(StoreError):
    """The node (or, for create without makepath, its parent) does not exist."""


class NodeExists(StoreError):
    """create() on a path that exists."""


class BadVersion(StoreError):
    """Compare-and-set failed: the node's version is not the expected one."""


class NotEmpty(StoreError):
    """delete() without recursive=True on a node that has children."""


class NoChildrenForEphemerals(StoreError):
    """Ephemeral nodes cannot have children."""


class InvalidPath(StoreError, ValueError):
    """A malformed path."""


class InvalidValue(StoreError, ValueError):
    """A value that is not bytes, or is too large."""


class StoreUnavailable(StoreError):
    """The store cannot be reached (connection lost past the retry deadline, server down)."""


class StoreClosed(StoreUnavailable):
    """The handle was closed."""


class SessionExpired(StoreUnavailable):
    """The session expired during the operation (its ephemerals are gone)."""


# -- events and states ------------------------------------------------------------------------------------
class EventKind(StrEnum):
    CREATED = "created"
    CHANGED = "changed"
    DELETED = "deleted"
    CHILDREN = "children"


class ConnState(StrEnum):
    CONNECTED = "connected"      # operations work
    SUSPENDED = "suspended"      # connection lost, session may still live; operations wait/retry
    LOST = "lost"                # session expired: ephemerals are gone; a new session follows (CONNECTED)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One delivered change.  Data events carry ``value``/``version`` (None when the node is absent);
    children events carry the sorted ``children`` (empty when the node is absent) and ``version=None``."""

    kind: EventKind
    path: str
    value: bytes | None = None
    version: int | None = None
    children: tuple[str, ...] | None = None
    initial: bool = False


WatchCallback = Callable[[WatchEvent], object]
StateCallback = Callable[[ConnState], object]


class Subscription:
    """Handle of a watch or a state listener; ``cancel()`` stops delivery (idempotent)."""

    def __init__(self, on_cancel: Callable[[], None]):
        self._on_cancel: Callable[[], None] | None = on_cancel
        self.active = True

    def cancel(self) -> None:
        if self._on_cancel is not None:
            self.active = False
            cb, self._on_cancel = self._on_cancel, None
            cb()


# -- paths ------------------------------------------------------------------------------------------------
def check_path(path: object) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidPath(f"path must be an absolute string: {path!r}")
    if path == "/":
        return path
    parts = path[1:].split("/")
    if any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise InvalidPath(f"malformed path: {path!r}")
    return path


def check_value(value: object) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidValue(f"value must be bytes, not {type(value).__name__}")
    value = bytes(value)
    if len(value) > MAX_VALUE:
        raise InvalidValue(f"value of {len(value)} bytes exceeds the {MAX_VALUE}-byte limit")
    return value


def parent_of(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def join(*parts: str) -> str:
    return "/" + "/".join(p.strip("/") for p in parts if p.strip("/"))


# -- delivery ---------------------------------------------------------------------------------------------
class CallbackDispatcher:
    """One daemon thread running posted callbacks in order.  ``stop()`` drains nothing further."""

    _STOP = object()

    def __init__(self, name: str):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self.counters = {"store_events_delivered": 0, "store_callback_errors": 0}
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def post(self, fn: Callable, *args: object) -> None:
        self._q.put((fn, args))

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is self._STOP:
                return
            fn, args = item
            try:
                fn(*args)
                self.counters["store_events_delivered"] += 1
            except Exception:  # a subscriber's bug must not stop delivery to the others
                self.counters["store_callback_errors"] += 1
                log.exception("store callback %r failed", fn)

    def stop(self, timeout: float = 5.0) -> None:
        self._q.put(self._STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def in_dispatcher(self) -> bool:
        return threading.current_thread() is self._thread


# -- the contract -----------------------------------------------------------------------------------------
class Store(ABC):
    """One client handle = one session.  All methods are thread-safe."""

    @abstractmethod
    def create(self, path: str, value: bytes = b"", ephemeral: bool = False, sequence: bool = False,
               makepath: bool = True) -> str:
        """Create a node; return its path (with the 10-digit suffix for sequence nodes).  Missing parents are
        created (persistent, empty) when ``makepath``.  Raises NodeExists, NoNode, NoChildrenForEphemerals."""

    @abstractmethod
    def get(self, path: str) -> tuple[bytes, int]:
        """(value, version).  Raises NoNode."""

    @abstractmethod
    def set(self, path: str, value: bytes, version: int = -1) -> int:
        """Write the value if the node's version is ``version`` (or any, with -1); return the new version.
        Raises NoNode, BadVersion."""

    @abstractmethod
    def delete(self, path: str, version: int = -1, recursive: bool = False) -> None:
        """Delete a node (``version`` checked on that node); with ``recursive`` its subtree first.
        Raises NoNode, BadVersion, NotEmpty."""

    @abstractmethod
    def exists(self, path: str) -> int | None:
        """The node's version, or None."""

    @abstractmethod
    def children(self, path: str) -> list[str]:
        """Sorted child names.  Raises NoNode."""

    @abstractmethod
    def watch_data(self, path: str, callback: WatchCallback) -> Subscription:
        """Persistent subscription to a node's value (the node need not exist)."""

    @abstractmethod
    def watch_children(self, path: str, callback: WatchCallback) -> Subscription:
        """Persistent subscription to a node's children (the node need not exist: no children)."""

    @abstractmethod
    def add_state_listener(self, callback: StateCallback) -> Subscription:
        """Connection-state changes (CONNECTED / SUSPENDED / LOST), on the dispatcher thread."""

    @property
    @abstractmethod
    def session_id(self) -> int:
        """The current session id (changes after LOST)."""

    @property
    @abstractmethod
    def counters(self) -> dict[str, int]:
        """Counters of this handle, named ``store_<event>``."""

    @abstractmethod
    def close(self) -> None:
        """End the session (its ephemerals vanish), stop delivery.  Idempotent."""

    def ensure_path(self, path: str) -> None:
        """Create ``path`` and its parents if absent."""
        if self.exists(path) is None:
            try:
                self.create(path, b"", makepath=True)
            except NodeExists:
                pass

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
