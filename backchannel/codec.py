"""The bytes of the backchannel: msgpack encoding of the messages in backchannel/messages.py.

Owns: ``encode``/``decode`` of one message, ``encode_many``/``decode_many`` of a batch frame, ``DecodeError``
and the ``Decoder`` that counts rejects.  Nothing here touches a socket.

- A message is packed as the array ``(TAG, *fields)`` with a reused per-thread ``msgpack.Packer`` (bin type
  for bytes).  Tuples, not maps: ~2-3x cheaper.  A batch frame is ``(0, (TAG, ...), (TAG, ...), ...)``.
- Ints wider than msgpack's 64 bits (IPv6 addresses and their masks: 0 <= n < 2**128) travel as the msgpack
  extension ``BIGINT_EXT`` (16 bytes, big-endian) and come back as ints, so a flow key, a state key or a set
  action holds an IPv6 address as the same int the packet record does.  Any other extension type decodes to an
  ``msgpack.ExtType``, which no field shape accepts (``field_type``).
- Decoding unpacks with ``use_list=False, raw=False, strict_map_key=False`` and hands the array to the
  validating constructor of its tag.  Those constructors are generated once per message class from its schema
  (messages.SCHEMA) -- the way ``collections.namedtuple`` builds its ``__new__`` -- because a generic loop
  over field specs costs ~4x more per field, and an UpcallBatch has 4 x 64 of them.  A field with a wire
  shape (backchannel/shapes.py: flow-state keys, actions, fragment records, ranges) is checked element by
  element by straight-line code in the same constructor (``_ShapeGen``): a wrong element type, arity or tag
  is ``field_type``, a number outside its range ``int_range``.
- Every malformed input raises ``DecodeError(reason)`` and nothing else.  Reasons: see ``REASONS``.
- ``encode`` does not validate field types (cost); a wrong type is rejected by the receiver.  ``validate``
  checks a message the way a receiver would, for tests and debugging.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

import msgpack

from backchannel.messages import BATCH_TAG, INT64_MAX, INT64_MIN, REGISTRY, SCHEMA
from backchannel.shapes import Enum, Float, Int, MapOf, OneOf, Tagged, Tup, TupOf, top_types

MALFORMED = "malformed"  # not msgpack: garbage, truncated, trailing bytes, unhashable map keys, too deep
NOT_BYTES = "not_bytes"  # the input is not bytes-like
NOT_ARRAY = "not_array"  # valid msgpack, but not an array (a map, a scalar) or an empty array
UNKNOWN_TAG = "unknown_tag"  # the first element is not the tag of a registered message
ARITY = "arity"  # wrong number of fields
FIELD_TYPE = "field_type"  # a field (or an element of it) of the wrong type, arity or tag
INT_RANGE = "int_range"  # an int outside int64, or a number outside its field's range
MULTIPART = "multipart"  # counted by the socket layer: a ZMQ message with an unexpected number of parts
REASONS = (MALFORMED, NOT_BYTES, NOT_ARRAY, UNKNOWN_TAG, ARITY, FIELD_TYPE, INT_RANGE, MULTIPART)


class DecodeError(ValueError):
    """Malformed backchannel input.  ``reason`` is one of ``REASONS`` (a short token for counters)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class EncodeError(ValueError):
    """The object cannot be sent: not a registered message, or a field msgpack cannot pack."""


# ---------------------------------------------------------------------------------------------------------
# encoding

_local = threading.local()  # one Packer per thread: kazoo callbacks run on their own threads


BIGINT_EXT = 1        # msgpack extension type of a 128-bit unsigned int (16 bytes, big-endian)
_BIG = 1 << 128


def _big_default(o: object) -> msgpack.ExtType:
    if type(o) is int and 0 <= o < _BIG:
        return msgpack.ExtType(BIGINT_EXT, o.to_bytes(16, "big"))
    raise TypeError(f"cannot pack {type(o).__name__}" + (" outside 0..2**128-1" if type(o) is int else ""))


