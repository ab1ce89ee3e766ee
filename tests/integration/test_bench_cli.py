"""`shardnet bench` end to end (CONTRACTS §4): the real pipeline (datapath, dispatcher, pinned workers, ZMQ) run
through the command line as a user runs it, small sizes.  Checks every contract key and its type, that the
numbers are consistent with each other (every flow installed, nothing dropped), that the PNG is a real image,
a pcap replay (frames built by scapy, an independent oracle), and a workers sweep.  No wall-clock assertion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.pcap import PcapError, read_pcap, write_pcap
from tests.distinfo import env_with_dist_info

ROOT = Path(__file__).resolve().parents[2]
CONTRACT_LATENCY = ("p50", "p90", "p99", "p999", "max")
CONTRACT_FLOOR = ("zmq_rtt_us_p50", "zmq_rtt_us_p99", "simulation_us_p50")
SMALL = ["--warmup", "200", "--probe", "30"]


def run_bench(tmp_path: Path, *args: str) -> tuple[dict, subprocess.CompletedProcess]:
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *args, "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), proc


def check_contract(r: dict, scenario: str, workers: int, flows: int) -> None:
    assert (r["scenario"], r["workers"], r["flows"]) == (scenario, workers, flows)
    lat = r["setup_latency_us"]
    assert set(CONTRACT_LATENCY) <= lat.keys()
    values = [lat[k] for k in CONTRACT_LATENCY]
    assert all(isinstance(v, float) for v in values) and values[0] > 0
    assert values == sorted(values)                                  # p50 ≤ p90 ≤ p99 ≤ p999 ≤ max
    assert isinstance(r["setups_per_s"], float) and r["setups_per_s"] > 0
    assert all(isinstance(r["floor"][k], float) and r["floor"][k] > 0 for k in CONTRACT_FLOOR)
    assert r["floor"]["zmq_rtt_us_p50"] <= r["floor"]["zmq_rtt_us_p99"]
    assert isinstance(r["offbox_read_ratio"], float) and 0.0 <= r["offbox_read_ratio"] <= 1.0
    assert isinstance(r["parked"], int) and isinstance(r["dropped"], int)
    assert r["machine"]["cpus"] == os.cpu_count() and r["machine"]["python"] == ".".join(
        map(str, sys.version_info[:3]))
    # consistency: every new flow was answered once, and nothing was dropped at this modest load
    assert r["dropped"] == 0, r["drops"]
    assert r["installed"] == flows
    assert r["counters"]["datapath"]["dispatcher_upcalls"] == flows


def test_full_scenario_writes_every_contract_key_and_a_png(tmp_path):
    png = tmp_path / "cdf.png"
    r, proc = run_bench(tmp_path, "--scenario", "full", "--workers", "2", "--flows", "2000", "--plot", str(png),
                        *SMALL)
    check_contract(r, "full", 2, 2000)
    assert r["counters"]["workers"]["worker_simulations"] >= 2000
    assert r["setup_latency_unloaded_us"]["n"] == 30
    assert "full workers=2 flows=2000" in proc.stdout
    import matplotlib.image as mpimg

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(str(png))
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert (img[..., :3].std(axis=(0, 1)) > 0.01).any()              # not a blank canvas


def test_shardnet_bench_is_the_same_command(tmp_path):
    """`shardnet bench` (engine.cli, the subcommand registered by the shardnet.commands entry point in
    pyproject.toml, visible here through this tree's dist-info) runs the same harness as `python -m bench.cli`."""
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "bench", "--scenario", "l2", "--workers", "1",
                           "--flows", "300", *SMALL, "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, env=env_with_dist_info(tmp_path / "meta"))
    assert proc.returncode == 0, proc.stderr
    check_contract(json.loads(out.read_text()), "l2", 1, 300)
    assert "l2 workers=1 flows=300" in proc.stdout


def _l2_frames() -> tuple[list[bytes], int]:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    frames = []
    for i in range(300):
        a, b = i % 8 + 1, (i + 3) % 8 + 1
        frames.append(bytes(Ether(src=f"02:00:00:01:00:{a:02x}", dst=f"02:00:00:01:00:{b:02x}")
                            / IP(src=f"10.1.0.{10 + a}", dst=f"10.1.0.{10 + b}")
                            / TCP(sport=20000 + i, dport=443, flags="S")))
    frames += frames[:50]                                          # the same flows again: datapath hits
    frames.append(bytes(Ether(src="02:00:00:99:00:01", dst="02:00:00:01:00:01")
                        / IP(src="10.1.0.99", dst="10.1.0.11") / TCP(sport=1, dport=2)))   # unknown MAC
    return frames, 300


def test_with_megaflows_on_new_5_tuples_between_known_vms_are_hits_and_reported_apart(tmp_path):
    r, proc = run_bench(tmp_path, "--scenario", "l2", "--workers", "2", "--flows", "2000", *SMALL,
                        "--megaflows", "on")
    assert r["megaflows"] is True and r["frames"] == 2000
    # the warm-up installed the megaflows between the scenario's VMs: the measured new 5-tuples hit them
    assert r["upcalls"] < r["frames"] // 10 and r["datapath_hits"]["megaflow_hits"] + r["datapath_hits"][
        "emc_hits"] >= r["frames"] - r["upcalls"]
    assert r["packets_per_s"] > 0 and r["dropped"] == 0 and "megaflows on" in proc.stdout
    off, _ = run_bench(tmp_path, "--scenario", "l2", "--workers", "2", "--flows", "500", *SMALL)
    assert off["megaflows"] is False and off["upcalls"] == off["installed"] == 500


