"""The topology loader and dumper on valid input: examples load, conversions, round trip, tunnel keys."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from packet.addr import ip2int, mac2int
from topology.dump import dump_yaml, topology_to_dict
from topology.loader import load_topology, loads_topology, topology_from_dict
from topology.model import (
    TUNNEL_KEY_MAX,
    TUNNEL_KEY_MIN,
    Condition,
    Match,
    Member,
    NatTarget,
    Route,
    Topology,
    assign_tunnel_keys,
)

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))

# Every field of the format at least once, with the non-default spellings.
FEATURES = """\
version: 1
hosts:
  h1: {tunnel_ip: 127.0.0.21}
  h2: {tunnel_ip: 127.0.0.22}
bridges:
  lan:
    ports:
      a: {host: h1, interface: tap-a}
      b: {host: h2, interface: tap-b}
      c: {}
      trunk: {peer: edge.lan}
    outbound_filter: misc
    mac_table:
      10:00:00:00:00:01: a                       # unquoted: no YAML 1.1 base-60 trap
      "02:00:00:00:00:02": {port: b, vlan: 20}
      "02:00:00:00:00:03": [{port: c}, {port: b, vlan: 20}]
    vlan_ports: {a: 10, b: 20}
routers:
  edge:
    ports:
      lan: {address: 10.1.0.1/16, mac: "02:0a:00:00:01:01"}
      wan: {address: 203.0.113.2/30, mac: "02:0a:00:00:01:02", host: h1, interface: wan0}
      p2p: {address: 10.255.0.1/32}
    routes:
      - {dst: 0.0.0.0/0, gateway: 203.0.113.1, port: wan, weight: 10}
      - {dst: 0.0.0.0/0, gateway: 203.0.113.1, port: wan, weight: 20, src: 10.1.128.0/17}
      - {dst: 10.2.0.0/16, port: lan}
      - {dst: 10.3.0.0/16, type: reject, weight: 5}
    arp_table: {203.0.113.1: "02:0b:00:00:00:01"}
    load_balancer: lb
chains:
  misc:
    - {match: {in_port: ["!lan.a", "!lan.b"], eth_src: "!02:00:00:00:00:09"}, action: continue}
    - {match: {out_port: [lan.a, edge.wan], port_group: g, ethertype: arp, tos: 16, vlan: "!20"},
       action: accept}
    - {match: {proto: 47, src_port: "1000..2000", dst_port: "!0-1023", ct: "!return", invert: true},
       action: drop}
    - {match: {ethertype: 0x86dd, eth_dst: "ff:ff:ff:ff:ff:ff", dst: "!10.1.0.0/16"}, action: return}
    - {action: dnat, targets: [{ip: "10.1.0.10..10.1.0.12", port: 8080}, {ip: 10.1.0.20}]}
    - {action: snat, targets: [{ip: 203.0.113.2, port: "1024..65535"}]}
    - {action: jump, chain: tail}
  tail: []
load_balancers:
  lb:
    vips:
      - {address: 203.0.113.2, port: 53, proto: udp, pool: dns, sticky_source_ip: true}
      - {address: 203.0.113.2, port: 53, pool: dns}
    pools:
      dns:
        members:
          - {address: 10.1.0.53, port: 53, weight: 3}
          - {address: 10.1.0.54, port: 5353, weight: 0, admin_up: false}
      empty: {members: []}
port_groups:
  g: {ports: [lan.a, edge.wan]}
