"""IPv6 through the real datapath (issue 15, datapath part): namespaces as VMs with addresses from
2001:db8::/32 (never fd00::/64, the machine's own), IPv6 on in the VMs without DAD or router advertisements,
tx offload ON (default), so frames leave the VMs with partial TCP/UDP checksums and as GSO super frames.

Shows:
- RealDatapath driven directly (a patch panel installs each miss): ``ping -6`` and a byte-exact TCP transfer
  each way; later packets are cache hits; partial checksums were completed;
- IPv6 rewrites executed on real interfaces: VM1 talks to a virtual address 2001:db8:1::99 that the flows
  rewrite into VM2's (ipv6_dst on the way there, ipv6_src on the way back, hop limit / traffic class / flow
  label set too): a UDP exchange and a byte-exact TCP transfer succeed only if every rewritten checksum is
  right (the receiving kernels verify them), and the frames VM2 receives carry the rewritten fields, checked
  with scapy (checksums recomputed by scapy equal the ones on the wire);
- two datapaths ("two agents", distinct loopback tunnel addresses, an IPv4 underlay) carry IPv6 frames
  VM1 <-> VM2 through VXLAN: ping -6 and TCP;
- two shardnet agents on one bridge (ZooKeeper store, real datapath, VXLAN between them): ping -6 and a
  byte-exact TCP transfer over IPv6, with the VMs also dual-stack (IPv4 ping on the same bridge).
"""

from __future__ import annotations

import hashlib
import random
import sys
import time

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from engine.datapath.afpacket import AfPacketPort
from engine.datapath.netdev import tx_offload
from engine.datapath.real import RealDatapath
from engine.datapath.tunnel import VxlanTunnel, ip_to_int
from packet.addr import ip6_2int
from tests.e2e.agents import hosts_yaml, ping_eventually, stat
from tests.e2e.test_datapath_io import free_udp_port, patch_panel

pytestmark = pytest.mark.e2e

MAC1, MAC2 = "02:5e:00:00:06:01", "02:5e:00:00:06:02"
IP1, IP2, VIRTUAL = "2001:db8:1::1", "2001:db8:1::2", "2001:db8:1::99"
SIZE = 1_000_000

SERVER6 = """
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1]))); s.listen(1); print("ready", flush=True)
c, peer = s.accept(); print("peer", peer[0], flush=True); h = hashlib.sha256(); n = 0
while b := c.recv(65536):
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""
CLIENT6 = """
import random, socket, sys
data = random.Random(int(sys.argv[3])).randbytes(int(sys.argv[4]))
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
assert c.family == socket.AF_INET6
c.sendall(data); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
"""


def transfer6(src, dst, dst_ip: str, port: int, size: int = SIZE, seed: int = 7) -> str:
    """A byte-exact TCP transfer over IPv6 from ``src`` to a server in ``dst``; the peer address it saw."""
    server = dst.popen([sys.executable, "-c", SERVER6, str(port)])
    assert server.stdout.readline().strip() == b"ready"
    src.run([sys.executable, "-c", CLIENT6, dst_ip, str(port), str(seed), str(size)], timeout=90)
    out, err = server.communicate(timeout=30)
    lines = out.decode().split("\n")
    want = random.Random(seed).randbytes(size)
    assert lines[1].split() == [str(size), hashlib.sha256(want).hexdigest()], err
    return lines[0].split()[1]


def ping6(src, dst_ip: str, count: int = 4) -> None:
    r = src.run(["ping", "-6", "-c", str(count), "-i", "0.2", "-W", "2", dst_ip], check=False, timeout=30)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


def v6_vms(netns_factory):
    vm1 = netns_factory.vm(None, MAC1, address6=f"{IP1}/64")
    vm2 = netns_factory.vm(None, MAC2, address6=f"{IP2}/64")
    assert tx_offload(vm1.ifname, vm1.name) and tx_offload(vm2.ifname, vm2.name), "offload must stay on"
    return vm1, vm2


def counters(th, dp) -> dict:
    with th.lock:
        return dict(dp.refresh_counters())


def test_ping6_and_tcp_over_ipv6_with_offload(netns_factory, dp_threads):
    vm1, vm2 = v6_vms(netns_factory)
    dp = RealDatapath({"vm1": vm1.host_if, "vm2": vm2.host_if})
    th = dp_threads(dp, patch_panel({"vm1": [("output", "vm2")], "vm2": [("output", "vm1")]}))
    ping6(vm1, IP2)
    hits = counters(th, dp)["datapath_hits"]
    ping6(vm1, IP2)
    # 4 requests + 4 replies: a new echo id misses once each way, the other six are hits
    assert counters(th, dp)["datapath_hits"] >= hits + 6
    assert transfer6(vm1, vm2, IP2, 5101) == IP1
    assert transfer6(vm2, vm1, IP1, 5102, seed=8) == IP2
    c = counters(th, dp)
    assert c["afpacket_rx_csum_fixed"] + c["afpacket_rx_gso_segmented"] > 0   # offload was on: repaired
    assert c["datapath_hits"] > 500 and c["afpacket_tx_errors"] == 0 and c["datapath_bad_rewrites"] == 0


UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(5)
s.connect((sys.argv[1], 7007))
for i in range(3):
    s.send(b"question %d" % i)
    print(s.recv(100).decode(), flush=True)
"""
UDP_SERVER = """
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(("::", 7007)); s.settimeout(20)
print("ready", flush=True)
for i in range(3):
    data, peer = s.recvfrom(100)
    print(peer[0], data.decode(), flush=True)
    s.sendto(b"answer to " + data, peer)
"""


