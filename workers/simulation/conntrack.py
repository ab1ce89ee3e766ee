"""Connection tracking: is this packet the forward or the return direction of a connection?

Key = 5-tuple + id of the ingress device, no value (DESIGN §1.5).  A packet whose key is present is a return
packet.  A forward packet whose simulation read the ct state writes the *return* key at the end: the swapped
tuple after every rewrite, with the egress device, so that the reply — entering at that device — finds it.
ICMP echo uses the ICMP id as both ports; an ICMP error is looked up through the header it carries.
"""

from __future__ import annotations

from packet.packet import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Packet
from workers import tags
from workers.simulation.context import Ctx
from workers.simulation.result import CONNTRACK, FlowStateTouch, FlowStateWrite, state_key
from workers.simulation.state import MISSING

FORWARD = "forward"
RETURN = "return"


def five_tuple(pkt: Packet) -> tuple | None:
    """(src, dst, proto, sport, dport) of an IPv4 packet; None for non-IP.  ICMP echo: id as both ports;
    other ICMP and other protocols: ports 0."""
    if pkt.ip_src is None:
        return None
    p = pkt.proto
    if p == PROTO_TCP or p == PROTO_UDP:
        return (pkt.ip_src, pkt.ip_dst, p, pkt.tp_src or 0, pkt.tp_dst or 0)
    if p == PROTO_ICMP and pkt.icmp_id is not None and not pkt.is_icmp_error:
        return (pkt.ip_src, pkt.ip_dst, p, pkt.icmp_id, pkt.icmp_id)
    return (pkt.ip_src, pkt.ip_dst, p, 0, 0)


def inner_five_tuple(pkt: Packet) -> tuple | None:
    """The 5-tuple of the packet an ICMP error reports (as that packet travelled)."""
    if pkt.inner_ip_src is None:
        return None
    p = pkt.inner_proto
    if p == PROTO_TCP or p == PROTO_UDP:
        return (pkt.inner_ip_src, pkt.inner_ip_dst, p, pkt.inner_tp_src or 0, pkt.inner_tp_dst or 0)
    if p == PROTO_ICMP and pkt.inner_icmp_id is not None:
        return (pkt.inner_ip_src, pkt.inner_ip_dst, p, pkt.inner_icmp_id, pkt.inner_icmp_id)
    return (pkt.inner_ip_src, pkt.inner_ip_dst, p, 0, 0)


def reverse(t: tuple) -> tuple:
    return (t[1], t[0], t[2], t[4], t[3])


def lookup_tuple(pkt: Packet) -> tuple | None:
    """The tuple under which the packet's connection is found: its own, or for an ICMP error the reverse of
    the carried header (the error travels back along the connection)."""
    if pkt.is_icmp_error:
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
    ctx.read_five()
    t = lookup_tuple(ctx.ingress_packet)
    state = FORWARD
    if t is not None:
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
    if ctx.ct != FORWARD or ctx.ingress_packet.is_icmp_error:
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

