"""Hypothesis strategies for every backchannel message, written by hand from the documented field lists (the
docstrings of backchannel/messages.py and the wire vocabulary they name), not derived from messages.SCHEMA: a
schema that drifts from what senders put in the fields fails the tests that use these.

``message_strategies(...)`` gives {message class: strategy} for messages a receiver must accept.  The pools
it draws from are parameters, so the same shapes serve two uses:

- the codec round trip (tests/unit/test_backchannel_messages.py): any text, any int64, any bytes;
- hostile contents (tests/fuzz/test_handlers_fuzz.py): names of real topology objects mixed with junk, seqs
  that may be in flight, frames that parse and frames that do not, extreme values of every range.

``malformed(msg, data)`` breaks one element deep inside a valid message (a key of the wrong arity, an action
with an unknown tag, a port out of its range, ...): what a receiver must refuse at decode.
"""

from __future__ import annotations

import msgpack
from hypothesis import strategies as st

from backchannel.messages import (
    FLOW_KEY_LEN,
    INT64_MAX,
    INT64_MIN,
    LEASE_FAILURES,
    MAX_STATE_PAGE,
    STORE_STATES,
    Answer,
    ArpLearned,
    DatapathRestarted,
    DelFlows,
    DumpFlows,
    DumpFlowTable,
    DumpState,
    DumpStatePage,
    DumpTable,
    Execute,
    Fanout,
    FlowAhead,
    FlowDelete,
    FlowPut,
    FlowRemoved,
    FlowStateBatch,
    FlowStateEntry,
    Fragment,
    FragmentRequest,
    Inject,
    InvalidateTags,
    LeaseFailed,
    LeaseGranted,
    LeaseRelease,
    LeaseRequest,
    MacLearned,
    PacketOut,
    Ping,
    Pong,
    PurgeWorker,
    Ready,
    RecallDone,
    Recover,
    Reinstall,
    SetLiveHosts,
    SetLogLevel,
    SetPortMap,
    SetStateAuth,
    Shutdown,
    StateRecall,
    StateRequest,
    StateToHosts,
    StatsReply,
    StatsRequest,
    StoreStatus,
    TableEntryRemoved,
    TakeLatencies,
    TakeOutputs,
    TopologyChanged,
    TraceRequest,
    TunnelFrames,
    Upcall,
    UpcallBatch,
)
from packet.flowkey import ADDR_BITS, IPV6_ADDR_FIELDS, KEY_SLOTS, MASKABLE
from workers.logs import LEVELS


def ranged(lo: int, hi: int) -> st.SearchStrategy[int]:
    """Ints in [lo, hi], with the bounds and their neighbours drawn often (where off-by-ones live)."""
    edges = sorted({lo, hi, min(lo + 1, hi), max(hi - 1, lo)})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


i64 = ranged(INT64_MIN, INT64_MAX)
u8, u16, u24, u32, u48 = ranged(0, 0xFF), ranged(0, 0xFFFF), ranged(0, 0xFFFFFF), ranged(0, 2**32 - 1), \
    ranged(0, 2**48 - 1)
u128 = ranged(0, 2**128 - 1)
ip_any = u32 | u128                                 # a flow-state key's address: IPv4 or IPv6
vlan_id = ranged(0, 4095)
seconds = st.one_of(st.sampled_from([0.0, 1e9, 0]), st.floats(0.0, 1e9))   # a timeout: 0 = none
any_float = st.floats(allow_nan=False)
FLOW_STATE_KINDS = ("conntrack", "fwd_snat", "rev_snat", "fwd_dnat", "rev_dnat", "fwd_stick_dnat")
# ("set", field, value): the fields the datapath can rewrite in place, by header width
SET_FIELDS = {
    "eth_src": u48, "eth_dst": u48, "vlan": st.none() | vlan_id, "vlan_pcp": ranged(0, 7),
    "ip_src": u32, "ip_dst": u32, "inner_ip_src": u32, "inner_ip_dst": u32,
    "ttl": u8, "tos": u8, "inner_ttl": u8, "inner_tos": u8,
    "tp_src": u16, "tp_dst": u16, "icmp_id": u16, "ip_id": u16, "inner_tp_src": u16, "inner_tp_dst": u16,
    "inner_icmp_id": u16, "inner_ip_id": u16,
    "ipv6_src": u128, "ipv6_dst": u128, "inner_ipv6_src": u128, "inner_ipv6_dst": u128,
    "hop_limit": u8, "tclass": u8, "inner_hop_limit": u8, "inner_tclass": u8,
    "flow_label": ranged(0, 2**20 - 1), "inner_flow_label": ranged(0, 2**20 - 1),
}


