"""``shardnet bench --datapath real --agent-opt KEY=VALUE``: parsed as TOML, checked against AgentConfig."""

from __future__ import annotations

import argparse

import pytest

from bench import cli


def test_the_option_repeats_and_defaults_to_none_set():
    p = argparse.ArgumentParser()
    cli.add_bench_parser(p.add_subparsers())
    args = p.parse_args(["bench", "--datapath", "real", "--agent-opt", "poll_spin_us=200",
                         "--agent-opt", "datapath_cpu=0"])
    assert dict(args.agent_opt) == {"poll_spin_us": 200, "datapath_cpu": 0}
    assert p.parse_args(["bench", "--datapath", "real"]).agent_opt == []


def test_agent_opts_are_toml_values_checked_against_the_agent_config():
    assert cli._agent_opt("poll_spin_us=50") == ("poll_spin_us", 50)
    assert cli._agent_opt(" cpus = [1] ") == ("cpus", [1])
    assert cli._agent_opt("poll_spin_workers=false") == ("poll_spin_workers", False)
    assert cli._agent_opt("log_level=DEBUG") == ("log_level", "DEBUG")


@pytest.mark.parametrize(("text", "error"), [
    ("poll_spin_us=-1", "poll_spin_us: must be 0..10000"), ("poll_spin_us=1.5", "poll_spin_us: expected an integer"),
    ("no_such_key=1", "unknown key 'no_such_key'"), ("workers=1", "workers: set by the harness"),
    ("store=memory://", "store: set by the harness"), ("poll_spin_us", "expected KEY=VALUE"),
])
def test_a_bad_agent_opt_is_an_error_naming_the_key(text, error):
    with pytest.raises(argparse.ArgumentTypeError, match=error):
        cli._agent_opt(text)
