"""Packets the agent builds itself: ARP requests and replies, ICMP errors and echo replies, TCP resets.

Pure constructors of Packet values; the devices decide when to emit them and from which port.
"""

from __future__ import annotations

import struct

from packet.addr import BROADCAST_MAC
from packet.checksum import checksum
from packet.packet import (
    ARP_REPLY,
    ARP_REQUEST,
    ETH_TYPE_ARP,
    ETH_TYPE_IPV4,
    ICMP_ECHO_REPLY,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    TCP_FLAGS,
    Packet,
)

TTL_GENERATED = 64
_TYPE_CODE_CSUM_SEQ = struct.Struct("!BBHH")


def arp_request(src_mac: int, src_ip: int, target_ip: int) -> Packet:
    return Packet(eth_src=src_mac, eth_dst=BROADCAST_MAC, eth_type=ETH_TYPE_ARP, arp_op=ARP_REQUEST,
                  arp_sha=src_mac, arp_spa=src_ip, arp_tha=0, arp_tpa=target_ip)


def arp_reply(request: Packet, mac: int) -> Packet:
    return Packet(eth_src=mac, eth_dst=request.arp_sha, eth_type=ETH_TYPE_ARP, vlan=request.vlan,
                  arp_op=ARP_REPLY, arp_sha=mac, arp_spa=request.arp_tpa, arp_tha=request.arp_sha,
                  arp_tpa=request.arp_spa)


def icmp_error(offending: Packet, icmp_type: int, code: int, src_mac: int, src_ip: int) -> Packet:
    """An ICMP error about ``offending``, from (src_mac, src_ip) back to its sender; it carries the
    offending packet's IP header and first 8 bytes of L4 header."""
    o = offending
    return Packet(
        eth_src=src_mac, eth_dst=o.eth_src, eth_type=ETH_TYPE_IPV4, vlan=o.vlan,
        ip_src=src_ip, ip_dst=o.ip_src, proto=PROTO_ICMP, ttl=TTL_GENERATED, tos=0, ip_id=0,
        icmp_type=icmp_type, icmp_code=code,
        inner_ip_src=o.ip_src, inner_ip_dst=o.ip_dst, inner_proto=o.proto, inner_ttl=o.ttl,
        inner_ip_id=o.ip_id, inner_tos=o.tos,
        inner_tp_src=o.tp_src if o.proto in (PROTO_TCP, PROTO_UDP) else None,
        inner_tp_dst=o.tp_dst if o.proto in (PROTO_TCP, PROTO_UDP) else None,
        inner_icmp_id=o.icmp_id if o.proto == PROTO_ICMP else None,
        inner_rest=_inner_rest(o),
    )


def _inner_rest(o: Packet) -> bytes:
    """The L4 bytes of the carried header but the ports or the echo id, as packet.codec lays out inner_rest
    (TCP: seq; UDP: length + checksum; ICMP echo: type, code, checksum, then the sequence number), so the
    carried 8 bytes are the ones the sender sent as far as we know them."""
    if o.proto == PROTO_TCP:
        return (o.tcp_seq or 0).to_bytes(4, "big")
    if o.proto == PROTO_UDP:
        return (8 + len(o.payload)).to_bytes(2, "big") + b"\0\0"
    if o.proto == PROTO_ICMP and o.icmp_id is not None:
        head = bytes((o.icmp_type or 0, o.icmp_code or 0))
        seq = (o.icmp_seq or 0).to_bytes(2, "big")
        csum = checksum(head + b"\0\0" + o.icmp_id.to_bytes(2, "big") + seq + o.payload)
        return head + csum.to_bytes(2, "big") + seq
    return b""


def echo_reply(request: Packet, src_mac: int) -> Packet:
    return request._replace(
        eth_src=src_mac, eth_dst=request.eth_src, ip_src=request.ip_dst, ip_dst=request.ip_src,
        ttl=TTL_GENERATED, icmp_type=ICMP_ECHO_REPLY, icmp_code=0,
    )


def tcp_rst(offending: Packet, src_mac: int) -> Packet:
    """A RST answering ``offending`` as if from its destination (a reject rule on TCP)."""
    o = offending
    ack = ((o.tcp_seq or 0) + max(len(o.payload), 1)) & 0xFFFFFFFF
    return Packet(
        eth_src=src_mac, eth_dst=o.eth_src, eth_type=ETH_TYPE_IPV4, vlan=o.vlan,
        ip_src=o.ip_dst, ip_dst=o.ip_src, proto=PROTO_TCP, ttl=TTL_GENERATED, tos=0, ip_id=0,
        tp_src=o.tp_dst, tp_dst=o.tp_src, tcp_flags=TCP_FLAGS["rst"] | TCP_FLAGS["ack"], tcp_seq=0,
        tcp_ack=ack, tcp_window=0,
    )


