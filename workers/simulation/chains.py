"""Rule chains: match evaluation and the chain walk (jump / return / continue, loop detection).

Pure: ``run_chain`` returns a verdict and the (possibly NAT-rewritten) packet; NAT rules call into
workers.simulation.nat, connection tracking into workers.simulation.conntrack.  The end of a chain is accept.

IPv6.  A ``src``/``dst`` condition is of one family: ``(net, len)`` tests ``ip_src``/``ip_dst`` of IPv4 packets,
``(net, len, 6)`` tests ``ipv6_src``/``ipv6_dst`` of IPv6 packets.  A packet of the other family (or a non-IP
one) has no such field, and a condition on an absent field fails *whatever its negation* (OVN's prerequisite
rule, iptables' separate tables): ``src: "!10.0.0.0/8"`` matches IPv4 packets from outside 10/8 only, never
an IPv6 or an ARP packet.  ``proto``, ``src_port``/``dst_port`` work on both families (TCP, UDP, ``proto:
icmpv6``); ``tos`` tests an IPv6 packet's traffic class.  Neighbor discovery (ICMPv6 types 133-136) passes every
chain implicitly, as OVN's ACLs let it through: IPv6 cannot work without it, it never leaves the link, and no
match field can pick it out from other ICMPv6; it never touches conntrack either (workers.simulation.conntrack).
"""

from __future__ import annotations

from operator import attrgetter
from typing import NamedTuple

from packet.addr import prefix_mask6
from packet.packet import ETH_TYPE_IPV6, ND_TYPES, PROTO_TCP, PROTO_UDP, Packet
from topology.model import Chain, Condition, Rule
from workers import tags
from workers.simulation import conntrack, nat
from workers.simulation.context import Ctx, Stop

ACCEPT = "accept"
DROP = "drop"
REJECT = "reject"
MAX_JUMP_DEPTH = 16


def _ports(pkt: Packet):
    if pkt.proto in (PROTO_TCP, PROTO_UDP):
        return pkt.tp_src, pkt.tp_dst
    return None, None


