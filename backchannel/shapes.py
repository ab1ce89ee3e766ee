"""The grammar of wire shapes: what a field of a backchannel message may hold, element by element.

A message field is annotated with a Python type (messages.py); where the type alone says too little (a tuple
of what? an int in which range?) the annotation carries a *shape*: ``Annotated[tuple, Tup(U32, U16)]``.  The
codec (backchannel/codec.py) compiles each message's shapes into straight-line checks inside the message's
one validating constructor, so a decoded message holds exactly what its schema says, down to every element.

Shapes (immutable values, so they compare and hash):

  str, bytes, bool, None    exactly that type
  float                     a float or an int (not a bool)
  int                       an int in the int64 range (not a bool); ``Int(lo, hi)`` in [lo, hi]
  Float(lo, hi)             a float or int in [lo, hi] (NaN is refused)
  Enum(values)              a str among ``values``
  Tup(a, b, ...)            a tuple of exactly these elements, each of its shape
  TupOf(item, max_len)      a tuple of any length (up to ``max_len``) whose elements are all ``item``
  MapOf(key, value)         a dict whose keys and values are of these shapes
  OneOf(a, b, ...)          one of the alternatives, told apart by their top-level Python type
  Tagged({tag: rest, ...})  a tuple whose first element (a str) names the shape of the rest: ``rest`` is a
                            Tup (the remaining elements) or another Tagged (the next element is a tag too);
                            a key may be a tuple of tags that share one ``rest``

A failed type, arity or membership check is the decode reason ``field_type``; an int or float outside its
range is ``int_range``.  This module is a leaf (stdlib only); the codec owns the compilation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
SCALARS = (str, bytes, bool, type(None), float, int)


class Int(NamedTuple):
    lo: int = INT64_MIN
    hi: int = INT64_MAX


class Float(NamedTuple):
    lo: float = -math.inf
    hi: float = math.inf


class Enum(NamedTuple):
    values: frozenset


class Tup(NamedTuple):
    items: tuple


class TupOf(NamedTuple):
    item: object
    max_len: int | None = None


class MapOf(NamedTuple):
    key: object
    value: object


class OneOf(NamedTuple):
    alts: tuple


class Tagged(NamedTuple):
    cases: tuple          # ((frozenset of tags, rest shape), ...), in the order the checks try them


def tup(*items) -> Tup:
    return Tup(tuple(None if i is type(None) else i for i in items))


def enum(*values: str) -> Enum:
    return Enum(frozenset(values))


def one_of(*alts) -> OneOf:
    alts = tuple(None if a is type(None) else a for a in alts)
    seen: set = set()
    for a in alts:
        t = top_types(a)
        if seen & t:
            raise TypeError(f"OneOf alternatives must differ in their top-level type: {alts!r}")
        seen |= t
    return OneOf(alts)


def tagged(cases: dict) -> Tagged:
    """``cases``: {tag or (tag, ...): rest shape}, tried in this order (put the commonest first)."""
    out = []
    for key, rest in cases.items():
        tags = frozenset((key,) if isinstance(key, str) else key)
        if not tags or not all(isinstance(t, str) for t in tags):
            raise TypeError(f"Tagged: tags are strs, got {key!r}")
        if type(rest) not in (Tup, Tagged):
            raise TypeError(f"Tagged: the rest after {key!r} is a Tup or a Tagged, got {rest!r}")
        out.append((tags, rest))
    return Tagged(tuple(out))


def top_types(shape) -> frozenset:
    """The Python types a value of ``shape`` may have at its top level."""
    if shape is None or shape is type(None):
        return frozenset({type(None)})
    if shape is float or type(shape) is Float:
        return frozenset({float, int})
    if shape in SCALARS:
        return frozenset({shape})
    t = type(shape)
    if t is Int:
        return frozenset({int})
    if t is Enum:
        return frozenset({str})
    if t in (Tup, TupOf, Tagged):
        return frozenset({tuple})
    if t is MapOf:
        return frozenset({dict})
    if t is OneOf:
        return frozenset().union(*(top_types(a) for a in shape.alts))
    raise TypeError(f"not a wire shape: {shape!r}")


def check(shape) -> None:
    """Raise TypeError unless ``shape`` is a well-formed shape, all the way down."""
    top_types(shape)
    t = type(shape)
    if t is Int or t is Float:
        if not shape.lo <= shape.hi:
            raise TypeError(f"empty range: {shape!r}")
    elif t is Enum:
        if not shape.values or not all(type(v) is str for v in shape.values):
            raise TypeError(f"an Enum holds strs: {shape!r}")
    elif t is Tup:
        for item in shape.items:
            check(item)
    elif t is TupOf:
        check(shape.item)
    elif t is MapOf:
        check(shape.key)
        check(shape.value)
    elif t is OneOf:
        for a in shape.alts:
            check(a)
    elif t is Tagged:
        for _, rest in shape.cases:
            check(rest)


def is_shape(obj) -> bool:
    try:
        check(obj)
    except TypeError:
        return False
    return True


def conforms(value, shape) -> bool:
    """Does ``value`` (as decoded: tuples, not lists) have ``shape``?  The slow, obvious reading of the grammar,
    for tests and debugging; the codec's compiled checks must agree with it."""
    if shape is None or shape is type(None):
        return value is None
    if shape is float:
        return type(value) in (float, int)
    if shape is int:
        shape = Int()
    if shape in SCALARS:
        return type(value) is shape
    t = type(shape)
    if t is Int:
        return type(value) is int and shape.lo <= value <= shape.hi
    if t is Float:
        return type(value) in (float, int) and shape.lo <= value <= shape.hi
    if t is Enum:
        return type(value) is str and value in shape.values
    if t is Tup:
        return (type(value) is tuple and len(value) == len(shape.items)
                and all(conforms(v, s) for v, s in zip(value, shape.items, strict=True)))
    if t is TupOf:
        return (type(value) is tuple and (shape.max_len is None or len(value) <= shape.max_len)
                and all(conforms(v, shape.item) for v in value))
    if t is MapOf:
        return type(value) is dict and all(conforms(k, shape.key) and conforms(v, shape.value)
                                           for k, v in value.items())
    if t is OneOf:
        return any(conforms(value, a) for a in shape.alts)
    if t is Tagged:
        if type(value) is not tuple or not value or type(value[0]) is not str:
            return False
        for tags, rest in shape.cases:
            if value[0] in tags:
                return conforms(value[1:], rest)
        return False
    raise TypeError(f"not a wire shape: {shape!r}")
