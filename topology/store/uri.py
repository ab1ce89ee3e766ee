"""Store URIs: the one way the rest of the system names and opens a coordination store.

    memory://                 the process-global default in-process backend
    memory://NAME[/ROOT]      a named in-process backend (shared by every handle opened on that name)
    zk://HOST:PORT[,HOST:PORT...][/ROOT][?session_timeout=S&op_timeout=S&connect_timeout=S]

ROOT is a chroot: every path the handle sees is below it; it is created if absent.  Each ``open_store`` call
opens a new handle, that is a new session.  A malformed URI raises ``BadStoreUri`` naming what is wrong.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from topology.store.base import InvalidPath, Store, StoreError, check_path

ZK_OPTIONS = ("session_timeout", "op_timeout", "connect_timeout")


class BadStoreUri(StoreError, ValueError):
    """A store URI that cannot be parsed."""


def _root(path: str, uri: str) -> str:
    if path in ("", "/"):
        return "/"
    try:
        return check_path(path.rstrip("/") or "/")
    except InvalidPath as e:
        raise BadStoreUri(f"{uri!r}: bad root: {e}") from None


def open_store(uri: str) -> Store:
    if not isinstance(uri, str):
        raise BadStoreUri(f"store URI must be a string, not {type(uri).__name__}")
    scheme, sep, rest = uri.partition("://")
    if not sep:
        raise BadStoreUri(f"{uri!r}: expected memory://[NAME[/ROOT]] or zk://HOST:PORT[,...][/ROOT]")
    if scheme == "memory":
        from topology.store.memory import MemoryStore, backend

        name, _, path = rest.partition("/")
        if "?" in rest:
            raise BadStoreUri(f"{uri!r}: memory stores take no options")
        root = _root("/" + path, uri)
        store = MemoryStore(backend(name))
        if root != "/":
            store.ensure_path(root)
            store.close()
            store = MemoryStore(backend(name), root)
        return store
    if scheme == "zk":
        parts = urlsplit(uri)
        netloc = parts.netloc
        if not netloc:
            raise BadStoreUri(f"{uri!r}: no HOST:PORT")
        for hp in netloc.split(","):
            host, colon, port = hp.rpartition(":")
            if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise BadStoreUri(f"{uri!r}: {hp!r} is not HOST:PORT")
        options = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
            if key not in ZK_OPTIONS:
                raise BadStoreUri(f"{uri!r}: unknown option {key!r} (known: {', '.join(ZK_OPTIONS)})")
            try:
                options[key] = float(value)
            except ValueError:
                raise BadStoreUri(f"{uri!r}: option {key} must be a number of seconds") from None
            if options[key] <= 0:
                raise BadStoreUri(f"{uri!r}: option {key} must be positive")
        from topology.store.zk import ZkStore

        return ZkStore(netloc, _root(parts.path, uri), **options)
    raise BadStoreUri(f"{uri!r}: unknown scheme {scheme!r} (memory, zk)")
