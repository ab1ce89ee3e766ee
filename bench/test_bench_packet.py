"""Micro-benchmarks of the packet codec (hot path of the datapath and the dispatcher).

`make bench` runs them with timing; under plain pytest (benchmarks disabled by the pyproject addopts) each
runs once as a test, so the assertions on the results still hold.
"""

from __future__ import annotations

import random

import pytest

from packet.codec import build, parse, rewrite
from packet.flowkey import flow_key, normalized_flow_hash
from packet.spec import parse_spec

SYN = parse_spec("eth_src=02:00:00:00:00:01,eth_dst=02:0a:00:00:00:01,ip_src=10.0.0.2,ip_dst=203.0.113.10,"
                 "proto=tcp,tp_src=6456,tp_dst=80,tcp_flags=syn", random.Random(1))
SYN_FRAME = build(SYN)
# A cache hit of an SNAT'ed, routed flow: new source address and port, new MACs, TTL - 1.
SNAT = SYN._replace(eth_src=0x020A00000002, eth_dst=0x020B00000001, ip_src=0xB4000164, tp_src=9043,
                    ttl=SYN.ttl - 1)


@pytest.fixture(autouse=True)
def _group(benchmark):
    benchmark.group = "packet"


def test_bench_parse_tcp_syn(benchmark):
    assert benchmark(parse, SYN_FRAME) == SYN


def test_bench_build_tcp_syn(benchmark):
    assert benchmark(build, SYN) == SYN_FRAME


def test_bench_rewrite_snat(benchmark):
    out = benchmark(rewrite, SYN_FRAME, SYN, SNAT)
    assert out == build(SNAT)


def test_bench_flow_key(benchmark):
    key = benchmark(flow_key, SYN, 3)
    assert key[0] == 3 and hash(key) == hash(flow_key(SYN, 3))


def test_bench_normalized_flow_hash(benchmark):
    h = benchmark(normalized_flow_hash, SYN)
    assert h == normalized_flow_hash(SYN._replace(ip_src=SYN.ip_dst, ip_dst=SYN.ip_src, tp_src=SYN.tp_dst,
                                                  tp_dst=SYN.tp_src))
