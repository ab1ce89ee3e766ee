"""Topology → file format (CONTRACTS §1, version 1): the inverse of topology.loader.

Owns the text forms written back: addresses and MACs as text, peers as port ids, ranges as ``a-b``, protocols
by name, and the omission of every value equal to the loader's default (and of empty sections), so a dumped
file reads like a hand-written one.  Tunnel keys are not written: the system assigns them.  Both ends of a
link name their peer.  ``loads_topology(dump_yaml(t))`` equals ``t`` up to tunnel keys (exactly, when the
load is given ``tunnel_keys`` from ``t``, or when ``t`` came from a file: declaration order is kept).
"""

from __future__ import annotations

from typing import Any

import yaml

from packet.addr import cidr6_str, cidr_str, int2ip, int2ip6, int2mac
from packet.packet import PROTO_BY_NUMBER, PROTO_TCP
from topology.model import (
    ROUTE_NORMAL,
    Bridge,
    Condition,
    LoadBalancer,
    Match,
    Member,
    NatTarget,
    Port,
    Route,
    Router,
    Rule,
    Topology,
)

__all__ = ["topology_to_dict", "dump_yaml"]


def topology_to_dict(topo: Topology) -> dict[str, Any]:
    """The file form of ``topo`` as plain dicts/lists/strs/ints (JSON- and YAML-safe)."""
    out: dict[str, Any] = {"version": topo.version}
    sections = {
        "hosts": {n: {"tunnel_ip": int2ip(h.tunnel_ip)} for n, h in topo.hosts.items()},
        "bridges": {n: _bridge(b) for n, b in topo.bridges.items()},
        "routers": {n: _router(r) for n, r in topo.routers.items()},
        "chains": {n: [_rule(r) for r in c.rules] for n, c in topo.chains.items()},
        "load_balancers": {n: _lb(lb) for n, lb in topo.load_balancers.items()},
        "port_groups": {n: {**({"stateful": True} if g.stateful else {}), "ports": list(g.ports)}
                        for n, g in topo.port_groups.items()},
    }
    out.update((k, v) for k, v in sections.items() if v)
    return out


def dump_yaml(topo: Topology) -> str:
    """The topology as YAML text (declaration order kept: it decides the tunnel keys of new ports)."""
    return "# shardnet topology\n" + yaml.safe_dump(
        topology_to_dict(topo), sort_keys=False, default_flow_style=None, width=110)


def _port(p: Port) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if p.peer is not None:
        d["peer"] = p.peer
    addresses = [f"{int2ip(p.address)}/{32 if p.prefix_len is None else p.prefix_len}"] if p.address is not None else []
    addresses += [f"{int2ip6(a)}/{n}" for a, n in p.addresses6]
    if addresses:
        d["address"] = addresses[0] if len(addresses) == 1 else addresses
    if p.mac is not None:
        d["mac"] = int2mac(p.mac)
    if p.host is not None:
        d["host"] = p.host
    if p.interface is not None:
        d["interface"] = p.interface
    return d


def _filters(d: dict[str, Any], dev: Bridge | Router) -> None:
    if dev.inbound_filter is not None:
        d["inbound_filter"] = dev.inbound_filter
    if dev.outbound_filter is not None:
        d["outbound_filter"] = dev.outbound_filter


def _bridge(b: Bridge) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if b.ports:
        d["ports"] = {n: _port(p) for n, p in b.ports.items()}
    _filters(d, b)
    by_mac: dict[int, list[tuple[int, str]]] = {}
    for (vlan, mac), port in b.mac_table.items():
        by_mac.setdefault(mac, []).append((vlan, port))
    table: dict[str, Any] = {}
    for mac, entries in by_mac.items():
        if len(entries) == 1 and entries[0][0] == 0:
            table[int2mac(mac)] = entries[0][1]
        else:
            items = [{"port": port, **({"vlan": vlan} if vlan else {})} for vlan, port in sorted(entries)]
            table[int2mac(mac)] = items[0] if len(items) == 1 else items
    if table:
        d["mac_table"] = table
    vlans = {n: p.vlan for n, p in b.ports.items() if p.vlan is not None}
    if vlans:
        d["vlan_ports"] = vlans
    return d


