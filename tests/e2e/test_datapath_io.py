"""RealDatapath on real interfaces, driven directly (no agent processes): namespaces as VMs, flows installed
by a trivial "patch panel" (each miss installs an exact flow to the other side and executes the packet).

Shows: ping; TCP transfers of ~1 MB (a Python server/client and nc) with tx offload ON in the VMs, so the
datapath must complete partial checksums and segment GSO super frames; later packets are cache hits; VLAN
tags the kernel strips are restored; two datapaths ("two agents", distinct loopback tunnel addresses) carry
VM1 <-> VM2 through VXLAN with no flow on the egress side; unknown VNIs and malformed VXLAN are counted;
frames are exchanged with Linux's own VXLAN device; a TAP port does I/O both ways.
"""

from __future__ import annotations

import hashlib
import random
import socket
import struct
import subprocess
import sys
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP, Ether
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q

from engine.datapath.afpacket import (
    VNET_GSO_TCPV4,
    VNET_GSO_TCPV6,
    AfPacketPort,
    complete_checksum,
    segment_tcp,
)
from engine.datapath.netdev import tx_offload
from engine.datapath.real import RealDatapath
from engine.datapath.tunnel import VxlanTunnel, ip_to_int
from packet.checksum import ones_sum
from packet.codec import build, parse
from packet.packet import ARP_REPLY, ARP_REQUEST, ETH_TYPE_ARP, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST

pytestmark = pytest.mark.e2e

MAC1, MAC2 = "02:5e:00:00:00:01", "02:5e:00:00:00:02"
SIZE = 1_000_000

