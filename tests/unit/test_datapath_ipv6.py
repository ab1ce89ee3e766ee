"""The datapath's pieces on IPv6 frames, checked against scapy: flow-cache execution of IPv6 set actions
(addresses, hop limit, traffic class, flow label, ports, MACs; TCP, UDP, ICMPv6 echo, an extension header, a
VLAN tag) in the in-memory datapath and through the datapath process (FlowPut over the wire codec, 128-bit
values), completion of offloaded (partial) IPv6 TCP/UDP checksums as a veth hands them over, and the VXLAN
tunnel carrying IPv6 frames over an IPv4 underlay (loopback).

Every expected frame is built by scapy with the rewritten field values and scapy's own checksums; the
datapath's output must equal it byte for byte."""

from __future__ import annotations

import random
import struct

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt
from scapy.layers.l2 import Dot1Q, Ether

from backchannel import codec
from backchannel import messages as m
from engine.datapath.afpacket import complete_checksum
from engine.datapath.memory import MemoryDatapath
from engine.datapath.tunnel import VxlanTunnel, ip_to_int
from engine.dpproc import DatapathConfig, DatapathProcess
from packet.addr import ip6_2int
from packet.checksum import checksum, ones_sum

MAC1, MAC2, MAC3 = "02:5e:00:00:06:01", "02:5e:00:00:06:02", "02:5e:00:00:06:03"
A, B, C, D = "2001:db8:1::1", "2001:db8:1::2", "2001:db8:2::33", "2001:db8:ffff:1:2:3:4:5"


def _l4(kind: str):
    if kind == "tcp":
        return TCP(sport=40000, dport=80, seq=12345, flags="PA") / b"hello over tcp"
    if kind == "udp":
        return UDP(sport=5353, dport=53) / b"a udp payload, odd length"
    return ICMPv6EchoRequest(id=77, seq=3, data=b"ping6 data")


def frame6(kind: str, src=A, dst=B, hlim=64, tc=0, fl=0, vlan=None, ext=False, eth_dst=MAC2, sport=None,
           dport=None) -> bytes:
    l4 = _l4(kind)
    if sport is not None:
        l4.sport = sport
    if dport is not None:
        l4.dport = dport
    ip = IPv6(src=src, dst=dst, hlim=hlim, tc=tc, fl=fl)
    if ext:
        ip = ip / IPv6ExtHdrDestOpt()
    eth = Ether(src=MAC1, dst=eth_dst)
    if vlan is not None:
        eth = eth / Dot1Q(vlan=vlan)
    return bytes(eth / ip / l4)


REWRITES = [
    # (set actions, the scapy arguments of the frame that must come out)
    ([("set", "ipv6_dst", ip6_2int(C))], {"dst": C}),
    ([("set", "ipv6_src", ip6_2int(D)), ("set", "ipv6_dst", ip6_2int(C))], {"src": D, "dst": C}),
    ([("set", "hop_limit", 63), ("set", "tclass", 0xB8), ("set", "flow_label", 0xFEDCB)],
     {"hlim": 63, "tc": 0xB8, "fl": 0xFEDCB}),
    ([("set", "eth_dst", 0x025E00000603), ("set", "ipv6_src", ip6_2int(D)), ("set", "hop_limit", 1)],
     {"eth_dst": MAC3, "src": D, "hlim": 1}),
]


@pytest.mark.parametrize("kind", ["tcp", "udp", "icmpv6"])
@pytest.mark.parametrize("variant", ["plain", "vlan", "ext"])
@pytest.mark.parametrize("case", range(len(REWRITES)))
def test_memory_datapath_executes_ipv6_rewrites_like_scapy_builds(kind, variant, case):
    actions, want_args = REWRITES[case]
    extra = {"vlan": 42} if variant == "vlan" else {"ext": True} if variant == "ext" else {}
    dp = MemoryDatapath()
    first = frame6(kind, **extra)
    miss = dp.receive("p1", first, 0.0)
    assert miss is not None
    pkt, key = miss
    assert pkt.ipv6_dst == ip6_2int(B)
    flow = dp.cache.install(key, [*actions, ("output", "p2")], 0, 0.0, 0.0, 0.0)
    assert flow is not None
    dp.cache.execute(flow.compiled, first, pkt)
    assert dp.receive("p1", first, 1.0) is None              # the same 5-tuple again: a hit
    out = dp.take_outputs("p2")["p2"]
    want = frame6(kind, **{**extra, **want_args})
    assert out == [want, want]
    assert dp.counters["datapath_hits"] == 1 and dp.counters["datapath_bad_rewrites"] == 0


def test_an_ipv4_rewrite_of_an_ipv6_frame_is_refused_and_counted():
    dp = MemoryDatapath()
    f = frame6("udp")
    pkt, key = dp.receive("p1", f, 0.0)
    flow = dp.cache.install(key, [("set", "ip_dst", 0xC6336401), ("output", "p2")], 0, 0.0, 0.0, 0.0)
    dp.cache.execute(flow.compiled, f, pkt)
    assert dp.take_outputs("p2") == {} and dp.counters["datapath_bad_rewrites"] == 1


class SentFrames:
    def __init__(self):
        self.sent: list[bytes] = []

    def send(self, data, flags=0):
        self.sent.append(bytes(data))


