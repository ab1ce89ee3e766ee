"""The metrics' pure parts: the datapath's setup-latency histogram, stats → Prometheus families, the status line,
and the progress of `topology apply`."""

from __future__ import annotations

import pytest

from backchannel import messages as m
from engine.dpproc import LATENCY_BUCKETS_US
from tests.inprocess import Wire, frame

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
    wire.dp.handle(m.TakeLatencies(0), wire.now)       # a reader: the samples are kept from now on
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


# -- stats → Prometheus families ------------------------------------------------------------------------------
STATS = {
    "datapath": {"datapath_hits": 7, "datapath_misses": 3, "datapath_flows": 3, "datapath_inflight": 1,
                 "datapath_pid": 11, "dispatcher_queue_full": 2, "datapath_state_refused": 1,
                 "datapath_state_refused_replay": 1, "backchannel_decoded": 9,
                 "datapath_setup_latency_le_50": 1, **{f"datapath_setup_latency_le_{b}": 3 for b in
                                                       LATENCY_BUCKETS_US[1:]},
                 "datapath_setup_latency_le_inf": 3, "datapath_setup_latency_count": 3,
                 "datapath_setup_latency_sum_us": 420},
    "workers": [{"worker_index": 0, "worker_pid": 12, "worker_upcalls": 2, "flows_installed": 2, "parked": 5,
                 "worker_flows": 2, "worker_parked_now": 1, "worker_state_entries": 4,
                 "worker_drops_filter_drop": 1},
                {"worker_index": 1, "worker_pid": 13, "worker_upcalls": 1, "flows_installed": 1, "parked": 0,
                 "worker_flows": 1, "worker_parked_now": 0, "worker_state_entries": 0,
                 "worker_drops_filter_drop": 2, "worker_drops_nat_exhausted": 1}],
    "supervisor": {"supervisor_worker_restarts": 1, "supervisor_store_connected": 0, "mirror_changes": 4,
                   "store_suspended": 1},
}


def scrape_text(stats=STATS, **kw) -> str:
    from prometheus_client import generate_latest
    from prometheus_client.core import CollectorRegistry

    from engine.metrics import families

    class Static:
        def collect(self):
            return families(stats, **kw)

    reg = CollectorRegistry(auto_describe=False)
    reg.register(Static())
    return generate_latest(reg).decode()


