"""ZooKeeper store over kazoo: the Store contract on a real ensemble.

Owns: one KazooClient (one session), its chroot, the re-armed watches behind persistent subscriptions, and the
dispatcher thread that runs this handle's callbacks.

Operations are kazoo async calls waited with a bounded timeout, wrapped in a ``KazooRetry`` whose retryable
errors are the explicit ``RETRYABLE`` tuple (connection loss, server-side operation timeout, our own wait
timeout) and whose deadline is ``op_timeout``; past it the call raises ``StoreUnavailable``.  Every kazoo
error is mapped to the ``StoreError`` hierarchy (``_ERRORS``).  Caveat inherited from ZooKeeper: a write whose
reply was lost may have been applied; a retried ``create`` may then raise NodeExists (or, for a sequence node,
leave a second node).  Callers that must know should check ownership (e.g. the value they wrote).

Watches: ZooKeeper watches are one-shot and kazoo forgets them when the connection drops.  Each subscription
(``_ZkWatch``) re-reads its node with a new watch every time one fires (on kazoo's callback thread) and on
every CONNECTED transition (on a spawned thread), under a per-subscription lock, and compares what it read
with what it last delivered (czxid/mzxid for data, the sorted names for children) so it delivers only real
changes, never twice, never backwards.  Events are posted to this handle's dispatcher (see store.base).

Logs: kazoo logs "Connection dropped", "Connecting to …", "Closing connection …" on every retry of a
reconnect — hundreds in an outage.  Its logger here is a ``KazooLogTamer``: each of its messages (by level and
format string) passes once per connection-state change, the rest are counted (``store_log_lines_suppressed``);
the agent adds its own line per transition (engine/session.py).
"""

from __future__ import annotations

import logging
import threading

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadArgumentsError,
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry, RetryFailedError

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
    SessionExpired,
    StateCallback,
    Store,
    StoreClosed,
    StoreError,
    StoreUnavailable,
    Subscription,
    WatchCallback,
    WatchEvent,
    check_path,
    check_value,
    join,
)

# Retried until op_timeout.  SessionExpiredError is in: kazoo refuses calls between LOST and the next session,
# and an operation should ride over into the new session (the LOST state event is what tells an owner to
# re-create its ephemerals).  Past the deadline the last error decides: SessionExpired or StoreUnavailable.
RETRYABLE = (ConnectionLoss, OperationTimeoutError, KazooTimeoutError, SessionExpiredError)

_ERRORS: tuple[tuple[type[BaseException], type[StoreError]], ...] = (
    (NoNodeError, NoNode),
    (NodeExistsError, NodeExists),
    (BadVersionError, BadVersion),
    (NotEmptyError, NotEmpty),
    (NoChildrenForEphemeralsError, NoChildrenForEphemerals),
    (BadArgumentsError, InvalidPath),
    (SessionExpiredError, SessionExpired),
    (ConnectionClosedError, StoreClosed),
    (ConnectionLoss, StoreUnavailable),
    (OperationTimeoutError, StoreUnavailable),
    (KazooTimeoutError, StoreUnavailable),
)

_STATES = {KazooState.CONNECTED: ConnState.CONNECTED, KazooState.SUSPENDED: ConnState.SUSPENDED,
           KazooState.LOST: ConnState.LOST}


class KazooLogTamer(logging.LoggerAdapter):
    """The ``kazoo.client`` logger, passing each INFO-or-above message once per connection-state change."""

    def __init__(self, logger: logging.Logger | None = None):
        super().__init__(logger or logging.getLogger("kazoo.client"), {})
        self._seen: set = set()
        self._lock = threading.Lock()
        self.suppressed = 0

    def state_changed(self) -> None:
        with self._lock:
            self._seen.clear()

    def log(self, level, msg, *args, **kwargs):
        if level >= logging.INFO:
            key = (level, msg if isinstance(msg, str) else type(msg).__name__)
            with self._lock:
                if key in self._seen:
                    self.suppressed += 1
                    return
                self._seen.add(key)
        super().log(level, msg, *args, **kwargs)


def map_error(exc: BaseException, what: str) -> StoreError:
    for kazoo_type, ours in _ERRORS:
        if isinstance(exc, kazoo_type):
            return ours(f"{what}: {type(exc).__name__}")
    return StoreError(f"{what}: {type(exc).__name__}: {exc}")


