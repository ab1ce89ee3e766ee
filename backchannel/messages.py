"""Every message that crosses a process boundary, defined once (kazoo's protocol style).

This module owns the *vocabulary* of the backchannel: each wire message is a ``typing.NamedTuple`` with a
class-level integer ``TAG``, registered through the ``@message`` decorator into ``REGISTRY`` (tag -> class).
The codec (backchannel/codec.py) owns the bytes; socket setup lives in backchannel/sockets.py.

Wire shape: a message travels as the msgpack array ``[TAG, field0, field1, ...]``.  A message nested in a
field (an ``Upcall`` inside an ``UpcallBatch``) travels as its bare field array, without a tag: the schema of
the outer message says what it is.  Tag 0 is reserved for the batch frame ``[0, [TAG, ...], [TAG, ...]]``.

Field annotations are the schema.  ``@message`` turns them into ``SCHEMA[cls]``, a tuple of ``Field`` records
that the codec compiles into one validating constructor per message.  Allowed annotations:

  int                       an int in the int64 range (bool is *not* an int here)
  float                     a float or an int
  str, bytes, bool          exactly that type; ``X | None`` adds None
  tuple[str, ...]           a tuple whose elements are all of that scalar type
  tuple[Msg, ...] / Msg     nested registered messages, rebuilt as their types
  tuple[A, B], dict[K, V]   a tuple of exactly these elements / a dict of these keys and values, each checked
  Annotated[T, shape]       a wire shape (backchannel/shapes.py): ranges, enums, fixed tuples, tagged tuples
  Any                       unchecked: only ``Answer.body`` (a child's answer, which the supervisor only stores)

A bare ``tuple`` or ``dict`` is not a wire type: a field says what it holds, element by element, so that a
message that passes decode holds nothing its handler does not expect (the wire vocabulary below names the
shapes: flow-state keys, NAT bindings, actions, fragment records, port-map pairs).  Lists come back as tuples.

Who sends what (→ receiver):
  datapath → dispatcher → worker    UpcallBatch
  worker → datapath                 FlowPut (install + execute), Execute (execute only), PacketOut
                                    (a generated packet), FlowDelete
  datapath → worker                 FlowRemoved
  worker → all workers (broadcast)  InvalidateTags, FlowStateBatch, ArpLearned, MacLearned
  store shell → workers             TopologyChanged
  supervisor ↔ any process          StatsRequest/StatsReply, Ping/Pong, Shutdown, Ready (at start)
  worker → supervisor (store shell) FragmentRequest, LeaseRequest, LeaseRelease
  supervisor → worker               Fragment, LeaseGranted, LeaseFailed, StoreStatus, MacLearned/ArpLearned
                                    (learned by other agents), TableEntryRemoved, DumpState, DumpStatePage,
                                    TraceRequest, DumpTable, SetLogLevel
  supervisor → datapath             DumpFlows, DumpFlowTable, DelFlows, TakeOutputs, TakeLatencies,
                                    SetPortMap, PurgeWorker, SetStateAuth, SetLiveHosts, SetLogLevel
  datapath → supervisor             StateRequest (authenticated, from another host: checked there)
  process → supervisor              Answer (to a command with a non-zero req_id)
  worker → supervisor               MacLearned/ArpLearned (written to the replicated tables)
  worker → datapath → workers       Fanout (ordered relay: state reaches a worker before any later upcall)
  worker → datapath → other hosts   StateToHosts (flow state on the reserved VNI, before the install)
  host → host (flow-state key)      StateRequest (a port moved here: send us your flow state)
  traffic source → datapath         Inject (a synthetic port), TunnelFrames (another host's tunnel)
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, NamedTuple

from backchannel import shapes
from backchannel.shapes import (
    Float,
    Int,
    MapOf,
    TupOf,
    enum,
    is_shape,
    one_of,
    tagged,
    top_types,
    tup,
)

BATCH_TAG = 0  # reserved: the batch frame of codec.encode_many
DATAPATH_INDEX = -1  # ``sender`` / target index of the datapath process (workers are 0..N-1)
INT64_MIN, INT64_MAX = shapes.INT64_MIN, shapes.INT64_MAX  # the range of an ``int`` field

# ---------------------------------------------------------------------------------------------------------
# the wire vocabulary: what the fields hold, element by element (backchannel/shapes.py is the grammar).  A
# leaf package: these are the wire forms of things other layers define, checked against them by tests
# (tests/unit/test_backchannel_vocabulary.py).

U8, U16, U24, U32, U48 = Int(0, 0xFF), Int(0, 0xFFFF), Int(0, 0xFFFFFF), Int(0, 0xFFFFFFFF), Int(0, 2**48 - 1)
U20, U128 = Int(0, 2**20 - 1), Int(0, 2**128 - 1)  # an IPv6 flow label; an IPv6 address (codec.BIGINT_EXT)
VLAN_ID = Int(0, 4095)
SECONDS = Float(0.0, 1e9)                         # a timeout or lifetime (0 = none); NaN and negatives refused

Ip = Annotated[int, U32]                          # an IPv4 address
Mac = Annotated[int, U48]
Vlan = Annotated[int, VLAN_ID]                    # 0: untagged
L4Port = Annotated[int, U16]
TunnelKey = Annotated[int, U24]                   # a VXLAN network identifier
Seconds = Annotated[float, SECONDS]

# A flow-state key: workers.simulation.result.StateKey (src ip, dst ip, proto, sport, dport, device); the
# addresses are IPv4 or IPv6 (an address wider than 32 bits is IPv6: packet.flowkey.tuple_hash).
STATE_KEY = tup(U128, U128, U8, U16, U16, str)
# The kinds of flow-state entries: workers.simulation.result.CONNTRACK and NAT_KINDS.
FLOW_STATE_KINDS = enum("conntrack", "fwd_snat", "rev_snat", "fwd_dnat", "rev_dnat", "fwd_stick_dnat")
# A flow-state entry's value: None (conntrack) or a NAT binding (ip, port).
STATE_VALUE = one_of(None, tup(U128, U16))

# ("set", field, value): the fields the datapath rewrites in place (packet.rewrite.REWRITABLE and
# REWRITABLE_IPV6), each with the range of its header field; only the VLAN may be set to None (pop the tag).
SET_FIELDS = tagged({
    ("eth_src", "eth_dst"): tup(U48),
    ("ip_src", "ip_dst", "inner_ip_src", "inner_ip_dst"): tup(U32),
    ("ipv6_src", "ipv6_dst", "inner_ipv6_src", "inner_ipv6_dst"): tup(U128),
    ("ttl", "tos", "inner_ttl", "inner_tos", "hop_limit", "tclass", "inner_hop_limit", "inner_tclass"): tup(U8),
    ("flow_label", "inner_flow_label"): tup(U20),
    ("tp_src", "tp_dst", "icmp_id", "ip_id", "inner_tp_src", "inner_tp_dst", "inner_icmp_id", "inner_ip_id"):
        tup(U16),
    "vlan": tup(one_of(None, VLAN_ID)),
    "vlan_pcp": tup(Int(0, 7)),
})
# A datapath action (engine/datapath/flowcache.py): ("set", field, value), ("output", port id),
# ("tunnel", host ip, tunnel key), ("drop",).
ACTION = tagged({"set": SET_FIELDS, "output": tup(str), "tunnel": tup(U32, U24), "drop": tup()})
Actions = Annotated[tuple, TupOf(ACTION)]
# A flow's match (packet.flowkey: the wire form of a mask): (field, mask) pairs naming the key slots the flow
# matches on, the rest wildcarded; mask -1 = the whole field, or a bit mask for an address field (a prefix,
# prefix tracking; 32 bits for IPv4, 128 for IPv6: packet.flowkey.ADDR_BITS).  () = exactly the upcall's
# key.  Which pairs make a match (in_port present, no field twice, no zero mask) the datapath checks at
# install (packet.flowkey.slot_mask), counting bad_matches.
MATCH_FIELD = tagged({
    ("in_port", "eth_src", "eth_dst", "eth_type", "vlan", "arp_op", "proto", "ttl", "tos", "frag", "tp_src",
     "tp_dst", "icmp_type", "icmp_code", "icmp_id", "inner_proto", "inner_tp_src", "inner_tp_dst",
     "inner_icmp_id", "hop_limit", "tclass", "icmpv6_type", "icmpv6_code", "nd_sll", "nd_tll"): tup(Int(-1, -1)),
    ("arp_spa", "arp_tpa", "ip_src", "ip_dst", "inner_ip_src", "inner_ip_dst"): tup(Int(-1, 0xFFFFFFFF)),
    ("ipv6_src", "ipv6_dst", "nd_target", "inner_ipv6_src", "inner_ipv6_dst"): tup(Int(-1, 2**128 - 1)),
})
Match = Annotated[tuple, TupOf(MATCH_FIELD, 64)]
# A topology record of a Fragment: (kind, name, record JSON bytes, or None when the object does not exist).
FRAGMENT_RECORD = tup(str, str, one_of(None, bytes))
TABLE_KINDS = enum("mac", "arp")                  # the replicated tables (TableEntryRemoved.kind)
# A datapath flow key: packet.flowkey.flow_key — (in_port, *packet.packet.FLOW_KEY_FIELDS values): the
# ingress port id, then 35 header fields, each an int or None: 24 of int64 (the IPv4-era slots), then the IPv6
# ones (packet.packet.FLOW_KEY_FIELDS): the five address slots 128-bit, the rest int64.
FLOW_KEY_LEN = 35
_K64, _K128 = one_of(None, Int(INT64_MIN, INT64_MAX)), one_of(None, U128)
FLOW_KEY = tup(str, *[_K64] * 24, _K128, _K128, _K64, _K64, _K64, _K64, _K128, _K64, _K64, _K128, _K128)
# Flow ids and upcall seqs carry the datapath's incarnation in their high bits (engine/dpproc.py): seqs of a
# restarted datapath never name a flow of an earlier one.
EPOCH_SHIFT = 40
STORE_STATES = enum("connected", "suspended", "lost")     # the store session's state (StoreStatus)
# why a lease was not answered with a block (LeaseFailed): the store did not answer in time (quorum lost), the
# supervisor's queue of store calls was full, or the call failed otherwise
LEASE_FAILURES = enum("store_unavailable", "store_busy", "store_error")
MAX_STATE_PAGE = 4096                             # flow-state entries per DumpStatePage answer at most
DUMP_STATE_MAX = 20_000                           # flow-state entries one DumpState answer holds at most

REGISTRY: dict[int, type] = {}  # TAG -> message class
SCHEMA: dict[type, tuple[Field, ...]] = {}  # message class -> its fields


class Field(NamedTuple):
    """One field of a message schema.

    kind: "scalar" (types = accepted python types), "tuple_of" (tuple whose elements are of ``types``),
    "msg" (one nested message ``sub``), "msgs" (tuple of ``sub``), "shape" (a wire shape ``shape``; ``types``
    its top-level types), "any" (unchecked).
    """

    name: str
    kind: str
    types: frozenset = frozenset()
    sub: type | None = None
    shape: object = None


_SCALARS = {int, float, str, bytes, bool, type(None)}


def _scalar_types(hint: Any) -> frozenset | None:
    """The accepted types of a scalar annotation, or None if it is not one (float also takes int)."""
    if hint is None or hint is type(None):
        return frozenset({type(None)})
    if hint in _SCALARS:
        return frozenset({float, int}) if hint is float else frozenset({hint})
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        parts = [_scalar_types(a) for a in typing.get_args(hint)]
        if all(p is not None for p in parts):
            return frozenset().union(*parts)
    return None


def _hint_types(hint: Any) -> frozenset:
    """The top-level Python types an annotation's values may have (``tuple | None`` → {tuple, NoneType})."""
    scalar = _scalar_types(hint)
    if scalar is not None:
        return scalar
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return frozenset().union(*(_hint_types(a) for a in typing.get_args(hint)))
    return frozenset({typing.get_origin(hint) or hint})


