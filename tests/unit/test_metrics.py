"""The metrics' pure parts: the datapath's setup-latency histogram, stats → Prometheus families, the status line,
and the progress of `topology apply`."""

from __future__ import annotations

import pytest

from backchannel import messages as m
from engine.dpproc import LATENCY_BUCKETS_US
from tests.unit.test_worker_inprocess import Wire, frame

VM1 = "eth_src=02:00:00:00:00:01"


def vm1_to_vm2(sport: int) -> bytes:
    return frame(f"{VM1},eth_dst=02:00:00:00:00:02,ip_src=10.0.0.2,ip_dst=10.0.0.3,proto=udp,tp_src={sport},"
                 "tp_dst=53")


@pytest.fixture
def wire():
    w = Wire()
    yield w
    w.close()


def test_every_answered_upcall_lands_in_the_histogram_which_take_latencies_does_not_drain(wire):
    wire.inject("tenant.vm1", *[vm1_to_vm2(p) for p in range(1000, 1010)])
    stats = wire.dp.stats()
    answered = len(wire.dp.latencies)
    assert answered >= 10 and stats["datapath_setup_latency_count"] == answered
    cumulative = [stats[f"datapath_setup_latency_le_{b}"] for b in LATENCY_BUCKETS_US]
    assert cumulative == sorted(cumulative) and stats["datapath_setup_latency_le_inf"] == answered
    assert stats["datapath_setup_latency_sum_us"] == sum(wire.dp.latencies) // 1000
    wire.dp.handle(m.TakeLatencies(0), wire.now)
    assert wire.dp.stats()["datapath_setup_latency_count"] == answered      # the samples went, the counts stay


def test_a_sample_on_a_bound_is_counted_in_that_bucket(wire):
    for ns in (50_000, 50_001, 10**12):                # le 50 µs; le 100 µs; past the last bound
        wire.dp.record_latency(ns)
    h = wire.dp.latency_histogram()
    assert (h["datapath_setup_latency_le_50"], h["datapath_setup_latency_le_100"],
            h["datapath_setup_latency_le_5000000"], h["datapath_setup_latency_le_inf"]) == (1, 2, 2, 3)
    assert h["datapath_setup_latency_count"] == 3 and h["datapath_setup_latency_sum_us"] == (10**12 + 100_001) // 1000
