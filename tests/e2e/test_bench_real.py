"""``shardnet bench --datapath real`` (bench/realbench.py): short bounded runs that check what the harness counts
and that it leaves nothing behind — never how fast anything is (speed goes in bench/RESULTS.md).

- the shardnet side through a bridge and through router + SNAT: every frame of the one low rate is a new
  5-tuple (one upcall each), every one is counted at the sink, the latency probe and the TCP connects saw
  their packets, the report has its structure, the namespaces and veths are gone afterwards;
- a run that fails half-way still removes its namespaces and veths, and so does Ctrl-C or SIGTERM in the middle
  of a rate step (the CLI, a real process);
- without Open vSwitch, ``--peer ovs`` fails with the package to install, before building anything;
- with ``ovs-vswitchd`` present (skipped when absent): the same traffic through OVS's exact-match pipeline,
  one upcall per new 5-tuple, and its daemons and directory gone afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import realbench
from bench.realbench import RealConfig, public, run_real
from engine.datapath import netdev

pytestmark = pytest.mark.e2e


def small(pipeline: str, **kw) -> RealConfig:
    base = dict(pipeline=pipeline, rates=[500], duration=0.4, probes=20, spacing_s=0.003, tcp_connects=5,
                search_steps=0, drain_s=0.5, floors=False)
    base.update(kw)
    return RealConfig(**base)


def gone(res: dict) -> None:
    rig = res["rig"]
    for ns in (rig["sender_ns"], rig["sink_ns"]):
        assert ns not in netdev.netns.listnetns()
    for link in (rig["sender_if"], rig["sink_if"]):
        assert not netdev.link_exists(link)


def check_system(s: dict, frames: int, probes: int, tcp: int) -> None:
    (step,) = s["rates"]
    assert step["sent"] == frames and step["send_errors"] == 0
    assert step["delivered"] == frames and step["loss"] == 0.0 and step["lossless"]
    assert step["duplicates"] == 0
    assert step["cpu_s"] >= 0 and step["cpu_us_per_setup"] is not None
    lat = s["latency"]
    assert lat["first"]["n"] == probes and lat["cached"]["n"] == probes
    assert len(lat["_first_us"]) == probes and all(x > 0 for x in lat["_first_us"] + lat["_cached_us"])
    assert s["tcp_connect"]["n"] == tcp and s["tcp_connect"]["failures"] == 0
    assert s["sustained"]["rate"] == 500 and s["sustained"]["at_least"]


@pytest.mark.parametrize("pipeline", ["l2", "full"])
def test_shardnet_side_counts_every_new_5_tuple(e2e_ready, pipeline):
    cfg = small(pipeline, floors=pipeline == "l2")
    res = run_real(cfg)
    s = res["systems"]["shardnet"]
    check_system(s, 200, 20, 5)
    # every frame of the step was a 5-tuple never seen before: exactly one upcall, one flow each
    c = s["rates"][0]["counters"]
    assert c["dispatcher_upcalls"] == 200 and c["flows_installed"] == 200
    assert c.get("datapath_hits", 0) == 0
    # a TCP connect is one setup: its SYN's; the SYN-ACK's flow was set up with it (README "Replies set up
    # ahead"), two upcalls each otherwise (an ARP refresh may add one)
    t = s["tcp_connect"]["counters"]
    assert t["datapath_flows_ahead"] == 5 and t["worker_replies_ahead"] == 5 and t["dispatcher_upcalls"] < 10
    if pipeline == "l2":
        fl = res["floors"]
        assert fl["zmq_rtt_us"]["p50"] > 0 and fl["afpacket_echo_us"]["n"] == 2 * 20
    assert set(res["comparison"]["headline"]) == {"shardnet"}
    assert all(t["met"] in (True, False, None) for t in res["targets"])
    json.dumps(public(res))                               # the JSON written by --json
    assert "_first_us" not in json.dumps(public(res))
    assert "shardnet" in realbench.table(res)
    gone(res)


@pytest.mark.parametrize("v6", [False, True])
def test_frame_maker_frames_match_scapy(v6):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    from bench.wireproc import FrameMaker, parse_probe
    from bench.wirerig import ip_int

    src, dst = ("2001:db8:ff::1", "2001:db8:ff::2") if v6 else ("198.51.100.1", "198.51.100.2")
    fm = FrameMaker(0x025E0000A001, 0x025E0000A002, ip_int(src), ip_int(dst), b"tag45678")
    for i in (0, 1, 70_000, 4_000_000):
        f = fm.frame(i, 1)
        e = Ether(f)
        l3 = e[IPv6] if v6 else e[IP]
        assert (l3.src, l3.dst) == (src, dst) and UDP in e
        want = e[UDP].chksum
        del e[UDP].chksum
        assert Ether(bytes(e))[UDP].chksum == want            # scapy computes the same checksum
        assert parse_probe(f, b"tag45678") == (i, 1) and parse_probe(f, b"othertag") is None


def test_ipv6_run_sends_distinct_ipv6_5_tuples_through_the_bridge(e2e_ready):
    """--ipv6: the sink counts only frames with our tag where an IPv6 frame carries it (offset 62), so every
    delivered frame was IPv6; each one a new 5-tuple (one upcall); TCP connects over IPv6."""
    res = run_real(small("l2", ipv6=True))
    assert res["ipv6"] is True and res["config"]["ipv6"] is True
    s = res["systems"]["shardnet"]
    check_system(s, 200, 20, 5)
    c = s["rates"][0]["counters"]
    assert c["dispatcher_upcalls"] == 200 and c["flows_installed"] == 200
    assert "new IPv6 UDP 5-tuples" in realbench.table(res)
    gone(res)


def test_a_failed_run_still_removes_its_namespaces(e2e_ready, monkeypatch):
    made = []
    real_build = realbench.WireRig.build

    def build(self):
        made.append(self)
        return real_build(self)

    def broken_start(self):
        raise RuntimeError("agent refused to start (on purpose)")

    monkeypatch.setattr(realbench.WireRig, "build", build)
    monkeypatch.setattr(realbench.ShardnetSystem, "start", broken_start)
    with pytest.raises(RuntimeError, match="on purpose"):
        run_real(small("ct"))
    (rig,) = made
    gone({"rig": {"sender_ns": rig.sender_ns, "sink_ns": rig.sink_ns, "sender_if": rig.sender_if,
                  "sink_if": rig.sink_if}})


def test_peer_ovs_without_open_vswitch_names_the_package(e2e_ready, monkeypatch, tmp_path, capsys):
    from bench import cli

    before = set(netdev.netns.listnetns())
    monkeypatch.setenv("PATH", str(tmp_path))             # no ovs-* binary on it
    assert cli.main(["--datapath", "real", "--pipeline", "l2", "--peer", "ovs", "--no-progress"]) == 3
    assert "apt-get install -y openvswitch-switch" in capsys.readouterr().err
    assert set(netdev.netns.listnetns()) == before      # nothing was built


@pytest.mark.skipif(shutil.which("ovs-vswitchd") is None, reason="Open vSwitch not installed (make bench-peer)")
def test_ovs_side_smoke(e2e_ready, monkeypatch):
    from bench import ovspeer

    started = []
    real_start = ovspeer.OvsPeer.start

    def start(self):
        real_start(self)
        started.append((self.dir, self.vswitchd_pid, self.ovsdb_pid))
        return self

    monkeypatch.setattr(ovspeer.OvsPeer, "start", start)
    res = run_real(small("l2", peer="ovs", ovs_variants=["normal-nomf"]))
    check_system(res["systems"]["shardnet"], 200, 20, 5)
    s = res["systems"]["ovs normal-nomf"]
    check_system(s, 200, 20, 5)
    assert s["rates"][0]["counters"]["miss_with_success_upcall"] == 200     # megaflows off: one upcall each
    assert set(res["comparison"]["ratios_shardnet_over"]) == {"ovs normal-nomf"}
    (d, vswitchd, ovsdb), = started
    assert not os.path.exists(d)
    for pid in (vswitchd, ovsdb):
        assert not ovspeer._alive(pid)
    gone(res)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_cli_run_removes_everything(e2e_ready, tmp_path, sig):
    """Ctrl-C (or SIGTERM) in the middle of a rate step: exit 130, namespaces, veths and children gone."""
    before = set(netdev.netns.listnetns())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out, err = open(tmp_path / "out", "wb"), open(tmp_path / "err", "wb")   # files: the agent's children
    p = subprocess.Popen([sys.executable, "-m", "bench.cli", "--datapath", "real", "--pipeline", "ct",   # share them
                          "--rates", "400", "--duration", "60", "--probes", "5", "--tcp-connects", "2",
                          "--search-steps", "0", "--no-progress"], env=env, stdout=out, stderr=err)
    children: set[int] = set()
    new: set = set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(long_step(a) for _, a in children_in(new)):
            new = {n for n in set(netdev.netns.listnetns()) - before if n.startswith("sn-")}
            time.sleep(0.2)
        found = children_in(new)
        assert any(long_step(a) for _, a in found), "the rate step did not start"
        children = {pid for pid, _ in found}
        p.send_signal(sig)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:                               # not stopped: Ctrl-C it (it cleans up), then kill
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        out.close()
        err.close()
    text = (tmp_path / "err").read_text()
    assert p.returncode == 130, text
    assert "interrupted" in text
    assert not new & set(netdev.netns.listnetns())
    from bench.ovspeer import _alive

    assert children and not any(_alive(pid) for pid in children)


def long_step(args: list[str]) -> bool:
    """The sender of the 60 s step at 400/s (not the warm-up's, at 500/s)."""
    return args[:1] == ["send"] and json.loads(args[1])["count"] == 24_000


def children_in(namespaces) -> list[tuple[int, list[str]]]:
    """(pid, arguments after ``-m bench.wireproc``) of the processes that run in one of ``namespaces``."""
    inodes = set()
    for ns in namespaces:
        try:
            inodes.add(os.stat(f"/var/run/netns/{ns}").st_ino)
        except OSError:
            pass
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            ino = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            continue
        if ino in inodes and b"bench.wireproc" in argv:
            out.append((int(pid), [a.decode() for a in argv[argv.index(b"bench.wireproc") + 1:] if a]))
    return out
