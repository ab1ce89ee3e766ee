"""The soak's verdicts (bench/overload.py), on made-up samples: a table that fills and expires is not a leak by
the high-water rule though its second-half slope can say "not flat"; a slow leak under the same churn is."""

from __future__ import annotations

from bench.overload import highwater, table_ranges, table_sizes


def samples(rss_at, n=121, every=10.0):
    return [{"t": k * every, "rss_kib": {"worker 0": rss_at(k * every)}} for k in range(n)]


def sawtooth(t, period=400.0, base=60_000, swing=11_000):
    """A table that fills for ``period`` seconds and then expires: 11 MB up and down, never higher."""
    return base + int(swing * ((t % period) / period))


def test_churn_is_flat_by_the_high_water_rule():
    s = samples(sawtooth)
    hw = highwater(s, "rss_kib", 0.05, 60.0)["worker 0"]
    assert hw["flat"] is True and hw["windows"] >= 5


def test_a_leak_under_the_same_churn_is_not_flat():
    s = samples(lambda t: sawtooth(t) + int(t * 20))                    # +1.2 MB/min on top of the churn
    hw = highwater(s, "rss_kib", 0.05, 60.0)["worker 0"]
    assert hw["flat"] is False and hw["slope_per_min"] > 500


def test_too_few_windows_give_no_verdict():
    assert highwater(samples(sawtooth, n=10), "rss_kib", 0.05, 60.0)["worker 0"]["flat"] is None


def test_table_sizes_are_read_from_a_stats_answer_by_process_name():
    flat = {"worker-0.worker_flows": 12, "worker-0.worker_state_entries": 30, "worker-0.worker_c": 9,
            "worker-1.worker_flows": 4, "datapath.datapath_flows": 16, "datapath.datapath_rx": 99,
            "supervisor.x": 1}
    assert table_sizes(flat) == {"worker 0": {"worker_flows": 12, "worker_state_entries": 30},
                                 "worker 1": {"worker_flows": 4}, "datapath": {"datapath_flows": 16}}
    s = [{"t": 0, "tables": {"worker 0": {"worker_flows": 1}}}, {"t": 10, "tables": {"worker 0": {"worker_flows": 7}}},
         {"t": 20, "tables": {"worker 0": {"worker_flows": 3}}}]
    assert table_ranges(s) == {"worker 0": {"worker_flows": [3, 7]}}
