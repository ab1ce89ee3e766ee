"""The walk memo: a new connection through a walk already made is answered without walking again.

A conntrack pipeline's megaflow must match the whole 5-tuple (the ct state of one connection is not another's),
so every new connection is a setup and, until this, a full ``simulate()``.  But the walk of a new connection is
the walk of the one before it whenever the two agree on every field the walk's *decisions* read (in_port, MACs,
VLAN, the prefixes a route or rule tested, the ports a rule tested, TTL...) and on their ct state (forward or
return): conntrack reads the 5-tuple only to find the connection, and what it finds is one of two answers.
That is OVS's recirculation after ``ct()`` (the second pass matches ``ct_state`` and wildcards the rest), done
in the worker, which owns the connection state: the memo keeps each such walk as a template, keyed by the
values of what its decisions read plus its ct state, and a hit rebuilds the result a fresh walk would return
for the new packet — the same path, outputs (the packet with the same rewrites), tags, fields read; its own
conntrack entry touched (return) or its return keys written (forward), and their tags.

What is kept, and what is not (``_template``; anything else is simulated every time, as before):
- TCP and UDP only (an ICMP packet's ct key depends on its type: echo or error);
- FORWARD or DROP, nothing generated, nothing parked, not exact;
- the walk read the 5-tuple through the ct state alone (``Ctx.opaque`` false: no NAT, no load balancer, no
  ECMP or other flow hash), no output rewrites a 5-tuple field, and its only effects are the conntrack entries
  of the packet's own connection (no MAC or ARP entry learned);
- the template rebuilds the very walk it was made from, exactly (checked when it is made).
A template lives until anything it may depend on changes: the worker clears the memo when it invalidates a tag
that is not a connection's own (a topology object, a MAC or ARP entry: ``invalidate``), when a topology fragment
arrives, and when MAC or ARP entries expire; a template that read a learned ARP entry is used only until that
entry would expire.  The memo holds at most MEMO_MAX templates (then it starts again from empty), so what a VM
sends cannot grow it.  ``tests/unit/test_walk_memo.py`` checks a memo-answered result against a fresh
``simulate()`` for every packet of generated streams and topologies, and a worker with the memo against one
without it, message for message.
"""

from __future__ import annotations

from operator import attrgetter

from packet.flowkey import ADDR_BITS, prefix_mask
from packet.packet import PROTO_TCP, PROTO_UDP, Packet
from workers import tags as tagmod
from workers.simulation.conntrack import FORWARD as CT_FORWARD
from workers.simulation.conntrack import RETURN as CT_RETURN
from workers.simulation.conntrack import five_tuple, reverse
from workers.simulation.context import FIVE_TUPLE_FIELDS
from workers.simulation.result import (
    CONNTRACK,
    DROP,
    EXPIRY_NORMAL,
    FORWARD,
    FlowStateTouch,
    FlowStateWrite,
    Output,
    SimResult,
    state_key,
)
from workers.simulation.simulate import simulate_seen
from workers.simulation.state import MISSING

MEMO_MAX = 4096                   # templates held at most (all ports); then the memo starts again from empty
_FIVE = frozenset(FIVE_TUPLE_FIELDS)
_PACKET_FIELDS = Packet._fields
_tuple_new = tuple.__new__
_NO_UNTIL = float("inf")


class _Template:
    """One walk, minus its connection: rebuilt for each packet it serves (``WalkMemo._rebuild``)."""

    __slots__ = ("kind", "path", "outs", "tags", "fields", "prefixes", "interested", "drop_reason", "expiry",
                 "ct", "ret_devices", "until")

    def __init__(self, kind, path, outs, flow_tags, fields, prefixes, interested, drop_reason, expiry, ct,
                 ret_devices, until):
        self.kind = kind
        self.path = path
        self.outs = outs                  # ((port, host, tunnel_key, bound, rewrite), ...): rewrite = {field: v}
        self.tags = flow_tags             # the walk's tags but its connection's own
        self.fields = fields
        self.prefixes = prefixes
        self.interested = interested
        self.drop_reason = drop_reason
        self.expiry = expiry
        self.ct = ct                      # None: the walk did not read the ct state; else forward | return
        self.ret_devices = ret_devices    # forward: the egress devices whose return key the walk writes, in order
        self.until = until                # used while now <= until (a learned ARP entry it read expires then)


