"""The port map and the port bindings: which ports this host owns, read off the topology mirror.

Owns nothing stateful: pure functions of the mirror's objects (``StoreMirror.objects``, a dict
(kind, name) → record) and of this agent's host name.  The service thread calls them after each topology
change; the pool builds the datapath's start config from ``port_map``.

- ``bindings``: port id → host of every bound exterior port (every host, not only this one).
- ``port_map``: what the datapath needs to know about this host's ports — the interfaces of the exterior ports
  bound here, tunnel key → port id (egress by key, in both datapath modes), and host name → tunnel address of
  every host (flow state goes to / comes from them).  ``set_port_map`` turns it into the SetPortMap command.
- ``moved_here`` / ``state_requests``: a port now bound here that was bound to another host; its previous
  host is asked for its flow state (StateRequest over the flow-state tunnel, through the datapath).
"""

from __future__ import annotations

from typing import NamedTuple

from backchannel import messages as m
from backchannel.codec import encode

DEVICE_KINDS = ("bridge", "router")


class PortMap(NamedTuple):
    ports: dict[str, str]          # port id → interface name (exterior ports bound to this host)
    keys: dict[int, str]           # tunnel key → port id (the same ports)
    hosts: dict[str, int]          # host name → tunnel address (every host in the topology)


def _exterior_ports(objects: dict):
    for (kind, _), dev in list(objects.items()):
        if kind in DEVICE_KINDS:
            for p in dev.ports.values():
                if p.peer is None:
                    yield p


def bindings(objects: dict) -> dict[str, str]:
    """Port id → host of every bound exterior port."""
    return {p.id: p.host for p in _exterior_ports(objects) if p.host}


def port_map(objects: dict, host: str | None) -> PortMap:
    """The port map of ``host`` (no local port when ``host`` is None)."""
    ports, keys = {}, {}
    for p in _exterior_ports(objects):
        if p.host is not None and p.host == host:
            if p.interface:
                ports[p.id] = p.interface
            if p.tunnel_key:
                keys[p.tunnel_key] = p.id
    hosts = {name: obj.tunnel_ip for (kind, name), obj in list(objects.items()) if kind == "host"}
    return PortMap(ports, keys, hosts)


def set_port_map(req_id: int, pm: PortMap) -> m.SetPortMap:
    """The SetPortMap command for ``pm`` (tuples of pairs, sorted so equal maps make equal messages)."""
    return m.SetPortMap(req_id, tuple(sorted(pm.ports.items())), tuple(sorted(pm.keys.items())),
                        tuple(sorted(pm.hosts.items())))


def moved_state_requests(before: dict[str, str], objects: dict, host: str | None) -> tuple[dict, list]:
    """The bindings now, and the state requests for the ports that moved here since ``before``."""
    now = bindings(objects)
    return now, state_requests(moved_here(before, now, host), host)


def moved_here(before: dict[str, str], now: dict[str, str], host: str | None) -> list[tuple[str, str]]:
    """(port id, previous host) of every port bound to ``host`` in ``now`` and to another host in ``before``
    (both ``bindings`` results)."""
    return [(pid, before[pid]) for pid, h in now.items()
            if h == host and before.get(pid) is not None and before[pid] != host]


def state_requests(moved: list[tuple[str, str]], host: str) -> list[m.StateToHosts]:
    """For each moved port, the message to the datapath that asks its previous host's workers for their flow
    state (it comes back like replicated state, on the flow-state tunnel key, and is imported here)."""
    return [m.StateToHosts((old,), encode(m.StateRequest(host, pid))) for pid, old in moved]
