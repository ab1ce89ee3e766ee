"""The virtual-network model: immutable records, built by the file loader or read from a store.

Every record is a frozen dataclass.  Addresses are ints (see packet.addr).  IPv6: an int cannot tell its family
(``::5`` and ``0.0.0.5`` are both 5), so a record that may hold either says which: ``Port.addresses6`` holds a
router port's IPv6 interface addresses apart from its one IPv4 ``address``; ``Route.v6``, ``Member.v6`` and
``Vip.v6`` mark IPv6 records; a chain's ``src``/``dst`` condition value is ``(network, length)`` for IPv4 and
``(network, length, 6)`` for IPv6; ``Router.nd_table`` is the static IPv6 neighbor table (ip → mac).  A port is named
``<device>.<port>`` everywhere outside its own device: ``Port.id``.  Tunnel keys are assigned to exterior
ports by the system (``assign_tunnel_keys``), never by the topology file.

The simulation reads the model only through the ``TopologyView`` protocol, so an agent's partial cache (which
may not hold a fragment yet) and a whole ``Topology`` are interchangeable: a view returns ``None`` for an object
it does not hold, and the simulation turns that into a needs-fragment result (the packet is parked).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

# Reserved tunnel keys: 0 is never a port; the top key carries flow-state replication between hosts.
TUNNEL_KEY_MIN = 1
TUNNEL_KEY_MAX = 0xFFFFFE
TUNNEL_KEY_FLOW_STATE = 0xFFFFFF

ROUTE_NORMAL = "normal"
ROUTE_BLACKHOLE = "blackhole"
ROUTE_REJECT = "reject"
ROUTE_TYPES = (ROUTE_NORMAL, ROUTE_BLACKHOLE, ROUTE_REJECT)

ACTIONS = (
    "accept", "drop", "reject", "continue", "return", "jump",
    "snat", "dnat", "rev_snat", "rev_dnat",
)
NAT_ACTIONS = ("snat", "dnat", "rev_snat", "rev_dnat")

# Match fields, in the order the file documents them.
MATCH_FIELDS = (
    "in_port", "out_port", "port_group", "eth_src", "eth_dst", "ethertype", "src", "dst", "proto",
    "src_port", "dst_port", "ct", "tos", "vlan",
)


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    tunnel_ip: int


@dataclass(frozen=True, slots=True)
class Port:
    """A port of a bridge or a router.

    Exterior ports have no peer and may be bound to an interface on a host; interior ports link to a port of
    another device (``peer`` is that port's id).  Router ports carry a MAC, at most one IPv4 address/prefix
    (``address``, ``prefix_len``) and any number of IPv6 ones (``addresses6``: ``((address, prefix_len), ...)``
    in file order); a port with IPv6 addresses also owns its EUI-64 link-local address (``link_local6``).
    """

    device: str
    name: str
    peer: str | None = None
    host: str | None = None
    interface: str | None = None
    address: int | None = None
    prefix_len: int | None = None
    mac: int | None = None
    vlan: int | None = None          # access VLAN on a VLAN-aware bridge (None: trunk / untagged)
    tunnel_key: int | None = None
    addresses6: tuple[tuple[int, int], ...] = ()

    @property
    def id(self) -> str:
        return f"{self.device}.{self.name}"

    @property
    def link_local6(self) -> int | None:
        """fe80::/64 + the modified EUI-64 of the MAC (RFC 4291 App. A), for a port with IPv6 addresses."""
        if not self.addresses6 or self.mac is None:
            return None
        m = self.mac
        eui = ((m >> 24) ^ 0x020000) << 40 | 0xFFFE << 24 | (m & 0xFFFFFF)
        return 0xFE80 << 112 | eui

    @property
    def exterior(self) -> bool:
        return self.peer is None


@dataclass(frozen=True, slots=True)
class Bridge:
    name: str
    ports: Mapping[str, Port]                 # port name → Port
    inbound_filter: str | None = None
    outbound_filter: str | None = None
    mac_table: Mapping[tuple[int, int], str] = field(default_factory=dict)   # (vlan or 0, mac) → port name


@dataclass(frozen=True, slots=True)
class Route:
    dst: int
    dst_len: int
    src: int = 0
    src_len: int = 0
    gateway: int | None = None
    port: str | None = None                   # port name on this router
    weight: int = 100
    type: str = ROUTE_NORMAL
    v6: bool = False                          # an IPv6 route: dst, src and gateway are IPv6 addresses


@dataclass(frozen=True, slots=True)
class Router:
    name: str
    ports: Mapping[str, Port]
    routes: tuple[Route, ...] = ()            # configured routes; connected routes are derived (below)
    arp_table: Mapping[int, int] = field(default_factory=dict)   # ip → mac (static entries)
    inbound_filter: str | None = None
    outbound_filter: str | None = None
    load_balancer: str | None = None
    nd_table: Mapping[int, int] = field(default_factory=dict)    # IPv6 ip → mac (static entries)

    def all_routes(self) -> tuple[Route, ...]:
        """Configured routes plus one connected route per addressed port and IPv6 prefix (weight 0: always
        preferred), IPv4 and IPv6 together (``Route.v6`` tells them apart)."""
        connected = tuple(
            Route(dst=p.address & _mask(p.prefix_len), dst_len=p.prefix_len, port=p.name, weight=0)
            for p in self.ports.values()
            if p.address is not None and p.prefix_len is not None
        )
        connected6 = tuple(
            Route(dst=a & _mask6(plen), dst_len=plen, port=p.name, weight=0, v6=True)
            for p in self.ports.values()
            for a, plen in p.addresses6
        )
        return connected + connected6 + self.routes


def _mask(length: int) -> int:
    return (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0


def _mask6(length: int) -> int:
    return ((1 << 128) - 1) >> (128 - length) << (128 - length) if length else 0


@dataclass(frozen=True, slots=True)
class Condition:
    """One match field.  ``value`` depends on the field:

    in_port / out_port: frozenset of port ids; port_group: group name; eth_src / eth_dst: int;
    ethertype / proto / tos / vlan: int; src / dst: (network, prefix length) for IPv4, (network, prefix length,
    6) for IPv6 (it matches IPv6 packets only, as an IPv4 prefix matches IPv4 ones); src_port / dst_port: (lo, hi);
    ct: "forward" | "return".
    """

    field: str
    value: object
    negate: bool = False


@dataclass(frozen=True, slots=True)
class Match:
    conditions: tuple[Condition, ...] = ()
    invert: bool = False


@dataclass(frozen=True, slots=True)
class NatTarget:
    ip_start: int
    ip_end: int
    port_start: int | None = None             # None: static NAT (floating IP), stateless
    port_end: int | None = None

    @property
    def dynamic(self) -> bool:
        return self.port_start is not None


@dataclass(frozen=True, slots=True)
class Rule:
    action: str
    match: Match = Match()
    chain: str | None = None                  # jump target
    targets: tuple[NatTarget, ...] = ()


@dataclass(frozen=True, slots=True)
class Chain:
    name: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class Member:
    address: int
    port: int
    weight: int = 1
    admin_up: bool = True
    v6: bool = False


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    members: tuple[Member, ...]


@dataclass(frozen=True, slots=True)
class Vip:
    address: int
    port: int
    proto: int
    pool: str
    sticky_source_ip: bool = False
    v6: bool = False                          # an IPv6 VIP (its pool's members are IPv6 too)


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    name: str
    vips: tuple[Vip, ...]
    pools: Mapping[str, Pool]


@dataclass(frozen=True, slots=True)
class PortGroup:
    name: str
    ports: tuple[str, ...]                    # port ids
    stateful: bool = False


class TopologyView(Protocol):
    """What the simulation may read.  ``None`` means "not held here (yet)" — never "does not exist" for a
    cache; a whole Topology returns None only for names it does not have."""

    def host(self, name: str) -> Host | None: ...
    def bridge(self, name: str) -> Bridge | None: ...
    def router(self, name: str) -> Router | None: ...
    def chain(self, name: str) -> Chain | None: ...
    def load_balancer(self, name: str) -> LoadBalancer | None: ...
    def port_group(self, name: str) -> PortGroup | None: ...
    def port(self, port_id: str) -> Port | None: ...
    def groups_of_port(self, port_id: str) -> tuple[str, ...] | None: ...   # None: membership not held
    def device_kind(self, name: str) -> str | None: ...      # "bridge" | "router" | None (not held)


@dataclass(frozen=True)
class Topology:
    """A whole topology (what a file describes).  Implements TopologyView."""

    hosts: Mapping[str, Host] = field(default_factory=dict)
    bridges: Mapping[str, Bridge] = field(default_factory=dict)
    routers: Mapping[str, Router] = field(default_factory=dict)
    chains: Mapping[str, Chain] = field(default_factory=dict)
    load_balancers: Mapping[str, LoadBalancer] = field(default_factory=dict)
    port_groups: Mapping[str, PortGroup] = field(default_factory=dict)
    version: int = 1

    def __post_init__(self) -> None:
        ports: dict[str, Port] = {}
        for dev in (*self.bridges.values(), *self.routers.values()):
            for p in dev.ports.values():
                ports[p.id] = p
        groups: dict[str, list[str]] = {}
        for g in self.port_groups.values():
            for pid in g.ports:
                groups.setdefault(pid, []).append(g.name)
        object.__setattr__(self, "_ports", ports)
        object.__setattr__(self, "_groups", {k: tuple(v) for k, v in groups.items()})
        object.__setattr__(self, "_by_key", {p.tunnel_key: p for p in ports.values() if p.tunnel_key})

    # -- TopologyView -------------------------------------------------------------------------------
    def host(self, name: str) -> Host | None:
        return self.hosts.get(name)

    def bridge(self, name: str) -> Bridge | None:
        return self.bridges.get(name)

    def router(self, name: str) -> Router | None:
        return self.routers.get(name)

    def chain(self, name: str) -> Chain | None:
        return self.chains.get(name)

    def load_balancer(self, name: str) -> LoadBalancer | None:
        return self.load_balancers.get(name)

    def port_group(self, name: str) -> PortGroup | None:
        return self.port_groups.get(name)

    def port(self, port_id: str) -> Port | None:
        return self._ports.get(port_id)  # type: ignore[attr-defined]

    def groups_of_port(self, port_id: str) -> tuple[str, ...]:
        return self._groups.get(port_id, ())  # type: ignore[attr-defined]

    # -- helpers ------------------------------------------------------------------------------------
    def all_ports(self) -> Mapping[str, Port]:
        return self._ports  # type: ignore[attr-defined]

    def port_by_tunnel_key(self, key: int) -> Port | None:
        return self._by_key.get(key)  # type: ignore[attr-defined]

    def device_kind(self, name: str) -> str | None:
        if name in self.bridges:
            return "bridge"
        if name in self.routers:
            return "router"
        return None


def assign_tunnel_keys(topo: Topology, existing: Mapping[str, int] | None = None) -> Topology:
    """Give every exterior port a tunnel key.  Keys in ``existing`` (port id → key) are kept, so that an
    edited topology does not renumber ports that did not change; new ports take the lowest free keys, in the
    order the devices and ports were declared."""
    existing = dict(existing or {})
    used = set(existing.values())
    next_key = TUNNEL_KEY_MIN

    def take() -> int:
        nonlocal next_key
        while next_key in used:
            next_key += 1
        if next_key > TUNNEL_KEY_MAX:
            raise ValueError("tunnel keys exhausted")
        used.add(next_key)
        return next_key

    def fix(ports: Mapping[str, Port]) -> dict[str, Port]:
        out = {}
        for name, p in ports.items():
            if p.exterior:
                key = existing.get(p.id) or take()
                p = replace(p, tunnel_key=key)
            out[name] = p
        return out

    bridges = {n: replace(b, ports=fix(b.ports)) for n, b in topo.bridges.items()}
    routers = {n: replace(r, ports=fix(r.ports)) for n, r in topo.routers.items()}
    return replace(topo, bridges=bridges, routers=routers)
