"""The packet record: every header field shardnet parses, matches on or rewrites, as one immutable tuple.

Field names are the keys of the packet spec (CONTRACTS §2), so a Packet, a spec string and the JSON output
of ``shardnet trace`` all speak the same words.  Addresses are ints (packet.addr); a field that the frame
does not carry is ``None``.  Rewrites make a new Packet with ``pkt._replace(field=value)``.

An ICMP error carries the header of the packet it reports in the ``inner_*`` fields (IPv4 header plus the
first 8 bytes of its L4 header); ``inner_rest`` keeps the L4 bytes after the ports/id so the carried header
can be rebuilt byte for byte after a NAT rewrite.
"""

from __future__ import annotations

from typing import NamedTuple

ETH_TYPE_IPV4 = 0x0800
ETH_TYPE_ARP = 0x0806
ETH_TYPE_VLAN = 0x8100
ETH_TYPE_IPV6 = 0x86DD

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_NAMES = {"icmp": PROTO_ICMP, "tcp": PROTO_TCP, "udp": PROTO_UDP}
PROTO_BY_NUMBER = {v: k for k, v in PROTO_NAMES.items()}

ICMP_ECHO_REPLY = 0
ICMP_UNREACH = 3
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11
ICMP_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})
# ICMP unreachable codes
UNREACH_NET = 0
UNREACH_HOST = 1
UNREACH_PROTO = 2
UNREACH_PORT = 3
UNREACH_FRAG_NEEDED = 4
UNREACH_ADMIN_PROHIBITED = 13

ARP_REQUEST = 1
ARP_REPLY = 2

TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20, "ece": 0x40,
             "cwr": 0x80}

# IPv4 fragment marker: 0 = not a fragment, 1 = first fragment (has L4 header), 2 = later fragment.
FRAG_NONE = 0
FRAG_FIRST = 1
FRAG_LATER = 2


class Packet(NamedTuple):
    eth_src: int = 0
    eth_dst: int = 0
    eth_type: int = ETH_TYPE_IPV4
    vlan: int | None = None            # 802.1Q VID, None when untagged
    vlan_pcp: int = 0
    # ARP
    arp_op: int | None = None
    arp_sha: int | None = None
    arp_spa: int | None = None
    arp_tha: int | None = None
    arp_tpa: int | None = None
    # IPv4
    ip_src: int | None = None
    ip_dst: int | None = None
    proto: int | None = None
    ttl: int | None = None
    tos: int | None = None
    ip_id: int | None = None
    ip_df: bool = False
    frag: int = FRAG_NONE
    # TCP / UDP
    tp_src: int | None = None
    tp_dst: int | None = None
    tcp_flags: int | None = None
    tcp_seq: int | None = None
    tcp_ack: int | None = None
    tcp_window: int | None = None
    # ICMP
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    icmp_seq: int | None = None
    # ICMP error: the carried header of the offending packet
    inner_ip_src: int | None = None
    inner_ip_dst: int | None = None
    inner_proto: int | None = None
    inner_tp_src: int | None = None
    inner_tp_dst: int | None = None
    inner_icmp_id: int | None = None
    inner_ttl: int | None = None
    inner_ip_id: int | None = None
    inner_tos: int | None = None
    inner_rest: bytes = b""
    # Whatever follows the headers we understand (L4 payload; for unknown IP protocols the IP payload;
    # for unknown ethertypes the Ethernet payload)
    payload: bytes = b""

    @property
    def is_ipv4(self) -> bool:
        return self.eth_type == ETH_TYPE_IPV4 and self.ip_src is not None

    @property
    def is_arp(self) -> bool:
        return self.eth_type == ETH_TYPE_ARP

    @property
    def is_icmp_error(self) -> bool:
        return self.proto == PROTO_ICMP and self.icmp_type in ICMP_ERROR_TYPES


# The fields that identify a microflow in the exact-match cache (everything a decision may depend on, and
# nothing that changes from packet to packet of one flow: ids, sequence numbers, flags, payload).
FLOW_KEY_FIELDS = (
    "eth_src", "eth_dst", "eth_type", "vlan", "arp_op", "arp_spa", "arp_tpa", "ip_src", "ip_dst", "proto",
    "ttl", "tos", "frag", "tp_src", "tp_dst", "icmp_type", "icmp_code", "icmp_id",
    "inner_ip_src", "inner_ip_dst", "inner_proto", "inner_tp_src", "inner_tp_dst", "inner_icmp_id",
)
