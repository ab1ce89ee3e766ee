"""Invalid topology files: one broken snippet per error class, asserting the exact message, path and line."""

from __future__ import annotations

import pytest

from topology.errors import TopologyError, format_path
from topology.loader import load_topology, loads_topology, topology_from_dict

# A valid base the cases below are variations of (kept in sync by hand: each case is a whole document).
BASE = """\
version: 1
hosts:
  host-a: {tunnel_ip: 127.0.0.11}
bridges:
  br:
    ports:
      vm1: {host: host-a, interface: tap1}
      up: {peer: r1.down}
routers:
  r1:
    ports:
      down: {address: 10.0.0.1/24, mac: "02:0a:00:00:00:01"}
      uplink: {address: 198.51.100.2/24, mac: "02:0a:00:00:00:02"}
    routes:
      - {dst: 0.0.0.0/0, gateway: 198.51.100.1, port: uplink}
chains:
  c1:
    - {action: accept}
"""


def edit(old: str, new: str) -> str:
    assert BASE.count(old) == 1, old
    return BASE.replace(old, new)


CASES = [
    # -- structure --------------------------------------------------------------------------------------
    ("version-missing", BASE.replace("version: 1\n", "# no version\n"),
     2, "", "missing required key 'version'"),
    ("version-2", edit("version: 1", "version: 2"),
     1, "version", "unsupported version 2 (this loader reads version 1)"),
    ("version-string", edit("version: 1", "version: '1'"),
     1, "version", "unsupported version '1' (this loader reads version 1)"),
    ("unknown-top-key", BASE + "switches: {}\n",
     19, "switches", "unknown key 'switches' (allowed: version, hosts, bridges, routers, chains, "
     "load_balancers, port_groups)"),
    ("unknown-port-key", edit("interface: tap1}", "interface: tap1, ip: x}"),
     7, "bridges.br.ports.vm1.ip", "unknown key 'ip' (allowed: peer, host, interface)"),
    ("tunnel-key-in-file", edit("uplink: {address", "uplink: {tunnel_key: 7, address"),
     13, "routers.r1.ports.uplink.tunnel_key",
     "unknown key 'tunnel_key' (tunnel keys are assigned by the system, never by the file)"),
    ("unknown-match-field", edit("- {action: accept}", "- {action: accept, match: {dport: 22}}"),
     18, "chains.c1[0].match.dport", "unknown key 'dport' (allowed: in_port, out_port, port_group, eth_src, "
     "eth_dst, ethertype, src, dst, proto, src_port, dst_port, ct, tos, vlan, invert)"),
    ("duplicate-key", edit("  c1:\n", "  c1: []\n  c1:\n"),
     18, "chains.c1", "duplicate key 'c1'"),
    # -- types --------------------------------------------------------------------------------------------
    ("hosts-list", edit("  host-a: {tunnel_ip: 127.0.0.11}", "  - host-a"),
     2, "hosts", "expected a mapping, got a list"),
    ("routes-mapping", edit("      - {dst: 0.0.0.0/0, gateway: 198.51.100.1, port: uplink}", "        a: b"),
     14, "routers.r1.routes", "expected a list, got a mapping"),
    ("weight-string", edit("port: uplink}", "port: uplink, weight: high}"),
     15, "routers.r1.routes[0].weight", "expected an integer, got a string ('high')"),
    ("bool-not-int", edit("port: uplink}", "port: uplink, weight: true}"),
     15, "routers.r1.routes[0].weight", "expected an integer, got a boolean (True)"),
    ("missing-route-dst", edit("{dst: 0.0.0.0/0, gateway", "{gateway"),
     15, "routers.r1.routes[0]", "missing required key 'dst'"),
    ("bad-action", edit("{action: accept}", "{action: allow}"),
     18, "chains.c1[0].action", "unknown action 'allow' (allowed: accept, drop, reject, continue, return, "
     "jump, snat, dnat, rev_snat, rev_dnat)"),
    ("bad-route-type", edit("port: uplink}", "port: uplink, type: drop}"),
     15, "routers.r1.routes[0].type", "unknown route type 'drop' (allowed: normal, blackhole, reject)"),
    # -- addresses ----------------------------------------------------------------------------------------
    ("bad-gateway", edit("gateway: 198.51.100.1", "gateway: 10.0.0.300"),
     15, "routers.r1.routes[0].gateway", "not an IPv4 address: '10.0.0.300'"),
    ("lax-ip", edit("127.0.0.11", "'127.0.0.11 junk'"),
     3, "hosts.host-a.tunnel_ip", "not an IPv4 address: '127.0.0.11 junk'"),
    ("bad-cidr", edit("dst: 0.0.0.0/0", "dst: 0.0.0.0/33"),
     15, "routers.r1.routes[0].dst", "not an IPv4 CIDR prefix: '0.0.0.0/33'"),
    ("host-bits", edit("dst: 0.0.0.0/0", "dst: 10.9.0.1/16"),
     15, "routers.r1.routes[0].dst", "host bits set in 10.9.0.1/16 (did you mean 10.9.0.0/16?)"),
    ("bad-mac", edit('"02:0a:00:00:00:01"', '"02:0a:00:00:00"'),
     12, "routers.r1.ports.down.mac", "not a MAC address: '02:0a:00:00:00'"),
    ("port-address-no-prefix", edit("10.0.0.1/24", "10.0.0.1"),
     12, "routers.r1.ports.down.address", "not an address with prefix length (like 10.0.0.1/24): '10.0.0.1'"),
    ("port-address-network", edit("10.0.0.1/24", "10.0.0.0/24"),
     12, "routers.r1.ports.down.address", "10.0.0.0/24 is the network or broadcast address of its subnet"),
    ("arp-key-with-dots", edit("    routes:\n", "    arp_table: {10.0.0.9: nope}\n    routes:\n"),
     14, 'routers.r1.arp_table["10.0.0.9"]', "not a MAC address: 'nope'"),
    ("duplicate-router-address", edit("198.51.100.2/24", "10.0.0.1/24"),
     13, "routers.r1.ports.uplink.address", "address 10.0.0.1 is already used by port 'down'"),
    ("gateway-outside-subnet", edit("gateway: 198.51.100.1", "gateway: 10.0.0.9"),
     15, "routers.r1.routes[0].gateway",
     "gateway 10.0.0.9 is not in the subnet 198.51.100.0/24 of port 'uplink'"),
    # -- references ---------------------------------------------------------------------------------------
    ("dangling-peer", edit("peer: r1.down", "peer: r1.dwn"),
     8, "bridges.br.ports.up.peer", "no port 'dwn' on device 'r1'"),
    ("peer-not-port-id", edit("peer: r1.down", "peer: r1"),
     8, "bridges.br.ports.up.peer", "not a port id 'r1' (expected <device>.<port>)"),
    ("asymmetric-peer", edit("down: {address", "down: {peer: br.vm1, address"),
     8, "bridges.br.ports.up.peer", "port 'r1.down' is linked to 'br.vm1', not back to 'br.up'"),
    ("dangling-host", edit("host: host-a", "host: host-z"),
     7, "bridges.br.ports.vm1.host", "no such host 'host-z'"),
    ("route-port", edit("port: uplink}", "port: wan}"),
     15, "routers.r1.routes[0].port", "no port 'wan' on router 'r1'"),
    ("normal-route-no-port", edit(", port: uplink}", "}"),
     15, "routers.r1.routes[0]", "a normal route needs a 'port' (blackhole and reject routes do not)"),
    ("dangling-filter", edit("  r1:\n", "  r1:\n    inbound_filter: nope\n"),
     11, "routers.r1.inbound_filter", "no such chain 'nope'"),
    ("dangling-lb", edit("  r1:\n", "  r1:\n    load_balancer: lb9\n"),
     11, "routers.r1.load_balancer", "no such load balancer 'lb9'"),
    ("dangling-jump", edit("- {action: accept}", "- {action: jump, chain: c2}"),
     18, "chains.c1[0].chain", "no such chain 'c2'"),
    ("jump-no-chain", edit("- {action: accept}", "- {action: accept}\n    - {action: jump}"),
     19, "chains.c1[1]", "a jump needs 'chain'"),
    ("jump-loop",
     edit("- {action: accept}", "- {action: jump, chain: c2}\n  c2:\n    - {action: jump, chain: c1}"),
     20, "chains.c2[0].chain", "jump loop: c1 -> c2 -> c1"),
    ("snat-no-targets", edit("- {action: accept}", "- {action: snat}"),
     18, "chains.c1[0]", "snat needs 'targets' (a non-empty list of {ip, port})"),
    ("bad-target-range", edit("- {action: accept}", "- {action: dnat, targets: [{ip: 10.0.0.9-10.0.0.2}]}"),
     18, "chains.c1[0].targets[0].ip", "empty address range: '10.0.0.9-10.0.0.2'"),
    ("match-port", edit("- {action: accept}", "- {action: accept, match: {in_port: [br.vm1, br.vm2]}}"),
     18, "chains.c1[0].match.in_port[1]", "no port 'vm2' on device 'br'"),
    ("match-bad-range", edit("- {action: accept}", "- {action: accept, match: {dst_port: 90-80}}"),
     18, "chains.c1[0].match.dst_port", "bad port range '90-80' (need 0 <= start <= end <= 65535)"),
    ("dangling-pool", BASE + "load_balancers:\n  lb1:\n    vips:\n      - {address: 203.0.113.10, port: 80, "
     "pool: web}\n", 22, "load_balancers.lb1.vips[0].pool", "no such pool 'web'"),
    ("port-group-member",
     BASE + "port_groups:\n  g:\n    stateful: true\n    ports: [r1.uplink, r2.uplink]\n",
     22, "port_groups.g.ports[1]", "no such device 'r2' (in port id 'r2.uplink')"),
]


