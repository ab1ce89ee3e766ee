"""Topology-file errors and the machinery that locates them.

Owns ``TopologyError`` (a ValueError that names the path in the file and its line), ``read_text`` (YAML or
JSON text → plain Python values plus the line of every mapping key and sequence item, taken from the composed
YAML node tree; JSON is YAML, so one reader serves both) and ``Checker``, the typed accessors the loader uses
so that every bad value raises a TopologyError naming where it is.

Paths are tuples of str (mapping keys) and int (sequence indexes), printed as
``routers.r1.routes[2].gateway``; a key that contains a dot is printed quoted in brackets
(``arp_table["198.51.100.1"]``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import NoReturn

import yaml

from packet.addr import ip2int, ip6_2int, mac2int, parse_cidr, parse_cidr6

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif not seg or "." in seg or any(c in seg for c in " []\"'"):
            out += f"[{json.dumps(seg)}]"
        else:
            out += f".{seg}" if out else seg
    return out


class TopologyError(ValueError):
    """A topology file is invalid.  ``path`` is the formatted path ('' for the whole file), ``line`` the
    1-based line of the offending key or item when the source was text (else None), ``source`` the file
    name."""

    def __init__(self, message: str, path: str = "", line: int | None = None, source: str | None = None):
        self.message = message
        self.path = path
        self.line = line
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ":".join(str(p) for p in (self.source, self.line) if p is not None)
        parts = [p for p in (where, self.path, self.message) if p]
        return ": ".join(parts)


# -- reading ---------------------------------------------------------------------------------------

MAX_DEPTH = 64                 # nesting levels of a topology file (a real one uses fewer than 10)
MAX_ALIAS_NODES = 100_000      # nodes built again through aliases (an alias bomb builds billions)


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):   # libyaml when present: ~10x faster
    """SafeLoader without the YAML 1.1 traps: no base-60 ints/floats (so 10:00:00:00:00:01 stays a MAC
    string), no octal ints (010 is not 8), no timestamps."""

    _depth = 0

    def compose_node(self, parent, index):
        """The pure-Python composer recurses per level: stop it at MAX_DEPTH (libyaml's composer, in C, does
        not call this; it stops by itself at 1000 levels, and ``_build`` at MAX_DEPTH)."""
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nesting too deep (more than {MAX_DEPTH} levels)",
                                                  self.peek_event().start_mark)
            return yaml.composer.Composer.compose_node(self, parent, index)
        finally:
            self._depth -= 1


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if not tag.endswith((":int", ":float", ":timestamp"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


class _Budget:
    """What one read may build: ``seen`` node ids (a node met again came through an alias), ``repeats``."""

    __slots__ = ("seen", "repeats")

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.repeats = 0


def read_text(text: str, source: str) -> tuple[object, dict[Path, int]]:
    """Parse YAML/JSON text.  Returns (plain data, {path: 1-based line}).  Hostile input fails as a
    TopologyError naming ``source``: nesting deeper than MAX_DEPTH, or aliases that expand to more than
    MAX_ALIAS_NODES nodes (a "billion laughs" document), never a RecursionError or minutes of CPU."""
    loader = _Loader(text)
    lines: dict[Path, int] = {}
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:                         # the pure-Python composer recurses per level
            raise TopologyError(f"nesting too deep (more than {MAX_DEPTH} levels)", source=source) from None
        if node is None:
            return None, lines
        lines[()] = node.start_mark.line + 1
        return _build(loader, node, (), lines, source, set(), _Budget()), lines
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = e.problem or e.context or "syntax error"
        line = mark.line + 1 if mark else None
        raise TopologyError(f"invalid YAML: {msg}", line=line, source=source) from None
    except yaml.YAMLError as e:
        raise TopologyError(f"invalid YAML: {e}", source=source) from None
    finally:
        loader.dispose()


def _build(loader: _Loader, node: yaml.Node, path: Path, lines: dict[Path, int], source: str,
           active: set[int], budget: _Budget) -> object:
    def fail(msg: str, line: int) -> NoReturn:
        raise TopologyError(msg, format_path(path), line, source)

    if id(node) in budget.seen:
        budget.repeats += 1
        if budget.repeats > MAX_ALIAS_NODES:
            fail(f"aliases expand to more than {MAX_ALIAS_NODES} nodes (an alias bomb?)",
                 node.start_mark.line + 1)
    else:
        budget.seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_object(node)
    if len(path) >= MAX_DEPTH:
        raise TopologyError(f"nesting too deep (more than {MAX_DEPTH} levels)", format_path(path[:2]),
                            node.start_mark.line + 1, source)
    if id(node) in active:
        fail("recursive alias", node.start_mark.line + 1)
    active.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            out_list = []
            for i, item in enumerate(node.value):
                lines[(*path, i)] = item.start_mark.line + 1
                out_list.append(_build(loader, item, (*path, i), lines, source, active, budget))
            return out_list
        assert isinstance(node, yaml.MappingNode)
        own = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
        loader.flatten_mapping(node)                  # YAML merge keys (<<: *anchor) go first, then our own
        merged = len(node.value) - own
        out: dict[str, object] = {}
        mine: set[str] = set()
        for i, (key_node, value_node) in enumerate(node.value):
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                fail("mapping keys must be plain strings", line)
            key = key_node.value                       # raw text: keys are names, addresses or MACs
            if i >= merged and key in mine:
                lines[(*path, key)] = line
                raise TopologyError(f"duplicate key {key!r}", format_path((*path, key)), line, source)
            if i >= merged:
                mine.add(key)
            lines[(*path, key)] = line
            out[key] = _build(loader, value_node, (*path, key), lines, source, active, budget)
        return out
    finally:
        active.discard(id(node))


# -- checking --------------------------------------------------------------------------------------

_IP_RE = re.compile(r"^(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$")

_IP6_RE = re.compile(r"^[0-9a-fA-F:.]*:[0-9a-fA-F:.]*$")     # then inet_pton decides


def is_ipv6_text(value: object) -> bool:
    """The family rule of the file: an address text with a colon is IPv6 (MACs are never addresses here)."""
    return isinstance(value, str) and ":" in value


def _type_name(value: object) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


class Checker:
    """Typed access to the plain data of one file; every failure raises TopologyError with path and line."""

    def __init__(self, source: str, lines: dict[Path, int] | None = None):
        self.source = source
        self.lines = lines or {}

    def line_of(self, path: Path) -> int | None:
        for n in range(len(path), -1, -1):
            line = self.lines.get(path[:n])
            if line is not None:
                return line
        return None

    def fail(self, path: Path, message: str) -> NoReturn:
        raise TopologyError(message, format_path(path), self.line_of(path), self.source)

    def expect(self, value: object, path: Path, what: str) -> NoReturn:
        shown = "" if value is None or isinstance(value, dict | list) else f" ({value!r})"
        self.fail(path, f"expected {what}, got {_type_name(value)}{shown}")

    # structure
    def mapping(self, value: object, path: Path, allowed: Iterable[str] = (), required: Iterable[str] = (),
                hints: dict[str, str] | None = None, nullable: bool = True) -> dict:
        if value is None and nullable:
            value = {}
        if not isinstance(value, dict):
            self.expect(value, path, "a mapping")
        allowed = tuple(allowed)
        for key in value:
            if key not in allowed:
                hint = (hints or {}).get(key) or f"allowed: {', '.join(allowed) if allowed else 'none'}"
                self.fail((*path, key), f"unknown key {key!r} ({hint})")
        for key in required:
            if key not in value:
                self.fail(path, f"missing required key {key!r}")
        return value

    def table(self, value: object, path: Path) -> dict:
        """A mapping whose keys are names chosen by the user (any key allowed)."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.expect(value, path, "a mapping")
        return value

    def seq(self, value: object, path: Path) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            self.expect(value, path, "a list")
        return value

    # scalars
    def string(self, value: object, path: Path) -> str:
        if not isinstance(value, str) or not value:
            self.expect(value, path, "a non-empty string")
        return value

    def name(self, value: object, path: Path) -> str:
        """A device or port name: non-empty, no dot (a port is named <device>.<port>)."""
        text = self.string(value, path)
        if "." in text or text != text.strip():
            self.fail(path, f"invalid name {text!r} (no dots or surrounding spaces)")
        return text

    def integer(self, value: object, path: Path, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.expect(value, path, "an integer")
        if not lo <= value <= hi:
            self.fail(path, f"out of range: {value} (allowed {lo}..{hi})")
        return value

    def boolean(self, value: object, path: Path) -> bool:
        if not isinstance(value, bool):
            self.expect(value, path, "true or false")
        return value

    def ip(self, value: object, path: Path) -> int:
        if not isinstance(value, str) or not _IP_RE.match(value):
            self.fail(path, f"not an IPv4 address: {value!r}")
        return ip2int(value)

    def cidr(self, value: object, path: Path) -> tuple[int, int]:
        """'10.0.0.0/24' or a bare address (/32); host bits are cleared."""
        if isinstance(value, str):
            addr, sep, plen = value.partition("/")
            good_len = plen.isdigit() and int(plen) <= 32 and plen == str(int(plen))
            if _IP_RE.match(addr) and (not sep or good_len):
                return parse_cidr(value)
        self.fail(path, f"not an IPv4 CIDR prefix: {value!r}")

    def ip6(self, value: object, path: Path) -> int:
        """An IPv6 address (any RFC 4291 text form, no zone index)."""
        if isinstance(value, str) and _IP6_RE.match(value):
            try:
                return ip6_2int(value)
            except ValueError:
                pass
        self.fail(path, f"not an IPv6 address: {value!r}")

    def cidr6(self, value: object, path: Path) -> tuple[int, int]:
        """'2001:db8::/32' or a bare address (/128); host bits are cleared."""
        if isinstance(value, str):
            addr, sep, plen = value.partition("/")
            good_len = plen.isdigit() and int(plen) <= 128 and plen == str(int(plen))
            if _IP6_RE.match(addr) and (not sep or good_len):
                try:
                    return parse_cidr6(value)
                except ValueError:
                    pass
        self.fail(path, f"not an IPv6 CIDR prefix: {value!r}")

    def mac(self, value: object, path: Path) -> int:
        if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}", value):
            self.fail(path, f"not a MAC address: {value!r}")
        return mac2int(value)
