"""Flow keys: the exact-match key of the datapath's flow cache and the direction-normalised hash the
dispatcher uses to pick a worker.

Owns nothing but pure functions.  flow_key() is in_port + FLOW_KEY_FIELDS (packet.py) as a hashable tuple.
normalized_flow_hash() gives both directions of a connection the same value, and gives an ICMP error the value
of the flow whose packet it carries.  It is computed with zlib.crc32 over packed ints, so it is the same in
every process (Python's hash() of str/bytes is salted per process).

Masks (megaflows).  A *match* is the wire form of a mask (backchannel FlowPut.match): a tuple of
(field, mask) pairs naming the key slots a flow matches on — ``mask`` is ``FULL`` (-1: the whole field) or,
for an address field, a bit mask of its width (``ADDR_BITS``: ``ip_dst`` /24 is 0xFFFFFF00, ``ipv6_dst`` /64
is the top 64 of 128 bits); a slot not named is wildcarded.  ``()``
means "every slot, whole" (exact match).  ``slot_mask()`` turns a match into a *slot mask* (one entry per key
slot: 0 wildcarded, FULL whole, else the bits), ``projector()`` compiles a slot mask into the function that maps
a full key to its masked key (the subtable's hash key: wildcarded slots left out, partial ones ANDed, a None
field kept None), and ``match_text()`` writes a masked key readably (``ip_dst=203.0.113.0/24``).
"""

from __future__ import annotations

import struct
import zlib
from operator import itemgetter

from packet.addr import int2ip, int2ip6, int2mac
from packet.packet import (
    ETH_TYPE_IPV4,
    ETH_TYPE_IPV6,
    FLOW_KEY_FIELDS,
    FRAG_NONE,
    ICMP_ERROR_TYPES,
    ICMPV6_ERROR_TYPES,
    PROTO_BY_NUMBER,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Packet,
)

_key_fields = itemgetter(*(Packet._fields.index(f) for f in FLOW_KEY_FIELDS))
_FIVE = struct.Struct("!BIHIH")
_FIVE6 = struct.Struct("!B16sH16sH")
_MACS = struct.Struct("!HQQ")


KEY_SLOTS = ("in_port", *FLOW_KEY_FIELDS)          # the slots of a flow key, in order
SLOT_INDEX = {name: i for i, name in enumerate(KEY_SLOTS)}
FULL = -1                                            # a slot matched whole
# the key slots that may carry a partial (bit) mask: the addresses (prefix tracking), with their widths
ADDR_BITS = {
    "arp_spa": 32, "arp_tpa": 32, "ip_src": 32, "ip_dst": 32, "inner_ip_src": 32, "inner_ip_dst": 32,
    "ipv6_src": 128, "ipv6_dst": 128, "nd_target": 128, "inner_ipv6_src": 128, "inner_ipv6_dst": 128,
}
MASKABLE = frozenset(ADDR_BITS)
IPV6_ADDR_FIELDS = frozenset(f for f, b in ADDR_BITS.items() if b == 128)
EXACT_MASK = (FULL,) * len(KEY_SLOTS)


def prefix_mask(length: int, bits: int = 32) -> int:
    """The ``bits``-wide mask of a prefix of ``length`` bits (FULL for the whole address)."""
    if length >= bits:
        return FULL
    return (((1 << bits) - 1) << (bits - length)) & ((1 << bits) - 1) if length > 0 else 0


def slot_mask(match) -> tuple | None:
    """The slot mask of a wire ``match`` (see the module comment); None when the match is not one: an unknown
    or repeated field, a partial mask on a field that takes none or outside the field's width, a zero mask, or no
    ``in_port`` (a flow always matches its ingress port whole)."""
    if not match:
        return EXACT_MASK
    out = [0] * len(KEY_SLOTS)
    for item in match:
        if type(item) is not tuple or len(item) != 2:
            return None
        field, mask = item
        i = SLOT_INDEX.get(field)
        if i is None or out[i] or type(mask) is not int:
            return None
        if mask != FULL:
            bits = ADDR_BITS.get(field)
            if bits is None or not 0 < mask < (1 << bits) - 1:
                return None
        out[i] = mask
    if out[0] != FULL:
        return None
    return tuple(out)


def match_of(mask: tuple) -> tuple:
    """The wire match of a slot mask (``()`` for the exact mask)."""
    if mask == EXACT_MASK:
        return ()
    return tuple((KEY_SLOTS[i], m) for i, m in enumerate(mask) if m)


def projector(mask: tuple):
    """The function ``key -> masked key`` of a slot mask: a tuple of the matched slots (partial ones ANDed, None
    kept), compiled once per subtable so a lookup is one call and one dict probe.  The exact mask projects a key
    to itself."""
    if mask == EXACT_MASK:
        return _identity
    parts = []
    for i, m in enumerate(mask):
        if m == FULL:
            parts.append(f"k[{i}]")
        elif m:
            parts.append(f"(None if k[{i}] is None else k[{i}] & {m})")
    return eval(f"lambda k: ({', '.join(parts)},)", {"__builtins__": {}})  # noqa: S307 - our own ints only


def _identity(k):
    return k


def masked_key(key: tuple, mask: tuple) -> tuple:
    """``key`` with the wildcarded slots None and the partial ones ANDed (for display and tests)."""
    return tuple(v if m == FULL else (None if v is None or not m else v & m) for v, m in zip(key, mask, strict=True))


