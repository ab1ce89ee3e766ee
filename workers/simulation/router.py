"""The virtual router: ARP for its own addresses, filters, L4 load balancing, routing, ICMP, next-hop MAC.

``process`` takes a packet that entered the router at ``in_port`` and returns the (egress port, packet) it
leaves by, or ends the simulation (Stop / Consumed).  Routers are VLAN-unaware: an 802.1Q-tagged frame is
dropped (``vlan_tagged``), a priority-tagged one (VID 0) is handled untagged.  Route choice: longest
destination prefix, then longest source prefix, then lowest weight; equal candidates are ECMP, chosen by the
flow hash.  Connected routes come from the port addresses (weight 0).  The next-hop MAC comes from the peer
router port, a static ARP entry, or the agent's ARP table — else the packet needs ARP (an ARP request is
emitted and the packet parks).  An echo request to one of the router's addresses is consumed; the reply is
routed like any packet leaving the router, through its outbound filter (``_send_local``).
"""

from __future__ import annotations

from packet.packet import (
    ARP_REPLY,
    ARP_REQUEST,
    ETH_TYPE_IPV6,
    ICMP_ECHO_REQUEST,
    ICMP_TIME_EXCEEDED,
    ICMP_UNREACH,
    PROTO_ICMP,
    PROTO_TCP,
    TCP_FLAGS,
    UNREACH_ADMIN_PROHIBITED,
    UNREACH_NET,
    Packet,
)
from topology.model import ROUTE_BLACKHOLE, ROUTE_REJECT, Port, Route, Router
from workers import tags
from workers.simulation import generate, lb
from workers.simulation.chains import ACCEPT, DROP, run_chain
from workers.simulation.context import Consumed, Ctx, Stop
from workers.simulation.result import EXPIRY_TEMPORARY, ArpTableWrite, NeedArp
from workers.simulation.state import PendingState

BROADCAST = 0xFFFFFFFFFFFF
_ROUTES: dict[int, tuple[Router, tuple[Route, ...], dict[int, Port]]] = {}


def _tables(router: Router) -> tuple[tuple[Route, ...], dict[int, Port]]:
    """(routes sorted most-specific first, own address → port), cached by identity of the record."""
    hit = _ROUTES.get(id(router))
    if hit is not None and hit[0] is router:
        return hit[1], hit[2]
    routes = tuple(sorted(router.all_routes(), key=lambda r: (-r.dst_len, -r.src_len, r.weight)))
    own = {p.address: p for p in router.ports.values() if p.address is not None}
    if len(_ROUTES) > 4096:
        _ROUTES.clear()
    _ROUTES[id(router)] = (router, routes, own)
    return routes, own


def lookup_route(ctx: Ctx, router: Router, pkt: Packet) -> Route | None:
    """The route for ``pkt`` (None: no route).  Records the destination prefix that decided (prefix tracking):
    as many bits of ip_dst as tell every route examined apart — the length of a route that matched, one bit
    past the common prefix of one that did not — so that every address in that prefix examines the same routes
    with the same outcome.  A source-routed candidate whose destination matched reads the whole ip_src."""
    routes, _ = _tables(router)
    dst, src = pkt.ip_dst, pkt.ip_src
    best: list[Route] = []
    best_key = None
    need = 0
    read_src = False
    for r in routes:
        key = (r.dst_len, r.src_len, r.weight)
        if best_key is not None and key != best_key:
            break                                      # sorted: nothing later is as good
        if (dst & _mask(r.dst_len)) == r.dst:
            if r.dst_len > need:
                need = r.dst_len
            if r.src_len:
                read_src = True
            if (src & _mask(r.src_len)) == r.src:
                best.append(r)
                best_key = key
        else:
            n = 33 - (dst ^ r.dst).bit_length()        # the first bit where they differ
            if n > need:
                need = n
    ctx.read_prefix("ip_dst", need)
    if read_src:
        ctx.read("ip_src")
    if not best:
        return None
    if len(best) == 1:
        return best[0]
    ctx.read("ip_src", "ip_dst", "proto", "tp_src", "tp_dst")
    return best[ctx.flow_hash() % len(best)]


