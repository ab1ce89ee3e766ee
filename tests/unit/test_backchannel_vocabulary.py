"""The wire vocabulary (backchannel/messages.py) is the wire form of things other layers define: each shape is
checked here against its definition, and the codec's compiled checks against the grammar's plain reading.

backchannel is a leaf package, so it cannot import what it describes; these tests are the link.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backchannel import codec, shapes
from backchannel import messages as m
from backchannel.messages import SCHEMA
from tests.fuzz.message_strategies import malformed, message_strategies

pack = codec.new_packer().pack


def test_a_state_key_is_workers_state_key():
    from workers.simulation.result import StateKey

    assert StateKey._fields == ("src", "dst", "proto", "sport", "dport", "device")
    assert [i.hi if type(i) is shapes.Int else i for i in m.STATE_KEY.items] == [
        2**128 - 1, 2**128 - 1, 255, 65535, 65535, str]


def test_a_flow_key_is_the_datapaths_flow_key():
    from packet.flowkey import flow_key
    from packet.packet import FLOW_KEY_FIELDS
    from packet.spec import parse_spec

    assert m.FLOW_KEY_LEN == len(FLOW_KEY_FIELDS)
    key = flow_key(parse_spec("ip_src=10.0.0.1,ip_dst=10.0.0.2,proto=tcp,tp_src=1,tp_dst=2"), "b.p1")
    for match in ((), (("in_port", -1), ("ip_dst", 0xFFFFFF00))):
        msg = m.Reinstall(1, 0, key, match, (), (), 0.0, 0.0)
        assert msg == codec.decode(codec.encode(msg))


def test_the_flow_state_kinds_are_the_simulations():
    from workers.simulation.result import CONNTRACK, NAT_KINDS

    assert m.FLOW_STATE_KINDS.values == {CONNTRACK, *NAT_KINDS}


def _tags(tagged: shapes.Tagged) -> set[str]:
    return {t for tags, _ in tagged.cases for t in tags}


def test_the_settable_fields_are_what_the_datapath_rewrites_and_a_flow_may_set():
    from packet.rewrite import REWRITABLE, REWRITABLE_IPV6
    from workers.plan import REWRITABLE as SIMULATION_SETS

    assert _tags(m.SET_FIELDS) == REWRITABLE | REWRITABLE_IPV6
    assert set(SIMULATION_SETS) <= REWRITABLE | REWRITABLE_IPV6


def test_the_actions_are_the_flow_caches():
    from engine.datapath.flowcache import compile_actions

    assert _tags(m.ACTION) == {"set", "output", "tunnel", "drop"}
    compiled = compile_actions((("set", "ttl", 3), ("output", "p"), ("tunnel", 1, 2), ("drop",)))
    assert [c[1:] for c in compiled] == [("output", "p", None), ("tunnel", 1, 2)]
    with pytest.raises(ValueError):
        compile_actions((("goto", 1),))


def test_a_tunnel_key_is_24_bits_and_the_table_kinds_are_the_stores():
    from topology.model import TUNNEL_KEY_FLOW_STATE

    assert m.U24.hi == TUNNEL_KEY_FLOW_STATE
    assert m.TABLE_KINDS.values == {"mac", "arp"}


def test_the_answers_of_every_process_pass_their_own_receivers_decode():
    """What the worker and the datapath put in StatsReply (and the simulation in FlowPut) is what decode takes."""
    from tests.inprocess import Wire, vm1_to_vm2

    wire = Wire()
    try:
        wire.inject("tenant.vm1", vm1_to_vm2(4000))
        for w in wire.workers:
            codec.validate(m.StatsReply(1, w.i, w.stats()))
        codec.validate(m.StatsReply(1, -1, wire.dp.stats()))
        assert wire.answers(m.FlowPut)
    finally:
        wire.close()


# ---- the compiled checks read the grammar as shapes.conforms does --------------------------------------------

MESSAGES = message_strategies()


def _conforms(msg: tuple) -> bool:
    """The message's fields against their shapes, by the obvious reading of the grammar."""
    for f, v in zip(SCHEMA[type(msg)], msg, strict=True):
        if f.kind == "shape" and not shapes.conforms(v, f.shape):
            return False
        if f.kind == "msgs" and not all(_conforms(x) for x in v):
            return False
    return True


@pytest.mark.parametrize("cls", [c for c, fs in SCHEMA.items() if any(f.kind in ("shape", "msgs") for f in fs)],
                         ids=lambda c: c.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_decode_accepts_what_conforms_and_refuses_one_broken_element(cls, data):
    msg = data.draw(MESSAGES[cls])
    assert _conforms(msg)
    assert codec.decode(codec.encode(msg)) == msg
    broken = malformed(msg, data)
    if broken is None:
        return
    with pytest.raises(codec.DecodeError) as info:
        codec.decode(pack(broken))
    assert info.value.reason in (codec.FIELD_TYPE, codec.INT_RANGE, codec.ARITY)    # ARITY: a nested message


def test_shapes_refuse_what_is_not_one():
    for bad in (list, set, shapes.Int(3, 1), shapes.Enum(frozenset()), shapes.tup(shapes.Int(), "x")):
        assert not shapes.is_shape(bad)
    with pytest.raises(TypeError):
        shapes.one_of(shapes.Int(), shapes.Int(0, 1))         # two alternatives of one type cannot be told apart
    with pytest.raises(TypeError):
        shapes.tagged({"a": shapes.Int()})                    # what follows a tag is a Tup or a Tagged


def test_the_match_fields_are_the_flow_key_slots_and_the_maskable_ones_take_bits():
    from packet.flowkey import KEY_SLOTS, MASKABLE

    assert _tags(m.MATCH_FIELD) == set(KEY_SLOTS)
    partial = {t for tags, rest in m.MATCH_FIELD.cases if rest.items[0].hi > 0 for t in tags}
    assert partial == MASKABLE
