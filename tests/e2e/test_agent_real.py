"""Agents with the real datapath (AF_PACKET ports, VXLAN between agents on loopback addresses), driven by real
Linux clients in namespaces: ping, TCP (Python and nc), cache hits, two agents on one bridge and across a
router, SNAT to an external namespace, flow state surviving an agent restart.  ZooKeeper is the store."""

from __future__ import annotations

import sys
import time

import pytest

from tests.e2e.agents import hosts_yaml, nc_transfer, ping, ping_eventually, python_transfer, stat
from topology.loader import loads_topology

pytestmark = pytest.mark.e2e

MAC1, MAC2, MAC3 = "02:5e:00:00:01:01", "02:5e:00:00:01:02", "02:5e:00:00:01:03"


def test_one_agent_two_vms_ping_tcp_and_hits(netns_factory, real_agents, tmp_path):
    vm1 = netns_factory.vm("10.1.0.11/24", MAC1)
    vm2 = netns_factory.vm("10.1.0.12/24", MAC2)
    topo = f"""version: 1
{hosts_yaml(real_agents.net, "host-a")}bridges:
  tenant:
    ports:
      vm1: {{host: host-a, interface: {vm1.host_if}}}
      vm2: {{host: host-a, interface: {vm2.host_if}}}
"""
    a = real_agents("host-a", topo)
    ping_eventually(vm1, vm2.ip)
    hits = stat(a, "datapath_hits")
    ping(vm1, vm2.ip, count=5)
    assert stat(a, "datapath_hits") >= hits + 8            # echo request + reply of each later ping
    python_transfer(vm1, vm2, vm2.ip, 5001)
    nc_transfer(vm2, vm1, vm1.ip, 5002, tmp_path)
    s = a.stats()
    assert s["datapath"]["datapath_hits"] > 200
    assert s["datapath"]["afpacket_tx_errors"] == 0
    sims = sum(w.get("worker_simulations", 0) for w in s["workers"])
    assert sims < s["datapath"]["datapath_hits"] / 10


UDP_BURST = """
import socket, sys
for i in range(int(sys.argv[3])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 20000 + i))
    s.sendto(b"x" * 32, (sys.argv[1], int(sys.argv[2]))); s.close()
"""


def test_two_agents_bridge_and_router_through_vxlan(netns_factory, real_agents):
    vm1 = netns_factory.vm("10.1.0.11/24", MAC1, gateway="10.1.0.1")
    vm2 = netns_factory.vm("10.1.0.12/24", MAC2, gateway="10.1.0.1")
    vm3 = netns_factory.vm("10.2.0.13/24", MAC3, gateway="10.2.0.1")
    topo = f"""version: 1
{hosts_yaml(real_agents.net, "host-a", "host-b")}bridges:
  tenant:
    ports:
      vm1: {{host: host-a, interface: {vm1.host_if}}}
      vm2: {{host: host-b, interface: {vm2.host_if}}}
      up: {{peer: r1.tenant}}
  other:
    ports:
      vm3: {{host: host-b, interface: {vm3.host_if}}}
      up: {{peer: r1.other}}
routers:
  r1:
    ports:
      tenant: {{address: 10.1.0.1/24, mac: "02:0a:00:00:01:01"}}
      other: {{address: 10.2.0.1/24, mac: "02:0a:00:00:01:02"}}
"""
    a = real_agents("host-a", topo)
    b = real_agents("host-b")
    ping_eventually(vm1, vm2.ip)                       # one bridge, across the tunnel
    ping_eventually(vm1, vm3.ip)                       # across the router
    python_transfer(vm1, vm2, vm2.ip, 5011)
    python_transfer(vm1, vm3, vm3.ip, 5012)
    python_transfer(vm3, vm1, vm1.ip, 5013, seed=9)
    # new flows A → B only (UDP to a socket that swallows them): A simulates each, B none
    sink = vm2.popen(["python3", "-c", "import socket,time; s=socket.socket(2,2); s.bind(('0.0.0.0', 9999)); "
                                       "print('ready', flush=True); time.sleep(30)"])
    assert sink.stdout.readline().strip() == b"ready"
    sims_a, sims_b = stat(a, "worker_simulations", "workers"), stat(b, "worker_simulations", "workers")
    hits_a = stat(a, "datapath_megaflow_hits") + stat(a, "datapath_emc_hits")
    rx_b = stat(b, "datapath_tunnel_rx")
    vm1.run(["python3", "-c", UDP_BURST, vm2.ip, "9999", "20"])
    deadline_ok = False
    for _ in range(50):
        if stat(b, "datapath_tunnel_rx") >= rx_b + 20:
            deadline_ok = True
            break
        time.sleep(0.1)
    assert deadline_ok, "the burst did not reach host-b"
    # each new 5-tuple is simulated on A or matches a megaflow there (vm1 → vm2 on a plain bridge: the one the
    # pings installed), never on B
    sims = stat(a, "worker_simulations", "workers") - sims_a
    hits = stat(a, "datapath_megaflow_hits") + stat(a, "datapath_emc_hits") - hits_a
    assert sims + hits >= 20 and hits > 0
    assert stat(b, "worker_simulations", "workers") == sims_b
    sb = b.stats()["datapath"]
    assert sb["datapath_tunnel_unknown_key"] == 0 and sb["tunnel_rx"] > 0