class ZkStore(Store):
    """One kazoo session on ``hosts`` (``h:p,h:p``), rooted at ``root`` (created if absent)."""

    def __init__(self, hosts: str, root: str = "/", session_timeout: float = 10.0, op_timeout: float = 10.0,
                 connect_timeout: float = 10.0):
        self.hosts = hosts
        self.root = check_path(root)
        self._op_timeout = op_timeout
        self._retry = KazooRetry(max_tries=-1, delay=0.05, backoff=2, max_delay=1.0, deadline=op_timeout,
                                 ignore_expire=False)
        self._retry.retry_exceptions = RETRYABLE
        self._closed = False
        self._lock = threading.Lock()
        self._watches: set[_ZkWatch] = set()
        self._listeners: list[tuple[Subscription, StateCallback]] = []
        self._counters = {"store_suspended": 0, "store_sessions_expired": 0, "store_reconnected": 0}
        self._log = KazooLogTamer()
        self._client = KazooClient(hosts=hosts, timeout=session_timeout, logger=self._log,
                                   connection_retry={"max_tries": -1, "delay": 0.05, "backoff": 1.5,
                                                     "max_delay": 1.0})
        try:
            self._client.start(timeout=connect_timeout)
        except (KazooTimeoutError, KazooException) as e:
            self._client.stop()
            self._client.close()
            raise StoreUnavailable(f"cannot connect to ZooKeeper at {hosts} within {connect_timeout}s") from e
        try:
            if self.root != "/":
                self._op("ensure root", self._client.ensure_path_async, self.root)
                self._client.chroot = self.root
            self._session = self._client.client_id[0]
        except StoreError:
            self._client.stop()
            self._client.close()
            raise
        self._dispatcher = CallbackDispatcher(f"zkstore-{hosts}")
        self._client.add_listener(self._on_state)

    @property
    def client(self) -> KazooClient:
        """The kazoo client (fault injection in tests; do not use it for data)."""
        return self._client

    # -- operations ---------------------------------------------------------------------------------------
    def _op(self, what: str, fn, *args, **kw):
        if self._closed:
            raise StoreClosed("store handle is closed")

        last: list[BaseException] = []

        def once():
            try:
                return fn(*args, **kw).get(timeout=self._op_timeout)
            except RETRYABLE as e:
                last[:] = [e]
                raise

        try:
            return self._retry.copy()(once)
        except RetryFailedError as e:
            if last and isinstance(last[0], SessionExpiredError):
                raise SessionExpired(f"{what}: session expired and no new session within "
                                     f"{self._op_timeout}s") from e
            raise StoreUnavailable(f"{what}: ZooKeeper unreachable for {self._op_timeout}s") from e
        except (KazooException, KazooTimeoutError) as e:
            raise map_error(e, what) from e

    def create(self, path: str, value: bytes = b"", ephemeral: bool = False, sequence: bool = False,
               makepath: bool = True) -> str:
        check_path(path)
        value = check_value(value)
        if path == "/":
            raise NodeExists("/")
        return self._op(f"create {path}", self._client.create_async, path, value, ephemeral=ephemeral,
                        sequence=sequence, makepath=makepath)

    def get(self, path: str) -> tuple[bytes, int]:
        data, stat = self._op(f"get {path}", self._client.get_async, check_path(path))
        return data, stat.version

    def set(self, path: str, value: bytes, version: int = -1) -> int:
        check_path(path)
        stat = self._op(f"set {path}", self._client.set_async, path, check_value(value), version)
        return stat.version

    def delete(self, path: str, version: int = -1, recursive: bool = False) -> None:
        if check_path(path) == "/":
            raise InvalidPath("cannot delete the root")
        if recursive:
            current = self.exists(path)
            if current is None:
                raise NoNode(path)
            if version != -1 and current != version:
                raise BadVersion(f"{path}: version {current}, expected {version}")
            for child in self.children(path):
                self._delete_tree(join(path, child))
        self._op(f"delete {path}", self._client.delete_async, path, version)

    def _delete_tree(self, path: str) -> None:
        try:
            for child in self.children(path):
                self._delete_tree(join(path, child))
            self._op(f"delete {path}", self._client.delete_async, path, -1)
        except NoNode:
            pass

    def exists(self, path: str) -> int | None:
        stat = self._op(f"exists {path}", self._client.exists_async, check_path(path))
        return None if stat is None else stat.version

    def children(self, path: str) -> list[str]:
        return sorted(self._op(f"children {path}", self._client.get_children_async, check_path(path)))

    # -- subscriptions ------------------------------------------------------------------------------------
    def _subscribe(self, path: str, callback: WatchCallback, children: bool) -> Subscription:
        if self._closed:
            raise StoreClosed("store handle is closed")
        w = _ZkWatch(self, check_path(path), callback, children)
        with self._lock:
            self._watches.add(w)
        w.refresh()
        return w.sub

    def watch_data(self, path: str, callback: WatchCallback) -> Subscription:
        return self._subscribe(path, callback, children=False)

    def watch_children(self, path: str, callback: WatchCallback) -> Subscription:
        return self._subscribe(path, callback, children=True)

    def add_state_listener(self, callback: StateCallback) -> Subscription:
        entry: list = []

        def cancel() -> None:
            with self._lock:
                if entry[0] in self._listeners:
                    self._listeners.remove(entry[0])

        sub = Subscription(cancel)
        entry.append((sub, callback))
        with self._lock:
            self._listeners.append(entry[0])
        return sub

    def _on_state(self, kstate: str) -> None:
        """kazoo's connection thread: never block here."""
        self._log.state_changed()
        state = _STATES[kstate]
        if state is ConnState.SUSPENDED:
            self._counters["store_suspended"] += 1
        elif state is ConnState.LOST:
            self._counters["store_sessions_expired"] += 1
        else:
            self._counters["store_reconnected"] += 1
            cid = self._client.client_id
            if cid:
                self._session = cid[0]
            with self._lock:
                watches = list(self._watches)
            for w in watches:   # kazoo dropped its watches with the connection: read again, re-arm
                self._client.handler.spawn(w.refresh)
        with self._lock:
            listeners = list(self._listeners)
        for sub, cb in listeners:
            self._dispatcher.post(lambda s=sub, c=cb: c(state) if s.active else None)

    @property
    def session_id(self) -> int:
        return self._session

    @property
    def counters(self) -> dict[str, int]:
        return {**self._dispatcher.counters, **self._counters, "store_log_lines_suppressed": self._log.suppressed}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            watches, self._watches = list(self._watches), set()
            self._listeners.clear()
        for w in watches:
            w.sub.cancel()
        self._client.remove_listener(self._on_state)
        try:
            self._client.stop()     # closes the session: its ephemerals vanish now
            self._client.close()
        finally:
            self._dispatcher.stop()