SERVER = """
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while b := c.recv(65536):
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""
CLIENT = """
import random, socket, sys
data = random.Random(int(sys.argv[3])).randbytes(int(sys.argv[4]))
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
c.sendall(data); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
"""


def patch_panel(actions_by_port: dict):
    """on_miss: install an exact flow with the actions of the ingress port, then execute the packet."""
    def on_miss(dp, port, frame, pkt, key, now):
        flow = dp.cache.install(key, actions_by_port[port], 0, 0.0, 0.0, now)
        dp.cache.execute(flow.compiled, frame, pkt)
    return on_miss


def two_vms(netns_factory, net="198.51.100"):
    vm1 = netns_factory.vm(f"{net}.1/24", MAC1)
    vm2 = netns_factory.vm(f"{net}.2/24", MAC2)
    return vm1, vm2


def local_pair(netns_factory, dp_threads):
    vm1, vm2 = two_vms(netns_factory)
    dp = RealDatapath({"vm1": vm1.host_if, "vm2": vm2.host_if})
    th = dp_threads(dp, patch_panel({"vm1": [("output", "vm2")], "vm2": [("output", "vm1")]}))
    return vm1, vm2, dp, th


def python_transfer(src, dst, port: int, size: int = SIZE, seed: int = 7) -> None:
    server = dst.popen([sys.executable, "-c", SERVER, str(port)])
    assert server.stdout.readline().strip() == b"ready"
    src.run([sys.executable, "-c", CLIENT, dst.ip, str(port), str(seed), str(size)], timeout=60)
    out, err = server.communicate(timeout=30)
    want = random.Random(seed).randbytes(size)
    assert out.split() == [str(size).encode(), hashlib.sha256(want).hexdigest().encode()], err


def test_ping_and_later_packets_hit(netns_factory, dp_threads):
    vm1, vm2, dp, th = local_pair(netns_factory, dp_threads)
    r = vm1.run(["ping", "-c", "5", "-i", "0.2", "-W", "2", vm2.ip], check=False)
    assert r.returncode == 0, r.stdout.decode()
    with th.lock:
        c = dict(dp.refresh_counters())
    # request/reply of each direction miss once (ARP, ICMP); the other echo packets are hits
    assert c["datapath_hits"] >= 6 and c["datapath_misses"] <= 6
    assert c["afpacket_tx_errors"] == 0


def test_tcp_with_offload_python_and_nc(netns_factory, dp_threads, tmp_path):
    vm1, vm2, dp, th = local_pair(netns_factory, dp_threads)
    assert tx_offload(vm1.ifname, vm1.name) and tx_offload(vm2.ifname, vm2.name), "offload must stay on"
    python_transfer(vm1, vm2, 5001)
    python_transfer(vm2, vm1, 5002, seed=8)
    data = random.Random(9).randbytes(SIZE)
    (tmp_path / "blob").write_bytes(data)
    # the server writes to a file: a pipe nobody reads until the client is done would fill and stall TCP
    server = vm2.popen(f"nc -l 5003 > {tmp_path / 'got'}", stdin=subprocess.DEVNULL)
    wait_listening(vm2, 5003)
    vm1.run(f"nc -N -w 20 {vm2.ip} 5003 < {tmp_path / 'blob'}", timeout=60)
    server.wait(timeout=30)
    got = (tmp_path / "got").read_bytes()
    assert len(got) == SIZE and got == data
    with th.lock:
        c = dict(dp.refresh_counters())
    assert c["afpacket_rx_csum_fixed"] > 0          # partial checksums were completed
    assert c["datapath_hits"] > 500 and c["afpacket_tx_errors"] == 0


def wait_listening(ns, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ns.run(["ss", "-ltnH", f"sport = :{port}"]).stdout.strip():
        if time.monotonic() > deadline:
            pytest.fail(f"nothing listens on {port} in {ns.name}")
        time.sleep(0.05)


def test_vlan_tag_restored(netns_factory, dp_threads):
    """The kernel strips 802.1Q tags before packet sockets see them (no 8021q module here to make a VLAN
    device, so VM1 sends tagged frames from a raw socket): the datapath must key on VLAN 100 and forward the
    tag; VM2's side reads the frames back byte for byte."""
    vm1, vm2, dp, th = local_pair(netns_factory, dp_threads)
    frames = [bytes(Ether(src=MAC1, dst=MAC2) / Dot1Q(vlan=100, prio=5)
                    / IP(src="10.100.0.1", dst="10.100.0.2") / UDP(sport=7000 + i, dport=9) / (b"v" * 50))
              for i in range(3)]
    rx = vm2.call(AfPacketPort, vm2.ifname)
    tx = vm1.call(socket.socket, socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        tx.bind((vm1.ifname, 0))
        for f in frames:
            tx.send(f)
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            got += [f for f in rx.recv_batch(16) if f[12:14] == b"\x81\x00"]
            time.sleep(0.01)
        assert sorted(got) == sorted(frames)
        assert rx.counters["afpacket_rx_vlan_restored"] == 3
    finally:
        tx.close()
        rx.close()
    with th.lock:
        keys = list(dp.cache.flows)
        c = dict(dp.refresh_counters())
    assert sum(1 for k in keys if k[4] == 100) == 3, keys
    assert c["afpacket_rx_vlan_restored"] == 3


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_datapaths_through_vxlan(netns_factory, dp_threads):
    vm1, vm2 = two_vms(netns_factory)
    base = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
    ip_a, ip_b, ip_c = (f"{base}.{i}" for i in (1, 2, 3))
    port = free_udp_port()
    key1, key2 = 101, 102
    states = []
    dp_a = RealDatapath({"vm1": vm1.host_if}, VxlanTunnel(ip_a, port), {key1: "vm1"})
    dp_b = RealDatapath({"vm2": vm2.host_if}, VxlanTunnel(ip_b, port), {key2: "vm2"},
                        on_state=lambda src, payload: states.append((src, payload)))
    th_a = dp_threads(dp_a, patch_panel({"vm1": [("tunnel", ip_to_int(ip_b), key2)]}))
    th_b = dp_threads(dp_b, patch_panel({"vm2": [("tunnel", ip_to_int(ip_a), key1)]}))
    try:
        r = vm1.run(["ping", "-c", "4", "-i", "0.2", "-W", "2", vm2.ip], check=False)
        assert r.returncode == 0, r.stdout.decode()
        python_transfer(vm1, vm2, 5004, size=300_000)
        with th_a.lock, th_b.lock:
            ca, cb = dict(dp_a.refresh_counters()), dict(dp_b.refresh_counters())
            b_in_ports = {k[0] for k in dp_b.cache.flows}
        # B forwarded A's frames by tunnel key alone: it holds flows only for vm2's own traffic
        assert b_in_ports == {"vm2"}
        assert cb["datapath_tunnel_rx"] > 100 and ca["datapath_tunnel_rx"] > 100
        assert ca["datapath_tunnel_tx"] > 100 and ca["tunnel_tx_errors"] == 0

        with VxlanTunnel(ip_c, port) as stranger:
            stranger.send(ip_to_int(ip_b), 4242, build_frame_arp(MAC1, "198.51.100.9", "198.51.100.2"))
            stranger.send_state(ip_to_int(ip_b), b"\x01state")
            raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            raw.bind((ip_c, 0))
            raw.sendto(b"\x08\x00", (ip_b, port))                                   # short
            raw.sendto(b"\x0c\x00\x00\x00\x00\x00\x65\x00" + bytes(60), (ip_b, port))  # bad flags
            raw.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with th_b.lock:
                cb = dict(dp_b.refresh_counters())
            if cb["datapath_tunnel_unknown_key"] and states and cb["tunnel_rx_bad_flags"] \
                    and cb["tunnel_rx_short"]:
                break
            time.sleep(0.02)
        assert cb["datapath_tunnel_unknown_key"] == 1
        assert cb["tunnel_rx_short"] == 1 and cb["tunnel_rx_bad_flags"] == 1
        assert states == [(ip_to_int(ip_c), b"\x01state")]
    finally:
        for t in (dp_a.tunnel, dp_b.tunnel):
            t.close()


def build_frame_arp(mac: str, spa: str, tpa: str) -> bytes:
    return bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac, psrc=spa, pdst=tpa))