def test_ipv6_rewrites_on_real_interfaces(netns_factory, dp_threads):
    """The flows translate a virtual address: VM1 → [VIRTUAL] becomes VM1 → [IP2] (hop limit 9, traffic class
    0x28, flow label 0x12345 set as well), VM2's answers come back from [VIRTUAL].  The VMs' kernels check every
    checksum (UDP and TCP, frames read with offload pending), so the exchanges succeed only if the rewrites
    are right; VM2's capture is checked field by field and checksum by checksum with scapy."""
    vm1, vm2 = v6_vms(netns_factory)
    vm1.run(["ip", "-6", "neigh", "replace", VIRTUAL, "lladdr", MAC2, "dev", "eth0", "nud", "permanent"])
    vm2.run(["ip", "-6", "neigh", "replace", IP1, "lladdr", MAC1, "dev", "eth0", "nud", "permanent"])
    dp = RealDatapath({"vm1": vm1.host_if, "vm2": vm2.host_if})
    to_vm2 = [("set", "ipv6_dst", ip6_2int(IP2)), ("set", "hop_limit", 9), ("set", "tclass", 0x28),
              ("set", "flow_label", 0x12345), ("output", "vm2")]
    to_vm1 = [("set", "ipv6_src", ip6_2int(VIRTUAL)), ("output", "vm1")]

    def on_miss(dp, port, frame, pkt, key, now):
        if pkt.ipv6_src is None or pkt.proto not in (6, 17):      # ND, MLD: not ours (static neighbours)
            return
        if port == "vm1" and pkt.ipv6_dst == ip6_2int(VIRTUAL):
            acts = to_vm2
        elif port == "vm2" and pkt.ipv6_dst == ip6_2int(IP1):
            acts = to_vm1
        else:
            return
        flow = dp.cache.install(key, acts, 0, 0.0, 0.0, now)
        dp.cache.execute(flow.compiled, frame, pkt)

    th = dp_threads(dp, on_miss)
    cap = vm2.call(AfPacketPort, vm2.ifname)         # what VM2's kernel receives (wire frames, repaired)
    try:
        server = vm2.popen([sys.executable, "-c", UDP_SERVER])
        assert server.stdout.readline().strip() == b"ready"
        r = vm1.run([sys.executable, "-c", UDP_CLIENT, VIRTUAL], timeout=30)
        assert r.stdout.decode().split("\n")[:3] == [f"answer to question {i}" for i in range(3)]
        out, _ = server.communicate(timeout=10)
        assert out.decode().split("\n")[:3] == [f"{IP1} question {i}" for i in range(3)]
        assert transfer6(vm1, vm2, VIRTUAL, 5103, size=300_000) == IP1
        frames = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not frames:
            frames = cap.recv_batch(64)
            time.sleep(0.01)
        while batch := cap.recv_batch(256):
            frames += batch
    finally:
        cap.close()
    seen = {"udp": 0, "tcp": 0}
    for f in frames:
        e = Ether(f)
        if IPv6 not in e or e[IPv6].src != IP1 or (UDP not in e and TCP not in e):
            continue
        ip = e[IPv6]
        assert (ip.dst, ip.hlim, ip.tc, ip.fl) == (IP2, 9, 0x28, 0x12345)
        l4 = e[UDP] if UDP in e else e[TCP]
        want = l4.chksum
        del l4.chksum
        assert Ether(bytes(e))[type(l4)].chksum == want, f"bad checksum in {e.summary()}"
        seen["udp" if UDP in e else "tcp"] += 1
    assert seen["udp"] == 3 and seen["tcp"] > 20, seen
    c = counters(th, dp)
    assert c["datapath_bad_rewrites"] == 0 and c["afpacket_rx_csum_fixed"] > 0