class _ZkWatch:
    """A persistent subscription built from one-shot ZooKeeper watches (see the module comment)."""

    def __init__(self, store: ZkStore, path: str, callback: WatchCallback, children: bool):
        self.store, self.path, self.callback, self.is_children = store, path, callback, children
        self.lock = threading.Lock()
        self.first = True
        self.last: object = None
        self.sub = Subscription(self._cancel)

    def _cancel(self) -> None:
        with self.store._lock:
            self.store._watches.discard(self)

    def _watcher(self, _event: object) -> None:
        self.refresh()

    def _read(self) -> object:
        c, t = self.store._client, self.store._op_timeout
        while True:
            try:
                if self.is_children:
                    return tuple(sorted(c.get_children_async(self.path, watch=self._watcher).get(timeout=t)))
                data, stat = c.get_async(self.path, watch=self._watcher).get(timeout=t)
                return (stat.czxid, stat.mzxid, stat.version, data)
            except NoNodeError:
                if c.exists_async(self.path, watch=self._watcher).get(timeout=t) is None:
                    return () if self.is_children else None
                # created between the two calls: read again

    def refresh(self) -> None:
        with self.lock:
            if not self.sub.active or self.store._closed:
                return
            try:
                new = self._read()
            except (KazooException, KazooTimeoutError):
                return          # connection trouble: the next CONNECTED transition refreshes again
            for ev in self._events(new):
                self.store._dispatcher.post(self._deliver, ev)
            self.first, self.last = False, new

    def _deliver(self, ev: WatchEvent) -> None:
        if self.sub.active:
            self.callback(ev)

    def _events(self, new: object) -> list[WatchEvent]:
        p, old = self.path, self.last
        if self.is_children:
            if self.first or new != old:
                return [WatchEvent(EventKind.CHILDREN, p, children=new, initial=self.first)]
            return []
        if self.first:
            if new is None:
                return [WatchEvent(EventKind.DELETED, p, initial=True)]
            return [WatchEvent(EventKind.CHANGED, p, new[3], new[2], initial=True)]
        if new is None:
            return [] if old is None else [WatchEvent(EventKind.DELETED, p)]
        created = WatchEvent(EventKind.CREATED, p, new[3], new[2])
        if old is None:
            return [created]
        if new[0] != old[0]:            # deleted and created again in between
            return [WatchEvent(EventKind.DELETED, p), created]
        if new[1] != old[1]:
            return [WatchEvent(EventKind.CHANGED, p, new[3], new[2])]
        return []