def test_exchange_with_linux_vxlan(netns_factory):
    """Linux's VXLAN device (vx0 in namespace X) pings a host our VxlanTunnel (in namespace Y) impersonates:
    we answer its ARP and echo requests, so ping succeeds only if both directions parse."""
    x, y = netns_factory.namespace(), netns_factory.namespace()
    port, vni = 4789, 4242
    x.run(f"ip link add ul0 type veth peer name ul0 netns {y.name} && ip addr add 203.0.113.1/24 dev ul0 "
          "&& ip link set ul0 up")
    y.run("ip addr add 203.0.113.2/24 dev ul0 && ip link set ul0 up")
    # IPv6 off on vx0: else the kernel's own neighbour/router solicitations come through the tunnel at random
    x.run(f"ip link add vx0 type vxlan id {vni} local 203.0.113.1 remote 203.0.113.2 dstport {port} dev ul0 "
          "&& sysctl -qw net.ipv6.conf.vx0.disable_ipv6=1 && ip addr add 10.77.0.1/24 dev vx0 && ip link set vx0 up")
    tun = y.call(VxlanTunnel, "203.0.113.2", port)
    me_mac, me_ip = 0x025E000000FE, ip_to_int("10.77.0.2")
    ping = x.popen(["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.77.0.2"])
    seen_vni = set()
    try:
        deadline = time.monotonic() + 15
        while ping.poll() is None and time.monotonic() < deadline:
            for src, got_vni, frame in tun.recv_batch(64):
                seen_vni.add((src, got_vni))
                reply = answer(parse(frame), me_mac, me_ip)
                if reply is not None:
                    assert tun.send(src, got_vni, reply)
            time.sleep(0.005)
        out = ping.communicate(timeout=10)[0].decode()
        assert ping.returncode == 0, out
        assert seen_vni == {(ip_to_int("203.0.113.1"), vni)}
        x.call(send_junk, ("203.0.113.2", port))
        deadline = time.monotonic() + 5
        while tun.counters["tunnel_rx_bad_flags"] + tun.counters["tunnel_rx_short"] < 2:
            assert time.monotonic() < deadline, tun.counters
            assert tun.recv_batch(8) == []
            time.sleep(0.01)
    finally:
        tun.close()