def _shape_of(hint: Any):
    """The wire shape of an annotation, its elements included; TypeError if it has none."""
    if hint is None or hint is type(None):
        return None
    if hint in _SCALARS:
        return Int() if hint is int else hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        shapes = [a for a in args[1:] if is_shape(a)]
        if len(shapes) == 1 and top_types(shapes[0]) <= _hint_types(args[0]):
            return shapes[0]
    elif isinstance(hint, types.UnionType) or origin is typing.Union:
        return one_of(*(_shape_of(a) for a in args))
    elif origin is tuple:                              # tuple[()] has no args: the empty tuple
        if len(args) == 2 and args[1] is Ellipsis:
            return TupOf(_shape_of(args[0]))
        return tup(*(_shape_of(a) for a in args))
    elif origin is dict and args:
        return MapOf(_shape_of(args[0]), _shape_of(args[1]))
    raise TypeError(f"{hint!r} has no wire shape")


def _field(name: str, hint: Any) -> Field:
    scalar = _scalar_types(hint)
    if scalar is not None:
        return Field(name, "scalar", scalar)
    if hint in SCHEMA:
        return Field(name, "msg", sub=hint)
    if hint is Any:
        return Field(name, "any")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if args[0] in SCHEMA:
            return Field(name, "msgs", frozenset({tuple}), sub=args[0])
        elem = _scalar_types(args[0])
        if elem is not None:
            return Field(name, "tuple_of", elem)
    try:
        shape = _shape_of(hint)
    except TypeError:
        shape = None
    if shape is not None:
        return Field(name, "shape", top_types(shape), shape=shape)
    raise TypeError(f"field {name!r}: annotation {hint!r} is not a wire type")


