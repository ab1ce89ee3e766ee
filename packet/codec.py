"""Frame codec: raw Ethernet frame <-> Packet (parse, build) and in-place field rewrite with incremental
checksums (rewrite, in rewrite.py, re-exported here).

Owns the wire layout of Ethernet/802.1Q, ARP (Ethernet/IPv4), IPv4, TCP, UDP and ICMP (including the header
an ICMP error carries).  parse() is on the datapath's hot path: one precompiled struct unpack per header, the
Packet made with ``tuple.__new__`` from one positional tuple, one slice for the payload.  Any malformed frame
raises ParseError whose ``reason`` is a counter-friendly token; never another exception.

Canonical form (what build() writes, and what parse() -> build() reproduces byte for byte): no IP options,
no TCP options (data offset 5), UDP length = 8 + payload, no Ethernet padding, the carried header of an ICMP
error without options and with total length = carried bytes.  parse() accepts the rest (options, padding,
fragments) and keeps what the Packet models.  Not modelled, so build() writes a fixed value: the fragment
offset of a later fragment (FRAG_LATER_OFFSET), the 802.1Q DEI bit, the IP evil bit, TCP reserved/NS bits,
and the inner header's total length / fragment field.  The L4 checksum of a first fragment is computed over
the fragment only (the rest of the datagram is not known).
"""

from __future__ import annotations

import struct

from packet.checksum import checksum, udp_fix
from packet.packet import (
    ETH_TYPE_ARP,
    ETH_TYPE_IPV4,
    ETH_TYPE_IPV6,
    ETH_TYPE_VLAN,
    FRAG_FIRST,
    FRAG_LATER,
    FRAG_NONE,
    ICMP_ERROR_TYPES,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    ICMPV6_ERROR_TYPES,
    IPV6_DEST_OPTS,
    IPV6_EXT_TYPES,
    IPV6_FRAGMENT,
    IPV6_HOP_BY_HOP,
    IPV6_ROUTING,
    MAX_IPV6_EXT_HEADERS,
    ND_NEIGHBOR_SOLICIT,
    ND_OPT_MTU,
    ND_OPT_PREFIX,
    ND_OPT_SLL,
    ND_OPT_TLL,
    ND_ROUTER_ADVERT,
    ND_TYPES,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Packet,
    ext_frag,
    routing_destination,
)

__all__ = ["ParseError", "parse", "build", "rewrite", "FRAG_LATER_OFFSET", "ext_frag", "routing_destination"]

# Fragment offset (in 8-byte units) build() writes for a FRAG_LATER packet: the second fragment of a
# 1500-byte-MTU datagram.  The Packet does not model the offset.
FRAG_LATER_OFFSET = 185

_M = 0xFFFF
_ETH = struct.Struct("!HIHIH")              # dst hi16, dst lo32, src hi16, src lo32, ethertype
_ETH_VLAN = struct.Struct("!HIHIHHH")       # ... 0x8100, TCI, ethertype
_VLAN = struct.Struct("!HH")                # TCI, ethertype
_ARP = struct.Struct("!HHBBHHIIHII")        # htype ptype hlen plen op sha(hi16, lo32) spa tha(hi16, lo32) tpa
_IP = struct.Struct("!BBHHHBBHII")          # ver/ihl tos total id frag ttl proto csum src dst
_TCP = struct.Struct("!HHIIBBHHH")          # sport dport seq ack off flags window csum urg
_UDP = struct.Struct("!HHHH")               # sport dport length csum
_ICMP = struct.Struct("!BBHHH")             # type code csum id seq
_PORTS = struct.Struct("!HH")
_U16 = struct.Struct("!H")

_new = tuple.__new__
_EXPECTED_FIELDS = (
    "eth_src", "eth_dst", "eth_type", "vlan", "vlan_pcp", "arp_op", "arp_sha", "arp_spa", "arp_tha",
    "arp_tpa", "ip_src", "ip_dst", "proto", "ttl", "tos", "ip_id", "ip_df", "frag", "tp_src", "tp_dst",
    "tcp_flags", "tcp_seq", "tcp_ack", "tcp_window", "icmp_type", "icmp_code", "icmp_id", "icmp_seq",
    "inner_ip_src", "inner_ip_dst", "inner_proto", "inner_tp_src", "inner_tp_dst", "inner_icmp_id",
    "inner_ttl", "inner_ip_id", "inner_tos", "inner_rest", "payload",
    # IPv6
    "ipv6_src", "ipv6_dst", "hop_limit", "tclass", "flow_label", "ipv6_ext", "icmpv6_type", "icmpv6_code",
    "icmpv6_data", "nd_target", "nd_sll", "nd_tll", "nd_mtu", "nd_reachable", "nd_retrans", "nd_prefixes",
    "nd_opts", "inner_ipv6_src", "inner_ipv6_dst", "inner_hop_limit", "inner_tclass", "inner_flow_label",
    "inner_ipv6_ext",
)
_N_V4 = _EXPECTED_FIELDS.index("payload") + 1
if Packet._fields[: len(_EXPECTED_FIELDS)] != _EXPECTED_FIELDS:  # pragma: no cover - guards the fast path
    raise ImportError("packet.codec: Packet field order changed; update the positional constructors")
