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
