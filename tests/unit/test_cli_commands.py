"""`shardnet` subcommands: the built-in ones, and those registered in the ``shardnet.commands`` entry-point
group (bench), found through the installed metadata — never imported by engine, never silently lost."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from engine import cli
from tests.distinfo import env_with_dist_info

ROOT = Path(__file__).resolve().parents[2]
BENCH = EntryPoint(name="bench", value="bench.cli:add_bench_parser", group=cli.COMMANDS_GROUP)


def _commands(parser) -> set[str]:
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)


def _registered(monkeypatch, *eps: EntryPoint) -> None:
    monkeypatch.setattr(cli, "registered_commands", lambda: sorted(eps, key=lambda ep: ep.name))


def test_pyproject_registers_bench_in_the_group_the_cli_reads():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"][cli.COMMANDS_GROUP] == {"bench": BENCH.value}
    assert project["scripts"]["shardnet"] == "engine.cli:main"


def test_without_registered_commands_only_the_built_in_ones(monkeypatch):
    _registered(monkeypatch)
    assert _commands(cli.build_parser()) == {"trace", "run", "topology", "ctl"}


def test_a_registered_command_is_added(monkeypatch):
    _registered(monkeypatch, BENCH)
    parser = cli.build_parser()
    assert _commands(parser) == {"trace", "run", "topology", "ctl", "bench"}
    args = parser.parse_args(["bench", "--scenario", "l2", "--workers", "1,2", "--flows", "10"])
    assert (args.scenario, args.workers, args.flows, args.func.__module__) == ("l2", [1, 2], 10, "bench.cli")


def test_a_plugin_that_does_not_import_fails_loudly(monkeypatch):
    _registered(monkeypatch, EntryPoint(name="broken", value="no_such_module_xyz:add", group=cli.COMMANDS_GROUP))
    with pytest.raises(ModuleNotFoundError, match="no_such_module_xyz"):
        cli.build_parser()


def test_a_plugin_that_fails_to_add_its_parser_fails_loudly(monkeypatch):
    _registered(monkeypatch, EntryPoint(name="bad", value="tests.unit.test_cli_commands:_raising_plugin",
                                        group=cli.COMMANDS_GROUP))
    with pytest.raises(RuntimeError, match="plugin bug"):
        cli.build_parser()


def _raising_plugin(subparsers) -> None:
    raise RuntimeError("plugin bug")


def test_registered_commands_reads_the_installed_metadata(tmp_path):
    """End to end through importlib.metadata: with this tree's dist-info first on the path (as an install of
    this checkout would write it), `python -m engine.cli bench` is the bench command."""
    env = env_with_dist_info(tmp_path)
    code = "from engine import cli; print([ep.name for ep in cli.registered_commands()])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "['bench']", out.stderr
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "bench", "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--scenario {l2,l3,full}" in proc.stdout, proc.stderr
    bad = subprocess.run([sys.executable, "-m", "engine.cli", "bench", "--workers", "0"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "between 1 and 64" in bad.stderr


def test_without_any_distribution_metadata_the_built_in_commands_remain(monkeypatch):
    """The tree run as `python -m engine.cli` without being installed: importlib.metadata finds no distribution
    at all, so nothing is registered — and nothing fails."""
    monkeypatch.setattr(importlib.metadata.Distribution, "discover", classmethod(lambda cls, **kw: iter(())))
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("shardnet")
    assert cli.registered_commands() == []
    assert _commands(cli.build_parser()) == {"trace", "run", "topology", "ctl"}
