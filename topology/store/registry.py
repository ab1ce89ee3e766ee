"""Live hosts and port bindings in a coordination store: where every egress port lives.

Owns the layout::

    /hosts/<name>         EPHEMERAL {"tunnel_ip": "127.0.0.11", "session": <session id>}   a running agent
    /bindings/<port id>   {"host": "host-a", "interface": "tap-vm1", "tunnel_key": 7}       from the topology

A host node says "this agent is alive, reach it at tunnel_ip"; it vanishes with the agent's session and, when
registered with an ``OwnedEntries``, comes back after a session loss (with the new session id).  Bindings are
persistent configuration: ``write_bindings`` derives them from a topology's bound exterior ports (a diff, like
``topo.write_topology``); the tunnel key of a port is the one stored by ``write_topology`` under
``/topology/tunnel_keys`` (copied into the binding for one-read lookups).  ``HostWatcher`` and
``BindingWatcher`` are local mirrors (lookups read nothing off-box) with a change callback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from packet.addr import int2ip, ip2int
from topology.model import Topology
from topology.store.base import NodeExists, NoNode, Store, StoreError
from topology.store.session import OwnedEntries
from topology.store.topo import node_name, read_tunnel_keys
from topology.store.treemirror import TreeMirror

HOSTS = "/hosts"
BINDINGS = "/bindings"


class HostAlreadyRegistered(StoreError):
    """Another live agent holds this host name."""


@dataclass(frozen=True, slots=True)
class LiveHost:
    name: str
    tunnel_ip: int
    session: int


@dataclass(frozen=True, slots=True)
class Binding:
    port: str
    host: str
    interface: str | None
    tunnel_key: int | None


# -- hosts ------------------------------------------------------------------------------------------------
def host_path(name: str) -> str:
    return f"{HOSTS}/{node_name(name)}"


def _decode_host(name: str, data: bytes) -> LiveHost | None:
    try:
        d = json.loads(data)
        return LiveHost(name, ip2int(d["tunnel_ip"]), int(d["session"]))
    except (ValueError, TypeError, KeyError):
        return None


def register_host(store: Store, name: str, tunnel_ip: int, owned: OwnedEntries | None = None) -> LiveHost:
    """Create this agent's ephemeral host node.  With ``owned`` it is re-created after a session loss.
    Raises HostAlreadyRegistered if another live session holds ``name``."""
    if not isinstance(tunnel_ip, int) or not 0 <= tunnel_ip <= 0xFFFFFFFF:
        raise ValueError(f"tunnel_ip must be an IPv4 address as int: {tunnel_ip!r}")
    path = host_path(name)

    def value() -> bytes:
        return json.dumps({"tunnel_ip": int2ip(tunnel_ip), "session": store.session_id}).encode()

    try:
        if owned is not None:
            owned.create(path, value)
        else:
            store.create(path, value(), ephemeral=True)
    except NodeExists:
        data, _ = store.get(path)
        other = _decode_host(name, data)
        if other is None or other.session != store.session_id:   # not a retried create of ours
            raise HostAlreadyRegistered(f"host {name!r} is registered by session "
                                        f"{other.session if other else '?'!r}") from None
        if owned is not None:
            owned.add(path, value)
    return LiveHost(name, tunnel_ip, store.session_id)


def unregister_host(store: Store, name: str, owned: OwnedEntries | None = None) -> None:
    if owned is not None:
        owned.discard(host_path(name))
    try:
        store.delete(host_path(name))
    except NoNode:
        pass


def live_hosts(store: Store) -> dict[str, LiveHost]:
    """The hosts whose agent is alive now (one store read per host)."""
    out = {}
    try:
        names = store.children(HOSTS)
    except NoNode:
        return out
    for n in names:
        try:
            data, _ = store.get(f"{HOSTS}/{n}")
        except NoNode:
            continue
        h = _decode_host(unquote(n), data)
        if h is not None:
            out[h.name] = h
    return out


class HostWatcher:
    """Local mirror of the live hosts; ``on_change(name, old, new)`` (LiveHost or None) on each change."""

    def __init__(self, store: Store, on_change: Callable[[str, LiveHost | None, LiveHost | None], object]
                 | None = None):
        self._cb = on_change
        self._mirror = TreeMirror(store, HOSTS, 1, self._changed)

    def _changed(self, key: tuple[str, ...], old: bytes | None, new: bytes | None) -> None:
        name = unquote(key[0])
        o = None if old is None else _decode_host(name, old)
        n = None if new is None else _decode_host(name, new)
        if self._cb is not None and o != n:
            self._cb(name, o, n)

    def hosts(self) -> dict[str, LiveHost]:
        out = {}
        for key, data in self._mirror.items():
            h = _decode_host(unquote(key[0]), data)
            if h is not None:
                out[h.name] = h
        return out

    def close(self) -> None:
        self._mirror.close()


# -- bindings ---------------------------------------------------------------------------------------------
def binding_path(port_id: str) -> str:
    return f"{BINDINGS}/{node_name(port_id)}"


def _encode_binding(b: Binding) -> bytes:
    return json.dumps({"host": b.host, "interface": b.interface, "tunnel_key": b.tunnel_key},
                      separators=(",", ":")).encode()


def _decode_binding(port_id: str, data: bytes) -> Binding | None:
    try:
        d = json.loads(data)
        key = d.get("tunnel_key")
        return Binding(port_id, str(d["host"]), d.get("interface"), None if key is None else int(key))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def bindings_of_topology(topo: Topology) -> dict[str, Binding]:
    """Every exterior port bound to a host, by port id."""
    return {pid: Binding(pid, p.host, p.interface, p.tunnel_key)
            for pid, p in topo.all_ports().items() if p.exterior and p.host is not None}


def write_bindings(store: Store, topo: Topology) -> dict[str, int]:
    """Make ``/bindings`` hold exactly the topology's bindings; counts like ``topo.write_topology``."""
    wanted = {binding_path(pid): _encode_binding(b) for pid, b in bindings_of_topology(topo).items()}
    counts = {"created": 0, "updated": 0, "deleted": 0, "unchanged": 0}
    for path, data in wanted.items():
        try:
            old, _ = store.get(path)
        except NoNode:
            try:
                store.create(path, data)
                counts["created"] += 1
                continue
            except NodeExists:
                old = None
        if old == data:
            counts["unchanged"] += 1
        else:
            store.set(path, data)
            counts["updated"] += 1
    try:
        present = store.children(BINDINGS)
    except NoNode:
        present = []
    for child in present:
        path = f"{BINDINGS}/{child}"
        if path not in wanted:
            try:
                store.delete(path)
                counts["deleted"] += 1
            except NoNode:
                pass
    return counts