def message(cls: type) -> type:
    """Register a NamedTuple message class under its ``TAG`` and derive its schema from its annotations."""
    tag = cls.__dict__.get("TAG")
    if type(tag) is not int or tag <= BATCH_TAG:
        raise TypeError(f"{cls.__name__}: TAG must be a positive int, got {tag!r}")
    if tag in REGISTRY:
        raise TypeError(f"{cls.__name__}: TAG {tag} already used by {REGISTRY[tag].__name__}")
    hints = typing.get_type_hints(cls, globalns=globals(), include_extras=True)
    SCHEMA[cls] = tuple(_field(name, hints[name]) for name in cls._fields)
    REGISTRY[tag] = cls
    return cls


# ---------------------------------------------------------------------------------------------------------
# datapath ↔ dispatcher ↔ worker: the seam.  The datapath keeps each upcall's frame, parsed packet and flow
# key under its ``seq``; the worker answers by ``seq`` alone, so nothing is parsed again or shipped back.
# An installed flow is named by the ``seq`` of the upcall that made it (its flow id, as OVS names flows by
# ufid): FlowDelete / FlowRemoved carry flow ids, never keys.


@message
class Upcall(NamedTuple):
    """A flow-cache miss: ``frame`` arrived on ``port`` (a ``device.port`` name); ``seq`` is the datapath's
    upcall number, answered by exactly one FlowPut or Execute."""

    TAG = 1
    seq: int
    port: str
    frame: bytes