def _test(ctx: Ctx, c: Condition, pkt: Packet, in_port: str | None, out_port: str | None) -> bool | None:
    """The field test of one condition, before negation: True, False, or None when the packet has no such
    field (a non-IP packet, an address of the other family, no ports), which fails the condition whatever the
    negation (``matches``)."""
    f = c.field
    v = c.value
    if f == "in_port":
        return in_port in v
    if f == "out_port":
        return out_port in v
    if f == "port_group":
        g = ctx.need("port_group", v)
        ctx.tags.add(tags.port_group(v))
        return in_port in g.ports or out_port in g.ports
    if f == "ct":
        return conntrack.ct_state(ctx) == v
    if f == "src" or f == "dst":
        ctx.read("eth_type")                           # which family the packet is (whether the field exists)
        if len(v) == 3:                                # (net, len, 6): IPv6
            net, length, _ = v
            name = "ipv6_src" if f == "src" else "ipv6_dst"
            ctx.read_prefix(name, length)              # the test reads the prefix's bits, nothing more
            ip = pkt.ipv6_src if f == "src" else pkt.ipv6_dst
            if ip is None:
                return None
            return (ip & prefix_mask6(length)) == net
        net, length = v
        ctx.read_prefix(_FIELD_READS[f], length)
        ip = pkt.ip_src if f == "src" else pkt.ip_dst
        if ip is None:
            return None
        return (ip & ((0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0)) == net
    if f == "tos" and pkt.eth_type == ETH_TYPE_IPV6:
        ctx.read("eth_type", "tclass")                 # IPv6's traffic class is IPv4's type of service
        return None if pkt.tclass is None else pkt.tclass == v
    ctx.read(_FIELD_READS[f])
    if f == "src_port" or f == "dst_port":
        ctx.read("proto")                              # which protocols have ports
        sp, dp = _ports(pkt)
        port = sp if f == "src_port" else dp
        return None if port is None else v[0] <= port <= v[1]
    if f == "tos":
        ctx.read("eth_type")
    actual = getattr(pkt, _FIELD_READS[f])
    return None if actual is None else actual == v


_FIELD_READS = {
    "eth_src": "eth_src", "eth_dst": "eth_dst", "ethertype": "eth_type", "src": "ip_src", "dst": "ip_dst",
    "proto": "proto", "src_port": "tp_src", "dst_port": "tp_dst", "tos": "tos", "vlan": "vlan",
}


# -- compiled conditions ------------------------------------------------------------------------------------
# run_chain walks a chain's rules for every simulated packet: each condition is compiled once per Chain record
# (cached by identity: a changed chain is a new record, so the cache never serves a stale rule) into a closure
# ``passes(ctx, pkt, in_port, out_port) -> bool`` that reads exactly what ``_test`` reads and says whether the
# condition holds (its negation applied; an absent field fails whatever the negation).  ``_test`` stays the
# reference: a field without a compiled form goes through it.

def _compile(c: Condition):
    f, v, neg = c.field, c.value, c.negate
    if f == "in_port":
        return lambda ctx, pkt, i, o: (i in v) != neg
    if f == "out_port":
        return lambda ctx, pkt, i, o: (o in v) != neg
    if (f == "src" or f == "dst") and len(v) == 2:
        net, length = v
        mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0
        name = _FIELD_READS[f]
        get = _GETTERS[name]

        def passes(ctx, pkt, i, o):
            ctx.fields.add("eth_type")
            ctx.read_prefix(name, length)
            ip = get(pkt)
            return ip is not None and ((ip & mask) == net) != neg
        return passes
    if f == "src_port" or f == "dst_port":
        lo, hi = v
        name = _FIELD_READS[f]
        src = f == "src_port"

        def passes(ctx, pkt, i, o):
            ctx.fields.update((name, "proto"))
            if pkt.proto != PROTO_TCP and pkt.proto != PROTO_UDP:
                return False
            port = pkt.tp_src if src else pkt.tp_dst
            return port is not None and (lo <= port <= hi) != neg
        return passes
    if f == "ct":
        ct_state = conntrack.ct_state

        def passes(ctx, pkt, i, o):
            return (ct_state(ctx) == v) != neg
        return passes
    if f in _PLAIN:
        name = _FIELD_READS[f]
        get = _GETTERS[name]

        def passes(ctx, pkt, i, o):
            ctx.fields.add(name)
            actual = get(pkt)
            return actual is not None and (actual == v) != neg
        return passes

    def generic(ctx, pkt, i, o):
        t = _test(ctx, c, pkt, i, o)
        return t is not None and t != neg
    return generic


_PLAIN = frozenset({"eth_src", "eth_dst", "ethertype", "proto", "vlan"})   # one field, compared whole
_GETTERS = {name: attrgetter(name) for name in (*_FIELD_READS.values(), "ip_src", "ip_dst")}


class _Compiled(NamedTuple):
    chain: Chain
    rules: tuple[tuple[Rule, tuple, bool], ...]       # (rule, its conditions compiled, match inverted)


_COMPILED: dict[int, _Compiled] = {}


def _compiled(chain: Chain) -> tuple[tuple[Rule, tuple, bool], ...]:
    hit = _COMPILED.get(id(chain))
    if hit is not None and hit.chain is chain:
        return hit.rules
    rules = tuple((r, tuple(_compile(c) for c in r.match.conditions), r.match.invert) for r in chain.rules)
    if len(_COMPILED) > 4096:
        _COMPILED.clear()
    _COMPILED[id(chain)] = _Compiled(chain, rules)
    return rules


def run_chain(ctx: Ctx, name: str, pkt: Packet, device: str, in_port: str | None,
              out_port: str | None) -> tuple[str, Packet]:
    """Walk chain ``name``.  Returns (accept | drop | reject, packet after NAT rewrites).  Neighbor discovery
    is accepted without a walk (see the module comment)."""
    fields = ctx.fields
    fields.add("eth_type")                              # is_nd, inline: every packet meets a chain or three
    if pkt.eth_type == ETH_TYPE_IPV6:
        fields.update(_ND_READS)
        if pkt.icmpv6_type in ND_TYPES:
            return ACCEPT, pkt
    return _walk(ctx, pkt, device, in_port, out_port, ctx.chain(name), [], {name})


def _walk(ctx: Ctx, pkt: Packet, device: str, in_port: str | None, out_port: str | None, chain: Chain,
          stack: list[tuple[Chain, int]], on_stack: set[str]) -> tuple[str, Packet]:
    """The walk from the start of ``chain``: ``stack`` holds where each calling chain resumes, ``on_stack``
    the names of the chains being walked (a jump to one of them is a loop)."""
    rules = _compiled(chain)
    i = 0
    while True:
        if i >= len(rules):
            if not stack:
                return ACCEPT, pkt
            on_stack.discard(chain.name)
            chain, i = stack.pop()
            rules = _compiled(chain)
            continue
        rule, conds, invert = rules[i]
        i += 1
        hit = True
        for passes in conds:
            if not passes(ctx, pkt, in_port, out_port):
                hit = False
                break
        if hit == invert:
            continue
        a = rule.action
        if a == "continue":
            continue
        if a == "accept":
            return ACCEPT, pkt
        if a == "drop":
            return DROP, pkt
        if a == "reject":
            return REJECT, pkt
        if a == "return":
            if not stack:
                return ACCEPT, pkt
            on_stack.discard(chain.name)
            chain, i = stack.pop()
            rules = _compiled(chain)
            continue
        if a == "jump":
            if rule.chain in on_stack or len(stack) >= MAX_JUMP_DEPTH:
                raise Stop("chain_loop")
            stack.append((chain, i))
            chain = ctx.chain(rule.chain)
            rules = _compiled(chain)
            on_stack.add(rule.chain)
            i = 0
            continue
        new = nat.apply_rule(ctx, rule, pkt, device)
        if new is not None:
            return ACCEPT, new


_ND_READS = ("proto", "icmpv6_type")


def is_nd(ctx: Ctx, pkt: Packet) -> bool:
    """An IPv6 neighbor discovery message (router/neighbor solicitation or advertisement)."""
    ctx.read("eth_type")
    if pkt.eth_type != ETH_TYPE_IPV6:
        return False
    ctx.read("proto", "icmpv6_type")
    return pkt.icmpv6_type in ND_TYPES