@pytest.mark.parametrize(("text", "line", "path", "message"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_broken_snippet(text, line, path, message):
    with pytest.raises(TopologyError) as info:
        loads_topology(text, "demo.yaml")
    err = info.value
    assert (err.line, err.path, err.message) == (line, path, message)
    assert str(err) == ": ".join(p for p in (f"demo.yaml:{line}", path, message) if p)
    assert isinstance(err, ValueError)


def test_yaml_syntax_error_has_line():
    text = edit("vm1: {host: host-a, interface: tap1}", "vm1: {host: host-a, interface: tap1")
    with pytest.raises(TopologyError) as info:
        loads_topology(text, "demo.yaml")
    assert (info.value.line, info.value.path) == (8, "")     # where the parser noticed the missing '}'
    assert str(info.value).startswith("demo.yaml:8: invalid YAML: ") and "'}'" in str(info.value)


def test_base_is_valid():
    assert loads_topology(BASE).port("r1.down").peer == "br.up"


def test_json_source_has_lines():
    text = '{\n  "version": 1,\n  "hosts": {\n    "h": {"tunnel_ip": "1.2.3"}\n  }\n}\n'
    with pytest.raises(TopologyError) as info:
        loads_topology(text)
    assert str(info.value) == "<string>:4: hosts.h.tunnel_ip: not an IPv4 address: '1.2.3'"


def test_dict_source_has_no_line():
    with pytest.raises(TopologyError) as info:
        topology_from_dict({"version": 1, "hosts": {"h": {"tunnel_ip": 5}}})
    assert (info.value.line, str(info.value)) == (None, "<dict>: hosts.h.tunnel_ip: not an IPv4 address: 5")


def test_file_errors_name_the_file(tmp_path):
    f = tmp_path / "demo.yaml"
    f.write_text(BASE.replace("gateway: 198.51.100.1", "gateway: 10.0.0.300"))
    with pytest.raises(TopologyError) as info:
        load_topology(f)
    assert str(info.value) == f"{f}:15: routers.r1.routes[0].gateway: not an IPv4 address: '10.0.0.300'"
    with pytest.raises(TopologyError, match="cannot read topology file: No such file or directory"):
        load_topology(tmp_path / "missing.yaml")
    f.write_bytes(b"version: 1\nhosts: {\xff: 1}\n")
    with pytest.raises(TopologyError, match="not UTF-8 text"):
        load_topology(f)


@pytest.mark.parametrize("text", ["", "---\n...\n", "[1, 2]", "version: 1\n---\nversion: 1\n",
                                  "a: &x [*x]\nversion: 1\n", "version: !!python/name:os.system 1\n"])
def test_odd_documents_raise_topology_error(text):
    with pytest.raises(TopologyError):
        loads_topology(text)


def test_merge_keys_and_yaml11_traps():
    text = BASE.replace('mac: "02:0a:00:00:00:02"', "mac: 12:34:56:00:00:01")   # base-60 int in YAML 1.1
    assert loads_topology(text).port("r1.uplink").mac == 0x123456000001
    merged = BASE.replace("  host-a: {tunnel_ip: 127.0.0.11}",
                          "  host-a: &h {tunnel_ip: 127.0.0.11}\n  host-b: {<<: *h, tunnel_ip: 127.0.0.12}")
    assert loads_topology(merged).hosts["host-b"].tunnel_ip == 0x7F00000C


def test_format_path():
    assert format_path(("routers", "r1", "routes", 2, "gateway")) == "routers.r1.routes[2].gateway"
    assert format_path(("routers", "r1", "arp_table", "10.0.0.1")) == 'routers.r1.arp_table["10.0.0.1"]'
    assert format_path(()) == ""