def snat_topology(net, vm1, ext) -> str:
    """vm1 (host-a) behind router r1, whose uplink on gw-1 leads to ``ext``; SNAT to the uplink address."""
    return f"""version: 1
{hosts_yaml(net, "host-a", "gw-1")}bridges:
  tenant:
    ports:
      vm1: {{host: host-a, interface: {vm1.host_if}}}
      up: {{peer: r1.tenant}}
routers:
  r1:
    ports:
      tenant: {{address: 10.1.0.1/24, mac: "02:0a:00:00:01:01"}}
      uplink: {{address: 203.0.113.2/24, mac: "02:0a:00:00:01:02", host: gw-1, interface: {ext.host_if}}}
    inbound_filter: r1-in
    outbound_filter: r1-out
chains:
  r1-in:
    - {{action: rev_snat}}
  r1-out:
    - {{match: {{src: 10.1.0.0/24, dst: "!10.1.0.0/24"}}, action: snat,
       targets: [{{ip: 203.0.113.2, port: 20000-30000}}]}}
"""


def firewall_topology(net, vm1, vm2, *hosts: str) -> str:
    """vm1 and vm2 on host-a behind a stateful firewall: new connections only from vm1, replies accepted."""
    return f"""version: 1
{hosts_yaml(net, *hosts)}bridges:
  tenant:
    ports:
      vm1: {{host: host-a, interface: {vm1.host_if}}}
      vm2: {{host: host-a, interface: {vm2.host_if}}}
    inbound_filter: fw
chains:
  fw:
    - {{match: {{ethertype: 2054}}, action: accept}}
    - {{match: {{ct: return}}, action: accept}}
    - {{match: {{in_port: tenant.vm1}}, action: accept}}
    - {{action: drop}}
"""


def start_stream(server_ns, client_ns, port: int):
    """A server in ``server_ns`` streams 800 kB slowly (4 s) to a client in ``client_ns``."""
    server = server_ns.popen([sys.executable, "-c", SLOW_SERVER, str(port)])
    assert server.stdout.readline().strip() == b"ready"
    client = client_ns.popen([sys.executable, "-c", SLOW_CLIENT, server_ns.ip, str(port)])
    assert client.stdout.readline().strip() == b"connected"
    return server, client


def finish_stream(server, client) -> bytes:
    """Wait for the stream; asserts every byte arrived; returns the server's report (its peer address)."""
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err.decode()
    assert out.split() == [str(40 * 20_000).encode()]
    sout, _ = server.communicate(timeout=30)
    return sout