any_name = st.text(max_size=24)
any_frame = st.binary(max_size=300)


def message_strategies(name=any_name, frame=any_frame, seq=i64, index=i64,
                       port=None, device=None, host=None, payload=None) -> dict:
    """{class: strategy} of accepted messages.  ``name``: any str field; ``port``/``device``/``host``: port ids,
    device names and host names (default: ``name``); ``seq``: upcall seqs and flow ids; ``index``: worker /
    sender indexes and req_ids; ``payload``: the bytes of Fanout/StateToHosts (default: ``frame``)."""
    port = name if port is None else port
    device = name if device is None else device
    host = name if host is None else host
    payload = frame if payload is None else payload
    state_key = st.tuples(ip_any, ip_any, u8, u16, u16, device)
    set_action = st.sampled_from(sorted(SET_FIELDS)).flatmap(
        lambda f: st.tuples(st.just("set"), st.just(f), SET_FIELDS[f]))
    action = st.one_of(set_action, st.tuples(st.just("output"), port), st.tuples(st.just("tunnel"), u32, u24),
                       st.just(("drop",)))
    actions = st.lists(action, max_size=6).map(tuple)
    # a megaflow match: in_port whole, then any key slots, address slots whole or on a bit mask of their width
    match_item = st.sampled_from(KEY_SLOTS[1:]).flatmap(
        lambda f: st.tuples(st.just(f), st.just(-1) | st.integers(1, 2**ADDR_BITS[f] - 2) if f in MASKABLE
                            else st.just(-1)))
    match = st.just(()) | st.lists(match_item, max_size=8, unique_by=lambda p: p[0]).map(
        lambda items: (("in_port", -1), *items))
    flow_ids = st.lists(seq, max_size=8).map(tuple)           # a flow's id is the seq of its upcall
    tags = st.lists(name, max_size=6).map(tuple)
    flow_key = st.tuples(port, *[st.none() | (u128 if KEY_SLOTS[i] in IPV6_ADDR_FIELDS else i64)
                                 for i in range(1, FLOW_KEY_LEN + 1)])
    upcall = st.builds(Upcall, seq, port, frame)
    entry = st.builds(FlowStateEntry, st.sampled_from(FLOW_STATE_KINDS), state_key,
                      st.none() | st.tuples(ip_any, u16), any_float)
    answer_body = st.recursive(
        st.one_of(st.none(), st.booleans(), i64, any_float, name, frame),
        lambda inner: st.one_of(st.lists(inner, max_size=4).map(tuple),
                                st.dictionaries(st.one_of(name, i64), inner, max_size=4)),
        max_leaves=12)
    return {
        Upcall: upcall,
        UpcallBatch: st.builds(UpcallBatch, st.lists(upcall, max_size=64).map(tuple)),
        FlowPut: st.builds(FlowPut, seq, match, actions, tags, seconds, seconds),
        Execute: st.builds(Execute, seq, actions),
        PacketOut: st.builds(PacketOut, actions, frame),
        FlowDelete: st.builds(FlowDelete, flow_ids),
        FlowRemoved: st.builds(FlowRemoved, flow_ids, name),
        InvalidateTags: st.builds(InvalidateTags, tags, index),
        FlowStateEntry: entry,
        FlowStateBatch: st.builds(FlowStateBatch, st.lists(entry, max_size=8).map(tuple), index),
        ArpLearned: st.builds(ArpLearned, device, st.one_of(u32, u128), u48, index),
        MacLearned: st.builds(MacLearned, device, vlan_id, u48, port, index),
        TopologyChanged: st.builds(TopologyChanged, name, name),
        StatsRequest: st.builds(StatsRequest, index),
        StatsReply: st.builds(StatsReply, index, index, st.dictionaries(name, i64, max_size=8)),
        Ping: st.builds(Ping, i64, i64),
        Pong: st.builds(Pong, i64, i64),
        Shutdown: st.just(Shutdown()),
        FragmentRequest: st.builds(FragmentRequest, index, name, name),
        Fragment: st.builds(Fragment, name, name,
                            st.lists(st.tuples(name, name, st.none() | frame), max_size=4).map(tuple)),
        LeaseRequest: st.builds(LeaseRequest, index, device, u32, u16, u16),
        LeaseGranted: st.builds(LeaseGranted, device, u32, ranged(-1, 0xFFFF)),
        LeaseRelease: st.builds(LeaseRelease, index, device, u32, u16),
        Fanout: st.builds(Fanout, st.lists(index, max_size=4).map(tuple), payload),
        Inject: st.builds(Inject, port, st.lists(frame, max_size=4).map(tuple)),
        TunnelFrames: st.builds(TunnelFrames, u24, st.lists(frame, max_size=4).map(tuple)),
        DumpFlows: st.builds(DumpFlows, index),
        TakeOutputs: st.builds(TakeOutputs, index, st.none() | port),
        TakeLatencies: st.builds(TakeLatencies, index),
        SetPortMap: st.builds(SetPortMap, index, st.lists(st.tuples(port, name), max_size=4).map(tuple),
                              st.lists(st.tuples(u24, port), max_size=4).map(tuple),
                              st.lists(st.tuples(host, st.none() | u32), max_size=4).map(tuple)),
        PurgeWorker: st.builds(PurgeWorker, index, index),
        DumpState: st.builds(DumpState, index),
        Ready: st.builds(Ready, index, i64),
        Answer: st.builds(Answer, index, index, answer_body),
        TableEntryRemoved: st.builds(TableEntryRemoved, st.sampled_from(["mac", "arp"]), device, vlan_id,
                                     st.one_of(u48, u128)),
        StateRequest: st.builds(StateRequest, host, port),
        StateToHosts: st.builds(StateToHosts, st.lists(host, max_size=4).map(tuple), payload),
        SetStateAuth: st.builds(SetStateAuth, index, host, st.lists(st.binary(max_size=64), max_size=3).map(tuple)),
        SetLiveHosts: st.builds(SetLiveHosts, index, st.lists(host, max_size=4).map(tuple)),
        DumpFlowTable: st.builds(DumpFlowTable, index, index, i64, i64),
        DelFlows: st.builds(DelFlows, index, flow_ids),
        TraceRequest: st.builds(TraceRequest, index, port, frame),
        DumpTable: st.builds(DumpTable, index, name, device),
        StoreStatus: st.builds(StoreStatus, st.sampled_from(sorted(STORE_STATES.values))),
        LeaseFailed: st.builds(LeaseFailed, device, u32, st.sampled_from(sorted(LEASE_FAILURES.values))),
        DumpStatePage: st.builds(DumpStatePage, index, ranged(0, 2**63 - 1), ranged(1, MAX_STATE_PAGE)),
        # never a real level: a hostile one must not change the level of the process running the tests
        SetLogLevel: st.builds(SetLogLevel, index, name.filter(lambda t: t.upper() not in (*LEVELS, "WARN"))),
        DatapathRestarted: st.builds(DatapathRestarted, ranged(0, 2**22)),
        Reinstall: st.builds(Reinstall, seq, index, flow_key, match, actions, tags, seconds, seconds),
        FlowAhead: st.builds(FlowAhead, st.integers(-2**40, -1), index, flow_key, match, actions, tags, seconds,
                             seconds),
        StateRecall: st.builds(StateRecall, index),
        Recover: st.builds(Recover, st.lists(index, max_size=4).map(tuple)),
        RecallDone: st.builds(RecallDone, index),
    }


