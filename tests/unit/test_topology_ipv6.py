"""IPv6 in the topology file: router port addresses, routes, nd_table, chain prefixes, LB VIPs/members —
what loads, every error (file line, field path, message), and the dump/load and store round trips."""

from __future__ import annotations

import json

import pytest

from packet.addr import ip2int, ip6_2int, mac2int
from topology.dump import dump_yaml, topology_to_dict
from topology.errors import TopologyError
from topology.loader import loads_topology, topology_from_dict
from topology.model import Condition, Member, Route, Vip
from topology.store import topo as topo_store
from topology.store.memory import MemoryStore

BASE = """\
version: 1
hosts:
  h1: {tunnel_ip: 127.0.0.21}
bridges:
  lan:
    ports:
      a: {host: h1, interface: tap-a}
      up: {peer: r1.lan}
routers:
  r1:
    ports:
      lan: {address: [10.1.0.1/24, "2001:db8:1::1/64", "2001:db8:2::1/64"], mac: "02:0a:00:00:01:01"}
      wan: {address: "2001:db8:ff::2/64", mac: "02:0a:00:00:01:02"}
      v4only: {address: 198.51.100.2/24}
    routes:
      - {dst: "::/0", gateway: "2001:db8:ff::1", port: wan}
      - {dst: "2001:db8:100::/48", src: "2001:db8:1::/64", gateway: "fe80::1", port: wan, weight: 5}
      - {dst: "2001:db8:dead::/48", type: blackhole}
      - {dst: 0.0.0.0/0, gateway: 198.51.100.1, port: v4only}
    nd_table: {"2001:db8:ff::1": "02:0b:00:00:00:01"}
    arp_table: {198.51.100.1: "02:0b:00:00:00:02"}
chains:
  c:
    - {match: {src: "!2001:db8:1::/64", dst: "2001:db8:2::5"}, action: accept}
    - {match: {src: 10.1.0.0/24}, action: snat, targets: [{ip: 198.51.100.2}]}
load_balancers:
  lb:
    vips:
      - {address: "2001:db8:ff::10", port: 80, pool: web}
      - {address: 198.51.100.10, port: 80, pool: web4}
    pools:
      web: {members: [{address: "2001:db8:1::5", port: 8080}, {address: "2001:db8:2::5", port: 8080}]}
      web4: {members: [{address: 10.1.0.5, port: 8080}]}
"""


def edit(old: str, new: str) -> str:
    assert BASE.count(old) == 1, old
    return BASE.replace(old, new)


def test_base_conversions():
    t = loads_topology(BASE)
    r1 = t.routers["r1"]
    lan, wan = r1.ports["lan"], r1.ports["wan"]
    assert (lan.address, lan.prefix_len) == (ip2int("10.1.0.1"), 24)
    assert lan.addresses6 == ((ip6_2int("2001:db8:1::1"), 64), (ip6_2int("2001:db8:2::1"), 64))
    assert (wan.address, wan.addresses6) == (None, ((ip6_2int("2001:db8:ff::2"), 64),))
    assert r1.ports["v4only"].addresses6 == () and r1.ports["v4only"].link_local6 is None
    assert wan.link_local6 == ip6_2int("fe80::a:ff:fe00:102")
    assert r1.routes[0] == Route(0, 0, gateway=ip6_2int("2001:db8:ff::1"), port="wan", v6=True)
    assert r1.routes[1] == Route(ip6_2int("2001:db8:100::"), 48, ip6_2int("2001:db8:1::"), 64,
                                 gateway=ip6_2int("fe80::1"), port="wan", weight=5, v6=True)
    assert r1.routes[2] == Route(ip6_2int("2001:db8:dead::"), 48, type="blackhole", v6=True)
    assert not r1.routes[3].v6
    assert r1.nd_table == {ip6_2int("2001:db8:ff::1"): mac2int("02:0b:00:00:00:01")}
    assert r1.arp_table == {ip2int("198.51.100.1"): mac2int("02:0b:00:00:00:02")}
    connected6 = {(r.dst, r.dst_len, r.port) for r in r1.all_routes() if r.v6 and r.weight == 0}
    assert connected6 == {(ip6_2int("2001:db8:1::"), 64, "lan"), (ip6_2int("2001:db8:2::"), 64, "lan"),
                          (ip6_2int("2001:db8:ff::"), 64, "wan")}
    rules = t.chains["c"].rules
    assert rules[0].match.conditions == (
        Condition("src", (ip6_2int("2001:db8:1::"), 64, 6), negate=True),
        Condition("dst", (ip6_2int("2001:db8:2::5"), 128, 6)))
    assert rules[1].match.conditions == (Condition("src", (ip2int("10.1.0.0"), 24)),)
    lb = t.load_balancers["lb"]
    assert lb.vips[0] == Vip(ip6_2int("2001:db8:ff::10"), 80, 6, "web", v6=True)
    assert lb.vips[1] == Vip(ip2int("198.51.100.10"), 80, 6, "web4")
    assert lb.pools["web"].members[0] == Member(ip6_2int("2001:db8:1::5"), 8080, v6=True)
    assert not lb.pools["web4"].members[0].v6