def _ext_hook(code: int, data: bytes) -> object:
    if code == BIGINT_EXT and len(data) == 16:
        return int.from_bytes(data, "big")
    return msgpack.ExtType(code, data)


def new_packer() -> msgpack.Packer:
    """A Packer that writes what ``decode`` reads (bin type for bytes, 128-bit ints as ``BIGINT_EXT``)."""
    return msgpack.Packer(use_bin_type=True, autoreset=True, default=_big_default)


def _packer() -> msgpack.Packer:
    try:
        return _local.packer
    except AttributeError:
        _local.packer = new_packer()
        return _local.packer


def _tag_of(msg: object) -> int:
    cls = type(msg)
    tag = cls.__dict__.get("TAG")
    if tag is None or REGISTRY.get(tag) is not cls:
        raise EncodeError(f"not a registered message: {cls.__name__}")
    return tag


def encode(msg: tuple) -> bytes:
    """Pack one message as ``(TAG, *fields)``.  Raises EncodeError only."""
    try:
        return _packer().pack((_tag_of(msg), *msg))
    except (TypeError, ValueError, OverflowError) as e:
        if isinstance(e, EncodeError):
            raise
        raise EncodeError(f"{type(msg).__name__}: {e}") from None


def encode_many(msgs: Iterable[tuple]) -> bytes:
    """Pack several messages into one batch frame (one ZMQ send instead of many)."""
    msgs = list(msgs)
    try:
        return _packer().pack((BATCH_TAG, *[(_tag_of(m), *m) for m in msgs]))
    except (TypeError, ValueError, OverflowError) as e:
        if isinstance(e, EncodeError):
            raise
        raise EncodeError(f"batch: {e}") from None


# ---------------------------------------------------------------------------------------------------------
# decoding: one generated validating constructor per message class

_TOP: dict[int, Callable] = {}  # tag -> constructor from the whole array (TAG, *fields)
_NESTED: dict[type, Callable] = {}  # class -> constructor from the bare field array


def _field_check(i: int, f, where: str, ns: dict) -> list[str]:
    v, err = f"f{i}", f"'{where}.{f.name}'"
    ns[f"T{i}"] = f.types
    bad = f"raise DecodeError(FIELD_TYPE, {err})"
    if f.kind in ("scalar", "tuple_of"):
        if len(f.types) == 1:
            (only,) = f.types
            ns[f"X{i}"] = only
            test = f"type({{x}}) is not X{i}"
        else:
            test = f"type({{x}}) not in T{i}"
        rng = []
        if int in f.types:
            cond = "" if f.types == {int} else "type({x}) is int and "
            rng = [f"if {cond}not INT64_MIN <= {{x}} <= INT64_MAX: raise DecodeError(INT_RANGE, {err})"]
        if f.kind == "scalar":
            return [f"if {test.format(x=v)}: {bad}"] + [r.format(x=v) for r in rng]
        loop = [f"if type({v}) is not tuple: {bad}", f"for x in {v}:", f"    if {test.format(x='x')}: {bad}"]
        return loop + ["    " + r.format(x="x") for r in rng]
    if f.kind == "shape":
        return _ShapeGen(ns, f"s{i}_", err).check(f.shape, v)
    if f.kind == "msg":
        ns[f"C{i}"] = _nested(f.sub)
        return [f"{v} = C{i}({v})"]
    if f.kind == "msgs":
        ns[f"C{i}"] = _nested(f.sub)
        return [f"if type({v}) is not tuple: {bad}", f"{v} = tuple([C{i}(x) for x in {v}])"]
    return []  # "any"


def _arities(shape) -> tuple[int, ...]:
    """The lengths a tuple of ``shape`` (a Tup or a Tagged) may have, in the order its cases list them."""
    if type(shape) is Tup:
        return (len(shape.items),)
    out: list[int] = []
    for _, rest in shape.cases:
        for n in _arities(rest):
            if n + 1 not in out:
                out.append(n + 1)
    return tuple(out)


