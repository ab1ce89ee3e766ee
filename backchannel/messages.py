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
  Key, Keys                 a hashable tuple (flow keys: usable as dict keys once decoded)
  tuple, dict[...], Any     only the top-level container type is checked (Any: nothing)

Decoding checks arity and the types of top-level fields (and of nested messages' fields); it does not walk
arbitrary containers (``actions``, ``value``, ``counters``).  Ints, strs, bytes, None, floats, bools and
tuples/dicts of those are what a field may hold; lists come back as tuples.

Who sends what (→ receiver):
  datapath → dispatcher → worker    UpcallBatch
  worker → datapath                 FlowPut (install + execute), Execute (execute only), PacketOut
                                    (a generated packet), FlowDelete
  datapath → worker                 FlowRemoved
  worker → all workers (broadcast)  InvalidateTags, FlowStateBatch, ArpLearned, MacLearned
  store shell → workers             TopologyChanged
  supervisor ↔ any process          StatsRequest/StatsReply, Ping/Pong, Shutdown, Ready (at start)
  worker → supervisor (store shell) FragmentRequest, LeaseRequest, LeaseRelease
  supervisor → worker               Fragment, LeaseGranted, MacLearned/ArpLearned (learned by other agents),
                                    TableEntryRemoved, DumpState, TraceRequest, DumpTable, SetLogLevel
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

BATCH_TAG = 0  # reserved: the batch frame of codec.encode_many
DATAPATH_INDEX = -1  # ``sender`` / target index of the datapath process (workers are 0..N-1)
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

HASHABLE = "hashable"
Key = Annotated[tuple, HASHABLE]  # a flow key / flow-state key: a tuple of scalars (or nested tuples)
Keys = Annotated[tuple, HASHABLE]  # a tuple of Keys

REGISTRY: dict[int, type] = {}  # TAG -> message class
SCHEMA: dict[type, tuple[Field, ...]] = {}  # message class -> its fields


class Field(NamedTuple):
    """One field of a message schema.

    kind: "scalar" (types = accepted python types), "tuple_of" (tuple whose elements are of ``types``),
    "msg" (one nested message ``sub``), "msgs" (tuple of ``sub``), "key" (hashable tuple), "container"
    (top-level type in ``types`` only), "any" (unchecked).
    """

    name: str
    kind: str
    types: frozenset = frozenset()
    sub: type | None = None


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


def _field(name: str, hint: Any) -> Field:
    scalar = _scalar_types(hint)
    if scalar is not None:
        return Field(name, "scalar", scalar)
    if hint in SCHEMA:
        return Field(name, "msg", sub=hint)
    if hint is Any:
        return Field(name, "any")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated and args[0] is tuple and HASHABLE in args[1:]:
        return Field(name, "key", frozenset({tuple}))
    if hint is tuple or hint is dict:
        return Field(name, "container", frozenset({hint}))
    if origin is dict:
        return Field(name, "container", frozenset({dict}))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            if args[0] in SCHEMA:
                return Field(name, "msgs", frozenset({tuple}), sub=args[0])
            elem = _scalar_types(args[0])
            if elem is not None:
                return Field(name, "tuple_of", elem)
        return Field(name, "container", frozenset({tuple}))
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

    ``match`` is () for "exactly the upcall's key" (the datapath holds it); a mask comes with megaflows.
    ``actions`` are tuples: ("set", field, value), ("output", port), ("tunnel", host_ip, tunnel_key),
    ("drop",).  ``tags`` name every device/entry the decision read (workers.tags).  ``idle_s``/``hard_s``
    are timeouts in seconds (0 = none).  The flow's id is ``seq``."""

    TAG = 10
    seq: int
    match: tuple
    actions: tuple
    tags: tuple[str, ...]
    idle_s: float
    hard_s: float


@message
class Execute(NamedTuple):
    """Worker → datapath: execute upcall ``seq``'s packet with ``actions`` and install nothing (a consumed
    packet, a malformed frame).  Packets held back for the same flow are upcalled again, without a parse."""

    TAG = 11
    seq: int
    actions: tuple


@message
class PacketOut(NamedTuple):
    """Worker → datapath: emit a packet the agent generated (ARP request, ICMP error/reply), executed with
    ``actions`` (output to a local port, or a tunnel to the host of the port; rewrites when it crossed a
    device on the way)."""

    TAG = 14
    actions: tuple
    frame: bytes


@message
class FlowDelete(NamedTuple):
    """Worker → datapath: remove these flows (by flow id; invalidated or expired on the worker's side)."""

    TAG = 12
    flows: tuple[int, ...]


@message
class FlowRemoved(NamedTuple):
    """Datapath → worker: these flows (ids) left the cache (``reason``: "idle", "hard", "evicted",
    "replaced")."""

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
    ``expires_at`` in the sender's simulated clock seconds."""

    TAG = 21
    kind: str
    key: Key
    value: Any
    expires_at: float


@message
class FlowStateBatch(NamedTuple):
    """Flow state pushed to the interested set before the packet is forwarded."""

    TAG = 22
    entries: tuple[FlowStateEntry, ...]
    origin: int


@message
class ArpLearned(NamedTuple):
    """Router ``router`` learned ``ip`` (int) → ``mac`` (int)."""

    TAG = 23
    router: str
    ip: int
    mac: int
    origin: int


@message
class MacLearned(NamedTuple):
    """Bridge ``bridge`` learned ``mac`` (int) on ``vlan`` (0: untagged) behind ``port`` (a port id)."""

    TAG = 24
    bridge: str
    vlan: int
    mac: int
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
    records: tuple


@message
class LeaseRequest(NamedTuple):
    """Worker → supervisor: lease a 64-port SNAT block of (device, ip) inside [port_start, port_end]."""

    TAG = 42
    worker: int
    device: str
    ip: int
    port_start: int
    port_end: int


@message
class LeaseGranted(NamedTuple):
    """Supervisor → worker: ``block`` (first port) leased; -1 when the range is exhausted."""

    TAG = 43
    device: str
    ip: int
    block: int


@message
class LeaseRelease(NamedTuple):
    TAG = 44
    worker: int
    device: str
    ip: int
    block: int


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
    vni: int
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
    ports: tuple
    keys: tuple
    hosts: tuple


@message
class PurgeWorker(NamedTuple):
    """→ datapath: worker ``worker`` died: drop its flows and its unanswered upcalls; body = counts."""

    TAG = 64
    req_id: int
    worker: int


@message
class DumpState(NamedTuple):
    """→ worker: its flow-state entries; body = [[kind, key, value, expires_at], ...] (the snapshot's
    format, restored at start)."""

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
    ``kind`` "mac" (``entry`` = MAC, on ``vlan``) or "arp" (``entry`` = IP); ``device`` the bridge or router."""

    TAG = 49
    kind: str
    device: str
    vlan: int
    entry: int


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


Message = typing.Union[tuple(REGISTRY.values())]  # noqa: UP007 - built from the registry at import
