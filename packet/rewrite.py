"""In-place rewrite of a raw frame with incremental checksum updates (RFC 1624): what the datapath does on a
flow-cache hit instead of parse + build.

Owns the set of rewritable fields and the checksum bookkeeping for them.  ``rewrite(frame, old, new)`` takes a
frame, the Packet parsed from it and the Packet the simulation wants out, and patches only the bytes that
differ.  Checksums are updated with pre-summed deltas: every rewritable field sits on a 16-bit boundary of the
data its checksum covers, so a change contributes ``new - old`` (16-bit words, 32-bit addresses, or a byte
shifted to its place in its word) to the ones-complement sum.  The result equals ``build(new)`` byte for byte
when the frame is in build()'s canonical form.

IPv6 has no header checksum: the hop limit, traffic class and flow label change no checksum, the addresses
change the TCP/UDP/ICMPv6 checksum through the pseudo-header (ICMPv6, unlike ICMP, has one; a routing header
with segments left puts its final address in the pseudo-header instead of the destination).  The extension
headers are not rewritable (their size would move the L4 header).

Not rewritten: the L4 checksum inside the header an ICMP error carries (build() keeps those bytes verbatim
too); anything outside REWRITABLE | REWRITABLE_IPV6 raises ValueError, as does an IPv6 field of an IPv4 frame
and vice versa.
"""

from __future__ import annotations

import struct
from operator import itemgetter

from packet.checksum import csum_delta
from packet.packet import (
    ETH_TYPE_IPV4,
    ETH_TYPE_IPV6,
    ETH_TYPE_VLAN,
    FRAG_LATER,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Packet,
    routing_destination,
)

REWRITABLE = frozenset({
    "eth_src", "eth_dst", "vlan", "vlan_pcp", "ip_src", "ip_dst", "ttl", "tos", "ip_id", "tp_src", "tp_dst",
    "icmp_id", "inner_ip_src", "inner_ip_dst", "inner_tp_src", "inner_tp_dst", "inner_icmp_id", "inner_ttl",
    "inner_tos", "inner_ip_id",
})
# The IPv6 fields rewrite() patches as well.  Kept apart from REWRITABLE, which is also the vocabulary of the
# datapath's ("set", field, value) actions (backchannel.messages.SET_FIELDS): the datapath part of IPv6 adds
# them there (with 128-bit shapes for the addresses) and then joins the two sets.
REWRITABLE_IPV6 = frozenset({
    "ipv6_src", "ipv6_dst", "hop_limit", "tclass", "flow_label", "inner_ipv6_src", "inner_ipv6_dst",
    "inner_hop_limit", "inner_tclass", "inner_flow_label",
})
_V4_ONLY = ("ip_src", "ip_dst", "ttl", "tos", "ip_id", "inner_ip_src", "inner_ip_dst", "inner_ttl", "inner_tos",
            "inner_ip_id")
_v4_only = itemgetter(*(Packet._fields.index(f) for f in _V4_ONLY))
# Fields before _N_V4 are the IPv4-era ones, after it the IPv6 ones (packet.packet appends them after payload):
# an IPv4 frame's rewrite checks its IPv6 tail in one tuple-slice comparison.
_N_V4 = Packet._fields.index("payload") + 1
_FIXED_NAMES = tuple(f for f in Packet._fields[:_N_V4] if f not in REWRITABLE)
_fixed = itemgetter(*(Packet._fields.index(f) for f in _FIXED_NAMES))
_FIXED6_NAMES = tuple(f for f in Packet._fields[_N_V4:] if f not in REWRITABLE_IPV6)
_fixed6 = itemgetter(*(Packet._fields.index(f) for f in _FIXED6_NAMES))
_L3_NAMES = tuple(sorted((REWRITABLE | REWRITABLE_IPV6) - {"eth_src", "eth_dst", "vlan", "vlan_pcp"}))
_MACS = struct.Struct("!HIHI")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def rewrite(frame: bytes | bytearray, old: Packet, new: Packet) -> bytes:
    """Patch ``frame`` (parsed as ``old``) so that it carries ``new``; checksums updated incrementally.

    Raises ValueError if ``new`` differs from ``old`` in a field that is not rewritable.
    """
    if old == new:
        return bytes(frame)
    if _fixed(old) != _fixed(new):
        bad = [f for f, a, b in zip(_FIXED_NAMES, _fixed(old), _fixed(new), strict=True) if a != b]
        raise ValueError(f"rewrite cannot change {', '.join(bad)}")
    v6_changed = old[_N_V4:] != new[_N_V4:]
    if v6_changed and _fixed6(old) != _fixed6(new):
        bad = [f for f, a, b in zip(_FIXED6_NAMES, _fixed6(old), _fixed6(new), strict=True) if a != b]
        raise ValueError(f"rewrite cannot change {', '.join(bad)}")
    try:
        return _rewrite(bytearray(frame), old, new, v6_changed)
    except (struct.error, TypeError, OverflowError) as e:
        raise ValueError(f"rewrite: bad field value: {e}") from None


