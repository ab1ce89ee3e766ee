"""A worker's partial copy of the topology: the fragments it has needed so far (a TopologyView).

Owns: the records received from the supervisor (devices with their ports, chains, load balancers, port
groups, hosts), the index port id → device, and the negative entries (objects the supervisor said do not
exist).  Filled only by ``add`` (Fragment messages), emptied per object by ``forget`` (TopologyChanged).
A lookup of an object not held returns None: the simulation parks on NeedFragment and the worker asks for it.

Counters: ``topology_fragments`` (records received), ``topology_requests`` is counted by the worker loop.
"""

from __future__ import annotations

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
        self.counters = {"topology_fragments": 0, "topology_absent": 0}

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

    def add(self, kind: str, name: str, data: bytes | None) -> None:
        """Take one record (JSON bytes from topology.store.topo) or a negative answer (None)."""
        if kind == "port_groups":
            if data is not None:
                import json

                self.groups = {pid: tuple(g) for pid, g in json.loads(data).items()}
            return
        if data is None:
            self.absent.add((kind, name))
            self.counters["topology_absent"] += 1
            return
        obj = decode(kind, data)
        self.forget(kind, name)
        self.absent.discard((kind, name))
        self.objects[(kind, name)] = obj
        self.counters["topology_fragments"] += 1
        if kind in ("bridge", "router"):
            self.kinds[name] = kind
            for p in obj.ports.values():
                self.ports[p.id] = p
                self.absent.discard(("port", p.id))

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
