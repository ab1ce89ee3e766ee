"""Flow keys: the exact-match key of the datapath's flow cache and the direction-normalised hash the
dispatcher uses to pick a worker.

Owns nothing but two pure functions.  flow_key() is in_port + FLOW_KEY_FIELDS (packet.py) as a hashable tuple.
normalized_flow_hash() gives both directions of a connection the same value, and gives an ICMP error the value
of the flow whose packet it carries.  It is computed with zlib.crc32 over packed ints, so it is the same in
every process (Python's hash() of str/bytes is salted per process).
"""

from __future__ import annotations

import struct
import zlib
from operator import itemgetter

from packet.packet import (
    ETH_TYPE_IPV4,
    FLOW_KEY_FIELDS,
    FRAG_NONE,
    ICMP_ERROR_TYPES,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    Packet,
)

_key_fields = itemgetter(*(Packet._fields.index(f) for f in FLOW_KEY_FIELDS))
_FIVE = struct.Struct("!BIHIH")
_MACS = struct.Struct("!HQQ")


def flow_key(pkt: Packet, in_port: int | str) -> tuple:
    """(in_port, *FLOW_KEY_FIELDS values): ints, None and the in_port as given."""
    return (in_port, *_key_fields(pkt))


def normalized_flow_hash(pkt: Packet) -> int:
    """32-bit hash of the direction-normalised 5-tuple, equal for both directions of a connection.

    - TCP/UDP: (proto, sorted (ip, port) pairs); fragments use port 0 so that every fragment of a datagram
      (only the first has ports) lands on the same worker.
    - ICMP error: the carried header, so the error maps to the flow it reports.
    - other ICMP (echo): the icmp_id as the port of both ends.
    - other IP protocols: addresses only; non-IP: the sorted MAC pair and ethertype.
    """
    if pkt.eth_type != ETH_TYPE_IPV4 or pkt.ip_src is None:
        a, b = pkt.eth_src, pkt.eth_dst
        if a > b:
            a, b = b, a
        return zlib.crc32(_MACS.pack(pkt.eth_type, a, b))
    proto = pkt.proto
    if proto == PROTO_ICMP and pkt.icmp_type in ICMP_ERROR_TYPES and pkt.inner_ip_src is not None:
        proto = pkt.inner_proto
        a, b = pkt.inner_ip_src, pkt.inner_ip_dst
        if proto == PROTO_ICMP:
            pa = pb = pkt.inner_icmp_id or 0
        else:
            pa, pb = pkt.inner_tp_src or 0, pkt.inner_tp_dst or 0
    else:
        a, b = pkt.ip_src, pkt.ip_dst
        if pkt.frag != FRAG_NONE:
            pa = pb = 0
        elif proto == PROTO_TCP or proto == PROTO_UDP:
            pa, pb = pkt.tp_src, pkt.tp_dst
        elif proto == PROTO_ICMP:
            pa = pb = pkt.icmp_id or 0
        else:
            pa = pb = 0
    return tuple_hash(proto, a, pa, b, pb)


def tuple_hash(proto: int | None, a: int, pa: int, b: int, pb: int) -> int:
    """The normalised hash of a 5-tuple (either direction gives the same value): what
    normalized_flow_hash computes for an IPv4 packet with these addresses and ports."""
    if (a, pa) > (b, pb):
        a, pa, b, pb = b, pb, a, pa
    return zlib.crc32(_FIVE.pack((proto or 0) & 0xFF, a, pa, b, pb))