def _rewrite(buf: bytearray, old: Packet, new: Packet, v6_changed: bool) -> bytes:
    if old.eth_src != new.eth_src or old.eth_dst != new.eth_dst:
        d, s = new.eth_dst, new.eth_src
        _MACS.pack_into(buf, 0, d >> 32, d & 0xFFFFFFFF, s >> 32, s & 0xFFFFFFFF)
    if old.eth_type == ETH_TYPE_IPV4 and old.ip_src is not None:
        if v6_changed:
            raise ValueError("rewrite: IPv6 fields of an IPv4 frame")
        _rewrite_ipv4(buf, 14 if old.vlan is None else 18, old, new)
    elif old.eth_type == ETH_TYPE_IPV6 and old.ipv6_src is not None:
        if _v4_only(old) != _v4_only(new):
            raise ValueError("rewrite: IPv4 fields of an IPv6 frame")
        _rewrite_ipv6(buf, 14 if old.vlan is None else 18, old, new)
    else:
        changed = [f for f in _L3_NAMES if getattr(old, f) != getattr(new, f)]
        if changed:
            raise ValueError(f"rewrite: {', '.join(changed)} of a frame that is not IPv4 or IPv6")
    if old.vlan != new.vlan or (new.vlan is not None and old.vlan_pcp != new.vlan_pcp):
        if new.vlan is None:                                   # pop
            del buf[12:16]
        else:
            tag = _U16.pack((new.vlan_pcp & 7) << 13 | new.vlan)
            if old.vlan is None:                               # push
                buf[12:12] = _U16.pack(ETH_TYPE_VLAN) + tag
            else:                                              # set
                buf[14:16] = tag
    return bytes(buf)


def _rewrite_ipv4(buf: bytearray, ip: int, old: Packet, new: Packet) -> None:  # noqa: C901
    d_ip = 0          # change of the IP header sum
    d_ph = 0          # change of the pseudo-header sum (addresses)
    if old.ip_src != new.ip_src:
        _U32.pack_into(buf, ip + 12, new.ip_src)
        d_ph += new.ip_src - old.ip_src
    if old.ip_dst != new.ip_dst:
        _U32.pack_into(buf, ip + 16, new.ip_dst)
        d_ph += new.ip_dst - old.ip_dst
    d_ip = d_ph
    if old.ttl != new.ttl:
        buf[ip + 8] = new.ttl
        d_ip += (new.ttl - old.ttl) << 8
    if old.tos != new.tos:
        buf[ip + 1] = new.tos
        d_ip += new.tos - old.tos
    if old.ip_id != new.ip_id:
        _U16.pack_into(buf, ip + 4, new.ip_id)
        d_ip += new.ip_id - old.ip_id
    if d_ip:
        _U16.pack_into(buf, ip + 10, csum_delta(_U16.unpack_from(buf, ip + 10)[0], d_ip))
    if old.frag == FRAG_LATER:
        return
    l4 = ip + ((buf[ip] & 15) << 2)
    proto = old.proto
    if proto == PROTO_TCP or proto == PROTO_UDP:
        _rewrite_ports(buf, l4, proto, d_ph, old, new)
    elif proto == PROTO_ICMP:
        d = 0
        if old.icmp_id != new.icmp_id:
            _U16.pack_into(buf, l4 + 4, new.icmp_id)
            d += new.icmp_id - old.icmp_id
        if old.inner_ip_src is not None:
            d += _rewrite_carried(buf, l4 + 8, old, new)
        if d:
            _U16.pack_into(buf, l4 + 2, csum_delta(_U16.unpack_from(buf, l4 + 2)[0], d))
    elif (old.tp_src, old.tp_dst) != (new.tp_src, new.tp_dst) or old.icmp_id != new.icmp_id:
        raise ValueError(f"rewrite: no L4 ports to rewrite for IP protocol {proto}")