def test_the_datapath_process_takes_128_bit_set_actions_off_the_wire():
    """A FlowPut with IPv6 set actions, encoded and decoded by the wire codec (128-bit ints as the msgpack
    extension), installs and executes in the datapath process; later packets hit."""
    link = SentFrames()
    dp = DatapathProcess(DatapathConfig(runtime_dir="", n_workers=1, keep_outputs=True), [link], SentFrames())
    f = frame6("tcp")
    dp.receive("p1", f, 0.0)
    dp.disp.flush()
    ups = [u for data in link.sent for batch in codec.decode_many(data) for u in batch.upcalls]
    assert [u.frame for u in ups] == [f]
    seqs = [u.seq for u in ups]
    actions = (("set", "ipv6_src", ip6_2int(D)), ("set", "ipv6_dst", ip6_2int(C)), ("set", "flow_label", 0xABCDE),
               ("set", "hop_limit", 17), ("output", "p2"))
    wire = codec.encode(m.FlowPut(seqs[0], (), actions, ("t",), 0.0, 0.0))
    [put] = codec.decode_many(wire)
    assert put.actions == actions
    dp.handle(put, 0.1)
    dp.receive("p1", f, 0.2)
    want = frame6("tcp", src=D, dst=C, fl=0xABCDE, hlim=17)
    assert list(dp.dp.outputs["p2"]) == [want, want]
    assert dp.counters["datapath_bad_actions"] == 0 and dp.counters["datapath_hits"] == 1


# --- offloaded checksums ------------------------------------------------------------------------------------

@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("ext", [False, True])
def test_partial_ipv6_checksum_completed_as_a_nic_would(proto, ext):
    """What a veth hands an AF_PACKET socket with tx offload on: the L4 checksum field holds only the
    pseudo-header sum (not complemented), csum_start at the L4 header."""
    good = frame6(proto, src=A, dst=D, ext=ext)
    l4 = 14 + 40 + (8 if ext else 0)
    coff = 16 if proto == "tcp" else 6
    seg_len = len(good) - l4
    buf = bytearray(good)
    nxt = 6 if proto == "tcp" else 17
    partial = ones_sum(b"", ip6_2int(A) + ip6_2int(D) + nxt + seg_len)
    buf[l4 + coff:l4 + coff + 2] = struct.pack("!H", partial)
    assert bytes(buf) != good
    assert complete_checksum(buf, l4, coff)
    assert bytes(buf) == good                                  # scapy's checksum, byte for byte
    # and the completed frame rewrites like a scapy build of the result
    dp = MemoryDatapath()
    pkt, key = dp.receive("p1", bytes(buf), 0.0)
    flow = dp.cache.install(key, [("set", "ipv6_dst", ip6_2int(C)), ("output", "p2")], 0, 0.0, 0.0, 0.0)
    dp.cache.execute(flow.compiled, bytes(buf), pkt)
    assert dp.take_outputs("p2")["p2"] == [frame6(proto, src=A, dst=C, ext=ext)]


def test_partial_udp6_checksum_of_zero_goes_out_as_ffff():
    """Over IPv6 a UDP checksum of 0 is invalid (RFC 8200): a computed 0 is sent as 0xFFFF.  Search a payload
    whose checksum is 0 and complete its partial form."""
    pseudo = ip6_2int(A) + ip6_2int(B) + 17 + 10
    udp0 = struct.pack("!HHHH", 1, 2, 10, 0)
    word = checksum(udp0 + b"\0\0", pseudo)                 # this payload word makes the sum 0xFFFF: checksum 0
    payload = struct.pack("!H", word)
    assert checksum(udp0 + payload, pseudo) in (0, 0xFFFF)
    raw = bytearray(bytes(Ether(src=MAC1, dst=MAC2) / IPv6(src=A, dst=B) / UDP(sport=1, dport=2) / payload))
    assert struct.unpack_from("!H", raw, 60)[0] == 0xFFFF        # scapy sends the zero checksum as 0xFFFF
    partial = ones_sum(b"", pseudo)
    raw[60:62] = struct.pack("!H", partial)
    assert complete_checksum(raw, 54, 6)
    assert struct.unpack_from("!H", raw, 60)[0] == 0xFFFF


# --- the tunnel ---------------------------------------------------------------------------------------------

def test_vxlan_carries_ipv6_frames_over_an_ipv4_underlay():
    base = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
    port = random.randrange(30000, 60000)
    frames = [frame6(k, ext=e) for k in ("tcp", "udp", "icmpv6") for e in (False, True)]
    frames.append(bytes(Ether(src=MAC1, dst=MAC2) / IPv6(src=A, dst=B) / UDP(sport=9, dport=9)
                        / random.Random(1).randbytes(1400)))
    with VxlanTunnel(f"{base}.1", port) as ta, VxlanTunnel(f"{base}.2", port) as tb:
        for i, f in enumerate(frames):
            assert ta.send(ip_to_int(f"{base}.2"), 300 + i, f)
        got = []
        for _ in range(200):
            got += tb.recv_batch(64)
            if len(got) == len(frames):
                break
        assert got == [(ip_to_int(f"{base}.1"), 300 + i, f) for i, f in enumerate(frames)]
        # and the egress side outputs them unchanged by tunnel key, no simulation
        dp = MemoryDatapath(tunnel_ports={300 + i: f"p{i}" for i in range(len(frames))})
        for _src, vni, inner in got:
            dp.receive_tunnel(vni, inner)
        outs = dp.take_outputs(None)
        assert [outs[f"p{i}"] for i in range(len(frames))] == [[f] for f in frames]