@message
class UpcallBatch(NamedTuple):
    """Up to 64 upcalls in one frame (datapath → dispatcher → worker)."""

    TAG = 2
    upcalls: tuple[Upcall, ...]


@message
class FlowPut(NamedTuple):
    """Worker → datapath: install a flow for upcall ``seq`` and execute its packet (and those held back for
    the same flow) with ``actions``.

    ``match`` is the mask (MATCH_FIELD pairs) applied to the upcall's key, which the datapath holds: the flow
    matches every packet whose key agrees with it on those fields (a megaflow); () = exactly the upcall's key.
    ``actions`` are tuples (ACTION): ("set", field, value), ("output", port), ("tunnel", host_ip, tunnel_key),
    ("drop",).  ``tags`` name every device/entry the decision read (workers.tags).  ``idle_s``/``hard_s``
    are timeouts in seconds (0 = none).  The flow's id is ``seq``."""

    TAG = 10
    seq: int
    match: Match
    actions: Actions
    tags: tuple[str, ...]
    idle_s: Seconds
    hard_s: Seconds


@message
class Execute(NamedTuple):
    """Worker → datapath: execute upcall ``seq``'s packet with ``actions`` and install nothing (a consumed
    packet, a malformed frame).  Packets held back for the same flow are upcalled again, without a parse."""

    TAG = 11
    seq: int
    actions: Actions


