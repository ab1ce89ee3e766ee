"""The rx ring of AfPacketPort (PACKET_RX_RING, TPACKET_V2) against the recvmsg path, on real veths between
namespaces (tests/e2e/test_datapath_io.py's rig).

- The kernel writes the virtio-net header in front of each frame in a ring slot (PACKET_VNET_HDR with
  PACKET_RX_RING): a UDP datagram sent with tx offload on shows NEEDS_CSUM with csum_start at the UDP header
  and csum_offset 6 in the slot itself, and the slot's tp_status says TP_STATUS_CSUMNOTREADY.
- Ring and recvmsg paths hand over the same wire frames for the same input (checksums completed, VLAN tags
  restored), and a frame larger than a slot (a GSO super frame) arrives whole through TP_STATUS_COPY.
- test_datapath_io's ping, TCP-with-offload (segmentation, partial checksums) and VLAN tests, re-run with the
  recvmsg path (``RealDatapath.ring_slots = 0``): both paths stay covered (the ring is the default there).
- The ring wraps: many more frames than slots, in order, none lost at a pace the reader keeps up with.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest
from scapy.layers.inet import IP, UDP, Ether
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q

from engine.datapath import afpacket
from engine.datapath.afpacket import RING_SLOT, TP_STATUS_CSUMNOTREADY, TP_STATUS_USER, AfPacketPort
from engine.datapath.real import RealDatapath
from packet.checksum import checksum
from tests.e2e import test_datapath_io as io
from tests.e2e.test_datapath_io import MAC1, MAC2, two_vms

pytestmark = pytest.mark.e2e


def static_neigh(vm, ip: str, mac: str) -> None:
    """No datapath answers ARP here: the VM must know the far MAC to send IP at all."""
    vm.run(["ip", "neigh", "replace", ip, "lladdr", mac, "dev", vm.ifname, "nud", "permanent"])


def wait_frames(port: AfPacketPort, n: int, want=lambda f: True, timeout: float = 5.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += [f for f in port.recv_batch(64) if want(f)]
        time.sleep(0.005)
    return got


def udp_ok(frame: bytes) -> bool:
    """The UDP checksum of an IPv4 frame (no options) verifies."""
    ph = frame[26:34] + b"\0\x11" + frame[38:40]
    return checksum(ph + frame[34:]) == 0


def is_udp_to(port: int):
    return lambda f: len(f) > 42 and f[12:14] == b"\x08\x00" and f[23] == 17 and f[36:38] == struct.pack("!H", port)


def test_the_kernel_puts_the_vnet_header_in_front_of_a_ring_frame(netns_factory):
    vm1, vm2 = two_vms(netns_factory)
    assert io.tx_offload(vm1.ifname, vm1.name), "offload must stay on"
    port = AfPacketPort(vm1.host_if)
    try:
        assert port.ring
        static_neigh(vm1, vm2.ip, MAC2)
        s = vm1.call(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"x" * 100, (vm2.ip, 9999))
        s.close()
        deadline = time.monotonic() + 5
        found = None
        while found is None and time.monotonic() < deadline:     # look at the slots before recv_batch does
            for slot in range(port._slots):
                off = slot * RING_SLOT
                status, length, snap, mac = struct.unpack_from("=IIIH", port._ring, off)
                if status & TP_STATUS_USER:
                    frame = port._ring[off + mac:off + mac + snap]
                    if is_udp_to(9999)(frame):
                        found = (status, port._ring[off + mac - 10:off + mac], frame)
            time.sleep(0.01)
        assert found is not None, "the datagram never reached the ring"
        status, vnet, frame = found
        flags, gso_type, _hlen, _gso_size, cstart, coff = struct.unpack("=BBHHHH", vnet)
        assert status & TP_STATUS_CSUMNOTREADY
        assert flags & afpacket.VNET_F_NEEDS_CSUM and gso_type == afpacket.VNET_GSO_NONE
        assert (cstart, coff) == (34, 6)                         # the UDP header of an IPv4 frame, its checksum
        assert not udp_ok(frame)                                 # partial: only the pseudo-header sum
        got = wait_frames(port, 1, is_udp_to(9999))
        assert len(got) == 1 and udp_ok(got[0]) and got[0][42:] == b"x" * 100
        assert port.counters["afpacket_rx_csum_fixed"] >= 1
    finally:
        port.close()


@pytest.mark.parametrize("slots", [afpacket.RING_SLOTS, 0], ids=["ring", "recvmsg"])
def test_both_paths_repair_the_same_frames(netns_factory, slots):
    """Partial checksums completed, VLAN tags restored: the same frames out of either path."""
    vm1, vm2 = two_vms(netns_factory)
    port = AfPacketPort(vm1.host_if, ring_slots=slots)
    try:
        assert port.ring == bool(slots)
        static_neigh(vm1, vm2.ip, MAC2)
        s = vm1.call(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(5):
            s.sendto(bytes([i]) * (200 + i), (vm2.ip, 9000 + i))
        s.close()
        got = wait_frames(port, 5, lambda f: len(f) > 42 and f[23] == 17
                          and 9000 <= struct.unpack_from("!H", f, 36)[0] < 9005)
        assert len(got) == 5 and all(udp_ok(f) for f in got)
        assert sorted(f[42:] for f in got) == [bytes([i]) * (200 + i) for i in range(5)]
        tagged = [bytes(Ether(src=MAC1, dst=MAC2) / Dot1Q(vlan=300, prio=3) / IP(src="10.3.0.1", dst="10.3.0.2")
                        / UDP(sport=7100 + i, dport=9) / (b"t" * 40)) for i in range(3)]
        tx = vm1.call(socket.socket, socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            tx.bind((vm1.ifname, 0))
            for f in tagged:
                tx.send(f)
        finally:
            tx.close()
        back = wait_frames(port, 3, lambda f: f[12:14] == b"\x81\x00")
        assert sorted(back) == sorted(tagged) and port.counters["afpacket_rx_vlan_restored"] == 3
    finally:
        port.close()


def test_a_frame_larger_than_a_slot_arrives_whole_through_the_copy(netns_factory, dp_threads):
    """A TCP transfer with tx offload on: the sender's stack hands the veth GSO super frames (up to 64 KB),
    longer than a 2 KB slot; the kernel marks their slots TP_STATUS_COPY and queues the whole frame on the
    socket, where recv_batch takes it and segments it."""
    vm1, vm2, dp, th = io.local_pair(netns_factory, dp_threads)
    assert all(p.ring for p in dp.ports.values())
    io.python_transfer(vm1, vm2, 5011, size=300_000)
    with th.lock:
        c = dict(dp.refresh_counters())
    assert c["afpacket_rx_copied"] > 0 and c["afpacket_rx_gso_segmented"] > 0
    assert c["afpacket_rx_dropped"] == 0


def test_the_ring_wraps_in_order_without_loss(netns_factory):
    """10 × the slots, sent in bursts the reader drains between: every frame once, in order."""
    vm1, vm2 = two_vms(netns_factory)
    port = AfPacketPort(vm1.host_if, ring_slots=64)
    n = 64 * 10
    tx = vm1.call(socket.socket, socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        tx.bind((vm1.ifname, 0))
        got: list[int] = []
        for burst in range(n // 32):
            for i in range(burst * 32, burst * 32 + 32):
                tx.send(bytes(Ether(src=MAC1, dst=MAC2) / IP(src="10.4.0.1", dst="10.4.0.2")
                              / UDP(sport=20000, dport=9) / struct.pack("!I", i)))
            deadline = time.monotonic() + 5
            while len(got) < burst * 32 + 32 and time.monotonic() < deadline:
                got += [struct.unpack_from("!I", f, 42)[0] for f in port.recv_batch(64)
                        if len(f) >= 46 and f[23] == 17 and f[34:36] == b"\x4e\x20"]
        assert got == list(range(n))
        assert port.kernel_stats()[1] == 0
    finally:
        tx.close()
        port.close()


@pytest.fixture
def recvmsg_path(monkeypatch):
    monkeypatch.setattr(RealDatapath, "ring_slots", 0)


def test_ping_and_later_packets_hit_recvmsg_path(netns_factory, dp_threads, recvmsg_path):
    io.test_ping_and_later_packets_hit(netns_factory, dp_threads)


def test_tcp_with_offload_recvmsg_path(netns_factory, dp_threads, tmp_path, recvmsg_path):
    io.test_tcp_with_offload_python_and_nc(netns_factory, dp_threads, tmp_path)


def test_vlan_tag_restored_recvmsg_path(netns_factory, dp_threads, recvmsg_path):
    io.test_vlan_tag_restored(netns_factory, dp_threads)


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("slots", [afpacket.RING_SLOTS, 0], ids=["ring", "recvmsg"])
def test_a_saturated_datapath_sheds_unknown_ip_frames_before_parsing_them(netns_factory, monkeypatch, slots, family):
    """poll_ready(shed=True): frames of a flow that hit lately are parsed and executed as always; frames of
    unknown IPv4 / IPv6 flows are dropped unparsed and counted, but for 1 in SHED_SAMPLE (returned as a miss);
    other frames (ARP) are never shed.  shed=False: every unknown frame is a miss."""
    vm1, vm2 = two_vms(netns_factory)
    monkeypatch.setattr(RealDatapath, "ring_slots", slots)
    dp = RealDatapath({"vm1": vm1.host_if, "vm2": vm2.host_if})
    assert dp.ports["vm1"].ring == bool(slots)
    tx = vm1.call(socket.socket, socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        tx.bind((vm1.ifname, 0))

        def udp_frame(sport: int) -> bytes:
            ip = IP(src="10.5.0.1", dst="10.5.0.2") if family == 4 else IPv6(src="2001:db8:5::1", dst="2001:db8:5::2")
            return bytes(Ether(src=MAC1, dst=MAC2) / ip / UDP(sport=sport, dport=9) / b"s")

        def poll(frames: list[bytes], shed: bool) -> list[tuple]:
            for f in frames:
                tx.send(f)
            out, n, fd = [], len(frames), dp.ports["vm1"].fileno()
            deadline = time.monotonic() + 5
            while dp.counters["datapath_rx"] < poll.rx + n and time.monotonic() < deadline:
                out += dp.poll_ready(fd, time.monotonic(), shed)
                time.sleep(0.005)
            poll.rx += n
            return out
        poll.rx = 0

        known = udp_frame(30000)
        (miss,) = poll([known], shed=False)
        _pid, frame, pkt, key = miss
        flow = dp.cache.install(key, [("output", "vm2")], 0, 0.0, 0.0, time.monotonic())
        dp.cache.execute(flow.compiled, frame, pkt)
        assert poll([known], shed=False) == []                          # a hit: remembered
        hits = dp.counters["datapath_hits"]
        misses = poll([known] + [udp_frame(31000 + i) for i in range(32)], shed=True)
        assert dp.counters["datapath_hits"] == hits + 1                # the known flow still forwards
        shed = dp.refresh_counters()["afpacket_rx_shed"]
        assert shed == 32 - len(misses) and len(misses) == 32 // afpacket.SHED_SAMPLE
        arp = bytes(Ether(src=MAC1, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.5.0.1", pdst="10.5.0.2"))
        assert len(poll([arp], shed=True)) == 1                         # not IP: never shed
        assert len(poll([udp_frame(32000 + i) for i in range(8)], shed=False)) == 8
        assert dp.refresh_counters()["afpacket_rx_shed"] == shed
    finally:
        tx.close()
        dp.close()