def test_pcap_replay_goes_through_the_same_pipeline(tmp_path):
    frames, distinct = _l2_frames()
    pcap = tmp_path / "capture.pcap"
    write_pcap(pcap, frames)
    assert [r.frame for r in read_pcap(pcap)] == frames
    r, _ = run_bench(tmp_path, "--scenario", "l2", "--workers", "1", "--pcap", str(pcap), *SMALL)
    check_contract(r, "l2", 1, distinct)
    assert r["frames"] == len(frames) - 1 and r["repeat_frames"] == 50
    assert r["pcap_skipped"] == {"unknown_source_mac": 1}
    # each repeat is a datapath hit, or (arriving before its flow's install) held behind its upcall: no setup
    dp = r["counters"]["datapath"]
    assert dp["datapath_hits"] + dp["dispatcher_held"] >= 50


def test_pcap_with_a_fixed_port(tmp_path):
    frames, distinct = _l2_frames()
    pcap = tmp_path / "capture.pcap"
    write_pcap(pcap, frames)
    r, _ = run_bench(tmp_path, "--scenario", "l2", "--workers", "1", "--pcap", str(pcap), "--pcap-port",
                     "br0.vm1", *SMALL)
    # every frame enters at vm1: the flows whose destination is vm1 itself are dropped by the bridge (same port)
    assert r["flows"] == distinct + 1 and r["installed"] == distinct + 1
    assert "pcap_skipped" not in r


def test_workers_sweep_reports_each_run_and_plots_two_panels(tmp_path):
    png = tmp_path / "sweep.png"
    r, proc = run_bench(tmp_path, "--scenario", "l2", "--workers", "1,2", "--flows", "2000", "--plot", str(png),
                        *SMALL)
    check_contract(r, "l2", 2, 2000)
    assert [s["workers"] for s in r["sweep"]] == [1, 2]
    for s in r["sweep"]:
        check_contract(s, "l2", s["workers"], 2000)
    assert [s["workers"] for s in r["scaling"]] == [1, 2]
    assert all(s["setups_per_s"] > 0 and s["datapath_us_per_upcall"] > 0 for s in r["scaling"])
    assert len(proc.stdout.strip().splitlines()) == 2
    import matplotlib.image as mpimg

    img = mpimg.imread(str(png))
    assert img.shape[1] > img.shape[0] * 2                          # two panels side by side


@pytest.mark.parametrize("args, message", [
    (["--scenario", "l4"], "invalid choice"),
    (["--workers", "0"], "between 1 and 64"),
    (["--workers", "two"], "expected N or a list"),
    (["--repeat-ratio", "1.5"], "between 0 and 0.95"),
    (["--pcap-port", "br0.vm1"], "--pcap-port needs --pcap"),
])
def test_bad_arguments_are_clear_errors(args, message):
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and message in proc.stderr


def test_bad_pcap_files_are_typed_errors(tmp_path):
    bad = tmp_path / "x.pcap"
    bad.write_bytes(b"\x0a\x0d\x0d\x0a" + b"\x00" * 40)
    with pytest.raises(PcapError, match="pcapng"):
        read_pcap(bad)
    bad.write_bytes(b"hello world, this is not a capture")
    with pytest.raises(PcapError, match="not a pcap file"):
        read_pcap(bad)
    write_pcap(bad, [b"\x00" * 60])
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(PcapError, match="truncated record"):
        read_pcap(bad)
    with pytest.raises(PcapError, match="No such file"):
        read_pcap(tmp_path / "missing.pcap")
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "--scenario", "l2", "--pcap", str(bad)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "truncated record" in proc.stderr


def test_ipv6_variant_of_l2_runs_ipv6_syns_through_the_same_pipeline(tmp_path):
    from bench import scenarios
    from bench.traffic import synthetic_feed
    from packet.codec import parse
    from packet.flowkey import flow_key

    r, proc = run_bench(tmp_path, "--scenario", "l2", "--ipv6", "--workers", "1", "--flows", "1000", *SMALL)
    check_contract(r, "l2-v6", 1, 1000)
    assert r["ipv6"] is True and "l2-v6" in proc.stdout
    # the frames of that variant: IPv6 SYNs from 2001:db8::/32, each a distinct flow key
    feed = synthetic_feed(scenarios.get("l2", ipv6=True), 0, 3000)
    pkts = [parse(f) for f in feed.frames]
    assert all(p.is_ipv6 and p.ipv6_src >> 96 == 0x20010DB8 and p.tcp_flags == scenarios.SYN for p in pkts)
    assert len({flow_key(p, port) for p, port in zip(pkts, feed.ports, strict=True)}) == 3000
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "--scenario", "full", "--ipv6", *SMALL], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "no IPv6 variant" in proc.stderr


def test_ipv6_variant_of_l3_is_routed_by_the_ipv6_router(tmp_path):
    r, proc = run_bench(tmp_path, "--scenario", "l3", "--ipv6", "--workers", "1", "--flows", "1000", *SMALL)
    check_contract(r, "l3-v6", 1, 1000)
    assert r["counters"]["datapath"]["datapath_tx"] >= 1000          # routed out, not dropped