def binding_of(store: Store, port_id: str) -> Binding | None:
    """Where ``port_id`` is bound (one store read), or None."""
    try:
        data, _ = store.get(binding_path(port_id))
    except NoNode:
        return None
    return _decode_binding(port_id, data)


def all_bindings(store: Store) -> dict[str, Binding]:
    out = {}
    try:
        names = store.children(BINDINGS)
    except NoNode:
        return out
    for n in names:
        b = binding_of(store, unquote(n))
        if b is not None:
            out[b.port] = b
    return out


def port_by_tunnel_key(source: Store | dict[str, int], key: int) -> str | None:
    """The port id whose tunnel key is ``key``.  ``source``: a store (reads /topology/tunnel_keys) or an
    already-read ``read_tunnel_keys`` dict (no store read: keep one and refresh it from a watch)."""
    keys = source if isinstance(source, dict) else read_tunnel_keys(source)
    for pid, k in keys.items():
        if k == key:
            return pid
    return None


class BindingWatcher:
    """Local mirror of every binding; ``on_change(port_id, old, new)`` (Binding or None) on each change."""

    def __init__(self, store: Store, on_change: Callable[[str, Binding | None, Binding | None], object]
                 | None = None):
        self._cb = on_change
        self._mirror = TreeMirror(store, BINDINGS, 1, self._changed)

    def _changed(self, key: tuple[str, ...], old: bytes | None, new: bytes | None) -> None:
        pid = unquote(key[0])
        o = None if old is None else _decode_binding(pid, old)
        n = None if new is None else _decode_binding(pid, new)
        if self._cb is not None and o != n:
            self._cb(pid, o, n)

    def binding(self, port_id: str) -> Binding | None:
        data = self._mirror.get((node_name(port_id),))
        return None if data is None else _decode_binding(port_id, data)

    def by_tunnel_key(self, key: int) -> Binding | None:
        for k, data in self._mirror.items():
            b = _decode_binding(unquote(k[0]), data)
            if b is not None and b.tunnel_key == key:
                return b
        return None

    def close(self) -> None:
        self._mirror.close()
