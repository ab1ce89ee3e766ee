"""Process faults with the real datapath (AF_PACKET ports on veths, VXLAN between agents, ZooKeeper), caused by
``kill -9`` by pid while Linux clients in namespaces talk through the agent: the datapath killed in the middle
of a TCP transfer through a stateful filter; each worker killed in turn under a load of new UDP flows while an
SNAT connection owned by one of them streams.  Gaps are measured (a 10 ms ping, timestamped) and printed."""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.e2e.agents import hosts_yaml, ping_eventually, python_transfer, stat
from tests.e2e.test_agent_real import MAC1, MAC2, firewall_topology

pytestmark = pytest.mark.e2e

CHUNKS, CHUNK = 100, 20_000                      # 2 MB over ~10 s
STREAM_SERVER = """
import random, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); print("ready", flush=True)
c, peer = s.accept(); print("peer", peer[0], flush=True)
rng = random.Random(int(sys.argv[2]))
for _ in range(int(sys.argv[3])):
    c.sendall(rng.randbytes(int(sys.argv[4]))); time.sleep(0.1)
c.close()
"""
STREAM_CLIENT = """
import hashlib, socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30); print("connected", flush=True)
h, n = hashlib.sha256(), 0
while b := c.recv(65536):
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""
UDP_FLOWS = """
import socket, sys, time
dst, base, n, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
t0 = time.monotonic()
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", base + i))
    s.sendto(b"x" * 32, (dst, 9999)); s.close()
    ahead = i / rate - (time.monotonic() - t0)
    if ahead > 0:
        time.sleep(ahead)
"""
SINK = "import socket, time; s = socket.socket(2, 2); s.bind(('0.0.0.0', 9999)); time.sleep(300)"


def start_stream(server_ns, client_ns, server_ip: str, port: int, seed: int):
    server = server_ns.popen([sys.executable, "-c", STREAM_SERVER, str(port), str(seed), str(CHUNKS), str(CHUNK)])
    assert server.stdout.readline().strip() == b"ready"
    client = client_ns.popen([sys.executable, "-c", STREAM_CLIENT, server_ip, str(port)])
    assert client.stdout.readline().strip() == b"connected"
    return server, client


def finish_stream(server, client, seed: int) -> str:
    """Every byte, in order (sha256 of the seeded stream); returns the peer address the server saw."""
    out, err = client.communicate(timeout=90)
    assert client.returncode == 0, err.decode()
    rng = random.Random(seed)
    want = hashlib.sha256(b"".join(rng.randbytes(CHUNK) for _ in range(CHUNKS))).hexdigest()
    assert out.split() == [str(CHUNKS * CHUNK).encode(), want.encode()]
    sout, _ = server.communicate(timeout=30)
    return sout.split()[1].decode()


def start_pinger(src, dst_ip: str, seconds: float):
    return src.popen(["ping", "-D", "-n", "-i", "0.01", "-W", "1", "-c", str(int(seconds * 100)), dst_ip])


def largest_gap(pinger, since: float) -> tuple[float, int]:
    """(the longest time without an echo reply around ``since`` (wall clock), the replies after it)."""
    out, _ = pinger.communicate(timeout=60)
    stamps = [float(s) for s in re.findall(rb"^\[(\d+\.\d+)\] \d+ bytes from", out, re.M)]
    before = [t for t in stamps if t < since]
    after = [t for t in stamps if t >= since]
    assert before and after, "no echo replies on one side of the kill"
    return after[0] - before[-1], len(after)


def test_kill_9_of_the_datapath_in_a_tcp_transfer_through_a_stateful_filter(netns_factory, real_agents):
    vm1 = netns_factory.vm("10.1.0.11/24", MAC1)
    vm2 = netns_factory.vm("10.1.0.12/24", MAC2)
    a = real_agents("host-a", firewall_topology(real_agents.net, vm1, vm2, "host-a"))
    ping_eventually(vm1, vm2.ip)
    # vm1 connects; vm2 streams back through the filter, which passes vm2's packets only as replies
    server, client = start_stream(vm2, vm1, vm2.ip, 5061, seed=61)
    pinger = start_pinger(vm1, vm2.ip, 5.0)
    time.sleep(1.5)
    old = a.pids[-1]
    flows = stat(a, "worker_flows", "workers")
    killed_at = time.time()
    os.kill(old, signal.SIGKILL)
    assert finish_stream(server, client, seed=61) == "10.1.0.11"
    gap, replies = largest_gap(pinger, killed_at)
    print(f"\nkill -9 of the datapath: forwarding resumed after {gap * 1000:.0f} ms ({replies} echo replies after)")
    assert a.health()["datapath_restarts"] == 1 and a.pids[-1] != old
    s = a.stats()
    assert s["datapath"]["datapath_reinstalled"] > 0 and s["datapath"]["datapath_pid"] == a.pids[-1]
    assert sum(w.get("worker_flows_reinstalled", 0) for w in s["workers"]) >= flows - 2
    ping_eventually(vm1, vm2.ip)


def snat_and_lan_topology(net, vm1, vm2, ext) -> str:
    """vm1 and vm2 on one bridge at host-a; r1 SNATs vm1's traffic to ``ext`` behind gw-1's uplink."""
    return f"""version: 1
{hosts_yaml(net, "host-a", "gw-1")}bridges:
  tenant:
    ports:
      vm1: {{host: host-a, interface: {vm1.host_if}}}
      vm2: {{host: host-a, interface: {vm2.host_if}}}
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