def test_ipv6_through_vxlan_between_two_datapaths(netns_factory, dp_threads):
    vm1, vm2 = v6_vms(netns_factory)
    base = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
    ip_a, ip_b = f"{base}.1", f"{base}.2"
    port = free_udp_port()
    key1, key2 = 201, 202
    dp_a = RealDatapath({"vm1": vm1.host_if}, VxlanTunnel(ip_a, port), {key1: "vm1"})
    dp_b = RealDatapath({"vm2": vm2.host_if}, VxlanTunnel(ip_b, port), {key2: "vm2"})
    th_a = dp_threads(dp_a, patch_panel({"vm1": [("tunnel", ip_to_int(ip_b), key2)]}))
    th_b = dp_threads(dp_b, patch_panel({"vm2": [("tunnel", ip_to_int(ip_a), key1)]}))
    try:
        ping6(vm1, IP2)
        assert transfer6(vm1, vm2, IP2, 5104, size=300_000) == IP1
        assert transfer6(vm2, vm1, IP1, 5105, size=300_000, seed=9) == IP2
        ca, cb = counters(th_a, dp_a), counters(th_b, dp_b)
        with th_b.lock:
            b_in_ports = {k[0] for k in dp_b.cache.flows}
        assert b_in_ports == {"vm2"}                      # B forwarded A's frames by tunnel key alone
        assert ca["datapath_tunnel_rx"] > 100 and cb["datapath_tunnel_rx"] > 100
        assert ca["tunnel_tx_errors"] == 0 and cb["tunnel_tx_errors"] == 0
    finally:
        for t in (dp_a.tunnel, dp_b.tunnel):
            t.close()


def test_two_agents_one_bridge_ipv6_and_dual_stack(netns_factory, real_agents):
    """Two agents, one bridge, VM1 on host-a, VM2 on host-b: ping -6 and a byte-exact TCP transfer over IPv6
    each way (default offloads), through VXLAN on loopback; the same VMs also speak IPv4 on that bridge."""
    vm1 = netns_factory.vm("198.51.100.61/24", MAC1, address6=f"{IP1}/64")
    vm2 = netns_factory.vm("198.51.100.62/24", MAC2, address6=f"{IP2}/64")
    topo = f"""version: 1
{hosts_yaml(real_agents.net, "host-a", "host-b")}bridges:
  tenant:
    ports:
      vm1: {{host: host-a, interface: {vm1.host_if}}}
      vm2: {{host: host-b, interface: {vm2.host_if}}}
"""
    a = real_agents("host-a", topo)
    b = real_agents("host-b")
    for _ in range(4):                                  # MAC learning through the store: retry a few times
        if vm1.run(["ping", "-6", "-c", "1", "-W", "2", IP2], check=False, timeout=30).returncode == 0:
            break
    ping6(vm1, IP2)
    ping6(vm2, IP1)
    assert transfer6(vm1, vm2, IP2, 5111, size=300_000) == IP1
    assert transfer6(vm2, vm1, IP1, 5112, size=300_000, seed=11) == IP2
    ping_eventually(vm1, vm2.ip)                        # dual stack on the same bridge
    for agent in (a, b):
        assert stat(agent, "datapath_tunnel_rx") > 50
        assert stat(agent, "afpacket_tx_errors") == 0
    assert stat(a, "afpacket_rx_csum_fixed") + stat(a, "afpacket_rx_gso_segmented") > 0