def prefix_len(mask: int, bits: int = 32) -> int | None:
    """The length of a ``bits``-wide prefix mask (``bits`` for FULL); None for a mask that is not a prefix."""
    if mask == FULL:
        return bits
    n = bits - ((~mask) & ((1 << bits) - 1)).bit_length()
    return n if prefix_mask(n, bits) == mask else None


def match_dict(key: tuple, mask: tuple | None = None) -> dict:
    """A flow's match as text, field by field (the wildcarded and the None fields left out): MACs and addresses
    in their text forms, protocols by name, a field matched on a prefix as ``ADDRESS/LEN`` (``ip_dst=
    203.0.113.0/24``; a mask that is no prefix as ``ADDRESS/0xMASK``)."""
    out = {}
    for i, (n, v) in enumerate(zip(KEY_SLOTS, key, strict=False)):
        if v is None:
            continue
        m = FULL if mask is None else mask[i]
        if m == FULL:
            out[n] = field_text(n, v)
        elif m:
            plen = prefix_len(m, ADDR_BITS.get(n, 32))
            out[n] = f"{field_text(n, v & m)}/{plen if plen is not None else hex(m)}"
    return out


_MAC_FIELDS = frozenset({"eth_src", "eth_dst", "nd_sll", "nd_tll"})


def field_text(name: str, v):
    """A key field's value in its text form (MAC, IPv4 or IPv6 address, protocol name); other values as they
    are."""
    if v is None:
        return None
    if name in _MAC_FIELDS:
        return int2mac(v)
    if name in IPV6_ADDR_FIELDS:
        return int2ip6(v)
    if name in MASKABLE:
        return int2ip(v)
    if name in ("proto", "inner_proto"):
        return PROTO_BY_NUMBER.get(v, v)
    return v


def flow_key(pkt: Packet, in_port: int | str) -> tuple:
    """(in_port, *FLOW_KEY_FIELDS values): ints, None and the in_port as given."""
    return (in_port, *_key_fields(pkt))


def normalized_flow_hash(pkt: Packet) -> int:
    """32-bit hash of the direction-normalised 5-tuple, equal for both directions of a connection.

    - TCP/UDP: (proto, sorted (ip, port) pairs); fragments use port 0 so that every fragment of a datagram
      (only the first has ports) lands on the same worker.
    - ICMP / ICMPv6 error: the carried header, so the error maps to the flow it reports.
    - other ICMP (echo): the icmp_id as the port of both ends (ICMPv6 echo likewise).
    - other IP protocols (and neighbor discovery): addresses only; non-IP: the sorted MAC pair and ethertype.
    IPv6 hashes its 128-bit addresses the same way (tuple_hash).
    """
    if pkt.eth_type == ETH_TYPE_IPV6 and pkt.ipv6_src is not None:
        err = pkt.proto == PROTO_ICMPV6 and pkt.icmpv6_type in ICMPV6_ERROR_TYPES and pkt.inner_ipv6_src is not None
        return _ip_hash(pkt, PROTO_ICMPV6, err, pkt.ipv6_src, pkt.ipv6_dst, pkt.inner_ipv6_src, pkt.inner_ipv6_dst,
                        True)
    if pkt.eth_type != ETH_TYPE_IPV4 or pkt.ip_src is None:
        a, b = pkt.eth_src, pkt.eth_dst
        if a > b:
            a, b = b, a
        return zlib.crc32(_MACS.pack(pkt.eth_type, a, b))
    err = pkt.proto == PROTO_ICMP and pkt.icmp_type in ICMP_ERROR_TYPES and pkt.inner_ip_src is not None
    return _ip_hash(pkt, PROTO_ICMP, err, pkt.ip_src, pkt.ip_dst, pkt.inner_ip_src, pkt.inner_ip_dst, False)


def _ip_hash(pkt: Packet, icmp: int, err: bool, a: int, b: int, ia: int | None, ib: int | None, v6: bool) -> int:
    """The hash of an IP packet of either family: ``icmp`` its ICMP protocol number, ``err`` whether it is an
    ICMP error carrying a header (then ``ia``/``ib``, the carried addresses, and the carried ports count)."""
    proto = pkt.proto
    if err:
        proto = pkt.inner_proto
        a, b = ia, ib
        if proto == icmp:
            pa = pb = pkt.inner_icmp_id or 0
        else:
            pa, pb = pkt.inner_tp_src or 0, pkt.inner_tp_dst or 0
    elif pkt.frag != FRAG_NONE:
        pa = pb = 0
    elif proto == PROTO_TCP or proto == PROTO_UDP:
        pa, pb = pkt.tp_src, pkt.tp_dst
    elif proto == icmp:
        pa = pb = pkt.icmp_id or 0
    else:
        pa = pb = 0
    return tuple_hash(proto, a, pa, b, pb, v6)


def tuple_hash(proto: int | None, a: int, pa: int, b: int, pb: int, v6: bool = False) -> int:
    """The normalised hash of a 5-tuple (either direction gives the same value): what
    normalized_flow_hash computes for a packet with these addresses and ports.  ``v6``: the addresses are IPv6
    (128-bit; an IPv6 address below 2**32, such as ``::1``, still hashes as IPv6); an address wider than 32
    bits is taken as IPv6 either way."""
    if (a, pa) > (b, pb):
        a, pa, b, pb = b, pb, a, pa
    if v6 or a > 0xFFFFFFFF or b > 0xFFFFFFFF:
        return zlib.crc32(_FIVE6.pack((proto or 0) & 0xFF, a.to_bytes(16, "big"), pa, b.to_bytes(16, "big"), pb))
    return zlib.crc32(_FIVE.pack((proto or 0) & 0xFF, a, pa, b, pb))
