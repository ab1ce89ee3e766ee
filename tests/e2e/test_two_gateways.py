"""SNAT with two uplinks in a stateful port group on two gateway agents, and asymmetric external routing.

A VM on host-a; router r1 with ``uplink`` bound on gw-1 and ``uplink2`` bound on gw-2, both in the stateful
port group ``uplinks``; SNAT to 203.0.113.100 (an address of neither port).  One external namespace is
wired to both gateways (eth0 ↔ uplink, eth1 ↔ uplink2) and routes the NAT address through eth1 only:

    vm1 ── host-a ══ VXLAN ══ gw-1 ── uplink ── eth0 ─┐
                        ╚════ gw-2 ── uplink2 ─ eth1 ─┴─ ext (203.0.113.100/32 via uplink2)

So the VM's packets leave through gw-1 and every reply enters at gw-2, which must simulate it with the
NAT state host-a replicated to it (gw-2 is in the interested set only through the port group).
"""

from __future__ import annotations

import pytest

from tests.e2e.agents import add_interface, hosts_yaml, if_counter, ping_eventually, python_transfer, stat

pytestmark = pytest.mark.e2e

NAT_IP = "203.0.113.100"
UPLINK2_MAC = "02:0a:00:00:01:03"


def test_replies_through_the_other_gateway(netns_factory, real_agents):
    vm1 = netns_factory.vm("10.1.0.11/24", "02:5e:00:00:01:01", gateway="10.1.0.1")
    ext = netns_factory.vm("203.0.113.1/28", "02:5e:00:00:0e:01")
    ext_if2 = add_interface(netns_factory, ext, "eth1", "203.0.113.17/28", "02:5e:00:00:0e:02")
    for name in ("all", "default", "eth0", "eth1"):        # the NAT address arrives on eth0, leaves by eth1
        ext.run(["sysctl", "-q", "-w", f"net.ipv4.conf.{name}.rp_filter=0"])
    ext.run(["ip", "neigh", "replace", "203.0.113.18", "lladdr", UPLINK2_MAC, "dev", "eth1", "nud", "permanent"])
    ext.run(["ip", "route", "add", f"{NAT_IP}/32", "via", "203.0.113.18", "dev", "eth1"])
    topo = f"""version: 1
{hosts_yaml(real_agents.net, "host-a", "gw-1", "gw-2")}bridges:
  tenant:
    ports:
      vm1: {{host: host-a, interface: {vm1.host_if}}}
      up: {{peer: r1.tenant}}
routers:
  r1:
    ports:
      tenant: {{address: 10.1.0.1/24, mac: "02:0a:00:00:01:01"}}
      uplink: {{address: 203.0.113.2/28, mac: "02:0a:00:00:01:02", host: gw-1, interface: {ext.host_if}}}
      uplink2: {{address: 203.0.113.18/28, mac: "{UPLINK2_MAC}", host: gw-2, interface: {ext_if2}}}
    inbound_filter: r1-in
    outbound_filter: r1-out
chains:
  r1-in:
    - {{action: rev_snat}}
  r1-out:
    - {{match: {{src: 10.1.0.0/24, dst: "!10.1.0.0/24"}}, action: snat,
       targets: [{{ip: {NAT_IP}, port: 20000-30000}}]}}
port_groups:
  uplinks: {{stateful: true, ports: [r1.uplink, r1.uplink2]}}
"""
    a = real_agents("host-a", topo)
    gw1 = real_agents("gw-1")
    gw2 = real_agents("gw-2")
    ping_eventually(vm1, ext.ip)

    sims2 = stat(gw2, "worker_simulations", "workers")
    eth1_tx, eth0_tx = if_counter(ext, "eth1"), if_counter(ext, "eth0")
    peer = python_transfer(vm1, ext, ext.ip, 5041)
    assert peer == NAT_IP                                  # the external side sees the NAT address

    # the replies really went out by eth1 (to gw-2), not eth0: a 300 kB transfer is acked in > 20 segments
    assert if_counter(ext, "eth1") - eth1_tx > 20
    assert if_counter(ext, "eth0") - eth0_tx < 5           # at most a stray ARP
    # gw-2 received the NAT state (it is interested only as a member of the stateful group) ...
    assert stat(a, "datapath_state_tx") > 0
    assert stat(gw2, "datapath_state_accepted") > 0
    assert stat(gw2, "worker_state_received", "workers") > 0
    assert stat(gw2, "datapath_state_refused") == 0
    # ... simulated the reply of the new connection with it, and tunnelled the replies to host-a
    assert stat(gw2, "worker_simulations", "workers") > sims2
    assert stat(gw2, "datapath_tunnel_tx") > 20
    assert stat(gw2, "datapath_output_no_port") == 0
    # gw-1 carried the VM's direction (from host-a through the tunnel, out on uplink)
    assert stat(gw1, "datapath_tunnel_rx") > 20