# ---- IPv6 (router and neighbor discovery: issue 15) ------------------------------------------------------
# Packets a router builds for IPv6: neighbor solicitations and advertisements (RFC 4861), ICMPv6 echo replies
# and errors (RFC 4443), router advertisements.  Kept in one block, apart from the filters' IPv6 generators.

from packet.addr import ipv6_multicast_mac, solicited_node  # noqa: E402
from packet.codec import build as _build  # noqa: E402
from packet.packet import (  # noqa: E402
    ETH_TYPE_IPV6,
    ICMPV6_ECHO_REPLY,
    ND_NA_OVERRIDE,
    ND_NA_ROUTER,
    ND_NA_SOLICITED,
    ND_NEIGHBOR_ADVERT,
    ND_NEIGHBOR_SOLICIT,
    ND_ROUTER_ADVERT,
    PROTO_ICMPV6,
)

HOP_LIMIT_ND = 255                      # RFC 4861: every ND message is sent with hop limit 255
IPV6_MIN_MTU = 1280                     # RFC 4443 §2.4(c): an error carries as much as fits in this
_IPV6_ALL_NODES = 0xFF02 << 112 | 1
# RA defaults (RFC 4861 §6.2.1): router lifetime 1800 s, on-link + autonomous prefixes valid 30 d, preferred 7 d
RA_ROUTER_LIFETIME = 1800
RA_PREFIX_FLAGS = 0xC0
RA_VALID_S, RA_PREFERRED_S = 2592000, 604800


def neighbor_solicit(src_mac: int, src_ip6: int, target: int) -> Packet:
    """A multicast NS for ``target`` (to its solicited-node address and MAC) with our link-layer address."""
    dst = solicited_node(target)
    return Packet(eth_src=src_mac, eth_dst=ipv6_multicast_mac(dst), eth_type=ETH_TYPE_IPV6,
                  ipv6_src=src_ip6, ipv6_dst=dst, proto=PROTO_ICMPV6, hop_limit=HOP_LIMIT_ND, tclass=0,
                  flow_label=0, icmpv6_type=ND_NEIGHBOR_SOLICIT, icmpv6_code=0, icmpv6_data=0,
                  nd_target=target, nd_sll=src_mac)


def neighbor_advert(solicit: Packet, mac: int, router: bool = True) -> Packet:
    """The NA answering ``solicit`` (an NS for one of our addresses, ``mac`` ours): solicited + override (+ router)
    flags and our target link-layer address; to the solicitor, or to all nodes when it asked from :: (DAD)."""
    s = solicit
    flags = ND_NA_OVERRIDE | (ND_NA_ROUTER if router else 0)
    if s.ipv6_src == 0:
        dst, eth_dst = _IPV6_ALL_NODES, ipv6_multicast_mac(_IPV6_ALL_NODES)
    else:
        dst, eth_dst = s.ipv6_src, s.nd_sll if s.nd_sll is not None else s.eth_src
        flags |= ND_NA_SOLICITED
    return Packet(eth_src=mac, eth_dst=eth_dst, eth_type=ETH_TYPE_IPV6, vlan=s.vlan,
                  ipv6_src=s.nd_target, ipv6_dst=dst, proto=PROTO_ICMPV6, hop_limit=HOP_LIMIT_ND, tclass=0,
                  flow_label=0, icmpv6_type=ND_NEIGHBOR_ADVERT, icmpv6_code=0, icmpv6_data=flags,
                  nd_target=s.nd_target, nd_tll=mac)


def router_advert(solicit: Packet, mac: int, src_ip6: int, prefixes: tuple[tuple[int, int], ...]) -> Packet:
    """The RA answering a router solicitation: this port's prefixes (on-link, autonomous) and our link-layer
    address; to the solicitor when it has an address, else to all nodes."""
    s = solicit
    dst = s.ipv6_src if s.ipv6_src else _IPV6_ALL_NODES
    eth_dst = (s.nd_sll if s.nd_sll is not None else s.eth_src) if s.ipv6_src else ipv6_multicast_mac(dst)
    return Packet(eth_src=mac, eth_dst=eth_dst, eth_type=ETH_TYPE_IPV6, vlan=s.vlan,
                  ipv6_src=src_ip6, ipv6_dst=dst, proto=PROTO_ICMPV6, hop_limit=HOP_LIMIT_ND, tclass=0,
                  flow_label=0, icmpv6_type=ND_ROUTER_ADVERT, icmpv6_code=0,
                  icmpv6_data=TTL_GENERATED << 24 | RA_ROUTER_LIFETIME, nd_reachable=0, nd_retrans=0,
                  nd_sll=mac,
                  nd_prefixes=tuple((net, plen, RA_PREFIX_FLAGS, RA_VALID_S, RA_PREFERRED_S) for net, plen in prefixes))


