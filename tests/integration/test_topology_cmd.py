"""`shardnet topology apply|show` (engine.topology_cmd): in-process on memory://, real subprocesses on zk://.

Until engine.cli wires ``add_topology_parser``, the subprocess runs the module's own ``main`` via
``python -c``; afterwards ``python -m engine.cli topology ...`` (picked automatically).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from engine.topology_cmd import add_topology_parser
from tests.zkharness import free_ports
from topology.loader import load_topology
from topology.store.memory import drop_backend
from topology.store.topo import read_topology, read_tunnel_keys
from topology.store.uri import open_store

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "engine" / "demo" / "demo.yaml"
FILES = [DEMO, *sorted((ROOT / "examples").glob("*.yaml"))]


def run_inproc(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="shardnet")
    add_topology_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["topology", *argv])
    return args.func(args)


def cli_command() -> list[str]:
    if "add_topology_parser" in (ROOT / "engine" / "cli.py").read_text():
        return [sys.executable, "-m", "engine.cli", "topology"]
    return [sys.executable, "-c", "import sys; from engine.topology_cmd import main; sys.exit(main())"]


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([*cli_command(), *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture
def mem_uri():
    name = f"cmd-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    drop_backend(name)


def test_apply_then_show_in_process(mem_uri, capsys):
    assert run_inproc("apply", str(DEMO), "--store", mem_uri) == 0
    counts = json.loads(capsys.readouterr().out)
    original = load_topology(DEMO)
    assert counts["records"]["created"] > 0 and counts["records"]["updated"] == 0
    assert counts["tunnel_keys"] == sum(1 for p in original.all_ports().values() if p.exterior)
    assert counts["bindings"]["created"] == sum(1 for p in original.all_ports().values() if p.host)
    assert run_inproc("show", "--store", mem_uri) == 0
    shown = capsys.readouterr().out
    with open_store(mem_uri) as s:
        keys = read_tunnel_keys(s)
    assert load_topology(shown, tunnel_keys=keys) == original
    # applying again changes nothing
    assert run_inproc("apply", str(DEMO), "--store", mem_uri) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["records"]["created"] == again["records"]["updated"] == again["records"]["deleted"] == 0
    assert again["bindings"]["unchanged"] == counts["bindings"]["created"]


def test_an_edit_is_a_diff_and_keeps_tunnel_keys(mem_uri, capsys, tmp_path):
    assert run_inproc("apply", str(DEMO), "--store", mem_uri) == 0
    capsys.readouterr()
    with open_store(mem_uri) as s:
        before = read_tunnel_keys(s)
    text = DEMO.read_text()
    assert "      vm2: {host: host-b, interface: tap-vm2}\n" in text
    edited = tmp_path / "edited.yaml"
    edited.write_text(text.replace("      vm2: {host: host-b, interface: tap-vm2}\n", ""))
    assert run_inproc("apply", str(edited), "--store", mem_uri) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["records"]["updated"] >= 1 and counts["records"]["deleted"] == 1   # tenant; vm2's key
    assert counts["bindings"]["deleted"] == 1
    with open_store(mem_uri) as s:
        after = read_tunnel_keys(s)
        assert read_topology(s) == load_topology(edited, tunnel_keys=before)
    assert after == {p: k for p, k in before.items() if p != "tenant.vm2"}


@pytest.mark.parametrize("argv, message", [
    (("apply", "/nonexistent/topo.yaml"), "cannot read topology file"),
    (("apply", str(DEMO), "--store", "bogus://x"), "unknown scheme"),
    (("show", "--store", "zk://nohostport"), "is not HOST:PORT"),
])
def test_bad_input_exits_2(argv, message, capsys):
    assert run_inproc(*argv) == 2
    assert message in capsys.readouterr().err


def test_invalid_file_names_the_path(mem_uri, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrouters:\n  r1:\n    ports:\n      p: {address: 10.0.0.300/24}\n")
    assert run_inproc("apply", str(bad), "--store", mem_uri) == 2
    err = capsys.readouterr().err
    assert "routers.r1.ports.p.address" in err and "bad.yaml:5" in err


def test_unreachable_store_exits_2():
    (port,) = free_ports(1)
    r = run_cli("show", "--store", f"zk://127.0.0.1:{port}/x?connect_timeout=1")
    assert r.returncode == 2
    assert "cannot connect to ZooKeeper" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.zk
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_apply_show_round_trip_on_zookeeper(path, zk_server, zk_chroot):
    uri = f"zk://{zk_server.hosts}{zk_chroot}"
    r = run_cli("apply", str(path), "--store", uri)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["records"]["created"] > 0
    r = run_cli("show", "--store", uri)
    assert r.returncode == 0, r.stderr
    with open_store(uri) as s:
        keys = read_tunnel_keys(s)
        stored = read_topology(s)
    original = load_topology(path)
    assert keys == {pid: p.tunnel_key for pid, p in original.all_ports().items() if p.tunnel_key}
    assert load_topology(r.stdout, tunnel_keys=keys) == original
    assert stored == original


@pytest.mark.zk
def test_trace_against_the_topology_in_zookeeper(zk_server, zk_chroot):
    """`shardnet trace --store zk://…` with no file traces the topology the store holds."""
    uri = f"zk://{zk_server.hosts}{zk_chroot}"
    assert run_cli("apply", str(ROOT / "engine" / "demo" / "demo.yaml"), "--store", uri).returncode == 0
    spec = ("eth_src=02:00:00:00:00:01,eth_dst=02:0a:00:00:00:01,ip_src=10.0.0.2,ip_dst=203.0.113.200,"
            "proto=udp,tp_src=1,tp_dst=53")
    r = subprocess.run([sys.executable, "-m", "engine.cli", "trace", "--store", uri, "--port", "tenant.vm1",
                        "--packet", spec], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["result"] == "drop" and out["drop_reason"] == "blackhole"