def samples(text: str) -> dict:
    """(sample name, frozenset of labels) → value, parsed back with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def L(**labels) -> frozenset:
    return frozenset(labels.items())


def test_every_counter_of_every_process_is_a_series_labelled_by_process_and_worker():
    s = samples(scrape_text(store_state="suspended", info={"host": "host-a", "store": "memory://"}))
    assert s[("shardnet_datapath_hits_total", L(process="datapath", worker=""))] == 7
    assert s[("shardnet_backchannel_decoded_total", L(process="datapath", worker=""))] == 9
    assert s[("shardnet_worker_upcalls_total", L(process="worker", worker="1"))] == 1
    assert s[("shardnet_flows_installed_total", L(process="worker", worker="0"))] == 2
    assert s[("shardnet_parked_total", L(process="worker", worker="0"))] == 5
    assert s[("shardnet_mirror_changes_total", L(process="supervisor", worker=""))] == 4
    assert s[("shardnet_store_suspended_total", L(process="supervisor", worker=""))] == 1
    # gauges
    assert s[("shardnet_flows", L(process="datapath", worker=""))] == 3
    assert s[("shardnet_flows", L(process="worker", worker="0"))] == 2
    assert s[("shardnet_flow_state_entries", L(process="worker", worker="0"))] == 4
    assert s[("shardnet_parked_now", L(process="worker", worker="0"))] == 1
    assert s[("shardnet_upcalls_in_flight", L(process="datapath", worker=""))] == 1
    assert s[("shardnet_restarts_total", L(process="supervisor", worker=""))] == 1
    assert s[("shardnet_store_connected", L())] == 0
    assert s[("shardnet_store_state", L(state="suspended"))] == 1
    assert s[("shardnet_store_state", L(state="connected"))] == 0
    assert s[("shardnet_up", L())] == 1
    assert s[("shardnet_agent_info", L(host="host-a", store="memory://"))] == 1
    names = {name for name, _ in s}
    assert all(n.startswith("shardnet_") for n in names)
    assert not any("pid" in n or "worker_index" in n or "worker_drops" in n for n in names)


def test_drops_by_reason_from_the_workers_and_the_datapath():
    s = samples(scrape_text())
    assert s[("shardnet_drops_total", L(process="worker", worker="0", reason="filter_drop"))] == 1
    assert s[("shardnet_drops_total", L(process="worker", worker="1", reason="filter_drop"))] == 2
    assert s[("shardnet_drops_total", L(process="worker", worker="1", reason="nat_exhausted"))] == 1
    assert s[("shardnet_drops_total", L(process="datapath", worker="", reason="upcall_queue_full"))] == 2
    assert s[("shardnet_drops_total", L(process="datapath", worker="", reason="state_refused_replay"))] == 1


def test_the_setup_latency_histogram_is_cumulative_in_seconds():
    s = samples(scrape_text())
    dp = L(process="datapath", worker="")
    assert s[("shardnet_setup_latency_seconds_bucket", dp | {("le", "5e-05")})] == 1
    assert s[("shardnet_setup_latency_seconds_bucket", dp | {("le", "0.0001")})] == 3
    assert s[("shardnet_setup_latency_seconds_bucket", dp | {("le", "+Inf")})] == 3
    assert s[("shardnet_setup_latency_seconds_count", dp)] == 3
    assert s[("shardnet_setup_latency_seconds_sum", dp)] == pytest.approx(420e-6)


def test_a_scrape_the_agent_did_not_answer_says_so():
    s = samples(scrape_text({"supervisor": {"supervisor_worker_restarts": 0}}, up=False))
    assert s[("shardnet_up", L())] == 0 and s[("shardnet_restarts_total", L(process="supervisor", worker=""))] == 0


def test_a_counter_named_like_a_series_of_its_own_does_not_clash():
    stats = {"workers": [{"worker_index": 0, "flows": 3, "up": 1}]}
    s = samples(scrape_text(stats))                    # the parser refuses a family defined twice
    assert s[("shardnet_flows_events_total", L(process="worker", worker="0"))] == 3
    assert s[("shardnet_up_events_total", L(process="worker", worker="0"))] == 1


# -- the status line of `shardnet run` -------------------------------------------------------------------------
def test_the_status_line_shows_rates_since_the_last_line():
    from engine.status import StatusLine

    line = StatusLine(now=100.0)
    first = line.line(STATS, "connected", now=102.0, clock=0)
    assert "flows 3" in first and "setups/s 0" in first and "hit 70.0%" in first and "drops 7" in first
    assert "parked 1" in first and "store connected" in first and "restarts 1" in first
    later = {**STATS, "datapath": {**STATS["datapath"], "datapath_installs": 50, "datapath_hits": 17,
                                   "datapath_misses": 3}}
    second = line.line(later, "suspended", now=107.0, clock=0)
    assert "setups/s 10" in second and "hit 100.0%" in second and "store suspended" in second
    idle = line.line(later, "connected", now=112.0, clock=0)
    assert "setups/s 0" in idle and "hit -" in idle


# -- `topology apply` progress ----------------------------------------------------------------------------------
def test_apply_progress_shows_only_for_long_runs_on_one_line():
    import io

    from engine.topology_cmd import Progress

    t = [0.0]
    out = io.StringIO()
    quick = Progress(out, clock=lambda: t[0])
    for i in range(1, 101):
        t[0] += 0.001
        quick(i, 100)
    quick.close()
    assert out.getvalue() == ""
    slow = Progress(out, clock=lambda: t[0])
    for i in range(1, 101):
        t[0] += 0.05                                   # 5 s in all
        slow(i, 100)
    slow.close()
    text = out.getvalue()
    assert text.startswith("\rshardnet topology apply: ") and text.endswith("100/100 records (100%) 5.0 s\n")
    assert text.count("\r") <= 45 and "\n" not in text[:-1]


def test_latency_samples_are_kept_only_once_someone_takes_them(wire):
    """An agent nobody measures holds no samples (only the histogram); after a first TakeLatencies they are kept
    until the next one."""
    wire.dp.record_latency(1_000)
    assert len(wire.dp.latencies) == 0 and wire.dp.latency_histogram()["datapath_setup_latency_count"] == 1
    wire.dp.handle(m.TakeLatencies(0), 0.0)
    wire.dp.record_latency(2_000)
    wire.dp.record_latency(3_000)
    assert list(wire.dp.latencies) == [2_000, 3_000]
    wire.dp.handle(m.TakeLatencies(0), 0.0)
    assert len(wire.dp.latencies) == 0