class _ShapeGen:
    """Straight-line checks of a value against a wire shape (backchannel/shapes.py), as source lines for the
    message's constructor.  A fixed-arity tuple (Tup, Tagged) is dispatched on its length first and unpacked
    into fresh locals once; a Tagged then branches on its tag (``==`` or a frozenset), and the tags whose rest
    is one ranged int (``("set", field, value)``) become one dict lookup of the range; a tuple of items is a
    ``for`` loop.  Constants go into the namespace ``ns``."""

    def __init__(self, ns: dict, prefix: str, err: str) -> None:
        self.ns, self.prefix, self.n = ns, prefix, 0
        self.bad = f"raise DecodeError(FIELD_TYPE, {err})"
        self.range = f"raise DecodeError(INT_RANGE, {err})"

    def _name(self, what: str = "v") -> str:
        self.n += 1
        return f"{self.prefix}{what}{self.n}"

    def _const(self, value) -> str:
        name = self._name("k")
        self.ns[name] = value
        return name

    def test(self, shape, v: str) -> str:
        """An expression true when ``v`` has the top-level type of ``shape`` (for OneOf's branches)."""
        types_ = top_types(shape)
        if types_ == {type(None)}:
            return f"{v} is None"
        return " or ".join(f"type({v}) is {self._const(t)}" for t in sorted(types_, key=lambda t: t.__name__))

    def check(self, shape, v: str) -> list[str]:
        """Lines that check ``v``; the first line is the top-level type check (OneOf relies on it)."""
        bad = self.bad
        if shape is None or shape is type(None):
            return [f"if {v} is not None: {bad}"]
        if shape is int:
            shape = Int()
        if shape is float:
            return [f"if type({v}) is not float and type({v}) is not int: {bad}"]
        if shape in (str, bytes, bool):
            return [f"if type({v}) is not {shape.__name__}: {bad}"]
        t = type(shape)
        if t is Int:
            return [f"if type({v}) is not int: {bad}", f"if {v} < {shape.lo} or {v} > {shape.hi}: {self.range}"]
        if t is Float:
            lo, hi = self._const(shape.lo), self._const(shape.hi)
            return [f"if type({v}) is not float and type({v}) is not int: {bad}",
                    f"if not {lo} <= {v} <= {hi}: {self.range}"]
        if t is Enum:
            return [f"if type({v}) is not str or {v} not in {self._const(shape.values)}: {bad}"]
        if t is Tup or t is Tagged:
            lines = [f"if type({v}) is not tuple: {bad}"]
            arities = _arities(shape)
            if len(arities) == 1:
                (n,) = arities
                return lines + [f"if len({v}) != {n}: {bad}"] + self._unpacked(shape, v, n)
            ln = self._name("n")
            lines.append(f"{ln} = len({v})")
            for j, n in enumerate(arities):
                lines.append(f"{'if' if j == 0 else 'elif'} {ln} == {n}:")
                lines += ["    " + line for line in self._unpacked(shape, v, n) or ["pass"]]
            return lines + ["else:", f"    {bad}"]
        if t is TupOf:
            lines = [f"if type({v}) is not tuple: {bad}"]
            if shape.max_len is not None:
                lines.append(f"if len({v}) > {shape.max_len}: {bad}")
            x = self._name("x")
            body = self.check(shape.item, x)
            return lines + [f"for {x} in {v}:"] + ["    " + line for line in body]
        if t is MapOf:
            k, x = self._name("k"), self._name("x")
            body = self.check(shape.key, k) + self.check(shape.value, x)
            return [f"if type({v}) is not dict: {bad}", f"for {k}, {x} in {v}.items():"] + [
                "    " + line for line in body]
        if t is OneOf:
            lines = []
            for j, alt in enumerate(shape.alts):
                # the branch's test is the alternative's type check: what follows it (ranges, elements)
                body = self.check(alt, v)[1:] if type(alt) in (Int, Float, Tup, Tagged, TupOf, MapOf) else []
                if type(alt) is Enum:
                    body = self.check(alt, v)
                lines.append(f"{'if' if j == 0 else 'elif'} {self.test(alt, v)}:")
                lines += ["    " + line for line in body] or ["    pass"]
            return lines + ["else:", f"    {bad}"]
        raise TypeError(f"not a wire shape: {shape!r}")

    def _unpacked(self, shape, v: str, n: int) -> list[str]:
        """``v`` is a tuple of length ``n``: unpack it and check its elements against a Tup or a Tagged."""
        if n == 0:
            return []
        names = [self._name() for _ in range(n)]
        return [f"{', '.join(names)}, = {v}"] + self._elements(shape, names)

    def _elements(self, shape, names: list[str]) -> list[str]:
        """Check the unpacked elements ``names`` against a Tup or a Tagged of exactly that many elements."""
        if type(shape) is Tup:
            lines = []
            for name, item in zip(names, shape.items, strict=True):
                lines += self.check(item, name)
            return lines
        h, rest_names = names[0], names[1:]
        cases = [(tags, rest) for tags, rest in shape.cases if len(rest_names) in _arities(rest)]
        ranged = {}            # tag → (lo, hi) of the tags whose rest is one ranged int: one dict lookup
        others = []
        for tags, rest in cases:
            if type(rest) is Tup and len(rest.items) == 1 and type(rest.items[0]) is Int:
                ranged.update(dict.fromkeys(tags, (rest.items[0].lo, rest.items[0].hi)))
            else:
                others.append((tags, rest))
        lines = []
        if ranged or any(len(tags) > 1 for tags, _ in others):
            lines.append(f"if type({h}) is not str: {self.bad}")
        branches = []
        if ranged:
            r, (x,) = self._name("r"), rest_names
            if all(lo == 0 for lo, _ in ranged.values()):
                table = self._const({tag: hi for tag, (_, hi) in ranged.items()})
                test = f"if {x} < 0 or {x} > {r}: {self.range}"
            else:
                table = self._const(ranged)
                test = f"if {x} < {r}[0] or {x} > {r}[1]: {self.range}"
            lines.append(f"{r} = {table}.get({h})")
            branches.append((f"{r} is not None", [f"if type({x}) is not int: {self.bad}", test]))
        for tags, rest in others:
            cond = f"{h} == {next(iter(tags))!r}" if len(tags) == 1 else f"{h} in {self._const(tags)}"
            branches.append((cond, self._elements(rest, rest_names)))
        for j, (cond, body) in enumerate(branches):
            lines.append(f"{'if' if j == 0 else 'elif'} {cond}:")
            lines += ["    " + line for line in body or ["pass"]]
        return lines + ["else:", f"    {self.bad}"]