def test_single_ipv6_address_string_and_list_forms():
    one = loads_topology(edit('address: "2001:db8:ff::2/64"', 'address: ["2001:db8:ff::2/64"]'))
    assert one == loads_topology(BASE)
    only6 = loads_topology(edit('[10.1.0.1/24, "2001:db8:1::1/64", ', '["2001:db8:1::1/64", '))
    assert only6.port("r1.lan").address is None and len(only6.port("r1.lan").addresses6) == 2


def test_dump_load_round_trip_exact():
    t = loads_topology(BASE)
    assert loads_topology(dump_yaml(t)) == t
    assert loads_topology(json.dumps(topology_to_dict(t), indent=1)) == t
    assert topology_from_dict(topology_to_dict(t)) == t
    d = topology_to_dict(t)["routers"]["r1"]
    assert d["ports"]["lan"]["address"] == ["10.1.0.1/24", "2001:db8:1::1/64", "2001:db8:2::1/64"]
    assert d["ports"]["wan"]["address"] == "2001:db8:ff::2/64"
    assert d["routes"][0] == {"dst": "::/0", "gateway": "2001:db8:ff::1", "port": "wan"}
    assert d["nd_table"] == {"2001:db8:ff::1": "02:0b:00:00:00:01"}
    assert topology_to_dict(t)["chains"]["c"][0]["match"] == {"src": "!2001:db8:1::/64", "dst": "2001:db8:2::5"}


def test_store_round_trip_memory():
    """Every record through its stored bytes (the ZooKeeper run is tests/integration/test_store_contract)."""
    t = loads_topology(BASE)
    store = MemoryStore()
    try:
        topo_store.write_topology(store, t)
        back = topo_store.read_topology(store)
    finally:
        store.close()
    assert back == t
    assert all(type(a) is tuple for a in back.port("r1.lan").addresses6)
    assert isinstance(back.chains["c"].rules[0].match.conditions[0].value, tuple)


def test_store_reads_records_written_before_ipv6():
    r1 = loads_topology(BASE).routers["r1"]
    d = topo_store.to_dict(r1)
    del d["nd_table"]
    for p in d["ports"].values():
        del p["addresses6"]
    old = topo_store.from_dict("router", d)
    assert old.nd_table == {} and all(p.addresses6 == () for p in old.ports.values())


