"""Several agents on one store (memory and real ZooKeeper): shared MAC and ARP tables, SNAT leases, session
loss, topology edits.  Each agent is a real process pool with an in-memory datapath; what one agent sends into
a tunnel the test carries to the other agent's tunnel input (the real UDP tunnel is the datapath issue)."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from engine.supervisor import Agent
from packet.addr import ip2int
from packet.codec import parse
from tests.integration.test_engine import Outputs, frame, wait_for
from topology.loader import loads_topology

TOPO = """
version: 1
hosts:
  host-a: {tunnel_ip: 127.0.0.11}
  host-b: {tunnel_ip: 127.0.0.12}
  host-c: {tunnel_ip: 127.0.0.13}
bridges:
  tenant:
    ports:
      vm1: {host: host-a, interface: tap-vm1}
      vm2: {host: host-b, interface: tap-vm2}
      vm3: {host: host-c, interface: tap-vm3}
      up: {peer: r1.tenant}
routers:
  r1:
    ports:
      tenant: {address: 10.0.0.1/24, mac: "02:0a:00:00:00:01"}
      uplink: {address: 198.51.100.2/24, mac: "02:0a:00:00:00:02", host: host-a, interface: up0}
      uplink2: {address: 198.51.100.3/24, mac: "02:0a:00:00:00:03", host: host-b, interface: up0}
    routes:
      - {dst: 0.0.0.0/0, gateway: 198.51.100.1, port: uplink}
    arp_table: {198.51.100.1: "02:0b:00:00:00:01"}
    inbound_filter: r1-in
    outbound_filter: r1-out
chains:
  r1-in:
    - {action: rev_snat}
  r1-out:
    - {match: {src: 10.0.0.0/24, dst: "!10.0.0.0/24"}, action: snat,
       targets: [{ip: 198.51.100.100, port: 5000-65535}]}
