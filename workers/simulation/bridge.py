"""The virtual bridge: MAC learning, unicast/flood, VLAN access and trunk ports, ARP for router ports.

A frame whose source MAC is a group (multicast or broadcast) address is dropped (``bad_src_mac``) before
anything is learned: no station owns a group address.

``process`` takes a packet that entered the bridge at ``in_port`` and returns the (egress port, packet)
pairs it leaves by.  MAC learning is an effect (MacTableWrite); the MAC table is read from the static entries in
the topology, then the agent state.  Router ports peered with the bridge are known to it: their MACs are
unicast destinations and the bridge answers ARP requests and IPv6 neighbor solicitations for their addresses
(global and link-local) on the routers' behalf.
"""

from __future__ import annotations

from packet.addr import is_ipv6_multicast
from packet.packet import (
    ARP_REQUEST,
    ETH_TYPE_ARP,
    FRAG_LATER,
    ICMPV6_UNREACH,
    ND_NEIGHBOR_SOLICIT,
    PROTO_ICMPV6,
    PROTO_TCP,
    TCP_FLAGS,
    UNREACH6_ADMIN_PROHIBITED,
    Packet,
)
from topology.model import Bridge, Port
from workers import tags
from workers.simulation import generate
from workers.simulation.chains import ACCEPT, DROP, REJECT, run_chain
from workers.simulation.context import Consumed, Ctx, Stop
from workers.simulation.result import ArpTableWrite, MacTableWrite

_INDEX: dict[int, tuple[Bridge, dict, dict, tuple]] = {}


def _router_ports(ctx: Ctx, bridge: Bridge) -> tuple[dict[int, str], dict[int, tuple[str, int]]]:
    """(router-port MAC → our port name, router-port IP → (our port name, router MAC)), cached by identity of
    the bridge and of the peer ports read: the peers are read again each time (their tags; a peer that changed
    makes a new entry), so the result and its tags do not depend on what the cache holds."""
    hit = _INDEX.get(id(bridge))
    if hit is not None and hit[0] is bridge and all(ctx.port(pid) is peer for pid, peer in hit[3]):
        return hit[1], hit[2]
    macs: dict[int, str] = {}
    ips: dict[int, tuple[str, int]] = {}
    peers = []
    for p in bridge.ports.values():
        if p.peer is None:
            continue
        peer = ctx.port(p.peer)
        peers.append((p.peer, peer))
        if peer.mac is not None:
            macs[peer.mac] = p.name
            if peer.address is not None:
                ips[peer.address] = (p.name, peer.mac)
            for a6 in (*(a for a, _plen in peer.addresses6), peer.link_local6):
                if a6 is not None:
                    ips[a6] = (p.name, peer.mac)         # IPv6 (> 2**32): one map, the families cannot collide
    if len(_INDEX) > 4096:
        _INDEX.clear()
    _INDEX[id(bridge)] = (bridge, macs, ips, tuple(peers))
    return macs, ips


_GROUP_BIT = 0x010000000000                     # the I/G bit: a multicast or broadcast MAC
_READS = ("eth_src", "eth_dst", "vlan", "eth_type")


def _multicast(mac: int) -> bool:
    return bool(mac & _GROUP_BIT)


def process(ctx: Ctx, bridge: Bridge, in_port: Port, pkt: Packet) -> list[tuple[Port, Packet]]:
    name = bridge.name
    ctx.tags.add(tags.bridge(name))
    ctx.fields.update(_READS)
    src = pkt.eth_src
    if src & _GROUP_BIT:
        raise Stop("bad_src_mac")                  # a group address is never a station's: drop, learn nothing
    if in_port.vlan is not None:
        if pkt.vlan is not None:
            raise Stop("vlan_tag_on_access_port")
        vlan = in_port.vlan
    else:
        vlan = pkt.vlan or 0

    if bridge.inbound_filter:
        verdict, pkt = run_chain(ctx, bridge.inbound_filter, pkt, name, in_port.id, None)
        if verdict != ACCEPT:
            _verdict(ctx, verdict, pkt, in_port)

    src = pkt.eth_src
    if not src & _GROUP_BIT:
        ctx.tags.add(tags.mac(name, vlan, src))
        known = bridge.mac_table.get((vlan, src)) or _learned(ctx, bridge, vlan, src)
        if known != in_port.name and (vlan, src) not in bridge.mac_table:
            ctx.effects.append(MacTableWrite(name, vlan, src, in_port.id))

    router_macs, router_ips = _router_ports(ctx, bridge)
    is_arp = pkt.eth_type == ETH_TYPE_ARP
    if is_arp:
        ctx.read("arp_op")
    if is_arp and pkt.arp_op == ARP_REQUEST:
        ctx.read("arp_tpa")
        hit = router_ips.get(pkt.arp_tpa)
        if hit is not None and hit[0] != in_port.name:
            ctx.emit(in_port.id, generate.arp_reply(pkt, hit[1]))
            if pkt.arp_spa:
                # the router gleans the asker's address, as a host does from a request for its own IP
                router_name = ctx.port(bridge.ports[hit[0]].peer).device
                ctx.effects.append(ArpTableWrite(router_name, pkt.arp_spa, pkt.arp_sha))
            raise Consumed()
    if pkt.ipv6_src is not None and _multicast(pkt.eth_dst):
        ctx.read("proto", "icmpv6_type")             # a multicast NS for a router port is answered here
        if pkt.proto == PROTO_ICMPV6 and pkt.icmpv6_type == ND_NEIGHBOR_SOLICIT:
            ctx.read("nd_target", "ipv6_src", "hop_limit")
            hit = router_ips.get(pkt.nd_target) if (pkt.nd_target or 0) > 0xFFFFFFFF else None
            if hit is not None and hit[0] != in_port.name and pkt.hop_limit == generate.HOP_LIMIT_ND:
                ctx.emit(in_port.id, generate.neighbor_advert(pkt, hit[1]))
                if pkt.ipv6_src and pkt.nd_sll is not None:
                    router_name = ctx.port(bridge.ports[hit[0]].peer).device
                    ctx.effects.append(ArpTableWrite(router_name, pkt.ipv6_src, pkt.nd_sll))
                raise Consumed()

    dst = pkt.eth_dst
    if _multicast(dst):
        out_names = _flood(ctx, bridge, in_port, vlan)
    else:
        ctx.tags.add(tags.mac(name, vlan, dst))
        out = bridge.mac_table.get((vlan, dst)) or router_macs.get(dst) or _learned(ctx, bridge, vlan, dst)
        if out is None:
            out_names = _flood(ctx, bridge, in_port, vlan)
        elif out == in_port.name:
            raise Stop("same_port")
        else:
            out_names = [out]

    result = []
    for pname in out_names:
        port = bridge.ports[pname]
        out_pkt = pkt
        if bridge.outbound_filter:
            verdict, out_pkt = run_chain(ctx, bridge.outbound_filter, pkt, name, in_port.id, port.id)
            if verdict == REJECT and len(out_names) == 1:
                _verdict(ctx, verdict, out_pkt, in_port)
            if verdict != "accept":
                continue
        if port.vlan is not None:
            if port.vlan != vlan:
                continue
            out_pkt = out_pkt._replace(vlan=None) if out_pkt.vlan is not None else out_pkt
        else:
            want = vlan or None
            if out_pkt.vlan != want:
                out_pkt = out_pkt._replace(vlan=want)
        result.append((port, out_pkt))
    if not result:
        raise Stop("filtered" if bridge.outbound_filter else "no_egress_port")
    return result