"""


def keys_of(topo: Topology) -> dict[str, int]:
    return {pid: p.tunnel_key for pid, p in topo.all_ports().items() if p.tunnel_key is not None}


def strip_keys(topo: Topology) -> Topology:
    def strip(dev):
        return replace(dev, ports={n: replace(p, tunnel_key=None) for n, p in dev.ports.items()})
    return replace(topo, bridges={n: strip(b) for n, b in topo.bridges.items()},
                   routers={n: strip(r) for n, r in topo.routers.items()})


def all_sources():
    examples = [pytest.param(p.read_text(), id=p.name) for p in EXAMPLES]
    return [*examples, pytest.param(FEATURES, id="features")]


def test_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"contracts.yaml", "gateway.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads(path):
    topo = load_topology(path)
    ports = topo.all_ports()
    assert ports
    for pid, p in ports.items():
        if p.exterior:
            assert p.tunnel_key is not None, pid
        else:
            assert ports[p.peer].peer == pid, f"{pid} -> {p.peer} is not symmetric"
            assert p.tunnel_key is None


def test_contracts_example_conversions():
    t = load_topology(str(EXAMPLES[0].parent / "contracts.yaml"))
    assert t.hosts["host-a"].tunnel_ip == ip2int("127.0.0.11")
    up = t.port("r1.uplink")
    assert (up.address, up.prefix_len, up.mac) == (ip2int("198.51.100.2"), 24, mac2int("02:0a:00:00:00:02"))
    assert (up.host, up.interface) == ("host-a", "up0")
    assert t.port("tenant.up").peer == "r1.tenant" and t.port("r1.tenant").peer == "tenant.up"
    assert t.bridges["tenant"].mac_table == {(0, mac2int("02:00:00:00:00:03")): "vm3"}
    assert t.bridges["tenant"].inbound_filter == "fw" and t.bridges["tenant"].outbound_filter is None
    r1 = t.routers["r1"]
    assert r1.routes[0] == Route(dst=0, dst_len=0, gateway=ip2int("198.51.100.1"), port="uplink", weight=100)
    assert r1.routes[1] == Route(dst=ip2int("11.0.0.0"), dst_len=24, type="blackhole")
    assert r1.routes[2].type == "reject" and r1.routes[2].port is None
    assert r1.arp_table == {ip2int("198.51.100.1"): mac2int("02:0b:00:00:00:01")}
    assert (r1.inbound_filter, r1.outbound_filter, r1.load_balancer) == ("r1-in", "r1-out", "lb1")
    dnat = t.chains["r1-in"].rules[1]
    assert dnat.match == Match((Condition("src", (ip2int("10.0.0.0"), 24), negate=True),
                                Condition("dst", (ip2int("180.0.1.100"), 32))))
    assert dnat.targets == (NatTarget(ip2int("10.0.0.1"), ip2int("10.0.0.5"), 80, 80),)
    snat = t.chains["r1-out"].rules[1]
    assert snat.targets == (NatTarget(ip2int("180.0.1.100"), ip2int("180.0.1.100"), 5000, 65535),)
    fw = t.chains["fw"].rules
    assert fw[0].match.conditions == (Condition("in_port", frozenset({"tenant.vm1"})),
                                      Condition("ct", "forward"))
    assert fw[2].match.conditions == (Condition("proto", 6), Condition("dst_port", (22, 22)))
    assert (fw[3].action, fw[3].chain) == ("jump", "more")
    vip = t.load_balancers["lb1"].vips[0]
    assert (vip.address, vip.port, vip.proto, vip.pool, vip.sticky_source_ip) == (
        ip2int("203.0.113.10"), 80, 6, "web", False)
    assert t.load_balancers["lb1"].pools["web"].members == (Member(ip2int("10.0.0.2"), 8080, 1, True),)
    assert t.port_groups["uplinks"].stateful and t.groups_of_port("r2.uplink") == ("uplinks",)


def test_gateway_example_implicit_peer_and_routes():
    t = load_topology(EXAMPLES[0].parent / "gateway.yaml")
    assert t.port("r1.tenant").peer == "tenant.r1"          # named only from the bridge side
    types = [r.type for r in t.routers["r1"].routes]
    assert types == ["normal", "blackhole", "reject"]
    connected = t.routers["r1"].all_routes()[:2]
    assert {(r.dst, r.dst_len, r.port) for r in connected} == {
        (ip2int("10.0.0.0"), 24, "tenant"), (ip2int("198.51.100.0"), 24, "uplink")}


def test_features_conversions():
    t = loads_topology(FEATURES)
    lan = t.bridges["lan"]
    assert lan.mac_table == {
        (0, mac2int("10:00:00:00:00:01")): "a",
        (20, mac2int("02:00:00:00:00:02")): "b",
        (0, mac2int("02:00:00:00:00:03")): "c",
        (20, mac2int("02:00:00:00:00:03")): "b",
    }
    assert (lan.ports["a"].vlan, lan.ports["b"].vlan, lan.ports["c"].vlan) == (10, 20, None)
    edge = t.routers["edge"]
    assert edge.routes[1].src == ip2int("10.1.128.0") and edge.routes[1].src_len == 17
    assert edge.routes[2].gateway is None and edge.routes[3].weight == 5
    rules = t.chains["misc"].rules
    assert rules[0].match.conditions == (
        Condition("in_port", frozenset({"lan.a", "lan.b"}), negate=True),
        Condition("eth_src", mac2int("02:00:00:00:00:09"), negate=True))
    assert rules[1].match.conditions == (
        Condition("out_port", frozenset({"lan.a", "edge.wan"})), Condition("port_group", "g"),
        Condition("ethertype", 0x0806), Condition("tos", 16), Condition("vlan", 20, negate=True))
    assert rules[2].match == Match((Condition("proto", 47), Condition("src_port", (1000, 2000)),
                                    Condition("dst_port", (0, 1023), negate=True),
                                    Condition("ct", "return", negate=True)), invert=True)
    assert rules[3].match.conditions[0] == Condition("eth_dst", 0xFFFFFFFFFFFF)
    assert rules[3].match.conditions[1] == Condition("ethertype", 0x86DD)
    assert rules[4].targets == (NatTarget(ip2int("10.1.0.10"), ip2int("10.1.0.12"), 8080, 8080),
                                NatTarget(ip2int("10.1.0.20"), ip2int("10.1.0.20")))
    assert not rules[4].targets[1].dynamic and rules[5].targets[0].dynamic
    assert t.chains["tail"].rules == ()
    lb = t.load_balancers["lb"]
    assert [(v.proto, v.sticky_source_ip) for v in lb.vips] == [(17, True), (6, False)]
    assert lb.pools["dns"].members[1] == Member(ip2int("10.1.0.54"), 5353, weight=0, admin_up=False)
    assert lb.pools["empty"].members == ()
    assert not t.port_groups["g"].stateful


@pytest.mark.parametrize("text", all_sources())
def test_round_trip_through_safe_dump(text):
    t = loads_topology(text)
    again = loads_topology(yaml.safe_dump(topology_to_dict(t)))    # sort_keys: declaration order is lost
    assert strip_keys(again) == strip_keys(t)
    assert assign_tunnel_keys(strip_keys(again), keys_of(t)) == t   # keys re-assigned from the original


@pytest.mark.parametrize("text", all_sources())
def test_round_trip_dump_yaml_and_json_exact(text):
    t = loads_topology(text)
    assert loads_topology(dump_yaml(t)) == t                       # order kept: same keys without help
    assert loads_topology(json.dumps(topology_to_dict(t), indent=1)) == t
    assert topology_from_dict(topology_to_dict(t)) == t


def test_dump_omits_defaults_and_keys():
    d = topology_to_dict(load_topology(EXAMPLES[0].parent / "gateway.yaml"))
    default = {"dst": "0.0.0.0/0", "gateway": "198.51.100.1", "port": "uplink"}
    assert d["routers"]["r1"]["routes"][0] == default
    assert d["routers"]["r1"]["routes"][1] == {"dst": "11.0.0.0/24", "type": "blackhole"}
    assert "tunnel_key" not in json.dumps(d)
    assert set(d) == {"version", "hosts", "bridges", "routers", "chains"}          # empty sections left out


def test_tunnel_keys_unique_in_range():
    t = loads_topology(FEATURES)
    keys = keys_of(t)
    exterior = [pid for pid, p in t.all_ports().items() if p.exterior]
    assert sorted(keys) == sorted(exterior)
    assert len(set(keys.values())) == len(keys)
    assert all(TUNNEL_KEY_MIN <= k <= TUNNEL_KEY_MAX for k in keys.values())
    assert t.port_by_tunnel_key(keys["edge.wan"]).id == "edge.wan"


def test_tunnel_keys_stable_when_a_port_is_added():
    text = (EXAMPLES[0].parent / "gateway.yaml").read_text()
    before = load_topology(text)
    edited = text.replace("      vm1: {host: host-a", "      vm0: {}\n      vm1: {host: host-a", 1)
    renumbered = loads_topology(edited)
    assert keys_of(renumbered)["tenant.vm1"] != keys_of(before)["tenant.vm1"]   # declaration order moved
    after = loads_topology(edited, tunnel_keys=keys_of(before))
    old, new = keys_of(before), keys_of(after)
    assert {pid: new[pid] for pid in old} == old
    assert new["tenant.vm0"] not in old.values() and TUNNEL_KEY_MIN <= new["tenant.vm0"] <= TUNNEL_KEY_MAX
    assert len(set(new.values())) == len(new)


def test_sources_path_text_bytes(tmp_path):
    text = (EXAMPLES[0].parent / "gateway.yaml").read_text()
    expected = loads_topology(text)
    f = tmp_path / "gw.yaml"
    f.write_text(text)
    assert load_topology(f) == load_topology(str(f)) == load_topology(text) == expected
    assert load_topology(text.encode()) == expected
    assert load_topology('{"version": 1}') == Topology()
    assert loads_topology("version: 1\nbridges:\nrouters: {}\n") == Topology()
