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

from collections.abc import Callable
from typing import NamedTuple

from packet.addr import is_ipv6_multicast
from packet.packet import (
    ARP_REPLY,
    ARP_REQUEST,
    ETH_TYPE_ARP,
    FRAG_LATER,
    ICMP_ECHO_REQUEST,
    ICMP_TIME_EXCEEDED,
    ICMP_UNREACH,
    ICMPV6_ECHO_REQUEST,
    ICMPV6_TIME_EXCEEDED,
    ICMPV6_UNREACH,
    ND_NEIGHBOR_ADVERT,
    ND_NEIGHBOR_SOLICIT,
    ND_ROUTER_SOLICIT,
    ND_TYPES,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    TCP_FLAGS,
    UNREACH6_ADMIN_PROHIBITED,
    UNREACH6_NO_ROUTE,
    UNREACH6_REJECT_ROUTE,
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


class _Tables(NamedTuple):
    routes: tuple[tuple, ...]       # IPv4 routes, most specific first, as _lookup walks them (_walk_form)
    own: dict[int, Port]            # own IPv4 address → port
    routes6: tuple[tuple, ...]      # IPv6 routes, most specific first, likewise
    own6: dict[int, Port]           # own global IPv6 address → port (link-local ones are per port)


_ROUTES: dict[int, tuple[Router, _Tables]] = {}


def _tables(router: Router) -> _Tables:
    """The router's routes of each family sorted most-specific first and its own addresses, cached by identity
    of the record."""
    hit = _ROUTES.get(id(router))
    if hit is not None and hit[0] is router:
        return hit[1]
    order = sorted(router.all_routes(), key=lambda r: (-r.dst_len, -r.src_len, r.weight))
    own = {p.address: p for p in router.ports.values() if p.address is not None}
    own6 = {a: p for p in router.ports.values() for a, _plen in p.addresses6}
    t = _Tables(tuple(_walk_form(r, _mask) for r in order if not r.v6), own,
                tuple(_walk_form(r, _mask6) for r in order if r.v6), own6)
    if len(_ROUTES) > 4096:
        _ROUTES.clear()
    _ROUTES[id(router)] = (router, t)
    return t


def _walk_form(r: Route, mask) -> tuple:
    """(route, its sort key, destination mask, source mask): computed once per router record, not per lookup."""
    return (r, (r.dst_len, r.src_len, r.weight), mask(r.dst_len), mask(r.src_len))


def lookup_route(ctx: Ctx, router: Router, pkt: Packet) -> Route | None:
    """The route for ``pkt`` (None: no route), over the routes of its family.  Records the destination prefix
    that decided (prefix tracking): as many bits of the destination as tell every route examined apart — the
    length of a route that matched, one bit past the common prefix of one that did not — so that every address
    in that prefix examines the same routes with the same outcome.  A source-routed candidate whose destination
    matched reads the whole source."""
    if pkt.ipv6_dst is not None:
        return _lookup(ctx, _tables(router).routes6, pkt.ipv6_dst, pkt.ipv6_src, 128, "ipv6_dst", "ipv6_src")
    return _lookup(ctx, _tables(router).routes, pkt.ip_dst, pkt.ip_src, 32, "ip_dst", "ip_src")


def _lookup(ctx: Ctx, routes: tuple[tuple, ...], dst: int, src: int, bits: int, dst_field: str,
            src_field: str) -> Route | None:
    best: list[Route] = []
    best_key = None
    need = 0
    read_src = False
    for r, key, dst_mask, src_mask in routes:
        if best_key is not None and key != best_key:
            break                                      # sorted: nothing later is as good
        if (dst & dst_mask) == r.dst:
            if r.dst_len > need:
                need = r.dst_len
            if r.src_len:
                read_src = True
            if (src & src_mask) == r.src:
                best.append(r)
                best_key = key
        else:
            n = bits + 1 - (dst ^ r.dst).bit_length()  # the first bit where they differ
            if n > need:
                need = n
    ctx.read_prefix(dst_field, need)
    if read_src:
        ctx.read(src_field)
    if not best:
        return None
    if len(best) == 1:
        return best[0]
    ctx.read(src_field, dst_field, "proto", "tp_src", "tp_dst")
    return best[ctx.flow_hash() % len(best)]


def _mask(length: int) -> int:
    return (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0


def _mask6(length: int) -> int:
    return _ALL6 ^ ((1 << (128 - length)) - 1) if length else 0


def process(ctx: Ctx, router: Router, in_port: Port, pkt: Packet) -> list[tuple[Port, Packet]]:
    name = router.name
    ctx.tags.add(tags.router(name))
    ctx.read("eth_type", "vlan")
    if pkt.vlan is not None:
        if pkt.vlan:
            raise Stop("vlan_tagged")                   # routers are VLAN-unaware
        pkt = pkt._replace(vlan=None, vlan_pcp=0)       # a priority tag (VID 0) is popped
    if pkt.eth_type == ETH_TYPE_ARP:
        _arp(ctx, router, in_port, pkt)
    if pkt.is_ipv6:
        return _process6(ctx, router, in_port, pkt)
    if not pkt.is_ipv4:
        raise Stop("not_ip")
    ctx.read("eth_dst")
    if pkt.eth_dst != in_port.mac and pkt.eth_dst != BROADCAST:
        raise Stop("wrong_dst_mac")

    skip_inbound = False
    if router.load_balancer:
        pkt, skip_inbound = lb.process_inbound(ctx, router, pkt)
    if router.inbound_filter and not skip_inbound:
        verdict, pkt = run_chain(ctx, router.inbound_filter, pkt, name, in_port.id, None)
        if verdict != ACCEPT:
            _verdict(ctx, verdict, pkt, in_port)

    own = _tables(router).own
    if pkt.ip_dst in own:
        ctx.read("ip_dst", "proto", "icmp_type")
        if pkt.proto == PROTO_ICMP and pkt.icmp_type == ICMP_ECHO_REQUEST:
            _send_local(ctx, router, in_port, pkt, generate.echo_reply(pkt, in_port.mac))
            raise Consumed()
        raise Stop("to_router")

    # not one of our addresses: that much of ip_dst tells it from each of them
    if own:
        dst = pkt.ip_dst
        ctx.read_prefix("ip_dst", max(33 - (dst ^ a).bit_length() for a in own))
    ctx.read("ttl", "eth_src")                         # ttl is decremented; eth_src and eth_dst are rewritten
    if pkt.ttl is not None and pkt.ttl <= 1:
        _icmp(ctx, pkt, in_port, ICMP_TIME_EXCEEDED, 0)
        raise Stop("ttl_exceeded")

    return _route_out(ctx, router, in_port, pkt, _V4)


class _Family(NamedTuple):
    """What the routing tail (``_route_out``) does differently per address family."""

    icmp: Callable                  # _icmp or _icmp6: an error back out of the ingress port
    unreach: int                    # the destination-unreachable type
    no_route: int                   # its code for "no route"
    reject_route: int               # its code for a reject route
    dst: str                        # the destination field (the next hop when the route has no gateway)
    hops: str                       # the field decremented on the way through (ttl, hop_limit)


def _route_out(ctx: Ctx, router: Router, in_port: Port, pkt: Packet, fam: _Family) -> list[tuple[Port, Packet]]:
    """The tail of both walks, after the packet is known to be routed: route choice → out port → outbound
    filter → next hop → MAC rewrite and the hop count decremented.  No route and a reject route answer an error
    of the family; a blackhole drops silently."""
    route = lookup_route(ctx, router, pkt)
    if route is None:
        fam.icmp(ctx, pkt, in_port, fam.unreach, fam.no_route)
        raise Stop("no_route")
    if route.type == ROUTE_BLACKHOLE:
        raise Stop("blackhole")
    if route.type == ROUTE_REJECT:
        fam.icmp(ctx, pkt, in_port, fam.unreach, fam.reject_route)
        raise Stop("reject_route")
    out_port = router.ports[route.port]
    ctx.tags.add(tags.port(out_port.id))

    if router.outbound_filter:
        verdict, pkt = run_chain(ctx, router.outbound_filter, pkt, router.name, in_port.id, out_port.id)
        if verdict != ACCEPT:
            _verdict(ctx, verdict, pkt, in_port)

    next_hop = route.gateway
    if next_hop is None:
        ctx.read(fam.dst)                              # the next hop is the destination itself (its ARP/ND entry)
        next_hop = getattr(pkt, fam.dst)
    mac = _next_hop_mac(ctx, router, out_port, next_hop)
    hops = getattr(pkt, fam.hops)
    return [(out_port, pkt._replace(**{fam.hops: hops - 1 if hops is not None else None},
                                    eth_src=out_port.mac, eth_dst=mac))]


def _send_local(ctx: Ctx, router: Router, in_port: Port, request: Packet, pkt: Packet) -> None:
    """Send a packet the router itself originates (an echo reply), as MidoNet's Router.sendIpPacket does: routed
    by its destination, through the outbound filter (so a reply to a floating IP leaves from the floating IP),
    out of the route's port to the next hop.  Back out of the request's port it goes to the request's sender
    MAC (always, for a reply to a link-local address).  No route, or a filter that does not accept it: nothing
    is sent."""
    if pkt.ipv6_dst is not None and pkt.ipv6_dst >> 118 == _LINK_LOCAL >> 118:
        ctx.emit(in_port.id, pkt._replace(eth_src=in_port.mac, eth_dst=request.eth_src))
        return
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
        dst = pkt.ipv6_dst if pkt.ipv6_dst is not None else pkt.ip_dst
        mac = _next_hop_mac(ctx, router, out_port, route.gateway if route.gateway is not None else dst)
    ctx.emit(out_port.id, pkt._replace(eth_src=out_port.mac, eth_dst=mac))


def _next_hop_mac(ctx: Ctx, router: Router, out_port: Port, ip: int) -> int:
    """The MAC of next hop ``ip`` (IPv4 below 2**32, else IPv6: one neighbor table holds both families): the
    peer router port, a static ARP/ND entry, the agent's neighbor table — else an ARP request or a neighbor
    solicitation goes out and the packet parks (NeedArp, whichever the family)."""
    if out_port.peer is not None:
        peer = ctx.port(out_port.peer)
        if peer.mac is not None and ctx.device_kind(peer.device) == "router":
            return peer.mac
    v6 = ip > 0xFFFFFFFF
    mac = (router.nd_table if v6 else router.arp_table).get(ip)
    if mac is not None:
        return mac
    ctx.tags.add(tags.arp(router.name, ip))
    mac = ctx.state.arp_lookup(router.name, ip, ctx.now)
    if mac is not None:
        return mac
    req = generate.neighbor_request(out_port, ip)
    if req is None:
        raise Stop("no_address_to_resolve_from")     # the egress port has no address of that family
    ctx.emit(out_port.id, req)
    raise Stop("nd_needed" if v6 else "arp_needed", EXPIRY_TEMPORARY, NeedArp(router.name, out_port.id, ip))


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
    ctx.read("frag")                                   # a later fragment has no TCP header to answer with a RST
    if pkt.ipv6_dst is not None:
        if pkt.proto == PROTO_TCP and pkt.frag != FRAG_LATER and not (pkt.tcp_flags or 0) & TCP_FLAGS["rst"]:
            ctx.emit(in_port.id, generate.tcp_rst6(pkt, in_port.mac))
        else:
            _icmp6(ctx, pkt, in_port, ICMPV6_UNREACH, UNREACH6_ADMIN_PROHIBITED)
        raise Stop("filter_reject")
    if pkt.proto == PROTO_TCP and pkt.frag != FRAG_LATER and not (pkt.tcp_flags or 0) & TCP_FLAGS["rst"]:
        ctx.emit(in_port.id, generate.tcp_rst(pkt, in_port.mac))
    else:
        _icmp(ctx, pkt, in_port, ICMP_UNREACH, UNREACH_ADMIN_PROHIBITED)
    raise Stop("filter_reject")


# ---- IPv6 ---------------------------------------------------------------------------------------------------
# The IPv6 walk mirrors the IPv4 one (process): the same filters, load balancer, route choice and prefix
# tracking, over the router's IPv6 routes.  Neighbor discovery (NS, NA, RS) is answered before the filters run,
# as ARP is; RAs from others are not listened to.  Link-local addresses (fe80::/10) are never routed: one is the
# router's only on the port that owns it.  Multicast is not routed.  ICMPv6 errors (RFC 4443 §2.4(e)) are never
# sent about an ICMPv6 error, a packet to a multicast address or from an unspecified or multicast one, or a
# later fragment (as for IPv4).

_ALL6 = (1 << 128) - 1
_LINK_LOCAL, _LINK_LOCAL_LEN = 0xFE80 << 112, 10
_MULTICAST, _MULTICAST_LEN = 0xFF << 120, 8
_ETH_MULTICAST_V6 = 0x3333               # 33:33:xx:xx:xx:xx, the MACs of IPv6 multicast (RFC 2464 §7)


def _not_in(ctx: Ctx, field: str, value: int, net: int, length: int) -> bool:
    """Is ``value`` outside ``net``/``length``?  Reads as much of ``field`` as tells: ``length`` bits when it is
    inside, one bit past the common prefix when it is not."""
    diff = (value ^ net) & _mask6(length)
    ctx.read_prefix(field, 129 - diff.bit_length() if diff else length)
    return bool(diff)


def _process6(ctx: Ctx, router: Router, in_port: Port, pkt: Packet) -> list[tuple[Port, Packet]]:
    name = router.name
    ctx.read("eth_dst")
    eth_dst = pkt.eth_dst
    if eth_dst != in_port.mac and eth_dst >> 32 != _ETH_MULTICAST_V6:
        raise Stop("wrong_dst_mac")
    ctx.read("proto", "icmpv6_type")
    if pkt.proto == PROTO_ICMPV6 and pkt.icmpv6_type in ND_TYPES:
        _nd(ctx, router, in_port, pkt)
    dst = pkt.ipv6_dst
    if not _not_in(ctx, "ipv6_dst", dst, _MULTICAST, _MULTICAST_LEN):
        raise Stop("ipv6_multicast")                 # no multicast routing (ND, the one we answer, came first)
    if eth_dst != in_port.mac:
        raise Stop("wrong_dst_mac")                  # a unicast packet in a multicast frame

    skip_inbound = False
    if router.load_balancer:
        pkt, skip_inbound = lb.process_inbound(ctx, router, pkt)
    if router.inbound_filter and not skip_inbound:
        verdict, pkt = run_chain(ctx, router.inbound_filter, pkt, name, in_port.id, None)
        if verdict != ACCEPT:
            _verdict(ctx, verdict, pkt, in_port)

    dst = pkt.ipv6_dst
    own6 = _tables(router).own6
    if not _not_in(ctx, "ipv6_dst", dst, _LINK_LOCAL, _LINK_LOCAL_LEN):
        ctx.read("ipv6_dst")
        if dst != in_port.link_local6:
            raise Stop("link_local_dst")             # never routed off its link
        _to_router6(ctx, router, in_port, pkt)
    if dst in own6:
        ctx.read("ipv6_dst")
        _to_router6(ctx, router, in_port, pkt)
    for a in own6:                                   # not one of ours: that much of ipv6_dst tells it apart
        ctx.read_prefix("ipv6_dst", 129 - (dst ^ a).bit_length())
    if not _not_in(ctx, "ipv6_src", pkt.ipv6_src, _LINK_LOCAL, _LINK_LOCAL_LEN):
        raise Stop("link_local_src")                 # RFC 4291 §2.5.6: not forwarded off its link
    ctx.read("hop_limit", "eth_src")                 # hop limit decremented; eth_src and eth_dst rewritten
    if pkt.hop_limit is not None and pkt.hop_limit <= 1:
        _icmp6(ctx, pkt, in_port, ICMPV6_TIME_EXCEEDED, 0)
        raise Stop("hop_limit_exceeded")

    return _route_out(ctx, router, in_port, pkt, _V6)


def _to_router6(ctx: Ctx, router: Router, in_port: Port, pkt: Packet) -> None:
    """A packet to one of the router's IPv6 addresses: an echo request is answered, anything else dropped."""
    ctx.read("proto", "icmpv6_type")
    if pkt.proto == PROTO_ICMPV6 and pkt.icmpv6_type == ICMPV6_ECHO_REQUEST:
        _send_local(ctx, router, in_port, pkt, generate.echo_reply6(pkt, in_port.mac))
        raise Consumed()
    raise Stop("to_router")


def _port_addresses6(port: Port) -> set[int]:
    out = {a for a, _plen in port.addresses6}
    if port.link_local6 is not None:
        out.add(port.link_local6)
    return out


def _nd(ctx: Ctx, router: Router, in_port: Port, pkt: Packet) -> None:
    """Neighbor discovery on ``in_port`` (RFC 4861): an NS for one of its addresses is answered with an NA and
    teaches the solicitor's link-layer address; an NA teaches the target's; an RS is answered with an RA of the
    port's prefixes.  Always ends the walk."""
    t = pkt.icmpv6_type
    ctx.read("nd_target", "ipv6_src", "ipv6_dst", "hop_limit")
    if pkt.hop_limit != generate.HOP_LIMIT_ND:
        raise Stop("nd_bad_hop_limit")               # RFC 4861 §7.1: not from on-link, ignored
    mine = _port_addresses6(in_port)
    if t == ND_NEIGHBOR_SOLICIT:
        if pkt.nd_target not in mine:
            raise Stop("nd_not_for_router")
        ctx.emit(in_port.id, generate.neighbor_advert(pkt, in_port.mac))
        if pkt.ipv6_src and pkt.nd_sll is not None:
            ctx.effects.append(ArpTableWrite(router.name, pkt.ipv6_src, pkt.nd_sll))
        raise Consumed()
    if t == ND_NEIGHBOR_ADVERT:
        if pkt.ipv6_dst not in mine and not is_ipv6_multicast(pkt.ipv6_dst):
            raise Stop("nd_not_for_router")
        if pkt.nd_tll is None or pkt.nd_target is None or not pkt.nd_target or is_ipv6_multicast(pkt.nd_target):
            raise Stop("nd_no_link_address")
        ctx.effects.append(ArpTableWrite(router.name, pkt.nd_target, pkt.nd_tll))
        raise Consumed()
    if t == ND_ROUTER_SOLICIT and in_port.addresses6:
        prefixes = tuple((a & _mask6(plen), plen) for a, plen in in_port.addresses6 if plen <= 64)
        ctx.emit(in_port.id, generate.router_advert(pkt, in_port.mac, in_port.link_local6, prefixes))
        raise Consumed()
    raise Stop("nd_ignored")


def _icmp6(ctx: Ctx, pkt: Packet, in_port: Port, icmp_type: int, code: int) -> None:
    """An ICMPv6 error about ``pkt`` back out of the ingress port, from its first global address (its link-local
    one if it has none).  Not about an error, a multicast destination, an unspecified or multicast source or a
    later fragment (the module comment)."""
    ctx.read("proto", "icmpv6_type", "frag", "ipv6_src", "ipv6_dst")
    src = in_port.addresses6[0][0] if in_port.addresses6 else in_port.link_local6
    if (pkt.is_icmpv6_error or pkt.frag == 2 or src is None or not pkt.ipv6_src
            or is_ipv6_multicast(pkt.ipv6_src) or is_ipv6_multicast(pkt.ipv6_dst)):
        return
    ctx.emit(in_port.id, generate.icmp6_error(pkt, icmp_type, code, in_port.mac, src))


_V4 = _Family(_icmp, ICMP_UNREACH, UNREACH_NET, UNREACH_ADMIN_PROHIBITED, "ip_dst", "ttl")
_V6 = _Family(_icmp6, ICMPV6_UNREACH, UNREACH6_NO_ROUTE, UNREACH6_REJECT_ROUTE, "ipv6_dst", "hop_limit")