def _rewrite_ports(buf: bytearray, l4: int, proto: int, d_ph: int, old: Packet, new: Packet) -> None:
    """Patch TCP/UDP ports at ``l4`` and fold them and ``d_ph`` (the pseudo-header's change) into the L4
    checksum.  A UDP checksum 0 (none over IPv4, invalid over IPv6) is left so; a computed 0 is sent 0xFFFF."""
    d = d_ph
    if old.tp_src != new.tp_src:
        _U16.pack_into(buf, l4, new.tp_src)
        d += new.tp_src - old.tp_src
    if old.tp_dst != new.tp_dst:
        _U16.pack_into(buf, l4 + 2, new.tp_dst)
        d += new.tp_dst - old.tp_dst
    if d:
        at = l4 + 16 if proto == PROTO_TCP else l4 + 6
        (c,) = _U16.unpack_from(buf, at)
        if proto == PROTO_TCP:
            _U16.pack_into(buf, at, csum_delta(c, d))
        elif c:
            _U16.pack_into(buf, at, csum_delta(c, d) or 0xFFFF)


def _rewrite_carried_ports(buf: bytearray, q: int, old: Packet, new: Packet) -> int:
    """Patch the ports / echo id of a carried header's L4 header at ``q``; return the change of the sum."""
    d = 0
    for name, at in (("inner_tp_src", q), ("inner_tp_dst", q + 2), ("inner_icmp_id", q + 4)):
        a, b = getattr(old, name), getattr(new, name)
        if a != b:
            if a is None or b is None:
                raise ValueError(f"rewrite cannot add or remove {name}")
            _U16.pack_into(buf, at, b)
            d += b - a
    return d


def _rewrite_carried(buf: bytearray, p: int, old: Packet, new: Packet) -> int:
    """Patch the header an ICMP error carries; return the change of the ICMP sum it causes."""
    d_ip = 0
    if old.inner_ip_src != new.inner_ip_src:
        _U32.pack_into(buf, p + 12, new.inner_ip_src)
        d_ip += new.inner_ip_src - old.inner_ip_src
    if old.inner_ip_dst != new.inner_ip_dst:
        _U32.pack_into(buf, p + 16, new.inner_ip_dst)
        d_ip += new.inner_ip_dst - old.inner_ip_dst
    if old.inner_ttl != new.inner_ttl:
        buf[p + 8] = new.inner_ttl
        d_ip += (new.inner_ttl - old.inner_ttl) << 8
    if old.inner_tos != new.inner_tos:
        buf[p + 1] = new.inner_tos
        d_ip += new.inner_tos - old.inner_tos
    if old.inner_ip_id != new.inner_ip_id:
        _U16.pack_into(buf, p + 4, new.inner_ip_id)
        d_ip += new.inner_ip_id - old.inner_ip_id
    d = d_ip
    if d_ip:
        (c,) = _U16.unpack_from(buf, p + 10)
        c2 = csum_delta(c, d_ip)
        _U16.pack_into(buf, p + 10, c2)
        d += c2 - c
    q = p + ((buf[p] & 15) << 2)
    return d + _rewrite_carried_ports(buf, q, old, new)


_VTF = struct.Struct("!I")