@message
class PacketOut(NamedTuple):
    """Worker → datapath: emit a packet the agent generated (ARP request, ICMP error/reply), executed with
    ``actions`` (output to a local port, or a tunnel to the host of the port; rewrites when it crossed a
    device on the way)."""

    TAG = 14
    actions: Actions
    frame: bytes


@message
class FlowDelete(NamedTuple):
    """Worker → datapath: remove these flows (by flow id; invalidated or expired on the worker's side)."""

    TAG = 12
    flows: tuple[int, ...]


@message
class FlowRemoved(NamedTuple):
    """Datapath → worker: these flows (ids) left the cache (``reason``: "idle", "hard", "evicted",
    "replaced"; "refused": a Reinstall or FlowAhead with bad actions or match, never installed)."""

    TAG = 13
    flows: tuple[int, ...]
    reason: str


# ---------------------------------------------------------------------------------------------------------
# worker ↔ worker (and host ↔ host) broadcasts; ``origin`` is the sender's id so it can ignore its own echo


@message
class InvalidateTags(NamedTuple):
    """Flows tagged with any of ``tags`` are stale: every worker deletes its own."""

    TAG = 20
    tags: tuple[str, ...]
    origin: int


@message
class FlowStateEntry(NamedTuple):
    """One flow-state entry: ``kind`` "conntrack" (value None) or a NAT kind (value: (ip, port) binding);
    ``key`` a StateKey (STATE_KEY); ``expires_at`` in the sender's simulated clock seconds.  Decode does not
    tie the value to the kind: a NAT entry with value None reads as unbound, a conntrack value is not read."""

    TAG = 21
    kind: Annotated[str, FLOW_STATE_KINDS]
    key: Annotated[tuple, STATE_KEY]
    value: Annotated[tuple | None, STATE_VALUE]
    expires_at: float


@message
class FlowStateBatch(NamedTuple):
    """Flow state pushed to the interested set before the packet is forwarded."""

    TAG = 22
    entries: tuple[FlowStateEntry, ...]
    origin: int


@message
class ArpLearned(NamedTuple):
    """Router ``router`` learned ``ip`` (int) → ``mac`` (int): an ARP entry, or an IPv6 neighbor entry when ``ip``
    is above 2**32 (one neighbor table per router holds both families, packet.addr.ip_text)."""

    TAG = 23
    router: str
    ip: Annotated[int, U128]
    mac: Mac
    origin: int


@message
class MacLearned(NamedTuple):
    """Bridge ``bridge`` learned ``mac`` (int) on ``vlan`` (0: untagged) behind ``port`` (a port id)."""

    TAG = 24
    bridge: str
    vlan: Vlan
    mac: Mac
    port: str
    origin: int


@message
class TopologyChanged(NamedTuple):
    """Store shell → workers: the ``kind`` object ``name`` changed (``kind``: "bridge", "router", ...)."""

    TAG = 25
    kind: str
    name: str


# ---------------------------------------------------------------------------------------------------------
# control (supervisor ↔ any process)


@message
class StatsRequest(NamedTuple):
    TAG = 30
    req_id: int


@message
class StatsReply(NamedTuple):
    """``worker``: the replier's index (-1 for the datapath); ``counters``: ``<part>_<event>`` → count."""

    TAG = 31
    req_id: int
    worker: int
    counters: dict[str, int]


@message
class Ping(NamedTuple):
    TAG = 32
    t_ns: int
    seq: int


@message
class Pong(NamedTuple):
    """Echo of a Ping (same ``t_ns`` and ``seq``)."""

    TAG = 33
    t_ns: int
    seq: int


@message
class Shutdown(NamedTuple):
    """Stop cleanly: drain nothing more, close sockets, exit."""

    TAG = 34


# ---------------------------------------------------------------------------------------------------------
# the agent's own plumbing: fragments, leases, relays, injection and queries