# ---- one element broken, deep inside an otherwise valid message ------------------------------------------

def _alien(v, data):
    """A value no wire shape accepts where ``v`` (an element of a valid message) was."""
    if type(v) is int:
        return data.draw(st.sampled_from([1.5, "x", None, True, (1,)]))
    if type(v) is str:
        return data.draw(st.sampled_from([1, b"x", None, (), True]))
    return data.draw(st.sampled_from([1, "x", (1,), 1.5]))                       # bytes (or None: bytes|None)


def _break_tuple(t: tuple, data) -> tuple:
    """``t`` (a fixed-arity tuple) with one element replaced by an alien, one added or one removed."""
    op = data.draw(st.sampled_from(["replace", "add", "remove"] if t else ["add"]))
    if op == "add":
        return (*t, data.draw(st.sampled_from([0, "x", None])))
    i = data.draw(st.integers(0, len(t) - 1))
    if op == "remove":
        return t[:i] + t[i + 1:]
    return t[:i] + (_alien(t[i], data),) + t[i + 1:]


BREAKERS = {
    # (class, field): how to break one of its elements; each keeps the field's top-level type a tuple/int/str
    (FlowStateEntry, "key"): lambda v, data: _break_tuple(v, data),
    (FlowStateEntry, "kind"): lambda v, data: data.draw(st.sampled_from(["", "CONNTRACK", "snat", "ct"])),
    (FlowStateEntry, "value"): lambda v, data: _break_tuple(v or (1, 2), data),
    (MacLearned, "vlan"): lambda v, data: data.draw(st.sampled_from([-1, 4096, 2**40])),
    (MacLearned, "mac"): lambda v, data: data.draw(st.sampled_from([-1, 2**48])),
    (ArpLearned, "ip"): lambda v, data: data.draw(st.sampled_from([-1, -2**40])),
    (TableEntryRemoved, "entry"): lambda v, data: data.draw(st.sampled_from([-1, -2**40])),
    (LeaseGranted, "block"): lambda v, data: data.draw(st.sampled_from([-2, 65536, 2**62])),
    (StoreStatus, "state"): lambda v, data: data.draw(st.sampled_from(["", "CONNECTED", "down"])),
    (LeaseFailed, "reason"): lambda v, data: data.draw(st.sampled_from(["", "exhausted", "STORE_BUSY"])),
    (DumpStatePage, "limit"): lambda v, data: data.draw(st.sampled_from([0, -1, MAX_STATE_PAGE + 1])),
    (DumpStatePage, "cursor"): lambda v, data: data.draw(st.sampled_from([-1, -2**40])),
    (LeaseRequest, "port_end"): lambda v, data: data.draw(st.sampled_from([-1, 65536])),
    (TunnelFrames, "vni"): lambda v, data: data.draw(st.sampled_from([-1, 2**24])),
    (TableEntryRemoved, "kind"): lambda v, data: data.draw(st.sampled_from(["", "MAC", "route"])),
    (FlowPut, "idle_s"): lambda v, data: data.draw(st.sampled_from([-1.0, float("nan"), float("inf"), 1e10])),
    (FlowPut, "match"): lambda v, data: data.draw(st.sampled_from([(1,), ("in_port",), ((),), (("in_port", 0),),
                                                                    (("tp_dst", 0xFF),), (("ip_dst", 2**32),),
                                                                    (("ipv6_dst", -2),), (("hop_limit", 7),),
                                                                    (("payload", -1),), (("ip_dst", -2),)])),
    (Reinstall, "match"): lambda v, data: data.draw(st.sampled_from([(1,), ("in_port",), ((),), (("in_port", 0),),
                                                                      (("ip_dst", 2**32),), (("payload", -1),)])),
    (Reinstall, "key"): lambda v, data: data.draw(st.sampled_from([
        v[:-1], (*v, 0), (1, *v[1:]), (v[0], "x", *v[2:]), (v[0], 1.5, *v[2:]), (v[0], 2**63, *v[2:])])),
    (FlowAhead, "key"): lambda v, data: data.draw(st.sampled_from([
        v[:-1], (*v, 0), (1, *v[1:]), (v[0], "x", *v[2:]), (v[0], 1.5, *v[2:]), (v[0], 2**63, *v[2:])])),
    (FlowAhead, "match"): lambda v, data: data.draw(st.sampled_from([(1,), ("in_port",), ((),), (("in_port", 0),),
                                                                      (("ip_dst", 2**32),), (("payload", -1),)])),
    (DatapathRestarted, "epoch"): lambda v, data: data.draw(st.sampled_from([-1, 2**22 + 1])),
    (StatsReply, "counters"): lambda v, data: {**v, data.draw(st.sampled_from(["a", "b"])): data.draw(
        st.sampled_from([1.5, "x", None, (1,)]))},
    (Fragment, "records"): lambda v, data: (*v, _break_tuple(("bridge", "b", b"{}"), data)),
    (SetPortMap, "keys"): lambda v, data: (*v, data.draw(st.sampled_from([(2**24, "p"), (1,), ("p", 1)]))),
    (SetPortMap, "hosts"): lambda v, data: (*v, data.draw(st.sampled_from([("h", -1), ("h",), ("h", "1.2.3.4")]))),
    (SetPortMap, "ports"): lambda v, data: (*v, data.draw(st.sampled_from([("p",), ("p", 1), (1, "eth0")]))),
}