def test_snat_through_a_gateway_agent(netns_factory, real_agents):
    vm1 = netns_factory.vm("10.1.0.11/24", MAC1, gateway="10.1.0.1")
    ext = netns_factory.vm("203.0.113.1/24", "02:5e:00:00:0e:01")
    topo = snat_topology(real_agents.net, vm1, ext)
    a = real_agents("host-a", topo)
    gw = real_agents("gw-1")
    ping_eventually(vm1, ext.ip)
    peer = python_transfer(vm1, ext, ext.ip, 5021)
    assert peer == "203.0.113.2"                       # the external side sees the NAT address
    assert stat(a, "datapath_state_tx") > 0            # A sent the NAT state to the gateway first
    assert stat(gw, "datapath_state_accepted") > 0
    assert stat(gw, "datapath_state_refused") == 0


def test_tcp_connection_survives_an_agent_restart(netns_factory, real_agents, tmp_path):
    vm1 = netns_factory.vm("10.1.0.11/24", MAC1)
    vm2 = netns_factory.vm("10.1.0.12/24", MAC2)
    topo = firewall_topology(real_agents.net, vm1, vm2, "host-a")
    a = real_agents("host-a", topo)
    ping_eventually(vm1, vm2.ip)
    server, client = start_stream(vm2, vm1, 5031)
    time.sleep(1.0)
    a.stop()                                           # writes the last snapshot
    a2 = real_agents("host-a")
    assert a2.restored > 0
    assert finish_stream(server, client).split() == [b"peer", b"10.1.0.11"]
    assert stat(a2, "worker_state_received", "workers") > 0


# the server streams to the client: after the restart the first packet is the server's (vm2 → vm1), which
# the firewall passes only as the return direction of the restored connection
SLOW_SERVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); print("ready", flush=True)
c, peer = s.accept(); print("peer", peer[0], flush=True)
for _ in range(40):
    c.sendall(b"x" * 20_000); time.sleep(0.1)
c.close()
"""
SLOW_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30); print("connected", flush=True)
n = 0
while b := c.recv(65536):
    n += len(b)
print(n, flush=True)
"""


def test_snat_connection_survives_a_restart_of_the_agent_that_translated_it(netns_factory, real_agents):
    """The VM's agent did the SNAT: after its restart it must hand the VM's packets the same binding (the
    restored entries) from the same block (leased again), or the far side would reset the connection."""
    vm1 = netns_factory.vm("10.1.0.11/24", MAC1, gateway="10.1.0.1")
    ext = netns_factory.vm("203.0.113.1/24", "02:5e:00:00:0e:01")
    topo = snat_topology(real_agents.net, vm1, ext)
    a = real_agents("host-a", topo)
    real_agents("gw-1")
    ping_eventually(vm1, ext.ip)
    server, client = start_stream(ext, vm1, 5041)
    time.sleep(1.0)
    a.stop()
    a2 = real_agents("host-a")
    assert a2.restored > 0
    assert a2.counters.get("supervisor_restored_snat_lost", 0) == 0
    assert finish_stream(server, client).split() == [b"peer", b"203.0.113.2"]


def test_a_port_moved_to_another_host_takes_its_flow_state_along(netns_factory, real_agents):
    """vm2 (a server streaming to vm1 through a stateful firewall) is rebound from host-a to host-b in the
    middle of the transfer.  host-b fetches host-a's flow state: the server's packets, now simulated on
    host-b, are the return direction of a known connection and pass."""
    vm1 = netns_factory.vm("10.1.0.11/24", MAC1)
    vm2 = netns_factory.vm("10.1.0.12/24", MAC2)
    topo = firewall_topology(real_agents.net, vm1, vm2, "host-a", "host-b")
    a = real_agents("host-a", topo)
    b = real_agents("host-b")
    ping_eventually(vm1, vm2.ip)
    server, client = start_stream(vm2, vm1, 5051)
    time.sleep(0.8)
    moved = loads_topology(topo.replace(f"vm2: {{host: host-a, interface: {vm2.host_if}}}",
                                        f"vm2: {{host: host-b, interface: {vm2.host_if}}}"))
    a.apply_topology(moved)
    finish_stream(server, client)
    assert b.counters.get("supervisor_state_fetches", 0) == 1
    assert stat(b, "datapath_state_accepted") > 0
    assert stat(b, "worker_simulations", "workers") > 0          # host-b now simulates vm2's packets