CASES = [
    # -- port addresses ------------------------------------------------------------------------------------
    ("two-ipv4", edit("[10.1.0.1/24, ", "[10.1.0.1/24, 10.2.0.1/24, "),
     12, "routers.r1.ports.lan.address[1]", "a port has at most one IPv4 address"),
    ("v6-no-prefix", edit('"2001:db8:ff::2/64"', '"2001:db8:ff::2"'),
     13, "routers.r1.ports.wan.address",
     "not an address with prefix length (like 2001:db8:1::1/64): '2001:db8:ff::2'"),
    ("v6-prefix-129", edit('"2001:db8:ff::2/64"', '"2001:db8:ff::2/129"'),
     13, "routers.r1.ports.wan.address",
     "not an address with prefix length (like 2001:db8:1::1/64): '2001:db8:ff::2/129'"),
    ("v6-bad-address", edit('"2001:db8:ff::2/64"', '"2001:db8:::2/64"'),
     13, "routers.r1.ports.wan.address", "not an IPv6 address: '2001:db8:::2'"),
    ("v6-anycast", edit('"2001:db8:2::1/64"', '"2001:db8:2::/64"'),
     12, "routers.r1.ports.lan.address[2]", "2001:db8:2::/64 is the subnet-router anycast address of its prefix"),
    ("v6-multicast", edit('"2001:db8:ff::2/64"', '"ff05::2/64"'),
     13, "routers.r1.ports.wan.address", "ff05::2/64 is a multicast address"),
    ("v6-link-local", edit('"2001:db8:ff::2/64"', '"fe80::2/64"'),
     13, "routers.r1.ports.wan.address",
     "fe80::2/64 is link-local (a port's link-local address is derived from its MAC)"),
    ("v6-twice-on-port", edit('"2001:db8:2::1/64"', '"2001:db8:1::1/64"'),
     12, "routers.r1.ports.lan.address[2]", "address 2001:db8:1::1 is listed twice"),
    ("v6-duplicate-across-ports", edit('"2001:db8:ff::2/64"', '"2001:db8:2::1/64"'),
     13, "routers.r1.ports.wan.address", "address 2001:db8:2::1 is already used by port 'lan'"),
    ("empty-address-list", edit('address: "2001:db8:ff::2/64"', "address: []"),
     13, "routers.r1.ports.wan.address", "empty address list"),
    # -- routes ------------------------------------------------------------------------------------------------
    ("mixed-gateway", edit('gateway: "2001:db8:ff::1", port: wan}', "gateway: 198.51.100.1, port: wan}"),
     16, "routers.r1.routes[0].gateway", "gateway is IPv4 but dst is IPv6 (one address family per route)"),
    ("mixed-src", edit('src: "2001:db8:1::/64"', "src: 10.1.0.0/24"),
     17, "routers.r1.routes[1].src", "src is IPv4 but dst is IPv6 (one address family per route)"),
    ("mixed-v4-dst", edit("{dst: 0.0.0.0/0, gateway: 198.51.100.1", '{dst: 0.0.0.0/0, gateway: "2001:db8:ff::1"'),
     19, "routers.r1.routes[3].gateway", "gateway is IPv6 but dst is IPv4 (one address family per route)"),
    ("v6-host-bits", edit('dst: "2001:db8:100::/48"', 'dst: "2001:db8:100::1/48"'),
     17, "routers.r1.routes[1].dst", "host bits set in 2001:db8:100::1/48 (did you mean 2001:db8:100::/48?)"),
    ("v6-bad-cidr", edit('dst: "2001:db8:100::/48"', 'dst: "2001:db8:100::/200"'),
     17, "routers.r1.routes[1].dst", "not an IPv6 CIDR prefix: '2001:db8:100::/200'"),
    ("v6-gateway-outside", edit('gateway: "2001:db8:ff::1"', 'gateway: "2001:db8:1::9"'),
     16, "routers.r1.routes[0].gateway",
     "gateway 2001:db8:1::9 is not in the subnet 2001:db8:ff::/64 of port 'wan'"),
    ("v6-gateway-own", edit('gateway: "2001:db8:ff::1"', 'gateway: "2001:db8:ff::2"'),
     16, "routers.r1.routes[0].gateway", "gateway 2001:db8:ff::2 is an address of port 'wan'"),
    ("v6-route-v4-port", edit('gateway: "2001:db8:ff::1", port: wan}', 'port: v4only}'),
     16, "routers.r1.routes[0].port", "port 'v4only' has no IPv6 address (an IPv6 route needs one)"),
    ("v6-blackhole-port", edit("type: blackhole}", "type: blackhole, port: wan}"),
     18, "routers.r1.routes[2].port", "a blackhole route takes no port"),
    # -- nd_table ------------------------------------------------------------------------------------------------
    ("nd-bad-ip", edit('nd_table: {"2001:db8:ff::1"', 'nd_table: {"10.0.0.1"'),
     20, 'routers.r1.nd_table["10.0.0.1"]', "not an IPv6 address: '10.0.0.1'"),
    ("nd-bad-mac", edit('"2001:db8:ff::1": "02:0b:00:00:00:01"', '"2001:db8:ff::1": nope'),
     20, "routers.r1.nd_table.2001:db8:ff::1", "not a MAC address: 'nope'"),
    ("nd-duplicate", edit('"02:0b:00:00:00:01"}', '"02:0b:00:00:00:01", "2001:db8:ff:0::1": "02:0b:00:00:00:03"}'),
     20, "routers.r1.nd_table.2001:db8:ff:0::1", "duplicate entry for 2001:db8:ff::1"),
    # -- chains --------------------------------------------------------------------------------------------------
    ("match-bad-v6", edit('dst: "2001:db8:2::5"', 'dst: "2001:db8:2::5/129"'),
     24, "chains.c[0].match.dst", "not an IPv6 CIDR prefix: '2001:db8:2::5/129'"),
    ("snat-v6-target", edit("targets: [{ip: 198.51.100.2}]", 'targets: [{ip: "2001:db8:ff::2"}]'),
     25, "chains.c[1].targets[0].ip", "NAT of IPv6 addresses is not supported: '2001:db8:ff::2'"),
    ("dnat-v6-range", edit("action: snat, targets: [{ip: 198.51.100.2}]",
                           'action: dnat, targets: [{ip: "2001:db8:1::5-2001:db8:1::9", port: 80}]'),
     25, "chains.c[1].targets[0].ip", "NAT of IPv6 addresses is not supported: '2001:db8:1::5-2001:db8:1::9'"),
    # -- load balancers -------------------------------------------------------------------------------------------
    ("vip-v6-pool-v4", edit("{address: 198.51.100.10, port: 80, pool: web4}",
                            '{address: "2001:db8:ff::11", port: 80, pool: web4}'),
     30, "load_balancers.lb.vips[1].address",
     "VIP 2001:db8:ff::11 is IPv6 but the members of pool 'web4' are IPv4 (a VIP and its pool are one family)"),
    ("vip-v4-pool-v6", edit('{address: "2001:db8:ff::10", port: 80, pool: web}',
                            "{address: 198.51.100.11, port: 80, pool: web}"),
     29, "load_balancers.lb.vips[0].address",
     "VIP 198.51.100.11 is IPv4 but the members of pool 'web' are IPv6 (a VIP and its pool are one family)"),
    ("pool-mixed", edit('{address: "2001:db8:2::5", port: 8080}', "{address: 10.1.0.6, port: 8080}"),
     32, "load_balancers.lb.pools.web.members[1].address",
     "pool 'web' mixes IPv4 and IPv6 members (member 0 is IPv6, this one IPv4)"),
    ("vip-bad-v6", edit('address: "2001:db8:ff::10"', 'address: "2001:db8:ff::10::1"'),
     29, "load_balancers.lb.vips[0].address", "not an IPv6 address: '2001:db8:ff::10::1'"),
    ("vip-duplicate-v6", edit('{address: "2001:db8:ff::10", port: 80, pool: web}',
                              '{address: "2001:db8:ff::10", port: 80, pool: web}\n'
                              '      - {address: "2001:db8:ff:0::10", port: 80, pool: web}'),
     30, "load_balancers.lb.vips[1]", "duplicate VIP [2001:db8:ff::10]:80/tcp"),
]


@pytest.mark.parametrize(("text", "line", "path", "message"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_broken_ipv6_snippet(text, line, path, message):
    with pytest.raises(TopologyError) as info:
        loads_topology(text, "demo.yaml")
    err = info.value
    assert (err.line, err.path, err.message) == (line, path, message)
    assert str(err) == f"demo.yaml:{line}: {path}: {message}"