class _Mask:
    """The templates of one ingress port whose walks read the same fields: keyed by those fields' values."""

    __slots__ = ("fields", "prefixes", "get", "table")

    def __init__(self, fields: tuple, prefixes: tuple):
        self.fields = fields
        self.prefixes = prefixes          # ((field, bit mask), ...)
        self.get = attrgetter(*fields)    # at least eth_type and proto: a tuple
        self.table: dict[tuple, dict] = {}

    def key(self, pkt: Packet) -> tuple:
        vals = self.get(pkt)
        if not self.prefixes:
            return vals
        return vals + tuple(None if (v := getattr(pkt, f)) is None else v & m for f, m in self.prefixes)


class WalkMemo:
    """The walk memo of one worker: ``simulate()`` for its shell, over its topology cache and state."""

    def __init__(self, topo, state, host: str | None, hosts: bool, max_entries: int = MEMO_MAX):
        self.topo = topo
        self.state = state
        self.host = host
        self.hosts = hosts
        self.max_entries = max_entries
        self._ports: dict[str, tuple[str, list[_Mask]]] = {}     # in_port -> (its device, masks)
        self.size = 0
        self.c = {"memo_hits": 0, "memo_walks": 0, "memo_kept": 0, "memo_unfit": 0, "memo_cleared": 0}

    # -- the one call ---------------------------------------------------------------------------------------
    def simulate(self, pkt: Packet, in_port: str, now: float) -> SimResult:
        """What ``simulate(pkt, in_port, topo, state, now, host, hosts)`` returns."""
        proto = pkt.proto
        if proto == PROTO_TCP or proto == PROTO_UDP:
            entry = self._ports.get(in_port)
            if entry is not None:
                device, masks = entry
                for mask in masks:
                    by_ct = mask.table.get(mask.key(pkt))
                    if by_ct is None:
                        continue
                    t = by_ct.get(None)
                    five = None
                    if t is None:
                        five = five_tuple(pkt)
                        ct = CT_RETURN if self.state.flow_state_get(
                            CONNTRACK, state_key(five, device), now) is not MISSING else CT_FORWARD
                        t = by_ct.get(ct)
                        if t is None:
                            break
                    if now > t.until:
                        break
                    self.c["memo_hits"] += 1
                    return self._rebuild(t, pkt, device, five)
        self.c["memo_walks"] += 1
        res, ctx = simulate_seen(pkt, in_port, self.topo, self.state, now, self.host, self.hosts)
        if proto == PROTO_TCP or proto == PROTO_UDP:
            self._keep(pkt, in_port, res, ctx)
        return res

    # -- invalidation ---------------------------------------------------------------------------------------
    def invalidate(self, flow_tags) -> None:
        """The worker invalidates ``flow_tags``: a topology object, a MAC or an ARP entry among them may change
        any walk (one unknown until now, flooded to, too), so the memo starts again; a connection's own entries
        (conntrack, NAT) change no template (each hit reads its own)."""
        if self.size:
            for tag in flow_tags:
                if not tagmod.of_flow_state(tag):
                    self.clear()
                    return

    def clear(self) -> None:
        if self.size:
            self.c["memo_cleared"] += 1
        self._ports.clear()
        self.size = 0

    # -- templates ------------------------------------------------------------------------------------------
    def _rebuild(self, t: _Template, pkt: Packet, device: str, five: tuple | None = None) -> SimResult:
        """The result of ``t``'s walk for ``pkt`` (``five``: its 5-tuple, if made already)."""
        flow_tags = t.tags
        effects = ()
        if t.ct is not None:
            if five is None:
                five = five_tuple(pkt)
            key = state_key(five, device)
            ct_tags = [tagmod.flow_state(CONNTRACK, key)]
            if t.ct == CT_RETURN:
                effects = (FlowStateTouch(CONNTRACK, key),)
            elif t.ret_devices:
                back = reverse(five)
                keys = [state_key(back, d) for d in t.ret_devices]
                effects = tuple(FlowStateWrite(CONNTRACK, k, None) for k in keys)
                ct_tags.extend(tagmod.flow_state(CONNTRACK, k) for k in keys)
            flow_tags = flow_tags.union(ct_tags)
        if t.kind == FORWARD:
            outputs = tuple(Output(port, host, tkey, pkt._replace(**rw) if rw else pkt, bound)
                            for port, host, tkey, bound, rw in t.outs)
            return _tuple_new(SimResult, (FORWARD, t.path, outputs, (), effects, None, EXPIRY_NORMAL, None,
                                          flow_tags, t.fields, t.prefixes, t.interested, (), False))
        return _tuple_new(SimResult, (DROP, t.path, (), (), effects, t.drop_reason, t.expiry, None, flow_tags,
                                      t.fields, t.prefixes, frozenset(), (), False))

    def _keep(self, pkt: Packet, in_port: str, res: SimResult, ctx) -> None:
        t = self._template(pkt, res, ctx)
        if t is None:
            self.c["memo_unfit"] += 1
            return
        port = self.topo.port(in_port)
        device = port.device
        if self._rebuild(t, pkt, device) != res:  # the template must make the very walk it came from
            self.c["memo_unfit"] += 1
            return
        if self.size >= self.max_entries:
            self.clear()
        fields = tuple(sorted(ctx.fields | {"eth_type", "proto"}))
        prefixes = tuple(sorted((f, _prefix_bits(f, n)) for f, n in ctx.prefixes.items() if f not in ctx.fields))
        entry = self._ports.get(in_port)
        if entry is None or entry[0] != device:
            entry = self._ports[in_port] = (device, [])
        masks = entry[1]
        for mask in masks:
            if mask.fields == fields and mask.prefixes == prefixes:
                break
        else:
            mask = _Mask(fields, prefixes)
            masks.append(mask)
        by_ct = mask.table.setdefault(mask.key(pkt), {})
        if t.ct not in by_ct:
            self.size += 1
        by_ct[t.ct] = t
        self.c["memo_kept"] += 1

    def _template(self, pkt: Packet, res: SimResult, ctx) -> _Template | None:
        kind = res.result
        if kind != FORWARD and kind != DROP:
            return None
        if ctx.opaque or res.exact or res.generated or res.waiting or res.needs is not None:
            return None
        ct = ctx.ct
        if ct is not None and ct != CT_FORWARD and ct != CT_RETURN:
            return None
        ret_devices = []
        own = set()
        for e in res.effects:
            te = type(e)
            if te is FlowStateWrite and e.kind == CONNTRACK and e.value is None and ct == CT_FORWARD:
                ret_devices.append(e.key[5])
            elif not (te is FlowStateTouch and e.kind == CONNTRACK and ct == CT_RETURN):
                return None
            own.add(tagmod.flow_state(CONNTRACK, e.key))
        if ct is not None:
            own.add(tagmod.flow_state(CONNTRACK, state_key(five_tuple(pkt), ctx.topo.port(ctx.ingress_port).device)))
        outs = []
        for o in res.outputs:
            q = o.packet
            rewrite = {}
            if q is not pkt:
                for name, a, b in zip(_PACKET_FIELDS, pkt, q, strict=True):
                    if a != b:
                        if name in _FIVE:
                            return None          # a NAT-like rewrite: not this memo's (and ctx.opaque says so)
                        rewrite[name] = b
            outs.append((o.port, o.host, o.tunnel_key, o.bound, rewrite))
        until = _NO_UNTIL
        flow_tags = res.tags - own
        for tag in flow_tags:
            if tagmod.kind_of(tag) == tagmod.ARP:
                router, ip = tagmod.arp_entry(tag)
                u = self.state.arp_until(router, ip)
                if u is None:
                    return None
                until = min(until, u)
        return _Template(kind, res.path, tuple(outs), flow_tags, res.fields_read, res.prefixes_read,
                         res.interested_hosts, res.drop_reason, res.expiry, ct, tuple(ret_devices), until)


def _prefix_bits(field: str, length: int) -> int:
    return prefix_mask(length, ADDR_BITS.get(field, 32))