def echo_reply6(request: Packet, src_mac: int) -> Packet:
    """The ICMPv6 echo reply to ``request`` (same id, sequence and data), from the address it was sent to."""
    return request._replace(
        eth_src=src_mac, eth_dst=request.eth_src, ipv6_src=request.ipv6_dst, ipv6_dst=request.ipv6_src,
        hop_limit=TTL_GENERATED, icmpv6_type=ICMPV6_ECHO_REPLY, icmpv6_code=0, ipv6_ext=(), frag=0,
        flow_label=0,
    )


def icmp6_error(offending: Packet, icmp_type: int, code: int, src_mac: int, src_ip6: int, data: int = 0) -> Packet:
    """An ICMPv6 error about ``offending``, from (src_mac, src_ip6) back to its sender.  It carries the offending
    packet as received, as much of it as keeps the error within the IPv6 minimum MTU (RFC 4443 §2.4(c): 1280
    bytes): its IPv6 header and extension headers, the first 8 L4 bytes in the inner_* fields and the rest of
    the packet as the payload."""
    o = offending
    frame = _build(o._replace(vlan=None))
    ip6 = frame[14:14 + 40 + _payload_len(frame)]
    ext_len = sum(1 + len(body) for _t, body in o.ipv6_ext)
    l4 = ip6[40 + ext_len:]
    rest = l4[8:]
    room = IPV6_MIN_MTU - 40 - 8 - 40 - ext_len - min(len(l4), 8)
    sp = dp = icmp_id = None
    head = bytes(l4[:8])
    if o.frag == 2:
        inner_rest = head
    elif o.proto in (PROTO_TCP, PROTO_UDP) and len(head) >= 4:
        sp, dp, inner_rest = o.tp_src, o.tp_dst, head[4:]
    elif o.proto == PROTO_ICMPV6 and o.icmp_id is not None and len(head) >= 6:
        icmp_id, inner_rest = o.icmp_id, head[:4] + head[6:]
    else:
        inner_rest = head
    return Packet(
        eth_src=src_mac, eth_dst=o.eth_src, eth_type=ETH_TYPE_IPV6, vlan=o.vlan,
        ipv6_src=src_ip6, ipv6_dst=o.ipv6_src, proto=PROTO_ICMPV6, hop_limit=TTL_GENERATED, tclass=0,
        flow_label=0, icmpv6_type=icmp_type, icmpv6_code=code, icmpv6_data=data,
        inner_ipv6_src=o.ipv6_src, inner_ipv6_dst=o.ipv6_dst, inner_proto=o.proto, inner_hop_limit=o.hop_limit,
        inner_tclass=o.tclass, inner_flow_label=o.flow_label, inner_ipv6_ext=o.ipv6_ext,
        inner_tp_src=sp, inner_tp_dst=dp, inner_icmp_id=icmp_id, inner_rest=inner_rest,
        payload=bytes(rest[:max(room, 0)]),
    )


def _payload_len(frame: bytes) -> int:
    return frame[18] << 8 | frame[19]


def neighbor_request(port, ip: int) -> Packet | None:
    """What a router port sends to resolve ``ip``: an ARP request (IPv4: an int below 2**32) or a neighbor
    solicitation from the port's link-local address (IPv6); None when the port has no address of that family."""
    if ip <= 0xFFFFFFFF:
        return arp_request(port.mac, port.address, ip) if port.address is not None else None
    ll = port.link_local6
    return neighbor_solicit(port.mac, ll, ip) if ll is not None else None


# -- IPv6 answers to a reject rule (filters): a TCP RST; the ICMPv6 unreachable is icmp6_error above ----
def tcp_rst6(offending: Packet, src_mac: int) -> Packet:
    """A RST answering IPv6 TCP ``offending`` as if from its destination (a reject rule on TCP)."""
    o = offending
    ack = ((o.tcp_seq or 0) + max(len(o.payload), 1)) & 0xFFFFFFFF
    return Packet(
        eth_src=src_mac, eth_dst=o.eth_src, eth_type=ETH_TYPE_IPV6, vlan=o.vlan,
        ipv6_src=o.ipv6_dst, ipv6_dst=o.ipv6_src, proto=PROTO_TCP, hop_limit=TTL_GENERATED, tclass=0,
        flow_label=0, tp_src=o.tp_dst, tp_dst=o.tp_src, tcp_flags=TCP_FLAGS["rst"] | TCP_FLAGS["ack"],
        tcp_seq=0, tcp_ack=ack, tcp_window=0,
    )