def _router(r: Router) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if r.ports:
        d["ports"] = {n: _port(p) for n, p in r.ports.items()}
    if r.routes:
        d["routes"] = [_route(rt) for rt in r.routes]
    if r.arp_table:
        d["arp_table"] = {int2ip(ip): int2mac(mac) for ip, mac in r.arp_table.items()}
    if r.nd_table:
        d["nd_table"] = {int2ip6(ip): int2mac(mac) for ip, mac in r.nd_table.items()}
    _filters(d, r)
    if r.load_balancer is not None:
        d["load_balancer"] = r.load_balancer
    return d


def _route(rt: Route) -> dict[str, Any]:
    cidr, ip = (cidr6_str, int2ip6) if rt.v6 else (cidr_str, int2ip)
    d: dict[str, Any] = {"dst": cidr(rt.dst, rt.dst_len)}
    if rt.src or rt.src_len:
        d["src"] = cidr(rt.src, rt.src_len)
    if rt.gateway is not None:
        d["gateway"] = ip(rt.gateway)
    if rt.port is not None:
        d["port"] = rt.port
    if rt.weight != 100:
        d["weight"] = rt.weight
    if rt.type != ROUTE_NORMAL:
        d["type"] = rt.type
    return d


def _rule(rule: Rule) -> dict[str, Any]:
    d: dict[str, Any] = {}
    match = _match(rule.match)
    if match:
        d["match"] = match
    d["action"] = rule.action
    if rule.chain is not None:
        d["chain"] = rule.chain
    if rule.targets:
        d["targets"] = [_target(t) for t in rule.targets]
    return d


def _match(m: Match) -> dict[str, Any]:
    d = {c.field: _condition(c) for c in m.conditions}
    if m.invert:
        d["invert"] = True
    return d


def _range(lo: int, hi: int) -> int | str:
    return lo if lo == hi else f"{lo}-{hi}"


def _condition(c: Condition) -> Any:
    v: Any = c.value
    if c.field in ("in_port", "out_port"):
        ports = sorted(v)
        if len(ports) != 1:
            return [f"!{p}" for p in ports] if c.negate else ports
        text: Any = ports[0]
    elif c.field in ("eth_src", "eth_dst"):
        text = int2mac(v)
    elif c.field in ("src", "dst"):
        if len(v) == 3:                                   # (network, length, 6): IPv6
            text = int2ip6(v[0]) if v[1] == 128 else cidr6_str(v[0], v[1])
        else:
            text = int2ip(v[0]) if v[1] == 32 else cidr_str(*v)
    elif c.field in ("src_port", "dst_port"):
        text = _range(*v)
    elif c.field == "proto":
        text = PROTO_BY_NUMBER.get(v, v)
    elif c.field == "ethertype":
        text = f"0x{v:04x}"
    else:  # port_group, ct, tos, vlan
        text = v
    return f"!{text}" if c.negate else text


def _target(t: NatTarget) -> dict[str, Any]:
    ip = int2ip(t.ip_start) if t.ip_start == t.ip_end else f"{int2ip(t.ip_start)}-{int2ip(t.ip_end)}"
    d: dict[str, Any] = {"ip": ip}
    if t.port_start is not None:
        d["port"] = _range(t.port_start, t.port_end if t.port_end is not None else t.port_start)
    return d


def _lb(lb: LoadBalancer) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if lb.vips:
        d["vips"] = []
        for v in lb.vips:
            vip: dict[str, Any] = {"address": (int2ip6 if v.v6 else int2ip)(v.address), "port": v.port}
            if v.proto != PROTO_TCP:
                vip["proto"] = PROTO_BY_NUMBER.get(v.proto, v.proto)
            vip["pool"] = v.pool
            if v.sticky_source_ip:
                vip["sticky_source_ip"] = True
            d["vips"].append(vip)
    if lb.pools:
        d["pools"] = {n: {"members": [_member(m) for m in p.members]} for n, p in lb.pools.items()}
    return d


def _member(m: Member) -> dict[str, Any]:
    d: dict[str, Any] = {"address": (int2ip6 if m.v6 else int2ip)(m.address), "port": m.port}
    if m.weight != 1:
        d["weight"] = m.weight
    if not m.admin_up:
        d["admin_up"] = False
    return d