def _compile(cls: type, top: bool) -> Callable:
    fields = SCHEMA[cls]
    names = [f"f{i}" for i in range(len(fields))]
    n = len(fields) + (1 if top else 0)
    ns = {"DecodeError": DecodeError, "FIELD_TYPE": FIELD_TYPE, "ARITY": ARITY, "INT_RANGE": INT_RANGE,
          "INT64_MIN": INT64_MIN, "INT64_MAX": INT64_MAX, "new": tuple.__new__, "cls": cls}
    lines = ["def conv(t):"]
    if not top:
        lines.append(f"    if type(t) is not tuple: raise DecodeError(FIELD_TYPE, '{cls.__name__}')")
    arity = f"'{cls.__name__}: %d fields' % (len(t) - {n - len(fields)})"
    lines.append(f"    if len(t) != {n}: raise DecodeError(ARITY, {arity})")
    targets = (["_"] if top else []) + names
    if targets:
        lines.append(f"    {', '.join(targets)}, = t")
    for i, f in enumerate(fields):
        lines += ["    " + line for line in _field_check(i, f, cls.__name__, ns)]
    lines.append(f"    return new(cls, ({''.join(name + ', ' for name in names)}))")
    src = "\n".join(lines)
    exec(compile(src, f"<backchannel decoder {cls.__name__}>", "exec"), ns)
    ns["conv"].source = src
    return ns["conv"]