def send_junk(addr) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x08", addr)                 # shorter than a VXLAN header
        s.sendto(b"\x00" * 30, addr)            # flags without the I bit


def answer(p, my_mac: int, my_ip: int) -> bytes | None:
    if p.eth_type == ETH_TYPE_ARP and p.arp_op == ARP_REQUEST and p.arp_tpa == my_ip:
        return build(p._replace(eth_src=my_mac, eth_dst=p.eth_src, arp_op=ARP_REPLY, arp_sha=my_mac,
                                arp_spa=my_ip, arp_tha=p.arp_sha, arp_tpa=p.arp_spa))
    if p.icmp_type == ICMP_ECHO_REQUEST and p.ip_dst == my_ip:
        return build(p._replace(eth_src=my_mac, eth_dst=p.eth_src, ip_src=my_ip, ip_dst=p.ip_src,
                                icmp_type=ICMP_ECHO_REPLY, ttl=64))
    return None


def test_tap_port_io(netns_factory):
    name, vm = netns_factory.tap()
    frame = bytes(Ether(src=MAC1, dst=MAC2) / IP(src="198.51.100.1", dst="198.51.100.2")
                  / UDP(sport=1, dport=2) / b"tap-payload")
    with AfPacketPort(name) as port:
        vm.write(frame)
        got = wait_for(lambda: port.recv_batch(8))
        assert frame in got
        assert port.send(frame)
        back = wait_for(lambda: vm.read())
        assert back == frame
        assert port.counters["afpacket_tx"] == 1


def wait_for(fn, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not (v := fn()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return v


# --- the frame repairs, against scapy -------------------------------------------------------------------

@pytest.mark.parametrize("v6", [False, True])
def test_segment_tcp_matches_scapy(v6):
    payload = random.Random(3).randbytes(5000)
    l3 = IPv6(src="2001:db8::1", dst="2001:db8::2") if v6 else IP(src="198.51.100.1", dst="198.51.100.2",
                                                                   id=500, flags="DF")
    sup = bytearray(bytes(Ether(src=MAC1, dst=MAC2) / l3 / TCP(sport=1000, dport=80, seq=0xFFFFF000,
                                                                   flags="PA", options=[("NOP", None)] * 4)
                          / payload))
    l4 = 14 + (40 if v6 else 20)
    segs = segment_tcp(sup, VNET_GSO_TCPV6 if v6 else VNET_GSO_TCPV4, 1400, l4)
    assert len(segs) == 4
    got = b""
    for i, s in enumerate(segs):
        e = Ether(s)
        t = e[TCP]
        raw = bytes(t.payload)
        assert t.seq == (0xFFFFF000 + len(got)) & 0xFFFFFFFF
        assert ("P" in t.flags) == (i == 3)
        chk = t.chksum
        del t.chksum
        if not v6:
            assert e[IP].id == 500 + i
            ipchk = e[IP].chksum
            del e[IP].chksum
            del e[IP].len
        assert Ether(bytes(e))[TCP].chksum == chk
        if not v6:
            assert Ether(bytes(e))[IP].chksum == ipchk
        got += raw
    assert got == payload


def test_complete_partial_udp_checksum():
    f = Ether() / IP(src="198.51.100.1", dst="198.51.100.2") / UDP(sport=5, dport=6) / b"abcdefg"
    want = Ether(bytes(f))[UDP].chksum
    frame = bytearray(bytes(f))
    src, dst = struct.unpack_from("!II", frame, 26)
    partial = ones_sum(b"", src + dst + 17 + 15)            # pseudo-header sum, as the stack leaves it
    frame[40:42] = struct.pack("!H", partial)
    assert complete_checksum(frame, 34, 6)
    assert struct.unpack_from("!H", frame, 40)[0] == want
    assert not complete_checksum(bytearray(20), 14, 16)