@message
class FragmentRequest(NamedTuple):
    """Worker ``worker`` needs topology object ``kind``/``name`` (kind "port" names a port id; "device" a
    bridge or router; "port_groups" the membership index)."""

    TAG = 40
    worker: int
    kind: str
    name: str


@message
class Fragment(NamedTuple):
    """Supervisor → worker: topology records, each (kind, name, record JSON bytes or None when the object does
    not exist).  ``request`` echoes the (kind, name) asked for."""

    TAG = 41
    request_kind: str
    request_name: str
    records: Annotated[tuple, TupOf(FRAGMENT_RECORD)]


@message
class LeaseRequest(NamedTuple):
    """Worker → supervisor: lease a 64-port SNAT block of (device, ip) inside [port_start, port_end]."""

    TAG = 42
    worker: int
    device: str
    ip: Ip
    port_start: L4Port
    port_end: L4Port


@message
class LeaseGranted(NamedTuple):
    """Supervisor → worker: ``block`` (first port) leased; -1 when the range is exhausted."""

    TAG = 43
    device: str
    ip: Ip
    block: Annotated[int, Int(-1, 0xFFFF)]


@message
class LeaseRelease(NamedTuple):
    TAG = 44
    worker: int
    device: str
    ip: Ip
    block: L4Port


@message
class Fanout(NamedTuple):
    """Worker → datapath: relay ``payload`` (an encoded message) to the inboxes of ``targets`` in order with
    the upcalls the datapath sends them — so a worker sees flow state before any upcall emitted after it."""

    TAG = 45
    targets: tuple[int, ...]
    payload: bytes


@message
class Inject(NamedTuple):
    """Traffic source → datapath: frames arriving on a synthetic port (in-memory datapath)."""

    TAG = 46
    port: str
    frames: tuple[bytes, ...]


@message
class TunnelFrames(NamedTuple):
    """Traffic source → datapath: frames arriving from another host's tunnel with key ``vni`` (in-memory
    datapath; the real one reads them from its VXLAN socket)."""

    TAG = 52
    vni: TunnelKey
    frames: tuple[bytes, ...]


# ---------------------------------------------------------------------------------------------------------
# commands: supervisor → a process, each its own message.  ``req_id`` 0 asks for no answer; otherwise the
# process answers with Answer(req_id, its index, body) (StatsReply for StatsRequest).


@message
class DumpFlows(NamedTuple):
    """→ datapath: body = [[key, worker, hits, tags, flow id], ...]."""

    TAG = 60
    req_id: int


@message
class TakeOutputs(NamedTuple):
    """→ in-memory datapath: drain the kept output frames of ``port`` (None: all ports, tunnels as
    'tunnel:<ip>:<key>'); body = {port: [frame, ...]}."""

    TAG = 61
    req_id: int
    port: str | None


@message
class TakeLatencies(NamedTuple):
    """→ datapath: drain the setup-latency samples (ns, upcall sent → answer back); body = [ns, ...]."""

    TAG = 62
    req_id: int


@message
class SetPortMap(NamedTuple):
    """→ datapath: the ports bound here.  ``ports``: ((port id, interface), ...) (real datapath: opened,
    others closed); ``keys``: ((tunnel key, port id), ...); ``hosts``: ((host, tunnel ip), ...).  body =
    {"ports": [...], "errors": [...]}."""

    TAG = 63
    req_id: int
    ports: tuple[tuple[str, str], ...]
    keys: tuple[tuple[TunnelKey, str], ...]
    hosts: tuple[tuple[str, Ip | None], ...]


@message
class PurgeWorker(NamedTuple):
    """→ datapath: worker ``worker`` died: drop its flows and its unanswered upcalls; body = counts."""

    TAG = 64
    req_id: int
    worker: int


@message
class DumpState(NamedTuple):
    """→ worker: its flow-state entries in one answer; body = [[kind, key, value, expires_at], ...], or
    {"error": ..., "total": n} past DUMP_STATE_MAX entries (an answer must stay well under the 4 MiB cap:
    page through DumpStatePage instead)."""

    TAG = 65
    req_id: int