# Fields a future Packet may append get their defaults; an IPv4/ARP/L2 packet gets the IPv6 defaults too (one
# precomputed tuple, so the IPv4 constructors are as they were).
_TAIL6 = tuple(Packet._field_defaults[f] for f in Packet._fields[len(_EXPECTED_FIELDS):])
_TAIL = tuple(Packet._field_defaults[f] for f in Packet._fields[_N_V4:])
_N5 = (None,) * 5
_N10 = (None,) * 10
_NO_IP = (None,) * 6 + (False, FRAG_NONE)     # ip_src .. ip_id, ip_df, frag
_INNER_NONE = (None,) * 9 + (b"",)
_N4_INNER = (None,) * 4 + _INNER_NONE
_N6 = (None,) * 6
_N8_INNER = (None,) * 8 + _INNER_NONE
_N10_INNER = _N10 + _INNER_NONE
_NO_IP_L4_INNER = _NO_IP + _N10 + _INNER_NONE


class ParseError(ValueError):
    """A frame that cannot be parsed; ``reason`` is a short snake_case token (a counter name suffix)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def parse(frame: bytes | bytearray | memoryview) -> Packet:
    """Parse an Ethernet frame.  Raises ParseError (and nothing else) on a malformed frame."""
    try:
        return _parse(frame)
    except ParseError:
        raise
    except (struct.error, IndexError) as e:  # pragma: no cover - every path checks lengths first
        raise ParseError("malformed", str(e)) from None


def _parse(frame) -> Packet:  # noqa: C901 - one straight-line function is the fast path
    n = len(frame)
    if n < 14:
        raise ParseError("truncated", "shorter than an Ethernet header")
    dh, dl, sh, sl, etype = _ETH.unpack_from(frame, 0)
    l2 = (sh << 32 | sl, dh << 32 | dl)
    off = 14
    if etype == ETH_TYPE_VLAN:
        if n < 18:
            raise ParseError("truncated", "802.1Q tag cut short")
        tci, etype = _VLAN.unpack_from(frame, 14)
        l2 += (etype, tci & 0xFFF, tci >> 13)
        off = 18
    else:
        l2 += (etype, None, 0)

    if etype == ETH_TYPE_IPV4:
        return _parse_ipv4(frame, n, off, l2)
    if etype == ETH_TYPE_IPV6:
        return _parse_ipv6(frame, n, off, l2)
    if etype == ETH_TYPE_ARP:
        if n - off < 28:
            raise ParseError("truncated", "ARP body cut short")
        htype, ptype, hlen, plen, op, shh, shl, spa, thh, thl, tpa = _ARP.unpack_from(frame, off)
        if htype != 1 or ptype != ETH_TYPE_IPV4 or hlen != 6 or plen != 4:
            raise ParseError("bad_arp", f"not Ethernet/IPv4 ARP (htype {htype}, ptype {ptype:#x})")
        # Bytes after the 28-byte body are Ethernet padding.
        return _new(Packet, (*l2, op, shh << 32 | shl, spa, thh << 32 | thl, tpa, *_NO_IP_L4_INNER, b"", *_TAIL))
    return _new(Packet, (*l2, *_N5, *_NO_IP_L4_INNER, bytes(frame[off:]), *_TAIL))


def _parse_ipv4(frame, n: int, off: int, l2: tuple) -> Packet:  # noqa: C901
    if n - off < 20:
        raise ParseError("truncated", "IPv4 header cut short")
    vihl, tos, tlen, ipid, fragf, ttl, proto, _c, src, dst = _IP.unpack_from(frame, off)
    if vihl >> 4 != 4:
        raise ParseError("bad_ip_version", f"version {vihl >> 4} in an IPv4 frame")
    hl = (vihl & 15) << 2
    if hl < 20:
        raise ParseError("bad_ihl", f"IHL {hl >> 2}")
    if off + hl > n:
        raise ParseError("truncated", "IPv4 options cut short")
    if tlen < hl or off + tlen > n:
        raise ParseError("bad_total_length", f"total length {tlen}, header {hl}, frame has {n - off}")
    end = off + tlen            # anything after is Ethernet padding
    l4 = off + hl
    df = (fragf & 0x4000) != 0
    # (The Packets are made with one tuple display each: fewer intermediate tuples than concatenations.)
    if fragf & 0x1FFF:
        return _new(Packet, (*l2, *_N5, src, dst, proto, ttl, tos, ipid, df, FRAG_LATER, *_N10_INNER,
                             bytes(frame[l4:end]), *_TAIL))
    frag = FRAG_FIRST if fragf & 0x2000 else FRAG_NONE
    avail = end - l4

    if proto == PROTO_TCP:
        if avail < 20:
            raise ParseError("bad_l4_length", f"TCP header needs 20 bytes, IP payload has {avail}")
        sp, dp, seq, ack, doff, flags, win, _c, _u = _TCP.unpack_from(frame, l4)
        dlen = (doff >> 4) << 2
        if dlen < 20 or dlen > avail:
            raise ParseError("bad_tcp_offset", f"data offset {doff >> 4}, IP payload has {avail}")
        return _new(Packet, (*l2, *_N5, src, dst, proto, ttl, tos, ipid, df, frag, sp, dp, flags, seq, ack, win,
                             *_N4_INNER, bytes(frame[l4 + dlen:end]), *_TAIL))

    if proto == PROTO_UDP:
        if avail < 8:
            raise ParseError("bad_l4_length", f"UDP header needs 8 bytes, IP payload has {avail}")
        sp, dp, ulen, _c = _UDP.unpack_from(frame, l4)
        if frag == FRAG_NONE:
            if ulen < 8 or ulen > avail:
                raise ParseError("bad_l4_length", f"UDP length {ulen}, IP payload has {avail}")
            pend = l4 + ulen
        elif ulen < 8:          # a first fragment: the length covers the whole datagram
            raise ParseError("bad_l4_length", f"UDP length {ulen}")
        else:
            pend = end
        return _new(Packet, (*l2, *_N5, src, dst, proto, ttl, tos, ipid, df, frag, sp, dp, *_N8_INNER,
                             bytes(frame[l4 + 8:pend]), *_TAIL))

    if proto == PROTO_ICMP:
        if avail < 8:
            raise ParseError("bad_l4_length", f"ICMP header needs 8 bytes, IP payload has {avail}")
        itype, code, _c, iid, iseq = _ICMP.unpack_from(frame, l4)
        if itype in ICMP_ERROR_TYPES:
            return _new(Packet, (*l2, *_N5, src, dst, proto, ttl, tos, ipid, df, frag, *_N6, itype, code, iid,
                                 iseq, *_parse_carried(frame, l4 + 8, end), *_TAIL))
        return _new(Packet, (*l2, *_N5, src, dst, proto, ttl, tos, ipid, df, frag, *_N6, itype, code, iid, iseq,
                             *_INNER_NONE, bytes(frame[l4 + 8:end]), *_TAIL))

    return _new(Packet, (*l2, *_N5, src, dst, proto, ttl, tos, ipid, df, frag, *_N10_INNER, bytes(frame[l4:end]),
                         *_TAIL))


def _parse_carried(frame, p: int, end: int) -> tuple:
    """The IPv4 header (+ up to 8 L4 bytes) an ICMP error carries → inner_* fields + inner_rest + payload."""
    if end - p < 20:
        raise ParseError("bad_icmp_inner", "ICMP error carries less than an IPv4 header")
    vihl, tos, _tl, ipid, fragf, ttl, proto, _c, src, dst = _IP.unpack_from(frame, p)
    hl = (vihl & 15) << 2
    if vihl >> 4 != 4 or hl < 20 or p + hl > end:
        raise ParseError("bad_icmp_inner", f"carried header: version {vihl >> 4}, IHL {hl >> 2}")
    q = p + hl
    qe = min(q + 8, end)
    sp = dp = icmp_id = None
    if fragf & 0x1FFF:                      # a later fragment carries no L4 header
        rest = bytes(frame[q:qe])
    elif proto == PROTO_TCP or proto == PROTO_UDP:
        if qe - q >= 4:
            sp, dp = _PORTS.unpack_from(frame, q)
            rest = bytes(frame[q + 4:qe])
        else:
            rest = bytes(frame[q:qe])
    elif proto == PROTO_ICMP and qe - q >= 6:
        (icmp_id,) = _U16.unpack_from(frame, q + 4)
        rest = bytes(frame[q:q + 4]) + bytes(frame[q + 6:qe])
    else:
        rest = bytes(frame[q:qe])
    return (src, dst, proto, sp, dp, icmp_id, ttl, ipid, tos, rest, bytes(frame[qe:end]))


def build(pkt: Packet) -> bytes:
    """Packet → frame (canonical form, see the module comment), with every checksum computed.

    Raises ValueError when a field needed for the frame is missing or out of range.
    """
    try:
        return _build(pkt)
    except (struct.error, TypeError, OverflowError, AttributeError, IndexError) as e:
        raise ValueError(f"cannot build packet: {e}") from None


def _build(pkt: Packet) -> bytes:
    dst, src, et = pkt.eth_dst, pkt.eth_src, pkt.eth_type
    if pkt.vlan is None:
        eth = _ETH.pack(dst >> 32, dst & 0xFFFFFFFF, src >> 32, src & 0xFFFFFFFF, et)
    else:
        tci = (pkt.vlan_pcp & 7) << 13 | pkt.vlan
        eth = _ETH_VLAN.pack(dst >> 32, dst & 0xFFFFFFFF, src >> 32, src & 0xFFFFFFFF, ETH_TYPE_VLAN, tci, et)
    if et == ETH_TYPE_IPV4 and pkt.ip_src is not None:
        return eth + _build_ipv4(pkt)
    if et == ETH_TYPE_IPV6 and pkt.ipv6_src is not None:
        return eth + _build_ipv6(pkt)
    if et == ETH_TYPE_ARP and pkt.arp_op is not None:
        sha, tha = pkt.arp_sha or 0, pkt.arp_tha or 0
        return eth + _ARP.pack(1, ETH_TYPE_IPV4, 6, 4, pkt.arp_op, sha >> 32, sha & 0xFFFFFFFF,
                               pkt.arp_spa or 0, tha >> 32, tha & 0xFFFFFFFF, pkt.arp_tpa or 0)
    return eth + pkt.payload


def _build_ipv4(pkt: Packet) -> bytes:
    src, dst, proto, payload = pkt.ip_src, pkt.ip_dst, pkt.proto, pkt.payload
    fragf = 0x4000 if pkt.ip_df else 0
    if pkt.frag == FRAG_LATER:
        fragf |= FRAG_LATER_OFFSET
        l4 = payload
    else:
        if pkt.frag == FRAG_FIRST:
            fragf |= 0x2000
        if proto == PROTO_TCP:
            sp, dp, flags = pkt.tp_src, pkt.tp_dst, pkt.tcp_flags or 0
            seq, ack, win = pkt.tcp_seq or 0, pkt.tcp_ack or 0, pkt.tcp_window or 0
            init = src + dst + 6 + 20 + len(payload) + sp + dp + seq + ack + 0x5000 + flags + win
            csum = checksum(payload, init)
            l4 = _TCP.pack(sp, dp, seq, ack, 0x50, flags, win, csum, 0) + payload
        elif proto == PROTO_UDP:
            sp, dp = pkt.tp_src, pkt.tp_dst
            ulen = 8 + len(payload)
            csum = udp_fix(checksum(payload, src + dst + 17 + ulen + sp + dp + ulen))
            l4 = _UDP.pack(sp, dp, ulen, csum) + payload
        elif proto == PROTO_ICMP:
            itype, code = pkt.icmp_type or 0, pkt.icmp_code or 0
            iid, iseq = pkt.icmp_id or 0, pkt.icmp_seq or 0
            body = payload
            if itype in ICMP_ERROR_TYPES and pkt.inner_ip_src is not None:
                body = _build_carried(pkt) + payload
            csum = checksum(body, (itype << 8 | code) + iid + iseq)
            l4 = _ICMP.pack(itype, code, csum, iid, iseq) + body
        else:
            l4 = payload
    ttl = 64 if pkt.ttl is None else pkt.ttl
    tos, ipid = pkt.tos or 0, pkt.ip_id or 0
    total = 20 + len(l4)
    s = (0x4500 | tos) + total + ipid + fragf + (ttl << 8 | proto) + src + dst
    return _IP.pack(0x45, tos, total, ipid, fragf, ttl, proto, _M - (s % _M or _M), src, dst) + l4


def _build_carried(pkt: Packet) -> bytes:
    """The header an ICMP error carries, from the inner_* fields, with a correct header checksum."""
    iproto, rest = pkt.inner_proto or 0, pkt.inner_rest
    if iproto in (PROTO_TCP, PROTO_UDP) and pkt.inner_tp_src is not None:
        l4 = _PORTS.pack(pkt.inner_tp_src, pkt.inner_tp_dst) + rest
    elif iproto == PROTO_ICMP and pkt.inner_icmp_id is not None:
        l4 = rest[:4] + _U16.pack(pkt.inner_icmp_id) + rest[4:]
    else:
        l4 = rest
    src, dst = pkt.inner_ip_src, pkt.inner_ip_dst
    ttl = 64 if pkt.inner_ttl is None else pkt.inner_ttl
    tos, ipid = pkt.inner_tos or 0, pkt.inner_ip_id or 0
    total = 20 + len(l4) + len(pkt.payload)
    s = (0x4500 | tos) + total + ipid + (ttl << 8 | iproto) + src + dst
    return _IP.pack(0x45, tos, total, ipid, 0, ttl, iproto, _M - (s % _M or _M), src, dst) + l4


# ---- IPv6 ----
#
# Canonical form (what build() writes): the extension headers exactly as ``ipv6_ext`` holds them; ND options in
# the order SLL, TLL, MTU, prefix information, then ``nd_opts``; the carried packet of an ICMPv6 error with
# payload length = carried bytes.  parse() keeps every byte it does not model verbatim where the Packet has a
# place for it (extension header bodies, unknown ND options); not modelled: the reserved bytes of the MTU and
# prefix information options, bytes of a link-layer address option beyond the 6 of a MAC, and the carried
# packet's payload length (rewrite keeps those bytes as they are).

_IP6 = struct.Struct("!IHBB16s16s")         # version/class/flow, payload length, next header, hop limit, src, dst
_IP6H = struct.Struct("!IHBB")
_ICMP6 = struct.Struct("!BBHI")             # type code csum word (id/seq, MTU, pointer, flags...)
_II = struct.Struct("!II")
_ND_LL = struct.Struct("!BBHI")             # type, length (8-byte units), MAC hi16, lo32
_ND_MTU = struct.Struct("!BBHI")            # type, length, reserved, MTU
_ND_PREFIX = struct.Struct("!BBBBIII16s")   # type, length, prefix length, flags, valid, preferred, reserved
_from = int.from_bytes
_V6_AFTER_EXT = (None,) * 9 + ((), ()) + (None,) * 5 + ((),)  # icmpv6_type .. inner_ipv6_ext, all unset
_ND_NONE = (None,) * 6 + ((), ())
_INNER6_NONE = (None,) * 5 + ((),)


def _walk_ext(frame, p: int, end: int, nh: int, reason: str) -> tuple:
    """Walk the extension headers from ``p`` (``nh`` = the type of the first) → (ext, L4 protocol, L4 offset,
    frag).  Bounded: at most MAX_IPV6_EXT_HEADERS headers, each inside ``end``; a later fragment ends the
    walk (what follows it is fragment data, not headers)."""
    ext = []
    frag = FRAG_NONE
    seen_frag = False
    while nh in IPV6_EXT_TYPES:
        if len(ext) == MAX_IPV6_EXT_HEADERS:
            raise ParseError("ipv6_ext_chain_too_long", f"more than {MAX_IPV6_EXT_HEADERS} extension headers")
        if nh == IPV6_HOP_BY_HOP and ext:
            raise ParseError(reason, "hop-by-hop options header not first")
        if end - p < 8:
            raise ParseError(reason, f"extension header {nh} cut short")
        if nh == IPV6_FRAGMENT:
            if seen_frag:
                raise ParseError(reason, "two fragment headers")
            seen_frag = True
            hl = 8
            offm = frame[p + 2] << 8 | frame[p + 3]
            frag = FRAG_LATER if offm & 0xFFF8 else FRAG_FIRST if offm & 1 else FRAG_NONE
        else:
            hl = (frame[p + 1] + 1) << 3
            if hl > end - p:
                raise ParseError(reason, f"extension header {nh} of {hl} bytes, {end - p} left")
        ext.append((nh, bytes(frame[p + 1:p + hl])))
        nh = frame[p]
        p += hl
        if frag == FRAG_LATER:
            break
    return tuple(ext), nh, p, frag


def _parse_ipv6(frame, n: int, off: int, l2: tuple) -> Packet:  # noqa: C901
    if n - off < 40:
        raise ParseError("truncated", "IPv6 header cut short")
    vtf, plen, nh, hlim, s16, d16 = _IP6.unpack_from(frame, off)
    if vtf >> 28 != 6:
        raise ParseError("bad_ip_version", f"version {vtf >> 28} in an IPv6 frame")
    p = off + 40
    end = p + plen              # anything after is Ethernet padding
    if end > n:
        raise ParseError("bad_payload_length", f"payload length {plen}, frame has {n - p}")
    ext = ()
    frag = FRAG_NONE
    if nh in IPV6_EXT_TYPES:
        ext, nh, p, frag = _walk_ext(frame, p, end, nh, "bad_ipv6_ext")
    v6 = (_from(s16, "big"), _from(d16, "big"), hlim, vtf >> 20 & 0xFF, vtf & 0xFFFFF, ext)
    head = l2 + _N5 + (None, None, nh, None, None, None, False, frag)
    if frag == FRAG_LATER:
        return _new(Packet, head + _N10 + _INNER_NONE + (bytes(frame[p:end]),) + v6 + _V6_AFTER_EXT + _TAIL6)
    avail = end - p

    if nh == PROTO_TCP:
        if avail < 20:
            raise ParseError("bad_l4_length", f"TCP header needs 20 bytes, IPv6 payload has {avail}")
        sp, dp, seq, ack, doff, flags, win, _c, _u = _TCP.unpack_from(frame, p)
        dlen = (doff >> 4) << 2
        if dlen < 20 or dlen > avail:
            raise ParseError("bad_tcp_offset", f"data offset {doff >> 4}, IPv6 payload has {avail}")
        return _new(Packet, head + (sp, dp, flags, seq, ack, win) + (None,) * 4 + _INNER_NONE
                    + (bytes(frame[p + dlen:end]),) + v6 + _V6_AFTER_EXT + _TAIL6)

    if nh == PROTO_UDP:
        if avail < 8:
            raise ParseError("bad_l4_length", f"UDP header needs 8 bytes, IPv6 payload has {avail}")
        sp, dp, ulen, _c = _UDP.unpack_from(frame, p)
        if frag == FRAG_NONE:
            if ulen < 8 or ulen > avail:
                raise ParseError("bad_l4_length", f"UDP length {ulen}, IPv6 payload has {avail}")
            pend = p + ulen
        elif ulen < 8:          # a first fragment: the length covers the whole datagram
            raise ParseError("bad_l4_length", f"UDP length {ulen}")
        else:
            pend = end
        return _new(Packet, head + (sp, dp) + (None,) * 8 + _INNER_NONE + (bytes(frame[p + 8:pend]),) + v6
                    + _V6_AFTER_EXT + _TAIL6)

    if nh == PROTO_ICMPV6:
        if avail < 8:
            raise ParseError("bad_l4_length", f"ICMPv6 header needs 8 bytes, IPv6 payload has {avail}")
        t, code, _c, word = _ICMP6.unpack_from(frame, p)
        if t == ICMPV6_ECHO_REQUEST or t == ICMPV6_ECHO_REPLY:
            return _new(Packet, head + (None,) * 8 + (word >> 16, word & 0xFFFF) + _INNER_NONE
                        + (bytes(frame[p + 8:end]),) + v6 + (t, code, None) + _ND_NONE + _INNER6_NONE + _TAIL6)
        if t in ICMPV6_ERROR_TYPES:
            inner4, payload, inner6 = _parse_carried6(frame, p + 8, end)
            return _new(Packet, head + _N10 + inner4 + (payload,) + v6 + (t, code, word) + _ND_NONE + inner6
                        + _TAIL6)
        if t in ND_TYPES:
            start = p + (24 if t >= ND_NEIGHBOR_SOLICIT else 16 if t == ND_ROUTER_ADVERT else 8)
            if start > end:
                raise ParseError("bad_l4_length", f"ND message type {t} needs {start - p} bytes, has {avail}")
            target = _from(frame[p + 8:p + 24], "big") if t >= ND_NEIGHBOR_SOLICIT else None
            reach, retrans = _II.unpack_from(frame, p + 8) if t == ND_ROUTER_ADVERT else (None, None)
            nd = (target,) + _parse_nd_opts(frame, start, end, reach, retrans)
            return _new(Packet, head + _N10 + _INNER_NONE + (b"",) + v6 + (t, code, word) + nd + _INNER6_NONE
                        + _TAIL6)
        return _new(Packet, head + _N10 + _INNER_NONE + (bytes(frame[p + 8:end]),) + v6 + (t, code, word)
                    + _ND_NONE + _INNER6_NONE + _TAIL6)

    return _new(Packet, head + _N10 + _INNER_NONE + (bytes(frame[p:end]),) + v6 + _V6_AFTER_EXT + _TAIL6)


def _parse_nd_opts(frame, q: int, end: int, reach, retrans) -> tuple:
    """ND options from ``q`` to ``end`` → (sll, tll, mtu, reachable, retrans, prefixes, other options).
    The first SLL/TLL/MTU go to their fields, repeats (and every unknown type) to the other options."""
    sll = tll = mtu = None
    prefixes = []
    other = []
    while q < end:
        if end - q < 8:
            raise ParseError("bad_nd_option", f"{end - q} bytes left, an option needs 8")
        t = frame[q]
        ol = frame[q + 1] << 3
        if not ol:
            raise ParseError("bad_nd_option", f"option {t} has length 0")
        if ol > end - q:
            raise ParseError("bad_nd_option", f"option {t} of {ol} bytes, {end - q} left")
        if t == ND_OPT_SLL and sll is None:
            sll = _from(frame[q + 2:q + 8], "big")
        elif t == ND_OPT_TLL and tll is None:
            tll = _from(frame[q + 2:q + 8], "big")
        elif t == ND_OPT_MTU and mtu is None and ol == 8:
            mtu = _ND_MTU.unpack_from(frame, q)[3]
        elif t == ND_OPT_PREFIX:
            if ol != 32:
                raise ParseError("bad_nd_option", f"prefix information option of {ol} bytes")
            _t, _l, plen, flags, valid, pref, _r, prefix = _ND_PREFIX.unpack_from(frame, q)
            prefixes.append((_from(prefix, "big"), plen, flags, valid, pref))
        else:
            other.append((t, bytes(frame[q + 2:q + ol])))
        q += ol
    return (sll, tll, mtu, reach, retrans, tuple(prefixes), tuple(other))


def _parse_carried6(frame, p: int, end: int) -> tuple:
    """The IPv6 packet an ICMPv6 error carries → (inner_* fields shared with IPv4, payload, inner IPv6
    fields).  As for IPv4 only the first 8 L4 bytes are read (ports / echo id + inner_rest)."""
    if end - p < 40:
        raise ParseError("bad_icmp_inner", "ICMPv6 error carries less than an IPv6 header")
    vtf, _plen, nh, hlim, s16, d16 = _IP6.unpack_from(frame, p)
    if vtf >> 28 != 6:
        raise ParseError("bad_icmp_inner", f"carried header: version {vtf >> 28}")
    q = p + 40
    ext = ()
    frag = FRAG_NONE
    if nh in IPV6_EXT_TYPES:
        ext, nh, q, frag = _walk_ext(frame, q, end, nh, "bad_icmp_inner")
    qe = min(q + 8, end)
    sp = dp = icmp_id = None
    if frag == FRAG_LATER:
        rest = bytes(frame[q:qe])
    elif nh == PROTO_TCP or nh == PROTO_UDP:
        if qe - q >= 4:
            sp, dp = _PORTS.unpack_from(frame, q)
            rest = bytes(frame[q + 4:qe])
        else:
            rest = bytes(frame[q:qe])
    elif nh == PROTO_ICMPV6 and qe - q >= 6:
        (icmp_id,) = _U16.unpack_from(frame, q + 4)
        rest = bytes(frame[q:q + 4]) + bytes(frame[q + 6:qe])
    else:
        rest = bytes(frame[q:qe])
    inner4 = (None, None, nh, sp, dp, icmp_id, None, None, None, rest)
    inner6 = (_from(s16, "big"), _from(d16, "big"), hlim, vtf >> 20 & 0xFF, vtf & 0xFFFFF, ext)
    return inner4, bytes(frame[qe:end]), inner6


def _ext_bytes(ext: tuple, last: int) -> bytes:
    """The wire bytes of an extension header chain whose last next-header is ``last``; ValueError for a chain
    parse() would not read back the same (bad lengths, order, more than MAX_IPV6_EXT_HEADERS)."""
    if len(ext) > MAX_IPV6_EXT_HEADERS:
        raise ValueError(f"more than {MAX_IPV6_EXT_HEADERS} IPv6 extension headers")
    out = []
    frags = 0
    for i, (t, body) in enumerate(ext):
        if t == IPV6_FRAGMENT:
            frags += 1
            if len(body) != 7 or frags > 1 or (ext_frag(((t, body),)) == FRAG_LATER and i + 1 != len(ext)):
                raise ValueError("ipv6_ext: a fragment header is 7 bytes after its next header, one per chain, "
                                 "and a later fragment's is the last header")
        elif t in (IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_DEST_OPTS):
            if not body or len(body) + 1 != (body[0] + 1) << 3 or (t == IPV6_HOP_BY_HOP and i):
                raise ValueError(f"ipv6_ext: header {t} of {len(body) + 1} bytes, length byte says "
                                 f"{((body[0] + 1) << 3) if body else '?'} (hop-by-hop only first)")
        else:
            raise ValueError(f"ipv6_ext: {t} is not an extension header the codec walks")
        out.append(bytes((ext[i + 1][0] if i + 1 < len(ext) else last,)))
        out.append(bytes(body))
    return b"".join(out)


def _build_ipv6(pkt: Packet) -> bytes:
    src, dst, proto, payload, ext = pkt.ipv6_src, pkt.ipv6_dst, pkt.proto, pkt.payload, pkt.ipv6_ext
    chain = _ext_bytes(ext, proto) if ext else b""
    frag = ext_frag(ext) if ext else FRAG_NONE
    if frag != pkt.frag:
        raise ValueError(f"frag {pkt.frag} does not match the fragment header of ipv6_ext ({frag})")
    if frag == FRAG_LATER:
        l4 = payload
    else:
        rd = routing_destination(ext) if ext else None
        ph = src + (dst if rd is None else rd) + proto
        if proto == PROTO_TCP:
            sp, dp, flags = pkt.tp_src, pkt.tp_dst, pkt.tcp_flags or 0
            seq, ack, win = pkt.tcp_seq or 0, pkt.tcp_ack or 0, pkt.tcp_window or 0
            csum = checksum(payload, ph + 20 + len(payload) + sp + dp + seq + ack + 0x5000 + flags + win)
            l4 = _TCP.pack(sp, dp, seq, ack, 0x50, flags, win, csum, 0) + payload
        elif proto == PROTO_UDP:
            sp, dp = pkt.tp_src, pkt.tp_dst
            ulen = 8 + len(payload)
            csum = udp_fix(checksum(payload, ph + ulen + sp + dp + ulen))
            l4 = _UDP.pack(sp, dp, ulen, csum) + payload
        elif proto == PROTO_ICMPV6:
            l4 = _build_icmpv6(pkt, ph)
        else:
            l4 = payload
    hlim = 64 if pkt.hop_limit is None else pkt.hop_limit
    vtf = 0x60000000 | (pkt.tclass or 0) << 20 | (pkt.flow_label or 0)
    return (_IP6H.pack(vtf, len(chain) + len(l4), ext[0][0] if ext else proto, hlim)
            + src.to_bytes(16, "big") + dst.to_bytes(16, "big") + chain + l4)


def _build_icmpv6(pkt: Packet, ph: int) -> bytes:
    t, code = pkt.icmpv6_type or 0, pkt.icmpv6_code or 0
    payload = pkt.payload
    if t == ICMPV6_ECHO_REQUEST or t == ICMPV6_ECHO_REPLY:
        word = (pkt.icmp_id or 0) << 16 | (pkt.icmp_seq or 0)
        body = payload
    else:
        word = pkt.icmpv6_data or 0
        if t in ICMPV6_ERROR_TYPES and pkt.inner_ipv6_src is not None:
            body = _build_carried6(pkt) + payload
        elif t in ND_TYPES:
            if payload:
                raise ValueError("an ND message carries options, not a payload")
            if t >= ND_NEIGHBOR_SOLICIT:
                fixed = pkt.nd_target.to_bytes(16, "big")
            elif t == ND_ROUTER_ADVERT:
                fixed = _II.pack(pkt.nd_reachable or 0, pkt.nd_retrans or 0)
            else:
                fixed = b""
            body = fixed + _nd_opts_bytes(pkt)
        else:
            body = payload
    n = 8 + len(body)
    csum = checksum(body, ph + n + (t << 8 | code) + word)
    return _ICMP6.pack(t, code, csum, word) + body


def _nd_opts_bytes(pkt: Packet) -> bytes:
    out = []
    if pkt.nd_sll is not None:
        out.append(_ND_LL.pack(ND_OPT_SLL, 1, pkt.nd_sll >> 32, pkt.nd_sll & 0xFFFFFFFF))
    if pkt.nd_tll is not None:
        out.append(_ND_LL.pack(ND_OPT_TLL, 1, pkt.nd_tll >> 32, pkt.nd_tll & 0xFFFFFFFF))
    if pkt.nd_mtu is not None:
        out.append(_ND_MTU.pack(ND_OPT_MTU, 1, 0, pkt.nd_mtu))
    for prefix, plen, flags, valid, pref in pkt.nd_prefixes:
        out.append(_ND_PREFIX.pack(ND_OPT_PREFIX, 4, plen, flags, valid, pref, 0, prefix.to_bytes(16, "big")))
    for t, data in pkt.nd_opts:
        size = len(data) + 2
        if size & 7 or size > 255 * 8:
            raise ValueError(f"nd_opts: option {t} of {size} bytes (a multiple of 8 up to 2040)")
        out.append(bytes((t, size >> 3)) + data)
    return b"".join(out)


def _build_carried6(pkt: Packet) -> bytes:
    """The IPv6 packet an ICMPv6 error carries, from the inner_* fields (payload length = carried bytes)."""
    iproto, rest, ext = pkt.inner_proto or 0, pkt.inner_rest, pkt.inner_ipv6_ext
    if iproto in (PROTO_TCP, PROTO_UDP) and pkt.inner_tp_src is not None:
        l4 = _PORTS.pack(pkt.inner_tp_src, pkt.inner_tp_dst) + rest
    elif iproto == PROTO_ICMPV6 and pkt.inner_icmp_id is not None:
        l4 = rest[:4] + _U16.pack(pkt.inner_icmp_id) + rest[4:]
    else:
        l4 = rest
    chain = _ext_bytes(ext, iproto) if ext else b""
    hlim = 64 if pkt.inner_hop_limit is None else pkt.inner_hop_limit
    vtf = 0x60000000 | (pkt.inner_tclass or 0) << 20 | (pkt.inner_flow_label or 0)
    return (_IP6H.pack(vtf, len(chain) + len(l4) + len(pkt.payload), ext[0][0] if ext else iproto, hlim)
            + pkt.inner_ipv6_src.to_bytes(16, "big") + pkt.inner_ipv6_dst.to_bytes(16, "big") + chain + l4)


from packet.rewrite import rewrite  # noqa: E402  (rewrite uses the layouts above)
