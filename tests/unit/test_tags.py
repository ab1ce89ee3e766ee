"""The flow-tag vocabulary (workers/tags.py): exact spellings, the device/kind equalities, and a scan of the tree
that fails when a tag is spelled by hand anywhere else."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from packet.addr import ip2int
from topology.store.topo import KINDS as STORE_KINDS
from workers import tags
from workers.simulation.result import CONNTRACK, FWD_SNAT, NAT_KINDS

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("engine", "workers", "topology")
TAGS_MODULE = "workers/tags.py"

# Literals that look like a tag but are not one: (file, source text of the literal).  Keep this narrow.
NOT_TAGS: set = set()   # (file, spelling) pairs that look like tags but are not; none today


def test_spellings_are_todays():
    assert tags.bridge("tenant") == "bridge:tenant"
    assert tags.router("r1") == "router:r1"
    assert tags.port("tenant.vm1") == "port:tenant.vm1"
    assert tags.chain("sub") == "chain:sub"
    assert tags.load_balancer("lb") == "load_balancer:lb"
    assert tags.port_group("web") == "port_group:web"
    assert tags.mac("tenant", 0, 0x020000000001) == "mac:tenant:0:020000000001"
    assert tags.mac("tenant", 7, 0xA) == "mac:tenant:7:00000000000a"
    ip = ip2int("198.51.100.1")
    assert tags.arp("r1", ip) == f"arp:r1:{ip}"
    assert tags.nat_block("r1", ip) == f"nat_block:r1:{ip}"
    key = (ip2int("10.0.0.2"), ip, 6, 40000, 80, "tenant")
    assert tags.flow_state(CONNTRACK, key) == "ct:10.0.0.2:40000>198.51.100.1:80/6@tenant"
    assert tags.flow_state(FWD_SNAT, key) == "nat:fwd_snat:10.0.0.2:40000>198.51.100.1:80/6@tenant"
    assert tags.key_str(key) == "10.0.0.2:40000>198.51.100.1:80/6@tenant"


def test_device_is_the_tag_of_each_kind():
    """TopologyChanged(kind, name) invalidates ``device(kind, name)``: the very tag the simulation put on a flow
    that read that object."""
    by_kind = {tags.BRIDGE: tags.bridge, tags.ROUTER: tags.router, tags.PORT: tags.port, tags.CHAIN: tags.chain,
               tags.LOAD_BALANCER: tags.load_balancer, tags.PORT_GROUP: tags.port_group}
    for kind, make in by_kind.items():
        assert tags.device(kind, "x.y") == make("x.y")
        assert tags.kind_of(make("x.y")) == kind
    # every kind of record the store holds (and so every TopologyChanged kind) is a tag kind
    assert set(STORE_KINDS) <= set(tags.KINDS)


def test_kind_of():
    assert tags.kind_of(tags.mac("b", 0, 1)) == tags.MAC
    assert tags.kind_of(tags.arp("r", 1)) == tags.ARP
    assert tags.kind_of(tags.nat_block("r", 1)) == tags.NAT_BLOCK
    key = (1, 2, 6, 3, 4, "dev")
    assert tags.kind_of(tags.flow_state(CONNTRACK, key)) == tags.CT
    assert {tags.kind_of(tags.flow_state(k, key)) for k in NAT_KINDS} == {tags.NAT}


def test_flow_state_key_text_is_cached():
    """It is the hot one (a tag per NAT lookup, per conntrack read, per entry at housekeeping)."""
    key = (1, 2, 6, 3, 4, "dev")
    tags._KEY_TEXT.pop(key, None)
    tags._CT_TAG.pop(key, None)
    a = tags.flow_state(CONNTRACK, key)
    text = tags._KEY_TEXT[key]
    assert tags.flow_state(FWD_SNAT, key) == "nat:" + FWD_SNAT + ":" + text     # the key's text made once
    assert tags.flow_state(CONNTRACK, key) is a                                # the conntrack tag kept whole
    assert text == "0.0.0.1:3>0.0.0.2:4/6@dev"


# -- nobody spells a tag by hand -------------------------------------------------------------------------------
_PREFIX = re.compile("^(?:" + "|".join(sorted(map(re.escape, tags.KINDS), key=len, reverse=True)) + "):")


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body:
            first = n.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _outer(tree: ast.AST) -> dict[int, ast.AST]:
    """Constant inside an f-string → that f-string (reported and allow-listed as a whole)."""
    return {id(v): n for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}


def _hand_spelled(root: Path = ROOT) -> set[tuple[str, str]]:
    """(file, source text) of every literal that spells a tag: one starting with '<tag kind>:', an f-string
    '{a}:{b}' or a concatenation '... + ":" + ...' (a tag assembled from a kind held in a variable)."""
    found = set()
    for pkg in SCANNED:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = str(path.relative_to(root))
            if rel == TAGS_MODULE:
                continue
            src = path.read_text()
            tree = ast.parse(src, rel)
            docs, outer = _docstrings(tree), _outer(tree)
            for n in ast.walk(tree):
                hit = None
                if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
                    if _PREFIX.match(n.value):
                        hit = outer.get(id(n), n)
                elif isinstance(n, ast.JoinedStr):
                    v = n.values
                    if (len(v) == 3 and isinstance(v[0], ast.FormattedValue) and isinstance(v[2], ast.FormattedValue)
                            and isinstance(v[1], ast.Constant) and v[1].value == ":"):
                        hit = n
                elif isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add):
                    if any(isinstance(s, ast.Constant) and s.value == ":" for s in (n.left, n.right)):
                        hit = n
                if hit is not None:
                    found.add((rel, ast.get_source_segment(src, hit)))
    return found


def test_no_tag_is_spelled_outside_workers_tags():
    bad = _hand_spelled() - NOT_TAGS
    assert not bad, "tags spelled by hand (use a workers.tags constructor):\n" + "\n".join(
        f"{f}: {s}" for f, s in sorted(bad))


def test_allow_lists_are_not_stale():
    found = _hand_spelled()
    stale = NOT_TAGS - found
    assert not stale, f"allow-list entries that match nothing any more (remove them): {sorted(stale)}"


def test_the_scan_catches_what_it_must(tmp_path):
    """The scan itself: a prefix literal, an f-string tag, a generic '{kind}:{name}' and a concatenation with
    ':' are caught; a docstring or a message that merely mentions a kind is not."""
    for pkg in SCANNED:
        (tmp_path / pkg).mkdir()
    (tmp_path / "workers" / "bad.py").write_text(
        '"""chain: the docstring may say it."""\n'
        'a = "chain:" + name\nb = f"ct:{k}"\nc = f"{kind}:{name}"\nd = kind + ":" + n\ne = "no such chain: x"\n')
    got = {s for _, s in _hand_spelled(tmp_path)}
    assert got == {'"chain:"', 'f"ct:{k}"', 'f"{kind}:{name}"', 'kind + ":"'}
