"""The agent's copy of the topology held in a store, kept fresh by watches, serving fragments to workers.

Owns: the records of every kind read from the store (as JSON bytes, exactly as stored), the index port id →
device and the port-group membership index.  A TreeMirror (topology.store.treemirror) over the topology root keeps
them fresh.  Every change a watch
delivers is applied here and reported to ``on_change(kind, name)`` (the supervisor turns it into
TopologyChanged for the workers, which invalidate the flows tagged with that object).

Workers hold only the fragments they needed (workers.topocache); ``fragment`` answers a request with the object
and what a simulation will need right after it: a device comes with the chains and load balancer it names and
the hosts its ports are bound to.  Reads from the store (off-box) happen only here: ``store_reads`` counts them.

Threading: watch callbacks run on the store's delivery thread; ``fragment`` runs on the supervisor's thread.
A lock guards the maps.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from urllib.parse import unquote

from topology.store.base import Store
from topology.store.topo import KINDS, ROOT, decode
from topology.store.treemirror import TreeMirror

DEVICE_KINDS = ("bridge", "router")
_KIND_OF_DIR = {directory: kind for kind, (directory, _) in KINDS.items()}


class StoreMirror:
    def __init__(self, store: Store, on_change: Callable[[str, str], None] | None = None):
        self.store = store
        self.on_change = on_change
        self.lock = threading.RLock()
        self.data: dict[tuple[str, str], bytes] = {}
        self.objects: dict[tuple[str, str], object] = {}
        self.port_device: dict[str, str] = {}
        self.groups: dict[str, list[str]] = {}
        self.counters = {"mirror_store_reads": 0, "mirror_changes": 0, "mirror_fragments_served": 0}
        self.ready = threading.Event()
        store.ensure_path(ROOT)
        with self.lock:          # changes delivered meanwhile wait, then apply on top of the first read
            self.tree = TreeMirror(store, ROOT, 2, self._changed)
            for key, value in self.tree.items():
                self._set(key, value, notify=False)
        self.ready.set()

    def close(self) -> None:
        self.tree.close()

    def wait_ready(self, timeout: float = 10.0) -> bool:
        return self.ready.wait(timeout)

    def _changed(self, key: tuple[str, ...], _old: bytes | None, new: bytes | None) -> None:
        self.counters["mirror_store_reads"] += 1
        self._set(key, new, notify=True)

    def _set(self, raw: tuple[str, ...], value: bytes | None, notify: bool) -> None:
        kind = _KIND_OF_DIR.get(raw[0])
        if kind is None:                               # tunnel keys and anything else under the root
            return
        name = unquote(raw[1])
        with self.lock:
            old = self.data.get((kind, name))
            if old == value:
                return
            if value is None:
                self.data.pop((kind, name), None)
                obj = self.objects.pop((kind, name), None)
            else:
                obj = decode(kind, value, f"{kind}/{name}")
                self.data[(kind, name)] = value
                self.objects[(kind, name)] = obj
            self._reindex(kind, name, obj if value is None else None, obj if value is not None else None)
            self.counters["mirror_changes"] += 1
        if notify and self.on_change is not None:
            self.on_change(kind, name)
            if kind == "port_group":
                self.on_change("port_groups", "*")

    def _reindex(self, kind: str, name: str, removed, added) -> None:
        if kind in DEVICE_KINDS:
            if removed is not None:
                for p in removed.ports.values():
                    if self.port_device.get(p.id) == name:
                        del self.port_device[p.id]
            if added is not None:
                for p in added.ports.values():
                    self.port_device[p.id] = name
        elif kind == "port_group":
            groups: dict[str, list[str]] = {}
            for (k, _), obj in self.objects.items():
                if k == "port_group":
                    for pid in obj.ports:
                        groups.setdefault(pid, []).append(obj.name)
            self.groups = groups

    # -- fragments ------------------------------------------------------------------------------------------
    def get(self, kind: str, name: str):
        with self.lock:
            return self.objects.get((kind, name))

    def fragment(self, kind: str, name: str) -> tuple[tuple[str, str, bytes | None], ...]:
        """Records answering a worker's need (kind, name); a (kind, name, None) record says it does not exist."""
        self.counters["mirror_fragments_served"] += 1
        with self.lock:
            if kind == "port_groups":
                return (("port_groups", "*", json.dumps(self.groups).encode()),)
            if kind == "port":
                dev = self.port_device.get(name)
                if dev is None:
                    return (("port", name, None),)
                kind, name = ("bridge" if ("bridge", dev) in self.data else "router"), dev
            elif kind == "device":
                if ("bridge", name) in self.data:
                    kind = "bridge"
                elif ("router", name) in self.data:
                    kind = "router"
                else:
                    return (("device", name, None),)
            data = self.data.get((kind, name))
            if data is None:
                return ((kind, name, None),)
            out = [(kind, name, data)]
            obj = self.objects[(kind, name)]
            if kind in DEVICE_KINDS:
                for ref_kind, ref in self._references(obj):
                    d = self.data.get((ref_kind, ref))
                    if d is not None:
                        out.append((ref_kind, ref, d))
            return tuple(out)

    def _references(self, dev) -> list[tuple[str, str]]:
        refs = []
        for chain in (dev.inbound_filter, dev.outbound_filter):
            if chain:
                refs.append(("chain", chain))
        lb = getattr(dev, "load_balancer", None)
        if lb:
            refs.append(("load_balancer", lb))
        for host in sorted({p.host for p in dev.ports.values() if p.host}):
            refs.append(("host", host))
        return refs