"""

MAC1, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


@pytest.fixture
def agents(store_uri, tmp_path):
    path = tmp_path / "topo.yaml"
    path.write_text(TOPO)
    started = []

    def start(host: str, with_topology: bool = False, **kw) -> Agent:
        a = Agent(store=store_uri, host=host, workers=kw.pop("workers", 2),
                  topology=str(path) if with_topology else None, **kw).start()
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()


def key_of(agent: Agent, port: str) -> int:
    return agent.mirror.get("bridge", port.split(".")[0]).ports[port.split(".")[1]].tunnel_key


def test_a_mac_learned_on_one_agent_is_unicast_to_by_another(agents):
    a = agents("host-a", with_topology=True)
    b = agents("host-b")
    agents("host-c")
    # vm1 speaks on host-a: A learns its MAC (and writes it to the shared table)
    a.inject("tenant.vm1", [frame(f"eth_src={MAC1},eth_dst=ff:ff:ff:ff:ff:ff,ip_src=10.0.0.2,"
                                  "ip_dst=10.0.0.255,proto=udp,tp_src=9,tp_dst=9")])
    wait_for(lambda: b.mirror is not None and b.tables.macs["tenant"].lookup(0x020000000001) == "tenant.vm1",
             what="B to see A's MAC")
    out = Outputs(b)
    b.inject("tenant.vm2", [frame(f"eth_src={MAC2},eth_dst={MAC1},ip_src=10.0.0.3,ip_dst=10.0.0.2,"
                                  "proto=udp,tp_src=7,tp_dst=7")])
    vm1_key = key_of(b, "tenant.vm1")
    tunnel = f"tunnel:{ip2int('127.0.0.11')}:{vm1_key}"
    out.wait(tunnel, 1)
    time.sleep(0.2)
    assert set(out.poll()) == {tunnel}                      # a unicast: no flood to vm3's host
    [[key, _, _, tags, _flow_id]] = [f for f in b.flows() if f[0][0] == "tenant.vm2"]
    assert "mac:tenant:0:020000000001" in tags


def test_arp_reply_received_by_another_agent_completes_the_parked_simulation(agents):
    a = agents("host-a", with_topology=True, arp_timeout_s=10.0)
    b = agents("host-b")
    out_a, out_b = Outputs(a), Outputs(b)
    # from the internet (A's uplink) to vm2 (10.0.0.3, on host-b): A must ARP for it
    data = frame("eth_src=02:0b:00:00:00:01,eth_dst=02:0a:00:00:00:02,ip_src=203.0.113.9,ip_dst=10.0.0.3,"
                 "proto=udp,tp_src=53,tp_dst=5353")
    a.inject("r1.uplink", [data])
    vm2_key = key_of(a, "tenant.vm2")
    to_b = f"tunnel:{ip2int('127.0.0.12')}:{vm2_key}"
    [arp_req] = out_a.wait(to_b, 1)[:1]
    req = parse(arp_req)
    assert req.arp_op == 1 and req.arp_tpa == ip2int("10.0.0.3")
    # the tunnel carries it to B, which outputs it on vm2 without simulating it
    b.inject_tunnel(vm2_key, [arp_req])
    out_b.wait("tenant.vm2", 1)
    # vm2 answers the router: the reply is simulated on B, B writes the ARP entry, A's packet goes through
    reply = frame(f"eth_src={MAC2},eth_dst=02:0a:00:00:00:01,arp_op=2,arp_sha={MAC2},arp_spa=10.0.0.3,"
                  "arp_tha=02:0a:00:00:00:01,arp_tpa=10.0.0.1")
    b.inject("tenant.vm2", [reply])
    wait_for(lambda: any(parse(f).ip_dst == ip2int("10.0.0.3") and parse(f).proto == 17
                         for f in out_a.poll().get(to_b, [])), what="A's parked packet to leave")
    assert sum(w.get("parked_resumed", 0) for w in a.stats()["workers"]) >= 1
    assert b.stats()["supervisor"]["tables_local_writes"] >= 1


def test_two_agents_snat_to_one_address_never_collide(agents):
    # what this checks is that no binding is handed out twice.  The ~160 block leases it needs run on the
    # supervisors' store-call threads now (each answered in ms), but the 10,000 SNAT setups (re-simulated when
    # their block comes) of two agents — six processes and both supervisors in this one — on a 2-core machine
    # still outlast the default 5 s a packet may wait, about one run in two (as before the executor): give the
    # packets longer to wait
    a = agents("host-a", with_topology=True, park_timeout_s=30.0)
    b = agents("host-b", park_timeout_s=30.0)
    out_a, out_b = Outputs(a), Outputs(b)
    n = 5000
    gw = "eth_dst=02:0a:00:00:00:01"
    for agent, vm, mac, port in ((a, "10.0.0.2", MAC1, "tenant.vm1"), (b, "10.0.0.3", MAC2, "tenant.vm2")):
        frames = [frame(f"eth_src={mac},{gw},ip_src={vm},ip_dst=203.0.113.80,proto=tcp,tp_src={p},tp_dst=443")
                  for p in range(10000, 10000 + n)]
        for i in range(0, n, 250):
            agent.inject(port, frames[i:i + 250])
            time.sleep(0.02)
    # both agents route to the uplink on host-a: B's packets travel A's way through the tunnel
    uplink_key = a.mirror.get("router", "r1").ports["uplink"].tunnel_key
    from_b = f"tunnel:{ip2int('127.0.0.11')}:{uplink_key}"
    got_a = out_a.wait("r1.uplink", n, timeout=60)
    got_b = out_b.wait(from_b, n, timeout=60)
    bindings = [(p.ip_src, p.tp_src) for p in map(parse, got_a + got_b)]
    assert len(bindings) == 2 * n and len(set(bindings)) == 2 * n
    assert all(ip == ip2int("198.51.100.100") and 5000 <= port <= 65535 for ip, port in bindings)


def test_expired_session_removes_its_entries_and_others_invalidate_their_flows(agents, expire_session):
    a = agents("host-a", with_topology=True)
    b = agents("host-b")
    a.inject("tenant.vm1", [frame(f"eth_src={MAC1},eth_dst=ff:ff:ff:ff:ff:ff,ip_src=10.0.0.2,"
                                  "ip_dst=10.0.0.255,proto=udp,tp_src=9,tp_dst=9")])
    wait_for(lambda: b.tables.macs["tenant"].lookup(0x020000000001) == "tenant.vm1", what="B to see the MAC")
    b.inject("tenant.vm2", [frame(f"eth_src={MAC2},eth_dst={MAC1},ip_src=10.0.0.3,ip_dst=10.0.0.2,"
                                  "proto=udp,tp_src=7,tp_dst=7")])
    wait_for(lambda: [f for f in b.flows() if f[0][0] == "tenant.vm2"], what="B's flow to vm1")
    expire_session(a.store)
    # the entry vanished with A's session: B's flow that used it is gone
    wait_for(lambda: not [f for f in b.flows() if f[0][0] == "tenant.vm2"], what="B to invalidate the flow")
    assert sum(w.get("flows_invalidated", 0) for w in b.stats()["workers"]) >= 1
    assert b.stats()["supervisor"]["tables_removed_relayed"] >= 1


def test_a_topology_edit_reaches_a_running_agent(agents):
    a = agents("host-a", with_topology=True)
    b = agents("host-b")
    out = Outputs(b)
    spec = (f"eth_src={MAC2},eth_dst=02:0a:00:00:00:01,ip_src=10.0.0.3,ip_dst=203.0.113.7,proto=udp,"
            "tp_src=1,tp_dst=2")
    b.inject("tenant.vm2", [frame(spec)])
    uplink_key = b.mirror.get("router", "r1").ports["uplink"].tunnel_key
    out.wait(f"tunnel:{ip2int('127.0.0.11')}:{uplink_key}", 1)
    fetched = sum(w.get("worker_fragment_requests", 0) for w in b.stats()["workers"])
    assert fetched >= 2                                  # B parked on the bridge and router until they came
    # reroute the default route through the uplink on host-b: B's flows through r1 are invalidated
    topo = loads_topology(TOPO)
    r1 = topo.routers["r1"]
    edited = replace(topo, routers={"r1": replace(r1, routes=(replace(r1.routes[0], port="uplink2"),))})
    a.apply_topology(edited)
    wait_for(lambda: not [f for f in b.flows() if "router:r1" in f[3]], what="B's router flows invalidated")
    b.inject("tenant.vm2", [frame(spec)])
    out.wait("r1.uplink2", 1)
