"""Small hardenings (issue 12, item 5): the state file, config range checks, hostile topology files."""

from __future__ import annotations

import os
import stat

import pytest

from backchannel import messages as m
from engine import statefile


# -- the state file ---------------------------------------------------------------------------------------
def _entries(n: int = 3) -> list:
    return [m.FlowStateEntry("conntrack", (1, 2, 6, 1000 + i, 80, "tenant"), None, 50.0) for i in range(n)]


def test_the_state_file_is_written_atomically_with_mode_0600(tmp_path):
    path = tmp_path / "state" / "host-a.state"
    statefile.write_state(str(path), _entries())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700     # a directory it creates is private
    assert statefile.read_state(str(path)).entries == tuple(_entries())
    assert os.listdir(path.parent) == ["host-a.state"]            # no temporary file left behind


def test_a_looser_existing_file_is_replaced_by_a_0600_one(tmp_path):
    path = tmp_path / "host-a.state"
    path.write_bytes(b"old")
    path.chmod(0o644)
    statefile.write_state(str(path), _entries(1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(statefile.read_state(str(path)).entries) == 1


def test_a_planted_temp_name_is_not_followed(tmp_path):
    # the old code wrote "<path>.tmp": a symlink planted there redirected the write
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "host-a.state"
    os.symlink(victim, f"{path}.tmp")
    statefile.write_state(str(path), _entries())
    assert victim.read_bytes() == b"precious"
    assert not path.is_symlink() and len(statefile.read_state(str(path)).entries) == 3


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / "host-a.state"
    statefile.write_state(str(path), _entries(2))

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(statefile.os, "replace", fail)
    with pytest.raises(OSError):
        statefile.write_state(str(path), _entries(5))
    assert os.listdir(tmp_path) == ["host-a.state"]
    assert len(statefile.read_state(str(path)).entries) == 2


def test_two_writers_use_distinct_temporary_names(tmp_path, monkeypatch):
    names = []
    real = statefile.os.replace
    monkeypatch.setattr(statefile.os, "replace", lambda src, dst: (names.append(src), real(src, dst)))
    for _ in range(2):
        statefile.write_state(str(tmp_path / "s"), _entries(1))
    assert len(set(names)) == 2 and all(os.path.dirname(n) == str(tmp_path) for n in names)


# -- hostile topology files ---------------------------------------------------------------------------------
BOMB = """version: 1
a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def _load_file(tmp_path, text: str):
    from topology.loader import load_topology

    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    return load_topology(str(path))


def test_an_alias_bomb_is_a_clear_error_naming_the_file_not_minutes_of_cpu(tmp_path):
    import time

    from topology.errors import TopologyError

    t0 = time.process_time()
    with pytest.raises(TopologyError, match=r"hostile\.yaml:\d+: .*aliases expand to more than 100000 nodes"):
        _load_file(tmp_path, BOMB)                     # 10^9 strings if expanded
    assert time.process_time() - t0 < 2.0


@pytest.mark.parametrize(("style", "depth"), [("flow", 80), ("flow", 5000), ("flow", 200_000), ("block", 80),
                                            ("block", 5000)])
def test_deep_nesting_is_a_clear_error_naming_the_file(tmp_path, style, depth):
    from topology.errors import TopologyError

    if style == "flow":
        text = "version: 1\nbridges: " + "[" * depth + "]" * depth + "\n"
    else:
        text = "version: 1\nbridges:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(depth))
    with pytest.raises(TopologyError, match=r"hostile\.yaml(:\d+)?: .*nesting|hostile\.yaml:\d+: invalid YAML"):
        _load_file(tmp_path, text)


@pytest.mark.parametrize("depth", [80, 5000])
def test_deep_nesting_with_the_pure_python_yaml_parser(tmp_path, monkeypatch, depth):
    import yaml

    from topology import errors

    class PurePython(yaml.SafeLoader):                 # what runs where libyaml is missing
        compose_node = errors._Loader.compose_node
        _depth = 0

    PurePython.yaml_implicit_resolvers = errors._Loader.yaml_implicit_resolvers
    monkeypatch.setattr(errors, "_Loader", PurePython)
    with pytest.raises(errors.TopologyError, match=r"hostile\.yaml:\d+: .*nesting too deep"):
        _load_file(tmp_path, "version: 1\nbridges: " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(errors.TopologyError, match=r"hostile\.yaml:\d+: .*aliases expand"):
        _load_file(tmp_path, BOMB)


def test_ordinary_aliases_and_merge_keys_still_load():
    from topology.loader import loads_topology

    t = loads_topology("""
version: 1
chains:
  c1: &rules
    - {match: {proto: tcp, dst_port: 22}, action: drop}
    - {action: accept}
  c2: *rules
bridges:
  b1:
    ports: &ports
      p1: {}
      p2: {}
  b2:
    ports: *ports
""")
    assert set(t.bridges["b1"].ports) == set(t.bridges["b2"].ports) == {"p1", "p2"}
    assert t.chains["c1"].rules == t.chains["c2"].rules and len(t.chains["c2"].rules) == 2


# -- config range checks -------------------------------------------------------------------------------------
BAD_VALUES = [
    ("max_flows", 0), ("max_flows", -1), ("max_flows", 1.5), ("max_flows", True), ("max_parked", 0),
    ("workers", 0), ("workers", 10_000), ("batch", 0), ("max_inflight", 0), ("port_rate", 0.0),
    ("port_rate", -5.0), ("port_burst", 0.5), ("park_timeout_s", 0.0), ("park_timeout_s", float("nan")),
    ("drop_flow_s", float("inf")), ("flow_state_idle_s", -1.0), ("arp_retry_s", 0), ("arp_timeout_s", "5"),
    ("flow_idle_s", -0.1), ("flow_hard_s", -1.0), ("state_snapshot_s", -1.0), ("start_timeout_s", 0.0),
    ("tunnel_port", 0), ("tunnel_port", 65_536), ("datapath_cpu", -1), ("cpus", []), ("cpus", [-1]),
    ("cpus", ["0"]), ("port_workers", {"b.p": 2}), ("port_workers", {"b.p": -1}), ("port_workers", [1]),
    ("datapath", "kernel"), ("host", ""), ("state_file", 5), ("keep_outputs", 1), ("ctl", ""),
    ("log_file", ""), ("log_repeat_s", -1.0), ("log_level", "LOUD"), ("metrics", "host:notaport"),
    ("flow_state_keys", "00" * 16), ("flow_state_keys", ["zz" * 16]), ("flow_state_keys", ["00" * 8]),
    ("poll_spin_us", -1), ("poll_spin_us", 10_001), ("poll_spin_us", 2.5), ("poll_spin_workers", 0),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_a_value_out_of_range_is_an_error_naming_the_key(key, value):
    from engine.config import AgentConfig, ConfigError

    with pytest.raises(ConfigError, match=rf"^{key}(\.[\w.]+)?: "):
        AgentConfig(**{key: value})


def test_max_flows_zero_in_a_toml_file_names_the_file_and_the_key(tmp_path):
    from engine.config import AgentConfig, ConfigError

    path = tmp_path / "agent.toml"
    path.write_text("[agent]\nworkers = 1\nmax_flows = 0\n")
    with pytest.raises(ConfigError, match=r"agent\.toml: max_flows: must be at least 1, got 0"):
        AgentConfig.from_toml(str(path))


def test_boundary_values_are_accepted():
    from engine.config import AgentConfig

    cfg = AgentConfig(workers=1, max_flows=1, max_parked=1, flow_idle_s=0, flow_hard_s=0.0, state_snapshot_s=0,
                      tunnel_port=65_535, batch=1, port_burst=1, port_rate=0.5, datapath_cpu=0, cpus=[0],
                      port_workers={"b.p": 0}, poll_spin_us=10_000, poll_spin_workers=False)
    assert cfg.max_flows == 1 and cfg.flow_idle_s == 0
    assert AgentConfig(poll_spin_us=0).poll_spin_us == 0


def test_the_unused_extra_field_is_gone():
    from engine.config import AgentConfig, ConfigError

    with pytest.raises(TypeError):
        AgentConfig(extra={})
    with pytest.raises(ConfigError, match="unknown key 'extra'"):
        AgentConfig.from_dict({"extra": {}})


def test_a_state_file_of_the_first_format_is_still_read_and_a_broken_chunk_is_refused(tmp_path):
    from backchannel.codec import encode

    path = tmp_path / "old.state"
    path.write_bytes(encode(m.FlowStateBatch(tuple(_entries(5)), -1)))      # one batch, no header
    assert statefile.read_state(str(path)).entries == tuple(_entries(5))
    statefile.write_state(str(path), _entries(statefile.CHUNK + 3))           # the chunked format: two chunks
    assert len(statefile.read_chunks(str(path))) == 2
    assert len(statefile.read_state(str(path)).entries) == statefile.CHUNK + 3
    path.write_bytes(path.read_bytes()[:-10])                                   # truncated
    with pytest.raises(statefile.StateFileError):
        statefile.read_chunks(str(path))