@message
class SetStateAuth(NamedTuple):
    """→ datapath: this agent's host name and the deployment keys of the flow-state tunnel (the first signs,
    all verify; engine/datapath/stateauth.py).  Sent over the private runtime directory, never on a command
    line.  body = {"keys": how many}."""

    TAG = 67
    req_id: int
    host: str
    keys: tuple[bytes, ...]


@message
class SetLiveHosts(NamedTuple):
    """→ datapath: the hosts whose agent is alive now (the host registry).  Frames on data VNIs are taken only
    from the tunnel addresses of those hosts (of the topology's hosts, until the first SetLiveHosts)."""

    TAG = 73
    req_id: int
    hosts: tuple[str, ...]


@message
class DumpFlowTable(NamedTuple):
    """→ datapath: one page of the flow cache, for operators (``shardnet ctl dump-flows``): flows ``offset`` ..
    ``offset + limit`` of ``worker`` (-1: every worker).  body = {"flows": [{"id", "key", "worker", "actions",
    "tags", "hits", "age_s", "idle_left_s"}, ...], "total": n}."""

    TAG = 68
    req_id: int
    worker: int
    offset: int
    limit: int


@message
class DelFlows(NamedTuple):
    """→ datapath: delete these flows (ids; an operator's ``del-flows``); their workers hear FlowRemoved
    ("deleted").  body = how many were deleted."""

    TAG = 69
    req_id: int
    flows: tuple[int, ...]


@message
class TraceRequest(NamedTuple):
    """→ worker: simulate ``frame`` entering ``port`` against the worker's live state, without side effects
    (nothing learned, created, installed or sent on).  body = the trace JSON of CONTRACTS §3."""

    TAG = 70
    req_id: int
    port: str
    frame: bytes


@message
class DumpTable(NamedTuple):
    """→ worker: its view of a MAC table (``kind`` "mac", ``device`` a bridge) or an ARP table ("arp", a
    router).  body = [[vlan, mac, port, age_s], ...] or [[ip, mac, age_s], ...]."""

    TAG = 71
    req_id: int
    kind: str
    device: str


@message
class SetLogLevel(NamedTuple):
    """→ any process: set its log level ("DEBUG", "INFO", "WARNING", "ERROR").  body = the level now."""

    TAG = 72
    req_id: int
    level: str


@message
class Ready(NamedTuple):
    """Process → supervisor, once at start: ``sender`` (worker index, or DATAPATH_INDEX) is up as ``pid``."""

    TAG = 66
    sender: int
    pid: int


@message
class Answer(NamedTuple):
    """Process → supervisor: the answer to command ``req_id``; ``sender`` is a worker index, or
    DATAPATH_INDEX."""

    TAG = 48
    req_id: int
    sender: int
    body: Any


@message
class TableEntryRemoved(NamedTuple):
    """Supervisor → workers: a replicated table entry vanished (its owner's session died, or it expired).
    ``kind`` "mac" (``entry`` = MAC, on ``vlan``) or "arp" (``entry`` = IP of either family: a neighbor entry);
    ``device`` the bridge or router."""

    TAG = 49
    kind: Annotated[str, TABLE_KINDS]
    device: str
    vlan: Vlan
    entry: Annotated[int, U128]


@message
class StateToHosts(NamedTuple):
    """Worker → datapath: send ``payload`` (an encoded FlowStateBatch) to the tunnel endpoints of ``hosts``
    (host names; the datapath knows their tunnel addresses) on the flow-state VNI.  Sent before the install of
    the packet that created the state, on the same socket, so the state leaves first."""

    TAG = 50
    hosts: tuple[str, ...]
    payload: bytes


@message
class StateRequest(NamedTuple):
    """Host → host (on the flow-state tunnel key): port ``port`` moved to ``requester``; the previous owner's
    workers answer with their flow state (StateToHosts back to ``requester``)."""

    TAG = 51
    requester: str
    port: str


# ---------------------------------------------------------------------------------------------------------
# process faults (issue 11): a restarted datapath gets its flows back from the workers; a restarted worker
# gets its flow state back from its peers