def bad_action(data) -> tuple:
    return data.draw(st.sampled_from([
        ("set", "ip_src", 2**32), ("set", "ip_src", -1), ("set", "ipv6_dst", -1),
        ("set", "ipv6_src", msgpack.ExtType(1, bytes(17))),
        ("set", "flow_label", 2**20), ("set", "hop_limit", 256), ("set", "tp_dst", 65536), ("set", "ttl", 256),
        ("set", "eth_type", 0x800), ("set", "payload", b""), ("set", "vlan", 4096), ("set", "ip_src", None),
        ("set", "ip_src"), ("set",), ("output",), ("output", 5), ("output", "p", "q"), ("tunnel", 1),
        ("tunnel", 2**32, 1), ("tunnel", 1, 2**24), ("drop", 1), ("goto", 1), (), (1,), "drop",
    ]))


def malformed(msg: tuple, data) -> tuple | None:
    """``msg`` with one element broken so that decode must refuse it, or None if ``msg`` has no such element.
    The result is a plain tuple (TAG, *fields) to pack, not a message (encode would not be fair to it)."""
    cls = type(msg)
    fields = list(msg)
    choices = [f for c, f in BREAKERS if c is cls]
    if cls in (FlowPut, Execute, PacketOut, Reinstall, FlowAhead):
        choices.append("actions")
    if cls is FlowStateBatch and msg.entries:
        choices.append("entries")
    if cls is UpcallBatch and msg.upcalls:
        choices.append("upcalls")
    if not choices:
        return None
    f = data.draw(st.sampled_from(choices))
    i = cls._fields.index(f)
    v = fields[i]
    if f == "actions":
        acts = list(v)
        acts.insert(data.draw(st.integers(0, len(acts))), bad_action(data))
        fields[i] = tuple(acts)
    elif f == "entries":
        j = data.draw(st.integers(0, len(v) - 1))
        entry = v[j]
        broken = malformed(entry, data)
        fields[i] = v[:j] + (tuple(broken[1:]),) + v[j + 1:]
    elif f == "upcalls":
        j = data.draw(st.integers(0, len(v) - 1))
        fields[i] = v[:j] + (_break_tuple(tuple(v[j]), data),) + v[j + 1:]
    else:
        fields[i] = BREAKERS[(cls, f)](v, data)
    return (cls.TAG, *fields)