def _rewrite_ipv6(buf: bytearray, ip: int, old: Packet, new: Packet) -> None:  # noqa: C901
    d_ph = 0          # change of the pseudo-header sum
    if old.ipv6_src != new.ipv6_src:
        buf[ip + 8:ip + 24] = new.ipv6_src.to_bytes(16, "big")
        d_ph += new.ipv6_src - old.ipv6_src
    if old.ipv6_dst != new.ipv6_dst:
        buf[ip + 24:ip + 40] = new.ipv6_dst.to_bytes(16, "big")
        if routing_destination(old.ipv6_ext) is None:     # no routing header puts another address there
            d_ph += new.ipv6_dst - old.ipv6_dst
    if old.hop_limit != new.hop_limit:
        buf[ip + 7] = new.hop_limit
    if old.tclass != new.tclass or old.flow_label != new.flow_label:
        if not 0 <= new.tclass <= 0xFF or not 0 <= new.flow_label <= 0xFFFFF:
            raise ValueError(f"rewrite: tclass {new.tclass} / flow_label {new.flow_label} out of range")
        _VTF.pack_into(buf, ip, 0x60000000 | new.tclass << 20 | new.flow_label)
    if old.frag == FRAG_LATER:
        return
    l4 = ip + 40 + sum(len(body) + 1 for _t, body in old.ipv6_ext)
    proto = old.proto
    if proto == PROTO_TCP or proto == PROTO_UDP:
        _rewrite_ports(buf, l4, proto, d_ph, old, new)
    elif proto == PROTO_ICMPV6:
        d = d_ph
        if old.icmp_id != new.icmp_id:
            if old.icmp_id is None or new.icmp_id is None:
                raise ValueError("rewrite cannot add or remove icmp_id")
            _U16.pack_into(buf, l4 + 4, new.icmp_id)
            d += new.icmp_id - old.icmp_id
        if old.inner_ipv6_src is not None:
            d += _rewrite_carried6(buf, l4 + 8, old, new)
        if d:
            _U16.pack_into(buf, l4 + 2, csum_delta(_U16.unpack_from(buf, l4 + 2)[0], d))
    elif (old.tp_src, old.tp_dst) != (new.tp_src, new.tp_dst) or old.icmp_id != new.icmp_id:
        raise ValueError(f"rewrite: no L4 ports to rewrite for IP protocol {proto}")


def _rewrite_carried6(buf: bytearray, p: int, old: Packet, new: Packet) -> int:
    """Patch the IPv6 packet an ICMPv6 error carries; return the change of the ICMPv6 sum it causes (no
    checksum of its own; its L4 checksum is left as it is)."""
    d = 0
    if old.inner_ipv6_src != new.inner_ipv6_src:
        buf[p + 8:p + 24] = new.inner_ipv6_src.to_bytes(16, "big")
        d += new.inner_ipv6_src - old.inner_ipv6_src
    if old.inner_ipv6_dst != new.inner_ipv6_dst:
        buf[p + 24:p + 40] = new.inner_ipv6_dst.to_bytes(16, "big")
        d += new.inner_ipv6_dst - old.inner_ipv6_dst
    if old.inner_hop_limit != new.inner_hop_limit:
        buf[p + 7] = new.inner_hop_limit
        d += new.inner_hop_limit - old.inner_hop_limit           # the low byte of its 16-bit word
    if old.inner_tclass != new.inner_tclass or old.inner_flow_label != new.inner_flow_label:
        if not 0 <= new.inner_tclass <= 0xFF or not 0 <= new.inner_flow_label <= 0xFFFFF:
            raise ValueError("rewrite: inner_tclass / inner_flow_label out of range")
        (w,) = _VTF.unpack_from(buf, p)
        w2 = 0x60000000 | new.inner_tclass << 20 | new.inner_flow_label
        _VTF.pack_into(buf, p, w2)
        d += w2 - w
    q = p + 40 + sum(len(body) + 1 for _t, body in old.inner_ipv6_ext)
    return d + _rewrite_carried_ports(buf, q, old, new)