def _mask(length: int) -> int:
    return (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0


def process(ctx: Ctx, router: Router, in_port: Port, pkt: Packet) -> list[tuple[Port, Packet]]:
    name = router.name
    ctx.tags.add(tags.router(name))
    ctx.read("eth_type", "vlan")
    if pkt.vlan is not None:
        if pkt.vlan:
            raise Stop("vlan_tagged")                   # routers are VLAN-unaware
        pkt = pkt._replace(vlan=None, vlan_pcp=0)       # a priority tag (VID 0) is popped
    if pkt.is_arp:
        _arp(ctx, router, in_port, pkt)
    if not pkt.is_ipv4:
        raise Stop("ipv6" if pkt.eth_type == ETH_TYPE_IPV6 else "not_ipv4")
    ctx.read("eth_dst")
    if pkt.eth_dst != in_port.mac and pkt.eth_dst != BROADCAST:
        raise Stop("wrong_dst_mac")

    skip_inbound = False
    if router.load_balancer:
        pkt, skip_inbound = lb.process_inbound(ctx, router, pkt)
    if router.inbound_filter and not skip_inbound:
        verdict, pkt = run_chain(ctx, router.inbound_filter, pkt, name, in_port.id, None)
        _verdict(ctx, verdict, pkt, in_port)

    _, own = _tables(router)
    if pkt.ip_dst in own:
        ctx.read("ip_dst", "proto", "icmp_type")
        if pkt.proto == PROTO_ICMP and pkt.icmp_type == ICMP_ECHO_REQUEST:
            _send_local(ctx, router, in_port, pkt, generate.echo_reply(pkt, in_port.mac))
            raise Consumed()
        raise Stop("to_router")

    # not one of our addresses: that much of ip_dst tells it from each of them
    dst = pkt.ip_dst
    for a in own:
        ctx.read_prefix("ip_dst", 33 - (dst ^ a).bit_length())
    ctx.read("ttl", "eth_src")                         # ttl is decremented; eth_src and eth_dst are rewritten
    if pkt.ttl is not None and pkt.ttl <= 1:
        _icmp(ctx, pkt, in_port, ICMP_TIME_EXCEEDED, 0)
        raise Stop("ttl_exceeded")

    route = lookup_route(ctx, router, pkt)
    if route is None:
        _icmp(ctx, pkt, in_port, ICMP_UNREACH, UNREACH_NET)
        raise Stop("no_route")
    if route.type == ROUTE_BLACKHOLE:
        raise Stop("blackhole")
    if route.type == ROUTE_REJECT:
        _icmp(ctx, pkt, in_port, ICMP_UNREACH, UNREACH_ADMIN_PROHIBITED)
        raise Stop("reject_route")
    out_port = router.ports[route.port]
    ctx.tags.add(tags.port(out_port.id))

    if router.outbound_filter:
        verdict, pkt = run_chain(ctx, router.outbound_filter, pkt, name, in_port.id, out_port.id)
        _verdict(ctx, verdict, pkt, in_port)

    if route.gateway is None:
        ctx.read("ip_dst")                             # the next hop is the destination itself (its ARP entry)
    next_hop = route.gateway if route.gateway is not None else pkt.ip_dst
    mac = _next_hop_mac(ctx, router, out_port, next_hop)
    ttl = pkt.ttl - 1 if pkt.ttl is not None else None
    return [(out_port, pkt._replace(ttl=ttl, eth_src=out_port.mac, eth_dst=mac))]


def _send_local(ctx: Ctx, router: Router, in_port: Port, request: Packet, pkt: Packet) -> None:
    """Send a packet the router itself originates (an echo reply), as MidoNet's Router.sendIpPacket does: routed
    by its destination, through the outbound filter (so a reply to a floating IP leaves from the floating IP),
    out of the route's port to the next hop.  Back out of the request's port it goes to the request's sender
    MAC.  No route, or a filter that does not accept it: nothing is sent."""
    route = lookup_route(ctx, router, pkt)
    if route is None or route.type == ROUTE_BLACKHOLE or route.type == ROUTE_REJECT:
        return
    out_port = router.ports[route.port]
    if router.outbound_filter:
        # its own conntrack and NAT view: the reply, not the request, is the packet the rules see; it sees the
        # state the request's walk created so far
        sub = Ctx(ctx.topo, PendingState(ctx.state, ctx.effects) if ctx.effects else ctx.state, ctx.now,
                  ctx.local_host, in_port.id, pkt)
        verdict, pkt = run_chain(sub, router.outbound_filter, pkt, router.name, None, out_port.id)
        ctx.tags.update(sub.tags)
        ctx.effects.extend(sub.effects)
        if verdict != ACCEPT:
            return
    if out_port.id == in_port.id:
        mac = request.eth_src
    else:
        mac = _next_hop_mac(ctx, router, out_port, route.gateway if route.gateway is not None else pkt.ip_dst)
    ctx.emit(out_port.id, pkt._replace(eth_src=out_port.mac, eth_dst=mac))


def _next_hop_mac(ctx: Ctx, router: Router, out_port: Port, ip: int) -> int:
    if out_port.peer is not None:
        peer = ctx.port(out_port.peer)
        if peer.mac is not None and ctx.device_kind(peer.device) == "router":
            return peer.mac
    mac = router.arp_table.get(ip)
    if mac is not None:
        return mac
    ctx.tags.add(tags.arp(router.name, ip))
    mac = ctx.state.arp_lookup(router.name, ip, ctx.now)
    if mac is not None:
        return mac
    ctx.emit(out_port.id, generate.arp_request(out_port.mac, out_port.address, ip))
    raise Stop("arp_needed", EXPIRY_TEMPORARY, NeedArp(router.name, out_port.id, ip))


def _arp(ctx: Ctx, router: Router, in_port: Port, pkt: Packet) -> None:
    ctx.read("arp_op", "arp_tpa")
    if in_port.address is None or pkt.arp_tpa != in_port.address:
        raise Stop("arp_not_for_router")
    if pkt.arp_op == ARP_REQUEST:
        ctx.emit(in_port.id, generate.arp_reply(pkt, in_port.mac))
        if pkt.arp_spa:
            ctx.effects.append(ArpTableWrite(router.name, pkt.arp_spa, pkt.arp_sha))
        raise Consumed()
    if pkt.arp_op == ARP_REPLY:
        ctx.effects.append(ArpTableWrite(router.name, pkt.arp_spa, pkt.arp_sha))
        raise Consumed()
    raise Stop("bad_arp_op")


def _icmp(ctx: Ctx, pkt: Packet, in_port: Port, icmp_type: int, code: int) -> None:
    """An ICMP error about ``pkt`` back out of the ingress port, from its address.  Never about an ICMP
    error (RFC 1122 §3.2.2) or a non-first fragment."""
    ctx.read("proto", "icmp_type", "frag")
    if pkt.is_icmp_error or pkt.frag == 2 or in_port.address is None:
        return
    ctx.emit(in_port.id, generate.icmp_error(pkt, icmp_type, code, in_port.mac, in_port.address))


def _verdict(ctx: Ctx, verdict: str, pkt: Packet, in_port: Port) -> None:
    if verdict == ACCEPT:
        return
    if verdict == DROP:
        raise Stop("filter_drop")
    if pkt.proto == PROTO_TCP and not (pkt.tcp_flags or 0) & TCP_FLAGS["rst"]:
        ctx.emit(in_port.id, generate.tcp_rst(pkt, in_port.mac))
    else:
        _icmp(ctx, pkt, in_port, ICMP_UNREACH, UNREACH_ADMIN_PROHIBITED)
    raise Stop("filter_reject")
