"""The virtual topology in a store: layout, record encoding, and diff-writing of a whole Topology.

Owns the layout (every record is one node whose value is the record's JSON)::

    /topology/hosts/<name>            Host
    /topology/bridges/<name>          Bridge (with its ports and static MAC table)
    /topology/routers/<name>          Router (with its ports, routes and static ARP table)
    /topology/chains/<name>           Chain
    /topology/load_balancers/<name>   LoadBalancer (with its VIPs and pools)
    /topology/port_groups/<name>      PortGroup
    /topology/tunnel_keys/<port id>   the port's tunnel key, decimal (the assignment, kept across edits)

Names are percent-encoded into node names (``quote(name, safe="")``, and ``.``/``..`` escaped), so any name
is a valid node.  The dict form is exact: ints stay ints (JSON integers), tuples become lists and come back as
tuples, mappings keep their order, mappings with non-string keys become lists of rows (``Bridge.mac_table``:
``[[vlan, mac, port], ...]``; ``Router.arp_table`` and ``nd_table``: ``[[ip, mac], ...]``; ``Port.addresses6``:
``[[address, prefix length], ...]``; IPv6 addresses are JSON integers too), and a ``Condition.value`` is
tagged by type (``{"fs": [...]}`` frozenset, ``{"t": [...]}`` tuple, else a scalar).  Every record carries
``"v": 1`` and its kind; a record that does not decode raises ``BadRecord`` naming its path.

``write_topology`` is a diff, not a transaction: it writes only records whose bytes changed and deletes
removed ones, one node at a time, so a concurrent reader may see a mix of old and new records (the agent's
cache treats a dangling reference as a fragment not there yet).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from urllib.parse import quote, unquote

from topology.model import (
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
)
from topology.store.base import NodeExists, NoNode, Store, StoreError

ROOT = "/topology"
RECORD_VERSION = 1
KINDS: dict[str, tuple[str, type]] = {
    "host": ("hosts", Host),
    "bridge": ("bridges", Bridge),
    "router": ("routers", Router),
    "chain": ("chains", Chain),
    "load_balancer": ("load_balancers", LoadBalancer),
    "port_group": ("port_groups", PortGroup),
}
_KIND_OF_TYPE = {cls: kind for kind, (_, cls) in KINDS.items()}
TUNNEL_KEYS = f"{ROOT}/tunnel_keys"


class BadRecord(StoreError, ValueError):
    """A stored record that does not decode into a model object."""


# -- names and paths --------------------------------------------------------------------------------------
def node_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"object name must be a non-empty string: {name!r}")
    q = quote(name, safe="")
    return q.replace(".", "%2E") if q in (".", "..") else q


def kind_path(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown object kind {kind!r} (known: {', '.join(KINDS)})")
    return f"{ROOT}/{KINDS[kind][0]}"


def object_path(kind: str, name: str) -> str:
    return f"{kind_path(kind)}/{node_name(name)}"


def kind_of(obj: object) -> str:
    try:
        return _KIND_OF_TYPE[type(obj)]
    except KeyError:
        raise ValueError(f"not a topology object: {type(obj).__name__}") from None


# -- dict form --------------------------------------------------------------------------------------------
def _flat(obj: object) -> dict:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _tag(value: object) -> object:
    if isinstance(value, frozenset | set):
        return {"fs": sorted((_tag(v) for v in value), key=lambda v: (type(v).__name__, json.dumps(v)))}
    if isinstance(value, tuple):
        return {"t": [_tag(v) for v in value]}
    if value is None or isinstance(value, bool | int | str):
        return value
    raise ValueError(f"cannot encode condition value {value!r}")


def _untag(value: object) -> object:
    if isinstance(value, dict):
        if set(value) == {"fs"}:
            return frozenset(_untag(v) for v in value["fs"])
        if set(value) == {"t"}:
            return tuple(_untag(v) for v in value["t"])
        raise ValueError(f"bad tagged value {value!r}")
    return value


def _ports(ports: Mapping[str, Port]) -> dict:
    return {name: _flat(p) for name, p in ports.items()}


def _port(d: Mapping) -> Port:
    """A stored port (``addresses6``: rows of [address, prefix length] back to tuples; absent in records
    written before IPv6)."""
    return Port(**{**d, "addresses6": tuple((a, n) for a, n in d.get("addresses6", ()))})


def to_dict(obj: object) -> dict:
    """The JSON-ready dict form of a topology record (``"v"`` and ``"kind"`` included)."""
    kind = kind_of(obj)
    if kind in ("host", "port_group"):
        d = _flat(obj)
        if kind == "port_group":
            d["ports"] = list(obj.ports)
    elif kind == "bridge":
        d = {**_flat(obj), "ports": _ports(obj.ports),
             "mac_table": [[vlan, mac, port] for (vlan, mac), port in obj.mac_table.items()]}
    elif kind == "router":
        d = {**_flat(obj), "ports": _ports(obj.ports), "routes": [_flat(r) for r in obj.routes],
             "arp_table": [[ip, mac] for ip, mac in obj.arp_table.items()],
             "nd_table": [[ip, mac] for ip, mac in obj.nd_table.items()]}
    elif kind == "chain":
        d = {"name": obj.name, "rules": [
            {"action": r.action, "chain": r.chain, "targets": [_flat(t) for t in r.targets],
             "match": {"invert": r.match.invert, "conditions": [
                 {"field": c.field, "value": _tag(c.value), "negate": c.negate} for c in r.match.conditions]}}
            for r in obj.rules]}
    else:  # load_balancer
        d = {"name": obj.name, "vips": [_flat(v) for v in obj.vips],
             "pools": {n: {"name": p.name, "members": [_flat(m) for m in p.members]}
                       for n, p in obj.pools.items()}}
    return {"v": RECORD_VERSION, "kind": kind, **d}


def from_dict(kind: str, d: Mapping) -> object:
    """Inverse of ``to_dict``.  Raises ValueError/TypeError/KeyError on a malformed dict."""
    d = dict(d)
    if d.pop("v", None) != RECORD_VERSION or d.pop("kind", None) != kind:
        raise ValueError(f"not a version-{RECORD_VERSION} {kind} record")
    if kind == "host":
        return Host(**d)
    if kind == "port_group":
        return PortGroup(**{**d, "ports": tuple(d["ports"])})
    if kind == "bridge":
        return Bridge(**{**d, "ports": {n: _port(p) for n, p in d["ports"].items()},
                         "mac_table": {(vlan, mac): port for vlan, mac, port in d["mac_table"]}})
    if kind == "router":
        return Router(**{**d, "ports": {n: _port(p) for n, p in d["ports"].items()},
                         "routes": tuple(Route(**r) for r in d["routes"]),
                         "arp_table": {ip: mac for ip, mac in d["arp_table"]},
                         "nd_table": {ip: mac for ip, mac in d.get("nd_table", ())}})
    if kind == "chain":
        return Chain(d["name"], tuple(
            Rule(action=r["action"], chain=r["chain"], targets=tuple(NatTarget(**t) for t in r["targets"]),
                 match=Match(invert=r["match"]["invert"], conditions=tuple(
                     Condition(c["field"], _untag(c["value"]), c["negate"])
                     for c in r["match"]["conditions"])))
            for r in d["rules"]))
    if kind == "load_balancer":
        return LoadBalancer(d["name"], tuple(Vip(**v) for v in d["vips"]), {
            n: Pool(p["name"], tuple(Member(**m) for m in p["members"])) for n, p in d["pools"].items()})
    raise ValueError(f"unknown object kind {kind!r}")


def encode(obj: object) -> bytes:
    return json.dumps(to_dict(obj), separators=(",", ":")).encode()


def decode(kind: str, data: bytes, path: str = "?") -> object:
    try:
        return from_dict(kind, json.loads(data))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise BadRecord(f"{path}: not a valid {kind} record: {e}") from None


# -- single objects ---------------------------------------------------------------------------------------
def _upsert(store: Store, path: str, data: bytes) -> str:
    """Write ``data`` at ``path`` unless already there; return 'created', 'updated' or 'unchanged'."""
    try:
        old, _ = store.get(path)
    except NoNode:
        try:
            store.create(path, data, makepath=True)
            return "created"
        except NodeExists:   # created concurrently: fall through to an update
            old = None
    if old == data:
        return "unchanged"
    store.set(path, data)
    return "updated"


def put_object(store: Store, obj: object) -> str:
    """Store one record; return 'created', 'updated' or 'unchanged'."""
    return _upsert(store, object_path(kind_of(obj), obj.name), encode(obj))


def get_object(store: Store, kind: str, name: str) -> object:
    """The record ``name`` of ``kind``.  Raises NoNode if absent, BadRecord if undecodable."""
    path = object_path(kind, name)
    data, _ = store.get(path)
    return decode(kind, data, path)


def delete_object(store: Store, kind: str, name: str) -> bool:
    """Delete a record; False if it was not there."""
    try:
        store.delete(object_path(kind, name))
        return True
    except NoNode:
        return False


def list_names(store: Store, kind: str) -> list[str]:
    try:
        return sorted(unquote(n) for n in store.children(kind_path(kind)))
    except NoNode:
        return []


def list_objects(store: Store, kind: str) -> dict[str, object]:
    """Every record of ``kind``, by name (records deleted while listing are skipped)."""
    out = {}
    for name in list_names(store, kind):
        try:
            out[name] = get_object(store, kind, name)
        except NoNode:
            pass
    return out


# -- whole topologies -------------------------------------------------------------------------------------
def _records(topo: Topology) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for kind, (attr, _) in KINDS.items():
        for obj in getattr(topo, attr).values():
            out[object_path(kind, obj.name)] = encode(obj)
    for pid, port in topo.all_ports().items():
        if port.tunnel_key is not None:
            out[f"{TUNNEL_KEYS}/{node_name(pid)}"] = str(port.tunnel_key).encode()
    return out


def write_topology(store: Store, topo: Topology, progress=None) -> dict[str, int]:
    """Make the store hold exactly ``topo``: write changed records, delete removed ones.  Returns counts
    ``{"created", "updated", "deleted", "unchanged"}`` (tunnel-key nodes included).  ``progress(done, total)``,
    if given, is called after each record written or compared."""
    wanted = _records(topo)
    counts = {"created": 0, "updated": 0, "deleted": 0, "unchanged": 0}
    for n, (path, data) in enumerate(wanted.items(), 1):
        counts[_upsert(store, path, data)] += 1
        if progress is not None:
            progress(n, len(wanted))
    for directory in [kind_path(k) for k in KINDS] + [TUNNEL_KEYS]:
        try:
            present = store.children(directory)
        except NoNode:
            continue
        for child in present:
            path = f"{directory}/{child}"
            if path not in wanted:
                try:
                    store.delete(path, recursive=True)
                    counts["deleted"] += 1
                except NoNode:
                    pass
    return counts


def read_topology(store: Store) -> Topology:
    """The whole topology held in the store (empty if none)."""
    parts = {attr: list_objects(store, kind) for kind, (attr, _) in KINDS.items()}
    return Topology(**parts)


def read_tunnel_keys(store: Store) -> dict[str, int]:
    """Port id → tunnel key, as stored (feed to ``assign_tunnel_keys`` to keep keys across edits)."""
    out = {}
    try:
        names = store.children(TUNNEL_KEYS)
    except NoNode:
        return out
    for n in names:
        try:
            data, _ = store.get(f"{TUNNEL_KEYS}/{n}")
        except NoNode:
            continue
        try:
            out[unquote(n)] = int(data)
        except ValueError:
            raise BadRecord(f"{TUNNEL_KEYS}/{n}: not a tunnel key: {data!r}") from None
    return out
