"""Mutated topology files (text and parsed form) load or raise TopologyError — never any other exception."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import yaml

from topology.dump import topology_to_dict
from topology.errors import TopologyError
from topology.loader import loads_topology, topology_from_dict

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
VALUES = [None, 0, -1, True, 1.5, 2**40, "x", "!x", "", "!", [], {}, ["x"], {"x": 1}, ["!x", "y"], "10.0.0.1",
          "1.2.3.4/40", "a-b", "5-1", "1..2", "r1.tenant", "tenant.vm1", "02:00:00:00:00:01", "0.0.0.0/0", "-",
          "2001:db8::1", "2001:db8::1/64", "::/0", "2001:db8::/129", "fe80::1", ["10.0.0.1/24", "2001:db8::1/64"]]
CHARS = "{}[]:,-!&*<>|'\"#\n 0123456789.abc/"


def _paths(node, prefix=()):
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from _paths(value, (*prefix, key))


def _mutate(rng: random.Random, data: dict) -> dict:
    data = copy.deepcopy(data)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice([p for p in _paths(data) if p])
        parent = data
        for seg in path[:-1]:
            parent = parent[seg]
        roll = rng.random()
        if roll < 0.15 and isinstance(parent, dict):
            del parent[path[-1]]
        elif roll < 0.25 and isinstance(parent, dict):
            parent[rng.choice(["zz", 1, "tunnel_key", "peer", "host"])] = copy.deepcopy(rng.choice(VALUES))
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(VALUES))
    return data


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_mutated_data_raises_only_topology_error(path):
    rng = random.Random(path.name)
    base = topology_to_dict(loads_topology(path.read_text()))
    outcomes = {"ok": 0, "error": 0}
    for _ in range(1500):
        data = _mutate(rng, base)
        try:
            topology_from_dict(data)
            loads_topology(yaml.safe_dump(data))
            outcomes["ok"] += 1
        except TopologyError as e:
            assert e.path is not None and e.message
            outcomes["error"] += 1
    assert outcomes["error"] > 500          # the mutations do reach the checks


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_mutated_text_raises_only_topology_error(path):
    rng = random.Random(path.name)
    text = path.read_text()
    for _ in range(1500):
        chars = list(text)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(chars))
            roll = rng.random()
            if roll < 0.4:
                chars[i] = rng.choice(CHARS)
            elif roll < 0.7:
                del chars[i]
            else:
                chars.insert(i, rng.choice(CHARS))
        try:
            loads_topology("".join(chars))
        except TopologyError as e:
            assert e.line is None or 1 <= e.line <= text.count("\n") + 10
