"""Micro-benchmarks of the flow-setup hot path (``make bench``): simulate per scenario/device, the worker's
per-upcall work around it, and the datapath's flow-cache lookup.

Each simulation runs against state warmed the way a worker's is in steady state (topology complete, a NAT
block held, earlier flows' state present); the timed call simulates a *new* flow without applying its effects,
so every round measures the same first-packet work.  Under plain pytest (benchmarks disabled) each runs once,
and the assertions on the results still hold.
"""

from __future__ import annotations

import pytest

from bench import scenarios
from engine.datapath.flowcache import FlowCache
from packet.codec import build, parse
from packet.flowkey import flow_key
from topology.loader import load_topology
from workers.plan import output_actions
from workers.simulation.result import FORWARD
from workers.simulation.simulate import simulate
from workers.trace import TraceSession

WARM = 2000


@pytest.fixture(autouse=True)
def _group(benchmark):
    benchmark.group = "simulation"


def _warm(name: str):
    sc = scenarios.get(name)
    topo = load_topology(str(sc.topology))
    sess = TraceSession(topo, host=scenarios.HOST)
    for port, pkt in sc.flows(0, WARM):
        assert sess.run(port, pkt).result == FORWARD
    return sc, topo, sess


@pytest.mark.parametrize("name, index, path_len", [
    ("l2", WARM, 3),                      # bridge only
    ("l3", WARM, 9),                      # bridge → router → bridge
    ("full", WARM, 6),                    # tenant → bridge filter → router chains + SNAT → uplink
    ("full", WARM + 9, 6),                # internet → VIP (LB DNAT) → tenant member
])
def test_bench_simulate_new_flow(benchmark, name, index, path_len):
    sc, topo, sess = _warm(name)
    port, pkt = sc.flow(index)
    res = benchmark(simulate, pkt, port, topo, sess.state, sess.now, scenarios.HOST)
    assert res.result == FORWARD and len(res.path) == path_len
    if name == "full":                    # NAT: a forward and a reverse binding, nothing else read off-box
        assert len(res.effects) >= 2 and res.needs is None


def test_bench_worker_upcall_path(benchmark):
    """What a worker does per upcall besides messaging: parse, simulate, flow key, datapath actions."""
    sc, topo, sess = _warm("full")
    port, pkt = sc.flow(WARM)
    frame = build(pkt)

    def one():
        p = parse(frame)
        res = simulate(p, port, topo, sess.state, sess.now, scenarios.HOST)
        return flow_key(p, port), output_actions(p, res.outputs, lambda h: 0)

    key, actions = benchmark(one)
    assert key[0] == port and actions[-1] == ("output", "r1.uplink")
    assert ("set", "ip_src", 0xC6336464) in actions          # SNAT to 198.51.100.100


def _cache_with_flows(n: int):
    sc = scenarios.get("full")
    cache = FlowCache(lambda *a: None, max_flows=2 * n)
    keys = []
    for port, pkt in sc.flows(0, n):
        key = flow_key(pkt, port)
        cache.install(key, (("set", "ttl", 63), ("output", "r1.uplink")), 0, 60.0, 0.0, 0.0)
        keys.append(key)
    return sc, cache, keys


def test_bench_flowcache_lookup_hit(benchmark):
    _, cache, keys = _cache_with_flows(100_000)
    flow = benchmark(cache.lookup, keys[77_777], 1.0)
    assert flow is not None and flow.key == keys[77_777]


def test_bench_flowcache_lookup_miss(benchmark):
    sc, cache, _ = _cache_with_flows(100_000)
    port, pkt = sc.flow(100_001)
    assert benchmark(cache.lookup, flow_key(pkt, port), 1.0) is None


def test_bench_datapath_hit_path(benchmark):
    """A cached packet in the datapath: parse, key, lookup, execute (incremental rewrite)."""
    sc, cache, keys = _cache_with_flows(10_000)
    out = []
    cache.emit = lambda kind, target, tkey, frame: out.append(frame)
    port, pkt = sc.flow(5)
    frame = build(pkt)

    def hit():
        p = parse(frame)
        f = cache.lookup(flow_key(p, port), 1.0)
        cache.execute(f.compiled, frame, p)

    benchmark(hit)
    assert out and parse(out[-1]).ttl == 63
