"""The ZooKeeper harness itself: missing prerequisites are loud errors; the dev CLI starts and stops a server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import zkharness

ROOT = Path(__file__).resolve().parents[2]


def test_missing_jar_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(zkharness, "ZK_JAR", tmp_path / "nope.jar")
    with pytest.raises(zkharness.ZkHarnessError, match="apt-get install zookeeper"):
        zkharness.ZkCluster(1)


def test_missing_java_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(zkharness.ZkHarnessError, match="java not found"):
        zkharness.check_prerequisites()


@pytest.mark.zk
def test_cli_start_and_stop(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "tests.zkharness", "start", str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    hostport = out.stdout.strip()
    port = int(hostport.rsplit(":", 1)[1])
    pid = int((tmp_path / "node1" / "zk.pid").read_text())
    try:
        assert zkharness.four_letter(port, "ruok") == "imok"
        assert zkharness.server_mode(port) == "standalone"
    finally:
        stop = subprocess.run([sys.executable, "-m", "tests.zkharness", "stop", str(tmp_path)], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stderr
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert zkharness.server_mode(port) is None


def test_cli_usage_error():
    out = subprocess.run([sys.executable, "-m", "tests.zkharness", "bogus"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "usage" in out.stderr
