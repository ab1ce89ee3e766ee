"""Every registered message round-trips through the codec as its own type, for any field values.

The strategies below are written by hand from the brief's field list (not derived from messages.SCHEMA),
so a schema that drifts from what senders put in the fields fails here.
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backchannel import codec
from backchannel.messages import (
    BATCH_TAG,
    INT64_MAX,
    INT64_MIN,
    REGISTRY,
    SCHEMA,
    Answer,
    ArpLearned,
    DelFlows,
    DumpFlows,
    DumpFlowTable,
    DumpState,
    DumpTable,
    Execute,
    Fanout,
    FlowDelete,
    FlowPut,
    FlowRemoved,
    FlowStateBatch,
    FlowStateEntry,
    Fragment,
    FragmentRequest,
    Inject,
    InvalidateTags,
    LeaseGranted,
    LeaseRelease,
    LeaseRequest,
    MacLearned,
    PacketOut,
    Ping,
    Pong,
    PurgeWorker,
    Ready,
    SetLogLevel,
    SetPortMap,
    SetStateAuth,
    Shutdown,
    StateRequest,
    StateToHosts,
    StatsReply,
    StatsRequest,
    TableEntryRemoved,
    TakeLatencies,
    TakeOutputs,
    TopologyChanged,
    TraceRequest,
    TunnelFrames,
    Upcall,
    UpcallBatch,
)

i64 = st.integers(INT64_MIN, INT64_MAX)
name = st.text(max_size=24)
frame = st.binary(max_size=300)
secs = st.floats(allow_nan=False)
scalar = st.one_of(st.none(), st.booleans(), i64, secs, name, frame)
key = st.lists(scalar, max_size=10).map(tuple)
anything = st.recursive(
    scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4).map(tuple),
                            st.dictionaries(st.one_of(name, i64), inner, max_size=4)),
    max_leaves=12,
)
action = st.one_of(
    st.tuples(st.just("set"), name, st.one_of(i64, name)),
    st.tuples(st.just("output"), name),
    st.tuples(st.just("tunnel"), i64, i64),
    st.just(("drop",)),
)
actions = st.lists(action, max_size=6).map(tuple)
flow_ids = st.lists(i64, max_size=8).map(tuple)  # a flow's id is the seq of its upcall
upcall = st.builds(Upcall, i64, name, frame)
flow_state_entry = st.builds(FlowStateEntry, name, key, anything, secs)

MESSAGES = {
    Upcall: upcall,
    UpcallBatch: st.builds(UpcallBatch, st.lists(upcall, max_size=64).map(tuple)),
    FlowPut: st.builds(FlowPut, i64, st.just(()), actions, st.lists(name, max_size=6).map(tuple), secs, secs),
    Execute: st.builds(Execute, i64, actions),
    PacketOut: st.builds(PacketOut, actions, frame),
    FlowDelete: st.builds(FlowDelete, flow_ids),
    FlowRemoved: st.builds(FlowRemoved, flow_ids, name),
    InvalidateTags: st.builds(InvalidateTags, st.lists(name, max_size=8).map(tuple), i64),
    FlowStateEntry: flow_state_entry,
    FlowStateBatch: st.builds(FlowStateBatch, st.lists(flow_state_entry, max_size=8).map(tuple), i64),
    ArpLearned: st.builds(ArpLearned, name, i64, i64, i64),
    MacLearned: st.builds(MacLearned, name, i64, i64, name, i64),
    TopologyChanged: st.builds(TopologyChanged, name, name),
    StatsRequest: st.builds(StatsRequest, i64),
    StatsReply: st.builds(StatsReply, i64, i64, st.dictionaries(name, i64, max_size=8)),
    Ping: st.builds(Ping, i64, i64),
    Pong: st.builds(Pong, i64, i64),
    Shutdown: st.just(Shutdown()),
    FragmentRequest: st.builds(FragmentRequest, i64, name, name),
    Fragment: st.builds(Fragment, name, name,
                        st.lists(st.tuples(name, name, st.one_of(st.none(), frame)), max_size=4).map(tuple)),
    LeaseRequest: st.builds(LeaseRequest, i64, name, i64, i64, i64),
    LeaseGranted: st.builds(LeaseGranted, name, i64, i64),
    LeaseRelease: st.builds(LeaseRelease, i64, name, i64, i64),
    Fanout: st.builds(Fanout, st.lists(i64, max_size=4).map(tuple), frame),
    Inject: st.builds(Inject, name, st.lists(frame, max_size=4).map(tuple)),
    TunnelFrames: st.builds(TunnelFrames, i64, st.lists(frame, max_size=4).map(tuple)),
    DumpFlows: st.builds(DumpFlows, i64),
    TakeOutputs: st.builds(TakeOutputs, i64, st.one_of(st.none(), name)),
    TakeLatencies: st.builds(TakeLatencies, i64),
    SetPortMap: st.builds(SetPortMap, i64, st.lists(st.tuples(name, name), max_size=4).map(tuple),
                          st.lists(st.tuples(i64, name), max_size=4).map(tuple),
                          st.lists(st.tuples(name, name), max_size=4).map(tuple)),
    PurgeWorker: st.builds(PurgeWorker, i64, i64),
    DumpState: st.builds(DumpState, i64),
    Ready: st.builds(Ready, i64, i64),
    SetStateAuth: st.builds(SetStateAuth, i64, name, st.lists(st.binary(min_size=16, max_size=64), max_size=3)
                            .map(tuple)),
    DumpFlowTable: st.builds(DumpFlowTable, i64, i64, i64, i64),
    DelFlows: st.builds(DelFlows, i64, st.lists(i64, max_size=5).map(tuple)),
    TraceRequest: st.builds(TraceRequest, i64, name, frame),
    DumpTable: st.builds(DumpTable, i64, name, name),
    SetLogLevel: st.builds(SetLogLevel, i64, name),
    Answer: st.builds(Answer, i64, i64, anything),
    TableEntryRemoved: st.builds(TableEntryRemoved, name, name, i64, i64),
    StateRequest: st.builds(StateRequest, name, name),
    StateToHosts: st.builds(StateToHosts, st.lists(name, max_size=4).map(tuple), frame),
}
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
