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


# -- IPv6 answers to a reject rule (filters): a TCP RST and ICMPv6 destination unreachable ------------------
# Kept in one block, apart from the router's IPv6 generators.

from packet.checksum import pseudo_header_sum6  # noqa: E402
from packet.packet import ETH_TYPE_IPV6, FRAG_LATER, PROTO_ICMPV6  # noqa: E402


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


def icmp6_error(offending: Packet, icmpv6_type: int, code: int, src_mac: int, src_ip: int,
                data: int = 0) -> Packet:
    """An ICMPv6 error (RFC 4443) about IPv6 ``offending``, from (src_mac, src_ip) back to its sender.  It
    carries the offending packet's IPv6 header, its extension headers and the first 8 bytes of its L4 header
    (as an ICMP error does for IPv4: what finds the connection; §2.4 c allows less than the 1280-byte most);
    ``data`` is the word after the checksum (a too-big's MTU, a problem's pointer)."""
    o = offending
    later = o.frag == FRAG_LATER
    ports = o.proto in (PROTO_TCP, PROTO_UDP) and not later
    echo = o.proto == PROTO_ICMPV6 and o.icmp_id is not None and not later
    return Packet(
        eth_src=src_mac, eth_dst=o.eth_src, eth_type=ETH_TYPE_IPV6, vlan=o.vlan,
        ipv6_src=src_ip, ipv6_dst=o.ipv6_src, proto=PROTO_ICMPV6, hop_limit=TTL_GENERATED, tclass=0,
        flow_label=0, icmpv6_type=icmpv6_type, icmpv6_code=code, icmpv6_data=data,
        inner_ipv6_src=o.ipv6_src, inner_ipv6_dst=o.ipv6_dst, inner_hop_limit=o.hop_limit,
        inner_tclass=o.tclass, inner_flow_label=o.flow_label, inner_ipv6_ext=o.ipv6_ext, inner_proto=o.proto,
        inner_tp_src=o.tp_src if ports else None, inner_tp_dst=o.tp_dst if ports else None,
        inner_icmp_id=o.icmp_id if echo else None,
        inner_rest=_inner_rest6(o, later),
    )


def _inner_rest6(o: Packet, later: bool) -> bytes:
    """The carried L4 bytes but the ports or the echo id (packet.codec's inner_rest): TCP's sequence number,
    UDP's length and checksum, an ICMPv6 echo's type, code, checksum and sequence number."""
    if later:
        return o.payload[:8]
    if o.proto == PROTO_TCP:
        return (o.tcp_seq or 0).to_bytes(4, "big")
    if o.proto == PROTO_UDP:
        return (8 + len(o.payload)).to_bytes(2, "big") + b"\0\0"
    if o.proto == PROTO_ICMPV6 and o.icmp_id is not None:
        t, code, seq = o.icmpv6_type or 0, o.icmpv6_code or 0, o.icmp_seq or 0
        ph = pseudo_header_sum6(o.ipv6_src, o.ipv6_dst, PROTO_ICMPV6, 8 + len(o.payload))
        csum = checksum(o.payload, ph + (t << 8 | code) + o.icmp_id + seq)
        return bytes((t, code)) + csum.to_bytes(2, "big") + seq.to_bytes(2, "big")
    return b""