def worker_flows(agent) -> list[int]:
    return [w.get("worker_flows", 0) for w in agent.stats()["workers"]]


def snat_owner(agent, vm_ip: int, port: int) -> int:
    """The worker holding the forward SNAT entry of vm1's connection to ``port``."""
    for i, entries in agent.query(range(agent.cfg.workers), "state_entries").items():
        for kind, key, _value, _exp in entries:
            if kind == "fwd_snat" and key[0] == vm_ip and key[4] == port:
                return i
    raise AssertionError("no SNAT entry for the connection")


def wait_for(fn, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := fn():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_of_each_worker_in_turn_under_load_keeps_the_others_flows_and_the_snat_connection(
        netns_factory, real_agents):
    vm1 = netns_factory.vm("10.1.0.11/24", MAC1, gateway="10.1.0.1")
    vm2 = netns_factory.vm("10.1.0.12/24", MAC2, gateway="10.1.0.1")
    ext = netns_factory.vm("203.0.113.1/24", "02:5e:00:00:0e:01")
    # exact match: the load's flows are counted one per 5-tuple (a megaflow would carry them all)
    a = real_agents("host-a", snat_and_lan_topology(real_agents.net, vm1, vm2, ext), megaflows=False)
    real_agents("gw-1")
    ping_eventually(vm1, ext.ip)
    ping_eventually(vm1, vm2.ip)
    vm2.popen([sys.executable, "-c", SINK])
    # a first connection takes the block's first port: a worker that lost the state would give the stream's
    # packets that one (and the far side would reset the stream)
    assert python_transfer(vm1, ext, ext.ip, 5070, size=20_000) == "203.0.113.2"
    server, client = start_stream(ext, vm1, ext.ip, 5071, seed=71)
    owner = snat_owner(a, 0x0A01000B, 5071)
    snaps = a.counters.get("supervisor_state_snapshots", 0)
    wait_for(lambda: a.counters.get("supervisor_state_snapshots", 0) >= snaps + 1, what="a snapshot")
    vm1.run([sys.executable, "-c", UDP_FLOWS, vm2.ip, "30000", "2000", "2000"], timeout=60)
    wait_for(lambda: sum(worker_flows(a)) >= 2000, what="the load's flows")
    base = 32000
    for victim in (owner, 1 - owner):                  # the SNAT connection's owner first, then the other
        survivor = 1 - victim
        before = worker_flows(a)[survivor]
        old = a.pids[victim]
        load = vm1.popen([sys.executable, "-c", UDP_FLOWS, vm2.ip, str(base), "1500", "1000"])
        time.sleep(0.3)
        os.kill(old, signal.SIGKILL)
        assert load.wait(60) == 0
        wait_for(lambda v=victim, o=old: a.pids[v] != o and a.stats()["workers"][v].get("worker_pid") == a.pids[v]
                 and a.stats()["workers"][v].get("worker_recovering") == 0, what="the worker restarted")
        after = worker_flows(a)[survivor]
        if victim == owner:                            # its shard came back from the snapshot
            assert snat_owner(a, 0x0A01000B, 5071) == owner
        print(f"\nworker {victim} killed under load: worker {survivor} had {before} flows, has {after}")
        assert after >= 0.99 * before
        base += 1500
    assert finish_stream(server, client, seed=71) == "203.0.113.2"      # same binding all along: no reset
    s = a.stats()
    assert s["supervisor"]["supervisor_crashes"] == 2 and s["supervisor"]["supervisor_worker_restarts"] == 2
    assert s["supervisor"].get("supervisor_worker_state_restored", 0) >= 1


def conn_owner(agent, kind: str, port: int) -> int:
    """The worker holding a ``kind`` entry with ``port`` at one end."""
    for i, entries in agent.query(range(agent.cfg.workers), "state_entries").items():
        if any(k == kind and port in (key[3], key[4]) for k, key, _v, _e in entries):
            return i
    raise AssertionError(f"no {kind} entry for port {port}")


def test_kill_9_of_the_worker_owning_a_connection_through_a_stateful_filter(netns_factory, real_agents):
    """vm2 streams to vm1 through a filter that passes vm2's packets only as replies.  The worker holding the
    connection's state is killed: its replacement gets the state from the last snapshot before it simulates
    vm2's next packet, so the stream carries on."""
    vm1 = netns_factory.vm("10.1.0.11/24", MAC1)
    vm2 = netns_factory.vm("10.1.0.12/24", MAC2)
    a = real_agents("host-a", firewall_topology(real_agents.net, vm1, vm2, "host-a"))
    ping_eventually(vm1, vm2.ip)
    server, client = start_stream(vm2, vm1, vm2.ip, 5081, seed=81)
    owner = conn_owner(a, "conntrack", 5081)
    snaps = a.counters.get("supervisor_state_snapshots", 0)
    wait_for(lambda: a.counters.get("supervisor_state_snapshots", 0) >= snaps + 1, what="a snapshot")
    old = a.pids[owner]
    os.kill(old, signal.SIGKILL)
    assert finish_stream(server, client, seed=81) == "10.1.0.11"
    assert a.pids[owner] != old and a.counters.get("supervisor_worker_state_restored", 0) >= 1
    assert conn_owner(a, "conntrack", 5081) == owner


def test_kill_9_of_the_datapath_of_the_agent_that_translates_an_snat_stream(netns_factory, real_agents):
    """Two agents, VXLAN between them: host-a SNATs vm1's connection, gw-1 holds the uplink.  host-a's datapath
    is killed mid-stream: the new one reopens the port and the tunnel, gets the flow-state keys back, and the
    workers re-install their flows; the stream carries on."""
    from tests.e2e.test_agent_real import snat_topology

    vm1 = netns_factory.vm("10.1.0.11/24", MAC1, gateway="10.1.0.1")
    ext = netns_factory.vm("203.0.113.1/24", "02:5e:00:00:0e:01")
    a = real_agents("host-a", snat_topology(real_agents.net, vm1, ext))
    real_agents("gw-1")
    ping_eventually(vm1, ext.ip)
    server, client = start_stream(ext, vm1, ext.ip, 5091, seed=91)
    pinger = start_pinger(vm1, ext.ip, 5.0)
    time.sleep(1.5)
    old = a.pids[-1]
    killed_at = time.time()
    os.kill(old, signal.SIGKILL)
    assert finish_stream(server, client, seed=91) == "203.0.113.2"
    gap, replies = largest_gap(pinger, killed_at)
    print(f"\nkill -9 of the SNAT agent's datapath (two agents, VXLAN): forwarding resumed after {gap * 1000:.0f} ms "
          f"({replies} echo replies after)")
    s = a.stats()["datapath"]
    assert a.pids[-1] != old and s["datapath_reinstalled"] > 0 and s["tunnel_tx"] > 0


def test_kill_9_of_shardnet_run_with_real_ports_under_traffic_leaves_nothing_behind(netns_factory, zk_store,
                                                                                     tmp_path):
    from tests.e2e.agents import Net
    from tests.integration.test_process_faults import _children_of, _kill_and_watch

    net = Net()
    vm1 = netns_factory.vm("10.1.0.11/24", MAC1)
    vm2 = netns_factory.vm("10.1.0.12/24", MAC2)
    (tmp_path / "t.yaml").write_text(firewall_topology(net, vm1, vm2, "host-a"))
    run = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "--store", zk_store, "--topology",
                            str(tmp_path / "t.yaml"), "--host", "host-a", "--tunnel-port", str(net.tunnel_port),
                            "--state-file", str(tmp_path / "a.state"), "--no-status"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        assert b"agent up" in run.stdout.readline()
        ping_eventually(vm1, vm2.ip)
        pinger = start_pinger(vm1, vm2.ip, 3.0)          # traffic through the datapath while it is killed
        time.sleep(0.5)
        children = _children_of(run.pid)
        assert len(children) == 3
        pointer = tmp_path / "host-a.ctl"
        assert pointer.exists()
        gone = _kill_and_watch(run, children)
        print(f"\nkill -9 of shardnet run (real datapath, under traffic): its 3 children gone after "
              f"{gone * 1000:.0f} ms")
        assert not pointer.exists()                      # the ctl pointer to its dead socket went with them
        pinger.wait(30)
    finally:
        if run.poll() is None:
            run.kill()
        run.wait(10)