@message
class DatapathRestarted(NamedTuple):
    """Supervisor → worker: the datapath was restarted as incarnation ``epoch``: the upcalls of earlier ones
    are never answered (they are dropped), and the worker re-installs its flows (Reinstall)."""

    TAG = 85
    epoch: Annotated[int, Int(0, 2**22)]


@message
class Reinstall(NamedTuple):
    """Worker → datapath: install flow ``flow_id`` again, as the worker installed it (after a datapath restart:
    the workers' flow tables are the source of truth).  ``key`` the datapath's flow key (FLOW_KEY) of the upcall
    that made it, ``match`` its mask as in FlowPut (() = exactly ``key``); a key installed already (a newer
    flow) is left alone."""

    TAG = 86
    flow_id: int
    worker: int
    key: Annotated[tuple, FLOW_KEY]
    match: Match
    actions: Actions
    tags: tuple[str, ...]
    idle_s: Seconds
    hard_s: Seconds


@message
class FlowAhead(NamedTuple):
    """Worker → datapath: install flow ``flow_id`` (a worker's own id, below 0) for a packet that has not
    come yet: the reply a connection's first packet will draw (a SYN's SYN-ACK, an echo request's reply), set up
    by the worker that set up the first packet (workers/worker.py ``_reply_ahead``).  Fields as in Reinstall; a
    key installed already (its reply came first and was upcalled) is left alone and the worker told
    (FlowRemoved "replaced")."""

    TAG = 90
    flow_id: int
    worker: int
    key: Annotated[tuple, FLOW_KEY]
    match: Match
    actions: Actions
    tags: tuple[str, ...]
    idle_s: Seconds
    hard_s: Seconds


@message
class StateRecall(NamedTuple):
    """Supervisor → worker: worker ``requester`` was restarted; send it (FlowStateBatch, by Fanout) the flow-state
    entries held here whose packets hash to it."""

    TAG = 87
    requester: int


@message
class Recover(NamedTuple):
    """Supervisor → a restarted worker, after the entries of the last snapshot and its SNAT blocks: ``peers``
    were asked for its flow state (StateRecall); it simulates nothing until each answered (RecallDone) or a
    short deadline passed — no packet of its connections is simulated without their state."""

    TAG = 88
    peers: tuple[int, ...]


@message
class RecallDone(NamedTuple):
    """Worker → worker (Fanout), after its answer to a StateRecall: worker ``origin`` sent all it had."""

    TAG = 89
    origin: int
# store outages and chunked state dumps (tags 95-109)


@message
class StoreStatus(NamedTuple):
    """Supervisor → workers: the store session's state changed.  While it is not "connected", a simulation
    that waited for the store in vain is dropped as ``store_down_<need>`` rather than ``parked_timeout_<need>``."""

    TAG = 95
    state: Annotated[str, STORE_STATES]


@message
class LeaseFailed(NamedTuple):
    """Supervisor → worker: the lease asked for (device, ip) got no block, for ``reason`` (LEASE_FAILURES) —
    not an exhausted range (that is LeaseGranted with -1): the packets waiting for it are dropped as
    ``lease_<reason>``."""

    TAG = 96
    device: str
    ip: Ip
    reason: Annotated[str, LEASE_FAILURES]


@message
class DumpStatePage(NamedTuple):
    """→ worker: one page of its flow-state entries.  ``cursor`` 0 starts a dump (the worker keeps a list of
    the entries as they are now and pages through it between other messages); else the ``cursor`` an earlier
    page returned.  body = {"entries": [[kind, key, value, expires_at], ...] (≤ ``limit``, ≤ MAX_STATE_PAGE,
    ≤ ~1 MiB; entries gone since the dump started are skipped), "cursor": the next page's (0: done),
    "total": entries when the dump started} or {"error": ...} for an unknown cursor."""

    TAG = 97
    req_id: int
    cursor: Annotated[int, Int(0, INT64_MAX)]
    limit: Annotated[int, Int(1, MAX_STATE_PAGE)]


Message = typing.Union[tuple(REGISTRY.values())]  # noqa: UP007 - built from the registry at import
