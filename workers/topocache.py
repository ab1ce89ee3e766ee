"""A worker's partial copy of the topology: the fragments it has needed so far (a TopologyView).

Owns: the records received from the supervisor (devices with their ports, chains, load balancers, port
groups, hosts), the index port id → device, and the negative entries (objects the supervisor said do not
exist).  Filled only by ``add`` (Fragment messages), emptied per object by ``forget`` (TopologyChanged).
A lookup of an object not held returns None: the simulation parks on NeedFragment and the worker asks for it.
A record that does not decode, or that is not the object it is filed under, is refused and counted: the
cache holds only what the simulation can read.

Counters: ``topology_fragments`` (records received), ``topology_absent`` (negative answers),
``topology_bad_records`` (refused); ``topology_requests`` is counted by the worker loop.
"""

from __future__ import annotations

import json

from topology.model import Port
from topology.store.topo import decode

_KIND_TO_VIEW = {"bridge": "bridge", "router": "router", "chain": "chain", "load_balancer": "load_balancer",
                 "port_group": "port_group", "host": "host"}


class TopologyCache:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], object] = {}
        self.absent: set[tuple[str, str]] = set()
        self.ports: dict[str, Port] = {}
        self.kinds: dict[str, str] = {}
        self.groups: dict[str, tuple[str, ...]] | None = None    # port id → group names, once loaded
        self.counters = {"topology_fragments": 0, "topology_absent": 0, "topology_bad_records": 0}

    # -- TopologyView ---------------------------------------------------------------------------------------
    def _get(self, kind: str, name: str):
        return self.objects.get((kind, name))

    def host(self, name):
        return self._get("host", name)

    def bridge(self, name):
        return self._get("bridge", name)

    def router(self, name):
        return self._get("router", name)

    def chain(self, name):
        return self._get("chain", name)

    def load_balancer(self, name):
        return self._get("load_balancer", name)

    def port_group(self, name):
        return self._get("port_group", name)

    def port(self, port_id):
        return self.ports.get(port_id)

    def device_kind(self, name):
        return self.kinds.get(name)

    def groups_of_port(self, port_id):
        if self.groups is None:
            return None
        return self.groups.get(port_id, ())

    # -- filling and forgetting -----------------------------------------------------------------------------
    def is_absent(self, kind: str, name: str) -> bool:
        return (kind, name) in self.absent

    def add(self, kind: str, name: str, data: bytes | None) -> bool:
        """Take one record (JSON bytes from topology.store.topo) or a negative answer (None).  Returns False
        when the record is refused (counted ``topology_bad_records``)."""
        if kind == "port_groups":
            if data is not None:
                groups = _port_groups(data)
                if groups is None:
                    self.counters["topology_bad_records"] += 1
                    return False
                self.groups = groups
            return True
        if data is None:
            self.absent.add((kind, name))
            self.counters["topology_absent"] += 1
            return True
        try:
            obj = decode(kind, data)
        except (ValueError, RecursionError):          # BadRecord is a ValueError; RecursionError: deep JSON
            obj = None
        if obj is None or _KIND_TO_VIEW.get(kind) is None or getattr(obj, "name", None) != name:
            self.counters["topology_bad_records"] += 1
            return False
        self.forget(kind, name)
        self.absent.discard((kind, name))
        self.objects[(kind, name)] = obj
        self.counters["topology_fragments"] += 1
        if kind in ("bridge", "router"):
            self.kinds[name] = kind
            for p in obj.ports.values():
                self.ports[p.id] = p
                self.absent.discard(("port", p.id))
        return True

    def forget(self, kind: str, name: str) -> None:
        if kind == "port_groups":
            self.groups = None
            return
        self.absent.discard((kind, name))
        if kind in ("bridge", "router"):
            self.absent.discard(("device", name))
        obj = self.objects.pop((kind, name), None)
        if obj is not None and kind in ("bridge", "router"):
            self.kinds.pop(name, None)
            for p in obj.ports.values():
                self.ports.pop(p.id, None)

    def forget_all(self) -> None:
        self.objects.clear()
        self.absent.clear()
        self.ports.clear()
        self.kinds.clear()
        self.groups = None


def _port_groups(data: bytes) -> dict[str, tuple[str, ...]] | None:
    """The membership index (port id → group names) of a "port_groups" record; None if it is not one."""
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if type(raw) is not dict or not all(type(g) is list and all(type(x) is str for x in g) for g in raw.values()):
        return None
    return {pid: tuple(g) for pid, g in raw.items()}