def _learned(ctx: Ctx, bridge: Bridge, vlan: int, mac: int) -> str | None:
    """The port name a learned entry points to; None when unknown, or when the entry names a port this bridge
    does not have (replicated from another agent, or the port was removed since): the packet is flooded."""
    port_id = ctx.state.mac_lookup(bridge.name, vlan, mac)
    if port_id is None:
        return None
    name = port_id[len(bridge.name) + 1:]
    if name not in bridge.ports or port_id[:len(bridge.name) + 1] != bridge.name + ".":
        return None
    return name


def _flood(ctx: Ctx, bridge: Bridge, in_port: Port, vlan: int) -> list[str]:
    """Every exterior port (and bridge-to-bridge link) of the VLAN but the ingress port.  Router ports are
    not flooded to: the bridge answers ARP for them and knows their MACs."""
    out = []
    for p in bridge.ports.values():
        if p.name == in_port.name or (p.vlan is not None and p.vlan != vlan):
            continue
        if p.peer is None:
            out.append(p.name)
        else:
            peer = ctx.port(p.peer)
            if ctx.device_kind(peer.device) == "bridge":
                out.append(p.name)
    return out


def _verdict(ctx: Ctx, verdict: str, pkt: Packet, in_port: Port) -> None:
    if verdict == DROP:
        raise Stop("filter_drop")
    if verdict == REJECT and pkt.frag == FRAG_LATER:
        ctx.read("frag")                               # a later fragment has no L4 header to answer: no RST,
        raise Stop("filter_reject")                    # and no ICMP error is about one (RFC 1812 §4.3.2.7)
    if verdict == REJECT and pkt.ipv6_src is not None:
        _reject6(ctx, pkt, in_port)
    if verdict == REJECT:
        ctx.read("frag")
        if pkt.proto == PROTO_TCP and pkt.ip_src is not None and not (pkt.tcp_flags or 0) & TCP_FLAGS["rst"]:
            ctx.emit(in_port.id, generate.tcp_rst(pkt, pkt.eth_dst))
        elif pkt.ip_src is not None:
            # a bridge has no address of its own: answer as the destination would (admin prohibited)
            ctx.emit(in_port.id, generate.icmp_error(pkt, 3, 13, pkt.eth_dst, pkt.ip_dst))
        raise Stop("filter_reject")


def _reject6(ctx: Ctx, pkt: Packet, in_port: Port) -> None:
    """A reject of an IPv6 packet: a TCP RST (not to a RST), else ICMPv6 destination unreachable,
    administratively prohibited, as from the destination — not about an ICMPv6 error nor to or from a
    multicast address (RFC 4443 §2.4 e), where the reject is a plain drop."""
    ctx.read("proto", "ipv6_src", "ipv6_dst", "icmpv6_type", "frag")
    if pkt.proto == PROTO_TCP:
        if not (pkt.tcp_flags or 0) & TCP_FLAGS["rst"]:
            ctx.emit(in_port.id, generate.tcp_rst6(pkt, pkt.eth_dst))
    elif not pkt.is_icmpv6_error and not is_ipv6_multicast(pkt.ipv6_dst) and not is_ipv6_multicast(pkt.ipv6_src):
        ctx.emit(in_port.id, generate.icmp6_error(pkt, ICMPV6_UNREACH, UNREACH6_ADMIN_PROHIBITED, pkt.eth_dst,
                                                  pkt.ipv6_dst))
    raise Stop("filter_reject")
