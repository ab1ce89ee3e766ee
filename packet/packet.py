"""The packet record: every header field shardnet parses, matches on or rewrites, as one immutable tuple.

Field names are the keys of the packet spec (CONTRACTS §2), so a Packet, a spec string and the JSON output
of ``shardnet trace`` all speak the same words.  Addresses are ints (packet.addr); a field that the frame
does not carry is ``None``.  Rewrites make a new Packet with ``pkt._replace(field=value)``.

An ICMP error carries the header of the packet it reports in the ``inner_*`` fields (IPv4 header plus the
first 8 bytes of its L4 header); ``inner_rest`` keeps the L4 bytes after the ports/id so the carried header
can be rebuilt byte for byte after a NAT rewrite.

IPv6 (appended after ``payload``, so the IPv4 positional constructors of the codec stay as they were):
``ipv6_src``/``ipv6_dst`` (128-bit ints), ``hop_limit``, ``tclass``, ``flow_label`` and ``ipv6_ext``, the
extension headers between the fixed header and the L4 header as ``((type, body), ...)`` in wire order, where
``body`` is the header without its next-header byte (so it starts with the length byte, or for a fragment
header the reserved byte).  The fields shared with IPv4 keep their meaning: ``proto`` is the last next-header
value (the L4 protocol), ``frag`` is derived from the fragment header (a later fragment has no L4 header),
``tp_src``/``tp_dst``/``tcp_*`` are TCP/UDP over either family, and ``icmp_id``/``icmp_seq`` are the id and
sequence of an ICMPv6 echo.  ICMPv6 has its own ``icmpv6_type``/``icmpv6_code`` (IPv4 code that tests
``icmp_type`` never sees an ICMPv6 message) and ``icmpv6_data``: the 32-bit word after the checksum for every
type but echo (MTU of packet too big, pointer of parameter problem, NA flags, RA hop limit/flags/lifetime).
Neighbor discovery: ``nd_target`` (NS/NA), ``nd_sll``/``nd_tll`` (link-layer address options),
``nd_mtu``, ``nd_prefixes`` (RA prefix information: ``((prefix, length, flags, valid, preferred), ...)``),
``nd_reachable``/``nd_retrans`` (RA timers) and ``nd_opts``, every other option as ``((type, data), ...)``.
An ICMPv6 error carries the offending IPv6 header in ``inner_ipv6_src``/``inner_ipv6_dst``/
``inner_hop_limit``/``inner_tclass``/``inner_flow_label``/``inner_ipv6_ext``, plus the shared
``inner_proto``/``inner_tp_src``/``inner_tp_dst``/``inner_icmp_id``/``inner_rest`` as for IPv4.
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
PROTO_ICMPV6 = 58
PROTO_NAMES = {"icmp": PROTO_ICMP, "tcp": PROTO_TCP, "udp": PROTO_UDP, "icmpv6": PROTO_ICMPV6}
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

# IPv6 extension headers the codec walks (RFC 8200 §4); anything else ends the chain as the L4 protocol.
IPV6_HOP_BY_HOP = 0
IPV6_ROUTING = 43
IPV6_FRAGMENT = 44
IPV6_DEST_OPTS = 60
IPV6_EXT_TYPES = frozenset({IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_FRAGMENT, IPV6_DEST_OPTS})
MAX_IPV6_EXT_HEADERS = 8    # a longer chain is malformed (ParseError ipv6_ext_chain_too_long)

ICMPV6_UNREACH = 1
ICMPV6_PACKET_TOO_BIG = 2
ICMPV6_TIME_EXCEEDED = 3
ICMPV6_PARAM_PROBLEM = 4
ICMPV6_ERROR_TYPES = frozenset({1, 2, 3, 4})     # the errors that carry the offending packet
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
ND_ROUTER_SOLICIT = 133
ND_ROUTER_ADVERT = 134
ND_NEIGHBOR_SOLICIT = 135
ND_NEIGHBOR_ADVERT = 136
ND_TYPES = frozenset({133, 134, 135, 136})
# ICMPv6 unreachable codes
UNREACH6_NO_ROUTE = 0
UNREACH6_ADMIN_PROHIBITED = 1
UNREACH6_ADDRESS = 3
UNREACH6_PORT = 4
UNREACH6_REJECT_ROUTE = 6
# NA flags in icmpv6_data
ND_NA_ROUTER = 0x80000000
ND_NA_SOLICITED = 0x40000000
ND_NA_OVERRIDE = 0x20000000
# ND option types
ND_OPT_SLL = 1
ND_OPT_TLL = 2
ND_OPT_PREFIX = 3
ND_OPT_MTU = 5

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
    # IPv6 (see the module comment)
    ipv6_src: int | None = None
    ipv6_dst: int | None = None
    hop_limit: int | None = None
    tclass: int | None = None
    flow_label: int | None = None
    ipv6_ext: tuple = ()
    icmpv6_type: int | None = None
    icmpv6_code: int | None = None
    icmpv6_data: int | None = None
    nd_target: int | None = None
    nd_sll: int | None = None
    nd_tll: int | None = None
    nd_mtu: int | None = None
    nd_reachable: int | None = None
    nd_retrans: int | None = None
    nd_prefixes: tuple = ()
    nd_opts: tuple = ()
    inner_ipv6_src: int | None = None
    inner_ipv6_dst: int | None = None
    inner_hop_limit: int | None = None
    inner_tclass: int | None = None
    inner_flow_label: int | None = None
    inner_ipv6_ext: tuple = ()

    @property
    def is_ipv4(self) -> bool:
        return self.eth_type == ETH_TYPE_IPV4 and self.ip_src is not None

    @property
    def is_ipv6(self) -> bool:
        return self.eth_type == ETH_TYPE_IPV6 and self.ipv6_src is not None

    @property
    def is_arp(self) -> bool:
        return self.eth_type == ETH_TYPE_ARP

    @property
    def is_icmp_error(self) -> bool:
        return self.proto == PROTO_ICMP and self.icmp_type in ICMP_ERROR_TYPES

    @property
    def is_icmpv6_error(self) -> bool:
        return self.proto == PROTO_ICMPV6 and self.icmpv6_type in ICMPV6_ERROR_TYPES


# ``_replace`` is on the flow-setup path (every rewrite: TTL, MACs, NAT): NamedTuple's generic one rebuilds the
# record through a map over all of its ~70 fields and a keyword dict; this one copies the tuple and sets the
# slots by index.  Same contract: an unknown field is a ValueError and the result is a Packet.
_SLOT = {name: i for i, name in enumerate(Packet._fields)}
_tuple_new = tuple.__new__


def _fast_replace(self: Packet, /, **kw) -> Packet:
    v = list(self)
    slot = _SLOT
    try:
        for name, value in kw.items():
            v[slot[name]] = value
    except KeyError:
        raise ValueError(f"Got unexpected field names: {[k for k in kw if k not in slot]!r}") from None
    return _tuple_new(Packet, v)


Packet._replace = _fast_replace

def ext_frag(ext: tuple) -> int:
    """The fragment marker (FRAG_*) an IPv6 extension header chain (``Packet.ipv6_ext``) implies."""
    for t, body in ext:
        if t == IPV6_FRAGMENT and len(body) == 7:
            offm = body[1] << 8 | body[2]
            return FRAG_LATER if offm & 0xFFF8 else FRAG_FIRST if offm & 1 else FRAG_NONE
    return FRAG_NONE


def routing_destination(ext: tuple) -> int | None:
    """The address a routing header puts in the L4 pseudo-header instead of the destination (RFC 8200 §8.1):
    of the routing header with segments left and addresses nearest the L4 header (one per packet in
    practice), its last address (type 4, segment routing: its first segment), as scapy reads it; None when
    there is none."""
    for t, body in reversed(ext):
        if t == IPV6_ROUTING and len(body) >= 23 and body[2]:
            if body[1] == 4:
                return int.from_bytes(body[7:23], "big")
            n = body[0] >> 1
            return int.from_bytes(body[7 + 16 * (n - 1):7 + 16 * n], "big")
    return None


# The fields that identify a microflow in the exact-match cache (everything a decision may depend on, and
# nothing that changes from packet to packet of one flow: ids, sequence numbers, flags, payload).
FLOW_KEY_FIELDS = (
    "eth_src", "eth_dst", "eth_type", "vlan", "arp_op", "arp_spa", "arp_tpa", "ip_src", "ip_dst", "proto",
    "ttl", "tos", "frag", "tp_src", "tp_dst", "icmp_type", "icmp_code", "icmp_id",
    "inner_ip_src", "inner_ip_dst", "inner_proto", "inner_tp_src", "inner_tp_dst", "inner_icmp_id",
    # IPv6 (appended, so the IPv4 slots keep their positions): the addresses, hop limit and traffic class, the
    # ICMPv6 type/code, neighbor discovery's target and link-layer options, an ICMPv6 error's carried addresses
    # (its carried ports and protocol share the inner_* slots above).  The flow label is left out, like ip_id:
    # nothing decides on it.
    "ipv6_src", "ipv6_dst", "hop_limit", "tclass", "icmpv6_type", "icmpv6_code", "nd_target", "nd_sll",
    "nd_tll", "inner_ipv6_src", "inner_ipv6_dst",
)
