"""Coordination stores: the Store contract (base), in-process (memory), ZooKeeper (zk), URIs (uri), and the
topology layout in a store (topo).  ``open_store("memory://")`` / ``open_store("zk://127.0.0.1:2181/root")``."""

from topology.store.base import (
    BadVersion,
    ConnState,
    EventKind,
    InvalidPath,
    InvalidValue,
    NoChildrenForEphemerals,
    NodeExists,
    NoNode,
    NotEmpty,
    SessionExpired,
    Store,
    StoreClosed,
    StoreError,
    StoreUnavailable,
    Subscription,
    WatchEvent,
)
from topology.store.uri import BadStoreUri, open_store

__all__ = [
    "BadStoreUri", "BadVersion", "ConnState", "EventKind", "InvalidPath", "InvalidValue",
    "NoChildrenForEphemerals", "NodeExists", "NoNode", "NotEmpty", "SessionExpired", "Store", "StoreClosed",
    "StoreError", "StoreUnavailable", "Subscription", "WatchEvent", "open_store",
]
