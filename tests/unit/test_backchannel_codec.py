"""Malformed input of every kind is rejected with DecodeError(reason), never another exception; counted."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backchannel import codec
from backchannel.codec import DecodeError, Decoder, EncodeError
from backchannel.messages import (
    FLOW_KEY_LEN,
    REGISTRY,
    SCHEMA,
    FlowPut,
    FlowStateBatch,
    FlowStateEntry,
    Ping,
    Shutdown,
    StatsReply,
    Upcall,
    UpcallBatch,
)
from tests.unit.test_backchannel_messages import any_message

pack = codec.new_packer().pack
FP = FlowPut(7, (), (("output", "r1.uplink"),), ("r1",), 30.0, 0.0)
BATCH = UpcallBatch(tuple(Upcall(i, "tenant.vm1", b"\x00" * 60) for i in range(4)))


KEY = (1, 2, 6, 3, 4, "r1")  # a flow-state key: (src, dst, proto, sport, dport, device)


def _sample(cls):
    """A valid instance of ``cls`` with every field filled in."""
    values = {
        "seq": 1, "port": "p", "frame": b"fr", "upcalls": (Upcall(1, "p", b""),), "match": (),
        "key": KEY, "actions": (("drop",),), "tags": ("t",), "idle_s": 1.0, "hard_s": 2.0,
        "flows": (1, 2), "reason": "idle", "origin": 0, "kind": "conntrack", "value": None,
        "expires_at": 3.0, "entries": (FlowStateEntry("conntrack", KEY, None, 1.0),), "router": "r1",
        "ip": 1, "mac": 2, "bridge": "b", "name": "n", "req_id": 1, "worker": 0, "counters": {"a": 1},
        "t_ns": 1, "request_kind": "port", "request_name": "b.p", "records": (("bridge", "b", b"{}"),),
        "device": "r1", "port_start": 1, "port_end": 2, "block": 64, "targets": (1,), "payload": b"x",
        "frames": (b"f",), "vlan": 0, "entry": 5, "requester": "host-b", "sender": -1, "body": {"a": 1},
        "hosts": ("host-b",), "vni": 5, "pid": 4242, "ports": (("b.p", "eth0"),), "keys": ((5, "b.p"),),
        "host": "host-a", "offset": 0, "limit": 10, "level": "INFO", "epoch": 1, "peers": (0, 1), "flow_id": 1 << 40,
        "state": "connected", "cursor": 0,
    }
    if cls.__name__ == "SetStateAuth":
        values["keys"] = (b"k" * 32,)
    # fields of one name that hold different things in different messages
    values.update({"TableEntryRemoved.kind": "mac", "SetPortMap.hosts": (("host-b", 0x7F00000C),),
                   "Reinstall.key": ("b.p", *range(FLOW_KEY_LEN)),
                   "FlowAhead.key": ("b.p", *range(FLOW_KEY_LEN)), "FlowAhead.flow_id": -1, "StateRecall.requester": 1,
                   "LeaseFailed.reason": "store_unavailable"})
    return cls(*(values.get(f"{cls.__name__}.{f}", values[f]) for f in cls._fields))


def reason_of(data) -> str:
    with pytest.raises(DecodeError) as info:
        codec.decode(data)
    assert info.value.reason in codec.REASONS
    return info.value.reason


# ---- what kind of garbage gets which reason -------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x0b", b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",
                                  b"\xc6\xff\xff\xff\xff\x00", b"\x91" * 5000, b"\x92\x0b\xa1\xff",
                                  b"\x81\x81\x01\x02\x03"])
def test_not_msgpack_is_malformed(data):
    # incomplete, reserved byte, huge array/map/bin headers, too deep, bad utf-8, unhashable map key
    assert reason_of(data) == codec.MALFORMED


def test_every_truncation_of_a_valid_frame_is_rejected():
    for msg in (FP, BATCH):
        wire = codec.encode(msg)
        for cut in range(len(wire)):
            assert reason_of(wire[:cut]) == codec.MALFORMED


def test_trailing_bytes_are_malformed():
    assert reason_of(codec.encode(FP) + b"\x00") == codec.MALFORMED


@pytest.mark.parametrize("obj", [{"tag": FP.TAG}, 5, "x", None, b"raw", ()])
def test_not_an_array_or_empty(obj):
    assert reason_of(pack(obj)) == codec.NOT_ARRAY


@pytest.mark.parametrize("tag", [999, -1, 0, True, 32.0, "Ping", None, (32,)])
def test_unknown_or_non_int_tag(tag):
    assert reason_of(pack((tag, 1, 2))) == codec.UNKNOWN_TAG


def test_not_bytes():
    for obj in ("text", None, 5, [1, 2]):
        assert reason_of(obj) == codec.NOT_BYTES
    assert codec.decode(bytearray(codec.encode(Ping(1, 2)))) == Ping(1, 2)
    assert codec.decode(memoryview(codec.encode(Ping(1, 2)))) == Ping(1, 2)


@pytest.mark.parametrize("cls", list(REGISTRY.values()), ids=lambda c: c.__name__)
def test_wrong_arity(cls):
    fields = tuple(_sample(cls))
    assert reason_of(pack((cls.TAG, *fields, 1))) == codec.ARITY
    if fields:
        assert reason_of(pack((cls.TAG, *fields[:-1]))) == codec.ARITY


def _wrong_value(field):
    """A value of a type the field does not accept."""
    if field.kind == "scalar":
        for candidate in (b"b", "s", 1.5, 1, None, True, (1,)):
            if type(candidate) not in field.types:
                return candidate
    if field.kind == "tuple_of":
        return (next(c for c in (b"b", "s", 1) if type(c) not in field.types),)
    return {"not": "a tuple"} if tuple in field.types or field.kind in ("msg", "msgs") else (1,)


@pytest.mark.parametrize("cls", list(REGISTRY.values()), ids=lambda c: c.__name__)
def test_wrong_field_types(cls):
    base = tuple(_sample(cls))
    assert codec.decode(pack((cls.TAG, *base))) == _sample(cls)
    for i, field in enumerate(SCHEMA[cls]):
        if field.kind == "any":
            continue
        bad = base[:i] + (_wrong_value(field),) + base[i + 1:]
        assert reason_of(pack((cls.TAG, *bad))) == codec.FIELD_TYPE, field


def test_bool_is_not_an_int_and_ext_types_are_refused():
    assert reason_of(pack((Ping.TAG, True, 1))) == codec.FIELD_TYPE
    assert reason_of(pack((Ping.TAG, msgpack.ExtType(5, b"x"), 1))) == codec.FIELD_TYPE


def test_nested_messages_are_checked():
    assert reason_of(pack((BATCH.TAG, ((1, "p"),)))) == codec.ARITY
    assert reason_of(pack((BATCH.TAG, ((1, "p", "not bytes"),)))) == codec.FIELD_TYPE
    assert reason_of(pack((BATCH.TAG, (5,)))) == codec.FIELD_TYPE
    entry = ("conntrack", ({1: 2},), None, 1.0)  # a key that cannot be a dict key
    assert reason_of(pack((FlowStateBatch.TAG, (entry,), 0))) == codec.FIELD_TYPE


def test_unhashable_flow_key():
    # a flow key now travels only as a flow-state key (FlowPut names its flow by seq, FlowDelete by flow id)
    good = FlowStateEntry("conntrack", (1, 2, 6, 80, "x"), None, 1.0)
    bad = tuple(good)[:1] + (((1, {"a": 1}),),) + tuple(good)[2:]
    assert reason_of(pack((good.TAG, *bad))) == codec.FIELD_TYPE


@pytest.mark.parametrize("value", [2**63, 2**64 - 1])  # below -2**63 msgpack cannot carry
def test_ints_outside_int64(value):
    assert reason_of(pack((Ping.TAG, value, 1))) == codec.INT_RANGE
    assert reason_of(pack((BATCH.TAG, ((value, "p", b""),)))) == codec.INT_RANGE
    fields = tuple(FP)
    assert reason_of(pack((FP.TAG, *fields[:4], value, *fields[5:]))) == codec.INT_RANGE  # idle_s
    assert reason_of(pack((StatsReply.TAG, 1, value, {}))) == codec.INT_RANGE


def test_int64_bounds_are_accepted():
    for v in (2**63 - 1, -(2**63)):
        assert codec.decode(codec.encode(Ping(v, v))) == Ping(v, v)


# ---- batch frames -----------------------------------------------------------------------------------------


def test_batch_frame_is_all_or_nothing():
    good = codec.encode_many([Ping(1, 1), Shutdown()])
    assert codec.decode_many(good) == [Ping(1, 1), Shutdown()]
    assert codec.decode_many(pack((0,))) == []
    with pytest.raises(DecodeError) as info:
        codec.decode_many(pack((0, (Ping.TAG, 1, 1), (Ping.TAG, "x", 1))))
    assert info.value.reason == codec.FIELD_TYPE
    nested_batch = (0, (Ping.TAG, 1, 1))
    for bad_item, reason in [(5, codec.NOT_ARRAY), ((), codec.NOT_ARRAY), (nested_batch, codec.UNKNOWN_TAG)]:
        with pytest.raises(DecodeError) as info:
            codec.decode_many(pack((0, bad_item)))
        assert info.value.reason == reason


def test_decode_refuses_a_batch_frame():
    assert reason_of(codec.encode_many([Ping(1, 1)])) == codec.UNKNOWN_TAG


# ---- encoding errors and the counting Decoder ------------------------------------------------------------


def test_encode_refuses_non_messages_and_unpackable_fields():
    for obj in ((1, 2), Ping, "x", None):
        with pytest.raises(EncodeError):
            codec.encode(obj)
    with pytest.raises(EncodeError):
        codec.encode(Ping(2**128, 1))  # msgpack cannot hold it, nor the 128-bit extension
    with pytest.raises(EncodeError):
        codec.encode(Ping(-(2**64), 1))
    with pytest.raises(EncodeError):
        codec.encode(Ping(object(), 1))
    with pytest.raises(EncodeError):
        codec.encode_many([Ping(1, 1), (1, 2)])
    assert codec.decode(codec.encode(Ping(3, 4))) == Ping(3, 4)  # the packer is usable after a failure


def test_validate_catches_what_a_receiver_would_reject():
    assert codec.validate(FP) == FP
    with pytest.raises(EncodeError, match="field_type"):
        codec.validate(Ping("1", 1))
    with pytest.raises(EncodeError, match="int_range"):
        codec.validate(Ping(2**63, 1))


def test_decoder_counts_rejects_by_reason():
    counters = {"other_part_event": 3}
    dec = Decoder(counters)
    assert dec.counters is counters and counters["other_part_event"] == 3
    assert all(counters[f"backchannel_rejected_{r}"] == 0 for r in codec.REASONS)
    inputs = [b"\xc1", b"", pack({"a": 1}), pack((999,)), pack((Ping.TAG, 1)), pack((Ping.TAG, "1", 1)),
              pack((Ping.TAG, 2**64 - 1, 1)), "str"]
    for data in inputs:
        with pytest.raises(DecodeError):
            dec.decode(data)
    assert dec.decode(codec.encode(Ping(1, 1))) == Ping(1, 1)
    assert dec.decode_many(codec.encode_many([Ping(1, 1), Ping(2, 2)])) == [Ping(1, 1), Ping(2, 2)]
    with pytest.raises(DecodeError):
        dec.decode_many(b"\xc1")
    expected = {"malformed": 3, "not_array": 1, "unknown_tag": 1, "arity": 1, "field_type": 1, "int_range": 1,
                "not_bytes": 1, "multipart": 0}
    assert {r: counters[f"backchannel_rejected_{r}"] for r in codec.REASONS} == expected
    assert dec.rejected == 9
    assert counters["backchannel_decoded"] == 3


# ---- fuzz: whatever arrives, decode returns a registered message or raises DecodeError ---------------------


def _decode_or_reject(data):
    try:
        msgs = codec.decode_many(data)
    except DecodeError as e:
        assert e.reason in codec.REASONS
        return
    for m in msgs:
        assert REGISTRY[m.TAG] is type(m)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data):
    _decode_or_reject(data)


@settings(max_examples=300, deadline=None)
@given(any_message, st.data())
def test_fuzz_mutated_valid_frames(msg, data):
    wire = bytearray(codec.encode(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    _decode_or_reject(bytes(wire))


msgpackable = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=8),
              st.binary(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=15,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(REGISTRY)), st.lists(msgpackable, max_size=10))
def test_fuzz_well_formed_msgpack_with_a_real_tag(tag, fields):
    _decode_or_reject(pack([tag, *fields]))


def test_ipv6_wide_ints_travel_as_the_bigint_extension_and_nothing_else_does():
    wire = codec.new_packer().pack((2**64, 2**128 - 1, 5))
    assert msgpack.unpackb(wire, ext_hook=codec._ext_hook) == [2**64, 2**128 - 1, 5]
    # an extension of another type or length is not an int: no field takes it
    raw = msgpack.packb((Ping.TAG, msgpack.ExtType(1, bytes(15)), 1))
    assert reason_of(raw) == codec.FIELD_TYPE
    raw = msgpack.packb((Ping.TAG, msgpack.ExtType(2, bytes(16)), 1))
    assert reason_of(raw) == codec.FIELD_TYPE
    # a 128-bit int in an int64 field is out of range
    assert reason_of(codec.new_packer().pack((Ping.TAG, 2**100, 1))) == codec.INT_RANGE
