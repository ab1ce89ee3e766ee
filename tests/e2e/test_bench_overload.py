"""``shardnet bench --datapath real --overload`` / ``--soak`` (bench/overload.py): a few seconds of each at a low
rate, checking what the harness counts and that it leaves nothing behind — never how fast anything is (the
figures go in bench/RESULTS.md).

- overload: the cached flows are established (one upcall each), then every cached frame is a datapath hit
  and arrives, unloaded and under the new flows; every new 5-tuple is one upcall and arrives; RSS was sampled
  for the supervisor, the datapath and each worker, each with its stated ceiling;
- soak: RSS and open fds of every agent process sampled, the flatness report per process, the short idle
  timeouts made flows expire while the traffic ran;
- both: the agent stopped cleanly (exit 0, no child left), its processes, namespaces and veths are gone;
- the CLI refuses --overload without --datapath real.
"""

from __future__ import annotations

import json

import pytest

from bench.overload import OverloadConfig, _alive, run_overload, table
from bench.realbench import public
from engine.datapath import netdev

pytestmark = pytest.mark.e2e

PROCS = {"supervisor", "datapath", "worker 0", "worker 1"}


def gone(res: dict) -> None:
    rig = res["rig"]
    for ns in (rig["sender_ns"], rig["sink_ns"]):
        assert ns not in netdev.netns.listnetns()
    for link in (rig["sender_if"], rig["sink_if"]):
        assert not netdev.link_exists(link)
    assert res["stop"]["exit_code"] == 0
    assert res["stop"]["children_left_after_stop"] == []
    assert res["pids_before"] and not any(_alive(p) for p in res["pids_before"].values())


def check_cached(phase: dict, rate: int, seconds: float) -> None:
    c = phase["cached"]
    assert c["sent"] == int(rate * seconds) and c["send_errors"] == 0
    assert c["delivered"] == c["sent"] and c["flows_seen"] == 200
    # every cached frame is a datapath hit, but for the first of each flow where its entry had idled out
    assert phase["counters"]["datapath.datapath_hits"] >= c["sent"] - 200


def test_overload_counts_and_cleans_up(e2e_ready):
    cfg = OverloadConfig(mode="overload", duration=2.0, unloaded_s=1.5, new_rate=1000, cached_rate=400,
                         sample_s=0.2)
    res = run_overload(cfg)
    assert [t["delivered"] for t in res["establish"]["tries"]][-1] == 200
    check_cached(res["unloaded"], 400, 1.5)
    assert res["unloaded"]["counters"].get("datapath.dispatcher_upcalls", 0) == 0     # cached: no upcall
    lo = res["loaded"]
    check_cached(lo, 400, 2.0)
    new = lo["new"]
    assert new["sent"] == 2000 and new["senders"] == 2 and new["send_errors"] == 0
    assert new["sender"] == "ring" and new["sender_cpu_s"] > 0 and new["sender_cpu_sampled_s"] > 0
    assert new["delivered_distinct"] == new["sent"]
    c = lo["counters"]
    assert c["datapath.dispatcher_upcalls"] == new["sent"]              # one upcall per new 5-tuple
    assert sum(v for k, v in c.items() if k.endswith(".worker_upcalls")) == new["sent"]
    assert c["datapath.datapath_hits"] == lo["cached"]["sent"]
    assert set(res["ceilings"]) == PROCS and set(res["rss_peak_kib"]) == PROCS
    assert len(res["rss_samples"]) >= 3 and all(set(s["rss_kib"]) == PROCS for s in res["rss_samples"])
    s = res["summary"]
    assert set(s["rss"]) == PROCS and all(r["peak_kib"] > 0 and r["ceiling_kib"] > r["idle_kib"]
                                          for r in s["rss"].values())
    assert s["not_read_by_datapath"] == 0 and s["workers_restarted"] == []
    assert s["cached_ratio_loaded_over_unloaded"] is not None
    assert "ceiling = RSS at idle" in res["ceiling_rule"]
    json.dumps(public(res))
    assert "cached flows delivered" in table(res)
    gone(res)


def test_soak_samples_rss_and_fds_and_cleans_up(e2e_ready):
    cfg = OverloadConfig(mode="soak", duration=4.0, new_rate=500, cached_rate=400, sample_s=0.5,
                         flow_idle_s=1.0, flow_state_idle_s=1.0)
    res = run_overload(cfg)
    so = res["soak"]
    check_cached(so, 400, 4.0)
    assert so["new"]["sent"] == 2000 and so["new"]["delivered_distinct"] == 2000
    assert so["counters"]["datapath.datapath_expired"] > 0              # the short idle timeout worked
    samples = res["samples"]
    assert len(samples) >= 5
    assert all(set(s["rss_kib"]) == PROCS and set(s["fds"]) == PROCS for s in samples)
    assert all(n > 0 for s in samples for n in s["fds"].values())
    for key in ("rss_kib", "fds"):
        f = res["flatness"][key]
        assert set(f) == PROCS and all(v["n"] >= 2 and v["flat"] in (True, False) for v in f.values())
    assert res["summary"]["rss_flat"] in (True, False) and res["summary"]["fds_flat"] in (True, False)
    json.dumps(public(res))
    assert "RSS flat" in table(res)
    gone(res)


def test_cli_overload_needs_the_real_datapath(capsys):
    from bench import cli

    assert cli.main(["--overload", "--no-progress"]) == 2
    assert "--datapath real" in capsys.readouterr().err
