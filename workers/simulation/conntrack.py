"""Connection tracking: is this packet the forward or the return direction of a connection?

Key = 5-tuple + id of the ingress device, no value (DESIGN §1.5).  A packet whose key is present is a return
packet.  A forward packet whose simulation read the ct state writes the *return* key at the end: the swapped
tuple after every rewrite, with the egress device, so that the reply — entering at that device — finds it.
ICMP echo uses the ICMP id as both ports; an ICMP error is looked up through the header it carries.

IPv6 likewise: the 5-tuple of an IPv6 packet holds its 128-bit addresses (a state key of either family: an
address above 2**32 is IPv6, packet.addr.ip_text), TCP/UDP ports, an ICMPv6 echo's id as both ports; an ICMPv6
error (``is_icmpv6_error``) finds the connection its carried IPv6 header reports (``ct: return``, as the
connection's reply would) and writes nothing; a later fragment (no L4 header) has ports 0, as an IPv4 one.
Neighbor discovery (ICMPv6 133-136) never reads nor writes conntrack: its ct state is ``forward``, no entry is
written for it (and chains accept it before any rule, workers.simulation.chains).
"""

from __future__ import annotations

from packet.packet import (
    ICMP_ERROR_TYPES,
    ICMPV6_ERROR_TYPES,
    ND_TYPES,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Packet,
)
from workers import tags
from workers.simulation.context import Ctx
from workers.simulation.result import CONNTRACK, FlowStateTouch, FlowStateWrite, state_key
from workers.simulation.state import MISSING

FORWARD = "forward"
RETURN = "return"


def five_tuple(pkt: Packet) -> tuple | None:
    """(src, dst, proto, sport, dport) of an IPv4 or IPv6 packet; None for non-IP.  ICMP / ICMPv6 echo: id as
    both ports; other ICMP and other protocols (a later fragment too): ports 0."""
    p = pkt.proto
    if pkt.ip_src is None:
        if pkt.ipv6_src is None:
            return None
        if p == PROTO_TCP or p == PROTO_UDP:
            return (pkt.ipv6_src, pkt.ipv6_dst, p, pkt.tp_src or 0, pkt.tp_dst or 0)
        if p == PROTO_ICMPV6 and pkt.icmp_id is not None and pkt.icmpv6_type not in ICMPV6_ERROR_TYPES:
            return (pkt.ipv6_src, pkt.ipv6_dst, p, pkt.icmp_id, pkt.icmp_id)
        return (pkt.ipv6_src, pkt.ipv6_dst, p, 0, 0)
    if p == PROTO_TCP or p == PROTO_UDP:
        return (pkt.ip_src, pkt.ip_dst, p, pkt.tp_src or 0, pkt.tp_dst or 0)
    if p == PROTO_ICMP and pkt.icmp_id is not None and pkt.icmp_type not in ICMP_ERROR_TYPES:
        return (pkt.ip_src, pkt.ip_dst, p, pkt.icmp_id, pkt.icmp_id)
    return (pkt.ip_src, pkt.ip_dst, p, 0, 0)


def inner_five_tuple(pkt: Packet) -> tuple | None:
    """The 5-tuple of the packet an ICMP or ICMPv6 error reports (as that packet travelled)."""
    p = pkt.inner_proto
    if pkt.inner_ip_src is not None:
        src, dst, echo = pkt.inner_ip_src, pkt.inner_ip_dst, PROTO_ICMP
    elif pkt.inner_ipv6_src is not None:
        src, dst, echo = pkt.inner_ipv6_src, pkt.inner_ipv6_dst, PROTO_ICMPV6
    else:
        return None
    if p == PROTO_TCP or p == PROTO_UDP:
        return (src, dst, p, pkt.inner_tp_src or 0, pkt.inner_tp_dst or 0)
    if p == echo and pkt.inner_icmp_id is not None:
        return (src, dst, p, pkt.inner_icmp_id, pkt.inner_icmp_id)
    return (src, dst, p, 0, 0)


def is_error(pkt: Packet) -> bool:
    """An ICMP or ICMPv6 error (it reports a connection, it is none).  (Packet.is_icmp_error or
    Packet.is_icmpv6_error, without the two property calls: it runs a few times per setup.)"""
    p = pkt.proto
    if p == PROTO_ICMP:
        return pkt.icmp_type in ICMP_ERROR_TYPES
    if p == PROTO_ICMPV6:
        return pkt.icmpv6_type in ICMPV6_ERROR_TYPES
    return False


def is_nd(pkt: Packet) -> bool:
    return pkt.proto == PROTO_ICMPV6 and pkt.icmpv6_type in ND_TYPES


def reverse(t: tuple) -> tuple:
    return (t[1], t[0], t[2], t[4], t[3])


def lookup_tuple(pkt: Packet) -> tuple | None:
    """The tuple under which the packet's connection is found: its own, or for an ICMP error the reverse of
    the carried header (the error travels back along the connection)."""
    if is_error(pkt):
        inner = inner_five_tuple(pkt)
        return reverse(inner) if inner else None
    return five_tuple(pkt)


def ingress_device(ctx: Ctx) -> str:
    port = ctx.topo.port(ctx.ingress_port)
    return port.device if port is not None else ""


def ct_state(ctx: Ctx) -> str:
    """forward | return, computed once per simulation from the ingress packet and device."""
    if ctx.ct is not None:
        return ctx.ct
    ctx._five = True                                   # the 5-tuple read, through the ct state only
    pkt = ctx.ingress_packet
    t = lookup_tuple(pkt)
    state = FORWARD
    if t is not None and not is_nd(pkt):
        key = state_key(t, ingress_device(ctx))
        ctx.tags.add(tags.flow_state(CONNTRACK, key))
        if ctx.state.flow_state_get(CONNTRACK, key, ctx.now) is not MISSING:
            state = RETURN
            ctx.effects.append(FlowStateTouch(CONNTRACK, key))
    ctx.ct = state
    return state


def finish(ctx: Ctx, egress: list[tuple[str, Packet]]) -> None:
    """After a forward result: if the simulation read ct as forward, write the return key for each distinct
    (egress device, rewritten tuple)."""
    if ctx.ct != FORWARD or is_error(ctx.ingress_packet) or is_nd(ctx.ingress_packet):
        return
    seen = set()
    for device, pkt in egress:
        t = five_tuple(pkt)
        if t is None:
            continue
        key = state_key(reverse(t), device)
        if key in seen:
            continue
        seen.add(key)
        ctx.effects.append(FlowStateWrite(CONNTRACK, key, None))
        ctx.tags.add(tags.flow_state(CONNTRACK, key))

