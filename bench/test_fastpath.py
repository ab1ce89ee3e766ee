"""The fast-path benchmark (bench/fastpath.py) as a test: a short run of every mode; each must forward frames
and RealDatapath's forwarded frames must reach the sink veth.  Needs root (namespaces, AF_PACKET): without
it the test FAILS, it does not skip.  ``make bench`` records the figures in the benchmark's extra_info."""

from __future__ import annotations

import pytest

from bench.fastpath import MODES, measure_fastpath

pytestmark = pytest.mark.e2e


def test_bench_fastpath_vs_af_packet_floor(benchmark):
    benchmark.group = "fastpath"
    r = benchmark.pedantic(measure_fastpath, kwargs={"duration": 1.0, "flows": 32}, rounds=1, iterations=1)
    for mode in MODES:
        m = r[mode]
        benchmark.extra_info[f"{mode}_pps"] = round(m["pps"])
        assert m["pps"] > 0, (mode, m)
        # what the loop sent left through the sink veth (not more; fewer if the sink's backlog overflowed)
        assert 0 < m["delivered_pps"] <= m["pps"] * 1.01, (mode, m)
    assert r["fastpath"]["offered_pps"] > 0
