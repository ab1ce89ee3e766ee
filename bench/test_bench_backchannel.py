"""Codec micro-benchmarks (``make bench``): what one hop of the flow-setup path costs in encode/decode.

An UpcallBatch of 32 TCP SYNs (74-byte frames as Linux sends them: MSS, SACK-permitted, timestamps, window
scale) and one FlowPut of a NATed flow.  Each benchmark also checks the round trip, so a fast wrong
codec does not pass.
"""

from __future__ import annotations

import pytest

from backchannel import codec
from backchannel.messages import FlowPut, Upcall, UpcallBatch


@pytest.fixture(scope="module")
def syn_frame() -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    pkt = (Ether(src="02:00:00:00:00:01", dst="02:0a:00:00:00:01")
           / IP(src="10.0.0.2", dst="203.0.113.10", ttl=64)
           / TCP(sport=6456, dport=80, flags="S", seq=1000,
                 options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None),
                          ("WScale", 7)]))
    frame = bytes(pkt)
    assert len(frame) == 74
    return frame


@pytest.fixture(scope="module")
def upcall_batch(syn_frame) -> UpcallBatch:
    return UpcallBatch(tuple(Upcall(i, "tenant.vm1", syn_frame) for i in range(32)))


@pytest.fixture(scope="module")
def flow_put() -> FlowPut:
    actions = (("set", "ip_src", 0xB4000164), ("set", "tp_src", 9043), ("set", "eth_src", 0x020A00000002),
               ("set", "eth_dst", 0x020B00000001), ("set", "ttl", 63), ("output", "r1.uplink"))
    tags = ("port:tenant.vm1", "bridge:tenant", "router:r1", "chain:r1-out", "route:r1:0", "arp:r1:198.51.100.1")
    return FlowPut(17, (), actions, tags, 30.0, 0.0)


def test_encode_upcall_batch_32(benchmark, upcall_batch):
    wire = benchmark(codec.encode, upcall_batch)
    assert codec.decode(wire) == upcall_batch


def test_decode_upcall_batch_32(benchmark, upcall_batch):
    wire = codec.encode(upcall_batch)
    assert benchmark(codec.decode, wire) == upcall_batch


def test_encode_flow_put(benchmark, flow_put):
    wire = benchmark(codec.encode, flow_put)
    assert codec.decode(wire) == flow_put


def test_decode_flow_put(benchmark, flow_put):
    wire = codec.encode(flow_put)
    assert benchmark(codec.decode, wire) == flow_put


def test_decode_flow_put_counting_decoder(benchmark, flow_put):
    dec = codec.Decoder()
    wire = codec.encode(flow_put)
    assert benchmark(dec.decode, wire) == flow_put


def test_encode_many_32_flow_puts(benchmark, flow_put):
    msgs = [flow_put._replace(seq=i) for i in range(32)]
    wire = benchmark(codec.encode_many, msgs)
    assert codec.decode_many(wire) == msgs


def test_decode_many_32_flow_puts(benchmark, flow_put):
    msgs = [flow_put._replace(seq=i) for i in range(32)]
    wire = codec.encode_many(msgs)
    assert benchmark(codec.decode_many, wire) == msgs
