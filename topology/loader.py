"""Topology file loader: CONTRACTS §1 (version 1), YAML or JSON → a validated, immutable ``model.Topology``.

Owns the file format's semantics: defaults, conversions (addresses to ints, port ids, ranges), and every check
that makes a topology usable — unknown keys, wrong types, bad addresses, dangling references (peer, host,
chain, jump target, load balancer, pool, port-group member, route port), link symmetry, duplicate addresses,
jump loops.  IPv6: an address text with a colon is IPv6 (a router port's ``address`` may be a list: one
IPv4 and any number of IPv6), a route's family is its ``dst``'s, NAT targets are IPv4 only.  The first error is
raised as a ``TopologyError`` naming the path in the file and its line (see topology.errors).  Tunnel keys are
assigned last (``model.assign_tunnel_keys``), never read from the file.

Order of work: a tolerant pre-pass collects the names every reference may point to (hosts, chains, load
balancers, port groups, port ids), then each section is checked and built; links are made symmetric once all
ports are known (a peer that does not name us back gets its peer set implicitly).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from packet.addr import cidr6_str, cidr_str, in_prefix, int2ip, int2ip6, prefix_mask, prefix_mask6
from packet.packet import ETH_TYPE_ARP, ETH_TYPE_IPV4, ETH_TYPE_IPV6, ETH_TYPE_VLAN, PROTO_NAMES
from topology.errors import Checker, Path, TopologyError, is_ipv6_text, read_text
from topology.model import (
    ACTIONS,
    MATCH_FIELDS,
    ROUTE_NORMAL,
    ROUTE_TYPES,
    Bridge,
    Chain,
    Condition,
    Host,
    LoadBalancer,
    Match,
    Member,
    NatTarget,
    Pool,
    Port,
    PortGroup,
    Route,
    Router,
    Rule,
    Topology,
    Vip,
    assign_tunnel_keys,
)

__all__ = ["load_topology", "loads_topology", "topology_from_dict", "TopologyError", "ETHERTYPES"]

# the ethertype names a topology file may use (the packet spec's are packet.spec's); protocol names are
# packet.packet.PROTO_NAMES
ETHERTYPES = {"ipv4": ETH_TYPE_IPV4, "arp": ETH_TYPE_ARP, "vlan": ETH_TYPE_VLAN, "ipv6": ETH_TYPE_IPV6}
FORMAT_VERSION = 1

_TOP_KEYS = ("version", "hosts", "bridges", "routers", "chains", "load_balancers", "port_groups")
_BRIDGE_KEYS = ("ports", "inbound_filter", "outbound_filter", "mac_table", "vlan_ports")
_ROUTER_KEYS = ("ports", "routes", "arp_table", "nd_table", "inbound_filter", "outbound_filter", "load_balancer")
_BRIDGE_PORT_KEYS = ("peer", "host", "interface")
_ROUTER_PORT_KEYS = ("address", "mac", "peer", "host", "interface")
_ROUTE_KEYS = ("dst", "src", "gateway", "port", "weight", "type")
_HINTS = {"tunnel_key": "tunnel keys are assigned by the system, never by the file"}
_RANGE_RE = re.compile(r"^\s*(\d+)\s*(?:(?:-|\.\.)\s*(\d+)\s*)?$")


def load_topology(source: str | os.PathLike | bytes, *,
                  tunnel_keys: Mapping[str, int] | None = None) -> Topology:
    """Load a topology from a file path or from YAML/JSON text.

    A ``str`` is text when it contains a newline or ``": "`` or starts with ``{``; otherwise it is a path.
    ``tunnel_keys`` (port id → key) keeps the keys of ports that already had one (see assign_tunnel_keys)."""
    if isinstance(source, bytes):
        return loads_topology(_decode(source, "<bytes>"), "<bytes>", tunnel_keys=tunnel_keys)
    if isinstance(source, str) and ("\n" in source or ": " in source or source.lstrip().startswith("{")):
        return loads_topology(source, tunnel_keys=tunnel_keys)
    name = os.fspath(source)
    try:
        with open(name, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise TopologyError(f"cannot read topology file: {e.strerror or e}", source=name) from None
    return loads_topology(_decode(raw, name), name, tunnel_keys=tunnel_keys)


def loads_topology(text: str, name: str = "<string>", *,
                   tunnel_keys: Mapping[str, int] | None = None) -> Topology:
    """Load a topology from YAML or JSON text; errors carry ``name`` and the line."""
    data, lines = read_text(text, name)
    return _Builder(Checker(name, lines), data).build(tunnel_keys)


def topology_from_dict(data: Mapping[str, Any], name: str = "<dict>", *,
                       tunnel_keys: Mapping[str, int] | None = None) -> Topology:
    """Load a topology from already-parsed data (same format; errors carry no line)."""
    return _Builder(Checker(name), data).build(tunnel_keys)


def _family(v6: bool) -> str:
    return "IPv6" if v6 else "IPv4"


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TopologyError(f"not UTF-8 text: {e.reason} at byte {e.start}", source=name) from None


class _Builder:
    def __init__(self, c: Checker, data: object):
        self.c = c
        if data is None:
            c.fail((), "empty document (a topology needs at least 'version: 1')")
        self.root = c.mapping(data, (), _TOP_KEYS, required=("version",), nullable=False)
        version = self.root["version"]
        if type(version) is not int or version != FORMAT_VERSION:
            c.fail(("version",),
                   f"unsupported version {version!r} (this loader reads version {FORMAT_VERSION})")

        def names(section: str) -> set[str]:
            value = self.root.get(section)
            return set(value) if isinstance(value, dict) else set()

        self.host_names, self.chain_names = names("hosts"), names("chains")
        self.lb_names, self.group_names = names("load_balancers"), names("port_groups")
        self.devices: dict[str, set[str]] = {}
        for section in ("bridges", "routers"):
            devices = self.root.get(section)
            for dev, body in devices.items() if isinstance(devices, dict) else ():
                ports = body.get("ports") if isinstance(body, dict) else None
                self.devices.setdefault(dev, set()).update(ports if isinstance(ports, dict) else ())
        self.ports: dict[str, dict[str, Any]] = {}      # port id → Port kwargs
        self.peer_paths: dict[str, Path] = {}           # port id → path of its explicit peer
        self.bindings: dict[tuple[str, str], str] = {}  # (host, interface) → port id
        self.addr6_paths: dict[tuple[str, str, int], Path] = {}   # (router, port, IPv6 address) → its path

    # -- whole file --------------------------------------------------------------------------------
    def build(self, tunnel_keys: Mapping[str, int] | None) -> Topology:
        c, root = self.c, self.root
        hosts = self._hosts(c.table(root.get("hosts"), ("hosts",)))
        bridges = {n: self._bridge(n, b) for n, b in c.table(root.get("bridges"), ("bridges",)).items()}
        routers = {}
        for n, b in c.table(root.get("routers"), ("routers",)).items():
            if n in bridges:
                c.fail(("routers", n), f"name {n!r} is already used by a bridge")
            routers[n] = self._router(n, b)
        chains = {n: self._chain(n, b) for n, b in c.table(root.get("chains"), ("chains",)).items()}
        self._check_jump_loops(chains)
        lbs = {n: self._lb(n, b) for n, b in c.table(root.get("load_balancers"), ("load_balancers",)).items()}
        groups = {n: self._group(n, b) for n, b in c.table(root.get("port_groups"), ("port_groups",)).items()}
        self._link_peers()

        def finish(dev: Bridge | Router) -> Any:
            return replace(dev, ports={p: Port(**self.ports[f"{dev.name}.{p}"]) for p in dev.ports})

        topo = Topology(hosts=hosts, bridges={n: finish(b) for n, b in bridges.items()},
                        routers={n: finish(r) for n, r in routers.items()}, chains=chains,
                        load_balancers=lbs, port_groups=groups, version=FORMAT_VERSION)
        return assign_tunnel_keys(topo, tunnel_keys)

    def _hosts(self, table: dict) -> dict[str, Host]:
        hosts: dict[str, Host] = {}
        seen: dict[int, str] = {}
        for name, body in table.items():
            path = ("hosts", name)
            self.c.string(name, path)
            b = self.c.mapping(body, path, ("tunnel_ip",), required=("tunnel_ip",), nullable=False)
            ip = self.c.ip(b["tunnel_ip"], (*path, "tunnel_ip"))
            if ip in seen:
                self.c.fail((*path, "tunnel_ip"),
                            f"tunnel_ip {int2ip(ip)} is already used by host {seen[ip]!r}")
            seen[ip] = name
            hosts[name] = Host(name=name, tunnel_ip=ip)
        return hosts

    # -- devices and ports -------------------------------------------------------------------------
    def _ports(self, dev: str, table: dict, path: Path, router: bool) -> dict[str, Port]:
        """Record each port's kwargs in self.ports; return placeholder Ports (rebuilt after peer linking)."""
        out = {}
        for pname, body in table.items():
            pp = (*path, pname)
            self.c.name(pname, pp)
            kw = self._port(dev, pname, body, pp, router)
            self.ports[f"{dev}.{pname}"] = kw
            out[pname] = Port(**kw)
        return out

    def _port(self, dev: str, pname: str, body: object, path: Path, router: bool) -> dict[str, Any]:
        c = self.c
        b = c.mapping(body, path, _ROUTER_PORT_KEYS if router else _BRIDGE_PORT_KEYS, hints=_HINTS)
        kw: dict[str, Any] = {"device": dev, "name": pname}
        host, iface = b.get("host"), b.get("interface")
        if b.get("peer") is not None:
            peer = self._port_ref(b["peer"], (*path, "peer"))
            if peer == f"{dev}.{pname}":
                c.fail((*path, "peer"), "a port cannot be its own peer")
            if host is not None or iface is not None:
                c.fail((*path, "host" if host is not None else "interface"),
                       "an interior port (one with a peer) cannot be bound to a host interface")
            kw["peer"] = peer
            self.peer_paths[f"{dev}.{pname}"] = (*path, "peer")
        if (host is None) != (iface is None):
            c.fail(path, "'host' and 'interface' go together: give both or neither")
        if host is not None:
            kw["host"] = c.string(host, (*path, "host"))
            if host not in self.host_names:
                c.fail((*path, "host"), f"no such host {host!r}")
            kw["interface"] = c.string(iface, (*path, "interface"))
            other = self.bindings.setdefault((host, iface), f"{dev}.{pname}")
            if other != f"{dev}.{pname}":
                c.fail((*path, "interface"),
                       f"interface {iface!r} on host {host!r} is already bound to {other!r}")
        if router and b.get("address") is not None:
            self._port_addresses(b["address"], (*path, "address"), kw)
        if router and b.get("mac") is not None:
            kw["mac"] = c.mac(b["mac"], (*path, "mac"))
        return kw

    def _port_addresses(self, value: object, path: Path, kw: dict[str, Any]) -> None:
        """``address:`` is one string or a list: at most one IPv4 and any number of IPv6 (``addresses6``)."""
        items = [(value, path)] if not isinstance(value, list) else [(v, (*path, i)) for i, v in enumerate(value)]
        if not items:
            self.c.fail(path, "empty address list")
        six: list[tuple[int, int]] = []
        for v, vp in items:
            if is_ipv6_text(v):
                a6 = self._interface_address6(v, vp)
                if any(a == a6[0] for a, _ in six):
                    self.c.fail(vp, f"address {int2ip6(a6[0])} is listed twice")
                six.append(a6)
                self.addr6_paths[(kw["device"], kw["name"], a6[0])] = vp
            elif "address" in kw:
                self.c.fail(vp, "a port has at most one IPv4 address")
            else:
                kw["address"], kw["prefix_len"] = self._interface_address(v, vp)
        if six:
            kw["addresses6"] = tuple(six)

    def _interface_address6(self, value: object, path: Path) -> tuple[int, int]:
        text = self.c.string(value, path)
        addr, sep, plen = text.partition("/")
        if not sep or not plen.isdigit() or not 1 <= int(plen) <= 128 or plen != str(int(plen)):
            self.c.fail(path, f"not an address with prefix length (like 2001:db8:1::1/64): {text!r}")
        ip, length = self.c.ip6(addr, path), int(plen)
        if ip >> 120 == 0xFF:
            self.c.fail(path, f"{text} is a multicast address")
        if ip >> 118 == 0xFE80 >> 6:
            self.c.fail(path, f"{text} is link-local (a port's link-local address is derived from its MAC)")
        if length <= 126 and ip & ~prefix_mask6(length) == 0:
            self.c.fail(path, f"{text} is the subnet-router anycast address of its prefix")
        return ip, length

    def _interface_address(self, value: object, path: Path) -> tuple[int, int]:
        text = self.c.string(value, path)
        addr, sep, plen = text.partition("/")
        if not sep or not plen.isdigit() or not 1 <= int(plen) <= 32:
            self.c.fail(path, f"not an address with prefix length (like 10.0.0.1/24): {text!r}")
        ip, length = self.c.ip(addr, path), int(plen)
        host_mask = ~prefix_mask(length) & 0xFFFFFFFF
        if length <= 30 and ip & host_mask in (0, host_mask):
            self.c.fail(path, f"{text} is the network or broadcast address of its subnet")
        return ip, length

    def _filters(self, b: dict, path: Path) -> dict[str, str | None]:
        out = {}
        for key in ("inbound_filter", "outbound_filter"):
            value = b.get(key)
            out[key] = None if value is None else self._ref(value, (*path, key), self.chain_names, "chain")
        return out

    def _bridge(self, name: str, body: object) -> Bridge:
        c, path = self.c, ("bridges", name)
        c.name(name, path)
        b = c.mapping(body, path, _BRIDGE_KEYS)
        ports = self._ports(name, c.table(b.get("ports"), (*path, "ports")), (*path, "ports"), router=False)
        for pname, vlan in c.table(b.get("vlan_ports"), (*path, "vlan_ports")).items():
            vp = (*path, "vlan_ports", pname)
            if pname not in ports:
                c.fail(vp, f"no port {pname!r} on bridge {name!r}")
            self.ports[f"{name}.{pname}"]["vlan"] = c.integer(vlan, vp, 1, 4094)
        mac_table: dict[tuple[int, int], str] = {}
        for mac_text, value in c.table(b.get("mac_table"), (*path, "mac_table")).items():
            mp = (*path, "mac_table", mac_text)
            mac = c.mac(mac_text, mp)
            entries = value if isinstance(value, list) else [value]
            for i, entry in enumerate(entries):
                ep = (*mp, i) if isinstance(value, list) else mp
                if isinstance(entry, dict):
                    e = c.mapping(entry, ep, ("port", "vlan"), required=("port",))
                    port, vlan = e["port"], c.integer(e.get("vlan", 0), (*ep, "vlan"), 0, 4094)
                    ep = (*ep, "port")
                else:
                    port, vlan = entry, 0
                if c.string(port, ep) not in ports:
                    c.fail(ep, f"no port {port!r} on bridge {name!r}")
                if (vlan, mac) in mac_table:
                    c.fail(ep, f"duplicate entry for {mac_text} on vlan {vlan}")
                mac_table[(vlan, mac)] = port
        return Bridge(name=name, ports=ports, mac_table=mac_table, **self._filters(b, path))

    def _router(self, name: str, body: object) -> Router:
        c, path = self.c, ("routers", name)
        c.name(name, path)
        b = c.mapping(body, path, _ROUTER_KEYS)
        ports = self._ports(name, c.table(b.get("ports"), (*path, "ports")), (*path, "ports"), router=True)
        seen: dict[int, str] = {}
        for p in ports.values():
            if p.address is not None:
                if p.address in seen:
                    c.fail((*path, "ports", p.name, "address"),
                           f"address {int2ip(p.address)} is already used by port {seen[p.address]!r}")
                seen[p.address] = p.name
        seen6: dict[int, str] = {}
        for p in ports.values():
            for a6, _ in p.addresses6:
                if a6 in seen6:
                    c.fail(self.addr6_paths[(name, p.name, a6)],
                           f"address {int2ip6(a6)} is already used by port {seen6[a6]!r}")
                seen6[a6] = p.name
        routes = tuple(self._route(r, (*path, "routes", i), name, ports)
                       for i, r in enumerate(c.seq(b.get("routes"), (*path, "routes"))))
        arp: dict[int, int] = {}
        for ip_text, mac in c.table(b.get("arp_table"), (*path, "arp_table")).items():
            ap = (*path, "arp_table", ip_text)
            ip = c.ip(ip_text, ap)
            if ip in arp:
                c.fail(ap, f"duplicate entry for {int2ip(ip)}")
            arp[ip] = c.mac(mac, ap)
        nd: dict[int, int] = {}
        for ip_text6, mac in c.table(b.get("nd_table"), (*path, "nd_table")).items():
            ap = (*path, "nd_table", ip_text6)
            ip = c.ip6(ip_text6, ap)
            if ip in nd:
                c.fail(ap, f"duplicate entry for {int2ip6(ip)}")
            nd[ip] = c.mac(mac, ap)
        lb = None if b.get("load_balancer") is None else self._ref(
            b["load_balancer"], (*path, "load_balancer"), self.lb_names, "load balancer")
        return Router(name=name, ports=ports, routes=routes, arp_table=arp, load_balancer=lb, nd_table=nd,
                      **self._filters(b, path))

    def _route(self, body: object, path: Path, router: str, ports: dict[str, Port]) -> Route:
        c = self.c
        b = c.mapping(body, path, _ROUTE_KEYS, required=("dst",), nullable=False)
        kind = b.get("type", ROUTE_NORMAL)
        if kind not in ROUTE_TYPES:
            c.fail((*path, "type"), f"unknown route type {kind!r} (allowed: {', '.join(ROUTE_TYPES)})")
        v6 = is_ipv6_text(b["dst"])                 # the family of a route is its dst's
        dst, dst_len = self._network(b["dst"], (*path, "dst"), v6)
        for key in ("src", "gateway"):
            if isinstance(b.get(key), str) and is_ipv6_text(b[key]) != v6:
                c.fail((*path, key), f"{key} is {_family(not v6)} but dst is {_family(v6)} "
                       "(one address family per route)")
        src, src_len = self._network(b.get("src", "::/0" if v6 else "0.0.0.0/0"), (*path, "src"), v6)
        weight = c.integer(b.get("weight", 100), (*path, "weight"), 0, 0x7FFFFFFF)
        port = gateway = None
        if kind != ROUTE_NORMAL:
            for key in ("port", "gateway"):
                if b.get(key) is not None:
                    c.fail((*path, key), f"a {kind} route takes no {key}")
        else:
            if b.get("port") is None:
                c.fail(path, "a normal route needs a 'port' (blackhole and reject routes do not)")
            port = c.string(b["port"], (*path, "port"))
            if port not in ports:
                c.fail((*path, "port"), f"no port {port!r} on router {router!r}")
            if v6:
                gateway = self._gateway6(b.get("gateway"), (*path, "gateway"), ports[port])
            elif b.get("gateway") is not None:
                gateway = c.ip(b["gateway"], (*path, "gateway"))
                p = ports[port]
                if p.address is not None and p.prefix_len is not None:
                    net = p.address & prefix_mask(p.prefix_len)
                    if not in_prefix(gateway, net, p.prefix_len):
                        c.fail((*path, "gateway"), f"gateway {int2ip(gateway)} is not in the subnet "
                               f"{cidr_str(net, p.prefix_len)} of port {port!r}")
                    if gateway == p.address:
                        c.fail((*path, "gateway"),
                               f"gateway {int2ip(gateway)} is the address of port {port!r}")
        return Route(dst=dst, dst_len=dst_len, src=src, src_len=src_len, gateway=gateway, port=port,
                     weight=weight, type=kind, v6=v6)

    def _gateway6(self, value: object, path: Path, p: Port) -> int | None:
        """An IPv6 route's port must have IPv6 addresses; its gateway is link-local or inside one of them."""
        if not p.addresses6:
            self.c.fail(path[:-1] + ("port",), f"port {p.name!r} has no IPv6 address (an IPv6 route needs one)")
        if value is None:
            return None
        gateway = self.c.ip6(value, path)
        if gateway >> 118 == 0xFE80 >> 6:
            return gateway                                  # a neighbor's link-local address: on every link
        if any(gateway == a for a, _ in p.addresses6):
            self.c.fail(path, f"gateway {int2ip6(gateway)} is an address of port {p.name!r}")
        if not any(gateway & prefix_mask6(n) == a & prefix_mask6(n) for a, n in p.addresses6):
            nets = ", ".join(cidr6_str(a & prefix_mask6(n), n) for a, n in p.addresses6)
            self.c.fail(path, f"gateway {int2ip6(gateway)} is not in the subnet {nets} of port {p.name!r}")
        return gateway

    def _network(self, value: object, path: Path, v6: bool = False) -> tuple[int, int]:
        if v6:
            net, length = self.c.cidr6(value, path)
            if self.c.ip6(str(value).partition("/")[0], path) != net:
                self.c.fail(path, f"host bits set in {value} (did you mean {cidr6_str(net, length)}?)")
            return net, length
        net, length = self.c.cidr(value, path)
        addr = str(value).partition("/")[0]
        if self.c.ip(addr, path) != net:
            self.c.fail(path, f"host bits set in {value} (did you mean {cidr_str(net, length)}?)")
        return net, length

    # -- references --------------------------------------------------------------------------------
    def _ref(self, value: object, path: Path, names: set[str], what: str) -> str:
        name = self.c.string(value, path)
        if name not in names:
            self.c.fail(path, f"no such {what} {name!r}")
        return name

    def _port_ref(self, value: object, path: Path) -> str:
        text = self.c.string(value, path)
        dev, sep, port = text.partition(".")
        if not sep:
            self.c.fail(path, f"not a port id {text!r} (expected <device>.<port>)")
        if dev not in self.devices:
            self.c.fail(path, f"no such device {dev!r} (in port id {text!r})")
        if port not in self.devices[dev]:
            self.c.fail(path, f"no port {port!r} on device {dev!r}")
        return text

    def _link_peers(self) -> None:
        explicit = {pid: kw["peer"] for pid, kw in self.ports.items() if kw.get("peer")}
        implicit: dict[str, str] = {}
        for pid, peer in explicit.items():
            path = self.peer_paths[pid]
            if peer in explicit:
                if explicit[peer] != pid:
                    self.c.fail(path, f"port {peer!r} is linked to {explicit[peer]!r}, not back to {pid!r}")
                continue
            if peer in implicit and implicit[peer] != pid:
                self.c.fail(path, f"port {peer!r} is already the peer of {implicit[peer]!r}")
            target = self.ports[peer]
            if target.get("host") is not None:
                self.c.fail(path, f"port {peer!r} is bound to a host interface and cannot be a peer")
            implicit[peer] = pid
            target["peer"] = pid

    # -- chains ------------------------------------------------------------------------------------
    def _chain(self, name: str, body: object) -> Chain:
        path = ("chains", name)
        self.c.string(name, path)
        rules = self.c.seq(body, path)
        return Chain(name=name, rules=tuple(self._rule(r, (*path, i)) for i, r in enumerate(rules)))

    def _rule(self, body: object, path: Path) -> Rule:
        c = self.c
        b = c.mapping(body, path, ("match", "action", "chain", "targets"), required=("action",),
                      nullable=False)
        action = b["action"]
        if action not in ACTIONS:
            c.fail((*path, "action"), f"unknown action {action!r} (allowed: {', '.join(ACTIONS)})")
        match = self._match(b.get("match"), (*path, "match"))
        chain = None
        if action == "jump":
            if b.get("chain") is None:
                c.fail(path, "a jump needs 'chain'")
            chain = self._ref(b["chain"], (*path, "chain"), self.chain_names, "chain")
        elif "chain" in b:
            c.fail((*path, "chain"), f"only a jump takes 'chain' (this rule's action is {action!r})")
        targets: tuple[NatTarget, ...] = ()
        if action in ("snat", "dnat"):
            raw = c.seq(b.get("targets"), (*path, "targets"))
            if not raw:
                c.fail(path, f"{action} needs 'targets' (a non-empty list of {{ip, port}})")
            targets = tuple(self._target(t, (*path, "targets", i)) for i, t in enumerate(raw))
        elif "targets" in b:
            c.fail((*path, "targets"),
                   f"only snat and dnat take 'targets' (this rule's action is {action!r})")
        return Rule(action=action, match=match, chain=chain, targets=targets)

    def _target(self, body: object, path: Path) -> NatTarget:
        c = self.c
        b = c.mapping(body, path, ("ip", "port"), required=("ip",), nullable=False)
        text = c.string(b["ip"], (*path, "ip"))
        if is_ipv6_text(text):
            c.fail((*path, "ip"), f"NAT of IPv6 addresses is not supported: {text!r}")
        parts = text.split("..") if ".." in text else text.split("-")
        if len(parts) > 2:
            c.fail((*path, "ip"), f"not an address or address range: {text!r}")
        start, end = (c.ip(p.strip(), (*path, "ip")) for p in (parts[0], parts[-1]))
        if start > end:
            c.fail((*path, "ip"), f"empty address range: {text!r}")
        if b.get("port") is None:
            return NatTarget(ip_start=start, ip_end=end)
        lo, hi = self._range(b["port"], (*path, "port"), 1, 65535)
        return NatTarget(ip_start=start, ip_end=end, port_start=lo, port_end=hi)

    def _match(self, value: object, path: Path) -> Match:
        m = self.c.mapping(value, path, (*MATCH_FIELDS, "invert"))
        invert = self.c.boolean(m.get("invert", False), (*path, "invert"))
        conds = tuple(self._condition(f, m[f], (*path, f)) for f in MATCH_FIELDS if f in m)
        return Match(conditions=conds, invert=invert)

    def _condition(self, field: str, raw: object, path: Path) -> Condition:
        c = self.c
        negate = isinstance(raw, str) and raw.startswith("!")
        if negate:
            raw = raw[1:].strip()
        value: object
        if field in ("in_port", "out_port"):
            if isinstance(raw, list):
                if not raw:
                    c.fail(path, "empty port list")
                # A list is negated by writing every item with '!': [!a, !b] is "neither a nor b".
                marks = [isinstance(p, str) and p.startswith("!") for p in raw]
                negate = all(marks)
                if any(marks) and not negate:
                    c.fail(path, "negate every port of the list with '!' or none of them")
                value = frozenset(self._port_ref(p[1:].strip() if negate else p, (*path, i))
                                  for i, p in enumerate(raw))
            else:
                value = frozenset((self._port_ref(raw, path),))
        elif field == "port_group":
            value = self._ref(raw, path, self.group_names, "port group")
        elif field in ("eth_src", "eth_dst"):
            value = c.mac(raw, path)
        elif field in ("src", "dst"):
            value = (*c.cidr6(raw, path), 6) if is_ipv6_text(raw) else c.cidr(raw, path)
        elif field in ("src_port", "dst_port"):
            value = self._range(raw, path, 0, 65535)
        elif field == "ct":
            if raw not in ("forward", "return"):
                c.fail(path, f"expected 'forward' or 'return', got {raw!r}")
            value = raw
        elif field == "proto":
            value = self._number(raw, path, 255, PROTO_NAMES)
        elif field == "ethertype":
            value = self._number(raw, path, 0xFFFF, ETHERTYPES)
        else:  # tos, vlan
            value = self._number(raw, path, 255 if field == "tos" else 4095, {})
        return Condition(field=field, value=value, negate=negate)

    def _number(self, raw: object, path: Path, hi: int, names: dict[str, int]) -> int:
        if isinstance(raw, str):
            if raw.lower() in names:
                return names[raw.lower()]
            if not re.fullmatch(r"\d+|0[xX][0-9a-fA-F]+", raw):
                allowed = f" or one of {', '.join(names)}" if names else ""
                self.c.fail(path, f"expected a number{allowed}, got {raw!r}")
            raw = int(raw, 0) if not re.fullmatch(r"0\d+", raw) else int(raw, 10)
        return self.c.integer(raw, path, 0, hi)

    def _range(self, raw: object, path: Path, lo: int, hi: int) -> tuple[int, int]:
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = self.c.integer(raw, path, lo, hi)
            return value, value
        m = _RANGE_RE.match(raw) if isinstance(raw, str) else None
        if not m:
            self.c.fail(path, f"expected a port or a range like 1000-2000, got {raw!r}")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if not lo <= a <= b <= hi:
            self.c.fail(path, f"bad port range {raw!r} (need {lo} <= start <= end <= {hi})")
        return a, b

    def _check_jump_loops(self, chains: dict[str, Chain]) -> None:
        state: dict[str, int] = {}        # 1: on the current path, 2: done

        def visit(name: str, stack: list[str]) -> None:
            state[name] = 1
            stack.append(name)
            for i, rule in enumerate(chains[name].rules):
                if rule.action != "jump" or rule.chain is None:
                    continue
                if state.get(rule.chain) == 1:
                    loop = [*stack[stack.index(rule.chain):], rule.chain]
                    self.c.fail(("chains", name, i, "chain"), f"jump loop: {' -> '.join(loop)}")
                if rule.chain not in state:
                    visit(rule.chain, stack)
            stack.pop()
            state[name] = 2

        for name in chains:
            if name not in state:
                visit(name, [])

    # -- load balancers and port groups ------------------------------------------------------------
    def _lb(self, name: str, body: object) -> LoadBalancer:
        c, path = self.c, ("load_balancers", name)
        c.string(name, path)
        b = c.mapping(body, path, ("vips", "pools"))
        pools = {}
        for pname, pbody in c.table(b.get("pools"), (*path, "pools")).items():
            pp = (*path, "pools", pname)
            c.string(pname, pp)
            members = c.seq(c.mapping(pbody, pp, ("members",)).get("members"), (*pp, "members"))
            pool = Pool(name=pname, members=tuple(
                self._member(m, (*pp, "members", i)) for i, m in enumerate(members)))
            for i, m in enumerate(pool.members):
                if m.v6 != pool.members[0].v6:
                    c.fail((*pp, "members", i, "address"), f"pool {pname!r} mixes IPv4 and IPv6 members "
                           f"(member 0 is {_family(pool.members[0].v6)}, this one {_family(m.v6)})")
            pools[pname] = pool
        vips: list[Vip] = []
        for i, vbody in enumerate(c.seq(b.get("vips"), (*path, "vips"))):
            vp = (*path, "vips", i)
            v = c.mapping(vbody, vp, ("address", "port", "proto", "pool", "sticky_source_ip"),
                          required=("address", "port", "pool"), nullable=False)
            proto = v.get("proto", "tcp")
            if proto not in ("tcp", "udp"):
                c.fail((*vp, "proto"), f"expected 'tcp' or 'udp', got {proto!r}")
            v6 = is_ipv6_text(v["address"])
            vip = Vip(address=(c.ip6 if v6 else c.ip)(v["address"], (*vp, "address")),
                      port=c.integer(v["port"], (*vp, "port"), 1, 65535),
                      proto=PROTO_NAMES[proto], pool=self._ref(v["pool"], (*vp, "pool"), set(pools), "pool"),
                      sticky_source_ip=c.boolean(v.get("sticky_source_ip", False), (*vp, "sticky_source_ip")),
                      v6=v6)
            members = pools[vip.pool].members
            if members and members[0].v6 != v6:
                c.fail((*vp, "address"), f"VIP {v['address']} is {_family(v6)} but the members of pool "
                       f"{vip.pool!r} are {_family(members[0].v6)} (a VIP and its pool are one family)")
            if any((o.address, o.port, o.proto, o.v6) == (vip.address, vip.port, vip.proto, v6) for o in vips):
                shown = f"[{int2ip6(vip.address)}]" if v6 else int2ip(vip.address)
                c.fail(vp, f"duplicate VIP {shown}:{vip.port}/{proto}")
            vips.append(vip)
        return LoadBalancer(name=name, vips=tuple(vips), pools=pools)

    def _member(self, body: object, path: Path) -> Member:
        c = self.c
        m = c.mapping(body, path, ("address", "port", "weight", "admin_up"), required=("address", "port"),
                      nullable=False)
        v6 = is_ipv6_text(m["address"])
        return Member(address=(c.ip6 if v6 else c.ip)(m["address"], (*path, "address")),
                      port=c.integer(m["port"], (*path, "port"), 1, 65535),
                      weight=c.integer(m.get("weight", 1), (*path, "weight"), 0, 0xFFFF),
                      admin_up=c.boolean(m.get("admin_up", True), (*path, "admin_up")), v6=v6)

    def _group(self, name: str, body: object) -> PortGroup:
        c, path = self.c, ("port_groups", name)
        c.string(name, path)
        b = c.mapping(body, path, ("stateful", "ports"))
        ports: list[str] = []
        for i, p in enumerate(c.seq(b.get("ports"), (*path, "ports"))):
            pid = self._port_ref(p, (*path, "ports", i))
            if pid in ports:
                c.fail((*path, "ports", i), f"port {pid!r} is listed twice")
            ports.append(pid)
        return PortGroup(name=name, ports=tuple(ports),
                         stateful=c.boolean(b.get("stateful", False), (*path, "stateful")))
