"""Every registered message round-trips through the codec as its own type, for any field values.

The strategies (tests/fuzz/message_strategies.py) are written by hand from the brief's field list and the
wire vocabulary (not derived from messages.SCHEMA), so a schema that drifts from what senders put in the
fields fails here.
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backchannel import codec
from backchannel.messages import (
    BATCH_TAG,
    REGISTRY,
    SCHEMA,
    FlowPut,
    FlowStateBatch,
    FlowStateEntry,
    Ping,
    Upcall,
    UpcallBatch,
)
from tests.fuzz.message_strategies import message_strategies

MESSAGES = message_strategies()  # any text, any int64, any bytes where the wire takes them
any_message = st.one_of(*MESSAGES.values())


def test_every_registered_message_has_a_strategy():
    assert set(REGISTRY.values()) == set(MESSAGES)


def test_tags_are_unique_positive_ints_and_match_the_class():
    assert BATCH_TAG not in REGISTRY
    for tag, cls in REGISTRY.items():
        assert type(tag) is int and tag > 0
        assert cls.TAG == tag
        assert "TAG" not in cls._fields


def test_a_duplicate_tag_is_refused_at_definition():
    from typing import NamedTuple

    from backchannel.messages import message

    with pytest.raises(TypeError, match="already used"):
        @message
        class Clash(NamedTuple):
            TAG = Ping.TAG
            x: int


def test_an_annotation_that_is_not_a_wire_type_is_refused():
    from typing import NamedTuple

    from backchannel.messages import message

    with pytest.raises(TypeError, match="not a wire type"):
        @message
        class Weird(NamedTuple):
            TAG = 9999
            x: set[int]
    assert 9999 not in REGISTRY


def test_schema_covers_every_field():
    for cls, fields in SCHEMA.items():
        assert tuple(f.name for f in fields) == cls._fields


def _assert_same(decoded, msg):
    assert decoded == msg
    assert type(decoded) is type(msg)


@pytest.mark.parametrize("cls", list(MESSAGES), ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip(cls, data):
    msg = data.draw(MESSAGES[cls])
    wire = codec.encode(msg)
    decoded = codec.decode(wire)
    _assert_same(decoded, msg)
    assert codec.encode(decoded) == wire  # stable bytes
    # the wire shape is the documented one: an array (TAG, *fields)
    raw = msgpack.unpackb(wire, use_list=False, raw=False, strict_map_key=False)
    assert raw[0] == cls.TAG and len(raw) == 1 + len(cls._fields)


@settings(max_examples=100, deadline=None)
@given(st.lists(any_message, max_size=10))
def test_batch_frame_round_trip(msgs):
    got = codec.decode_many(codec.encode_many(msgs))
    assert got == msgs
    assert [type(m) for m in got] == [type(m) for m in msgs]


def test_nested_messages_come_back_as_their_types():
    batch = UpcallBatch((Upcall(1, "tenant.vm1", b"\x00" * 60), Upcall(2, "tenant.vm2", b"")))
    got = codec.decode(codec.encode(batch))
    assert all(type(u) is Upcall for u in got.upcalls)
    assert got.upcalls[1].port == "tenant.vm2"
    state = FlowStateBatch((FlowStateEntry("fwd_snat", (1, 2, 6, 3, 4, "r1"), (0xB4000164, 9043), 30.5),), 1)
    got = codec.decode(codec.encode(state))
    assert type(got.entries[0]) is FlowStateEntry and got.entries[0].value == (0xB4000164, 9043)


def test_a_single_message_frame_is_a_batch_of_one():
    assert codec.decode_many(codec.encode(Ping(1, 2))) == [Ping(1, 2)]


def test_lists_in_fields_come_back_as_tuples():
    msg = FlowPut(1, (), [["output", "q"]], ["t"], 1, 2.5)
    got = codec.decode(codec.encode(msg))
    assert got.actions == (("output", "q"),) and got.tags == ("t",)
    assert got.idle_s == 1 and got.hard_s == 2.5  # an int is a fine float
