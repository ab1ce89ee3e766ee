"""What a user sees on a terminal (a pseudo-terminal here): `shardnet run` prints a status line every few seconds
by itself, and a long `shardnet topology apply` shows its progress on one line of stderr."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_on_pty(argv: list[str], which: str, timeout: float = 90.0) -> tuple[int, str, str]:
    """Run ``argv`` with its ``which`` stream ("stdout" or "stderr") on a pseudo-terminal and the other on a
    pipe; (exit status, what the terminal showed, the pipe's text)."""
    master, slave = pty.openpty()
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, which: slave}
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, **streams)
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:                            # the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    other = (proc.stderr if which == "stdout" else proc.stdout).read().decode()
    return proc.wait(30), shown.decode(errors="replace"), other


def test_shardnet_run_on_a_terminal_prints_a_status_line_every_few_seconds():
    status, shown, _err = run_on_pty([sys.executable, "-m", "engine.cli", "run", "--demo", "--duration", "4.5",
                                      "--status-every", "1"], "stdout")
    assert status == 0, shown
    lines = [x.strip() for x in shown.splitlines() if "setups/s" in x]
    assert len(lines) >= 3, shown
    assert all(x.startswith("shardnet ") and "flows " in x and "hit " in x and "drops " in x and
               "store connected" in x for x in lines)


def test_shardnet_run_without_a_terminal_prints_no_status_line():
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "run", "--demo", "--duration", "2.5",
                           "--status-every", "1"], cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert "setups/s" not in proc.stdout and "flows installed" in proc.stdout


@pytest.mark.zk
def test_a_long_topology_apply_shows_its_progress_on_a_terminal(zk_server, zk_chroot, tmp_path):
    ports = "\n".join(f"      p{i}: {{}}" for i in range(1500))
    topo = tmp_path / "big.yaml"
    topo.write_text(f"version: 1\nbridges:\n  big:\n    ports:\n{ports}\n")
    argv = [sys.executable, "-m", "engine.cli", "topology", "apply", str(topo), "--store",
            f"zk://{zk_server.hosts}{zk_chroot}"]
    status, shown, out = run_on_pty(argv, "stderr")
    assert status == 0, shown
    assert '"records"' in out                          # the counts, on stdout as before
    assert "\rshardnet topology apply: " in shown and "records (100%)" in shown, shown
    assert shown.rstrip().endswith(" s") and shown.count("\n") <= 1