def _nested(cls: type) -> Callable:
    conv = _NESTED.get(cls)
    if conv is None:
        conv = _NESTED[cls] = _compile(cls, top=False)
    return conv


def _top(tag: object) -> Callable:
    conv = _TOP.get(tag) if type(tag) is int else None
    if conv is None:
        cls = REGISTRY.get(tag) if type(tag) is int else None
        if cls is None:
            raise DecodeError(UNKNOWN_TAG, repr(tag)[:40])
        conv = _TOP[tag] = _compile(cls, top=True)
    return conv


def _unpack(data: object) -> tuple:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(NOT_BYTES, type(data).__name__)
    try:
        t = msgpack.unpackb(data, use_list=False, raw=False, strict_map_key=False, ext_hook=_ext_hook)
    except Exception as e:  # msgpack raises ValueError, TypeError (unhashable keys), StackError, ...
        raise DecodeError(MALFORMED, f"{type(e).__name__}: {e}"[:80]) from None
    if type(t) is not tuple or not t:
        raise DecodeError(NOT_ARRAY, type(t).__name__)
    return t


def decode(data: bytes) -> tuple:
    """Decode one message frame.  Raises DecodeError only (a batch frame is UNKNOWN_TAG here)."""
    t = _unpack(data)
    return _top(t[0])(t)


def decode_many(data: bytes) -> list:
    """Decode a batch frame (or a single-message frame) into a list of messages; all or nothing."""
    t = _unpack(data)
    tag = t[0]
    if tag != BATCH_TAG or type(tag) is not int:
        return [_top(tag)(t)]
    out = []
    top = _TOP.get
    for item in t[1:]:
        if type(item) is not tuple or not item:
            raise DecodeError(NOT_ARRAY, "batch item")
        tag = item[0]
        conv = top(tag) if type(tag) is int else None     # _top, inline: one call fewer per message
        out.append((conv or _top(tag))(item))
    return out


def validate(msg: tuple) -> tuple:
    """Check ``msg`` as a receiver would; returns the decoded copy.  Raises EncodeError."""
    try:
        return decode(encode(msg))
    except DecodeError as e:
        raise EncodeError(f"{type(msg).__name__} would be rejected: {e}") from None


class Decoder:
    """Decodes frames and counts the outcome in ``counters`` (``backchannel_rejected_<reason>``,
    ``backchannel_decoded``).  Pass a process-wide dict to share it with other parts' counters."""

    def __init__(self, counters: dict[str, int] | None = None) -> None:
        self.counters = counters if counters is not None else {}
        for reason in REASONS:
            self.counters.setdefault(f"backchannel_rejected_{reason}", 0)
        self.counters.setdefault("backchannel_decoded", 0)

    def reject(self, reason: str) -> None:
        """Count a reject found outside the codec (e.g. by the socket layer)."""
        key = f"backchannel_rejected_{reason}"
        self.counters[key] = self.counters.get(key, 0) + 1

    def decode(self, data: bytes) -> tuple:
        try:
            msg = decode(data)
        except DecodeError as e:
            self.reject(e.reason)
            raise
        self.counters["backchannel_decoded"] += 1
        return msg

    def decode_many(self, data: bytes) -> list:
        try:
            msgs = decode_many(data)
        except DecodeError as e:
            self.reject(e.reason)
            raise
        self.counters["backchannel_decoded"] += len(msgs)
        return msgs

    @property
    def rejected(self) -> int:
        return sum(v for k, v in self.counters.items() if k.startswith("backchannel_rejected_"))
