"""IPv6 across a shardnet router, real agents (issue 15 must-shows): two agents (ZooKeeper store, real
datapath, VXLAN on loopback between them), VMs in namespaces with addresses from 2001:db8::/32 (never
fd00::/64), IPv6 on without DAD or router advertisements, default offloads (tx checksum and segmentation
offload on: the datapath completes partial checksums and segments super frames).

- VM1 2001:db8:1::10/64 (gateway 2001:db8:1::1) on host-a, VM2 2001:db8:2::10/64 (gateway 2001:db8:2::1) on
  host-b, router r1 between their bridges: the VMs resolve the router by neighbor solicitation, the router
  resolves them the same way; ``ping -6`` and byte-exact TCP transfers each way;
- a dual-stack VM (10.1.0.10 + 2001:db8:1::10) reaches an IPv4 host (10.2.0.13) and an IPv6 host
  (2001:db8:2::10) through the same router ports: ping and TCP in both families.
"""

from __future__ import annotations

import pytest

from tests.e2e.agents import hosts_yaml, ping_eventually, python_transfer, stat
from tests.e2e.test_ipv6_wire import ping6, transfer6

pytestmark = pytest.mark.e2e

MAC1, MAC2, MAC3 = "02:5e:00:00:16:01", "02:5e:00:00:16:02", "02:5e:00:00:16:03"
R_LEFT, R_RIGHT = "02:0a:00:00:16:01", "02:0a:00:00:16:02"


def routed_topology(net, vm1, vm2, vm3=None) -> str:
    vm3_port = f"      vm3: {{host: host-b, interface: {vm3.host_if}}}\n" if vm3 is not None else ""
    return f"""version: 1
{hosts_yaml(net, "host-a", "host-b")}bridges:
  left:
    ports:
      vm1: {{host: host-a, interface: {vm1.host_if}}}
      up: {{peer: r1.left}}
  right:
    ports:
      vm2: {{host: host-b, interface: {vm2.host_if}}}
{vm3_port}      up: {{peer: r1.right}}
routers:
  r1:
    ports:
      left: {{address: [10.1.0.1/24, "2001:db8:1::1/64"], mac: "{R_LEFT}"}}
      right: {{address: [10.2.0.1/24, "2001:db8:2::1/64"], mac: "{R_RIGHT}"}}
"""


def ping6_eventually(src, dst: str, tries: int = 6) -> None:
    """The first echoes wait for neighbor discovery on both sides and MAC learning through the store."""
    for _ in range(tries - 1):
        if src.run(["ping", "-6", "-c", "1", "-W", "2", dst], check=False, timeout=30).returncode == 0:
            break
    ping6(src, dst)


def test_ping6_and_tcp_across_a_router_on_two_agents(netns_factory, real_agents):
    vm1 = netns_factory.vm(None, MAC1, address6="2001:db8:1::10/64", gateway6="2001:db8:1::1")
    vm2 = netns_factory.vm(None, MAC2, address6="2001:db8:2::10/64", gateway6="2001:db8:2::1")
    a = real_agents("host-a", routed_topology(real_agents.net, vm1, vm2))
    b = real_agents("host-b")
    ping6_eventually(vm1, "2001:db8:2::10")
    ping6(vm2, "2001:db8:1::10")
    assert transfer6(vm1, vm2, "2001:db8:2::10", 5201, size=500_000) == "2001:db8:1::10"
    assert transfer6(vm2, vm1, "2001:db8:1::10", 5202, size=500_000, seed=12) == "2001:db8:2::10"
    # the VMs learned the router's MAC by neighbor discovery (nothing static in them)
    for vm, gw, mac in ((vm1, "2001:db8:1::1", R_LEFT), (vm2, "2001:db8:2::1", R_RIGHT)):
        out = vm.run(["ip", "-6", "neigh", "show", gw]).stdout.decode()
        assert mac in out, out
    # the hop limit went down by one across the router: the echo reply arrives with 63
    r = vm1.run(["ping", "-6", "-c", "1", "-W", "2", "2001:db8:2::10"]).stdout.decode()
    assert "ttl=63" in r, r
    for agent in (a, b):
        assert stat(agent, "datapath_tunnel_rx") > 50 and stat(agent, "afpacket_tx_errors") == 0
    assert stat(a, "afpacket_rx_csum_fixed") + stat(a, "afpacket_rx_gso_segmented") > 0


def test_a_dual_stack_vm_reaches_an_ipv4_and_an_ipv6_host(netns_factory, real_agents):
    vm1 = netns_factory.vm("10.1.0.10/24", MAC1, gateway="10.1.0.1", address6="2001:db8:1::10/64",
                           gateway6="2001:db8:1::1")
    vm2 = netns_factory.vm(None, MAC2, address6="2001:db8:2::10/64", gateway6="2001:db8:2::1")
    vm3 = netns_factory.vm("10.2.0.13/24", MAC3, gateway="10.2.0.1")
    real_agents("host-a", routed_topology(real_agents.net, vm1, vm2, vm3))
    real_agents("host-b")
    ping_eventually(vm1, vm3.ip)                           # IPv4 host
    ping6_eventually(vm1, "2001:db8:2::10")                # IPv6 host
    assert python_transfer(vm1, vm3, vm3.ip, 5211) == "10.1.0.10"
    assert transfer6(vm1, vm2, "2001:db8:2::10", 5212, size=300_000) == "2001:db8:1::10"
