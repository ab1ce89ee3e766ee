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
    ETH_TYPE_VLAN,
    FRAG_FIRST,
    FRAG_LATER,
    FRAG_NONE,
    ICMP_ERROR_TYPES,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    Packet,
)

__all__ = ["ParseError", "parse", "build", "rewrite", "FRAG_LATER_OFFSET"]

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
)
if Packet._fields[: len(_EXPECTED_FIELDS)] != _EXPECTED_FIELDS:  # pragma: no cover - guards the fast path
    raise ImportError("packet.codec: Packet field order changed; update the positional constructors")
# Fields a future Packet may append get their defaults.
_TAIL = tuple(Packet._field_defaults[f] for f in Packet._fields[len(_EXPECTED_FIELDS):])
_N5 = (None,) * 5
_N10 = (None,) * 10
_NO_IP = (None,) * 6 + (False, FRAG_NONE)     # ip_src .. ip_id, ip_df, frag
_INNER_NONE = (None,) * 9 + (b"",)


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
    if etype == ETH_TYPE_ARP:
        if n - off < 28:
            raise ParseError("truncated", "ARP body cut short")
        htype, ptype, hlen, plen, op, shh, shl, spa, thh, thl, tpa = _ARP.unpack_from(frame, off)
        if htype != 1 or ptype != ETH_TYPE_IPV4 or hlen != 6 or plen != 4:
            raise ParseError("bad_arp", f"not Ethernet/IPv4 ARP (htype {htype}, ptype {ptype:#x})")
        # Bytes after the 28-byte body are Ethernet padding.
        return _new(Packet, l2 + (op, shh << 32 | shl, spa, thh << 32 | thl, tpa) + _NO_IP + _N10
                    + _INNER_NONE + (b"",) + _TAIL)
    return _new(Packet, l2 + _N5 + _NO_IP + _N10 + _INNER_NONE + (bytes(frame[off:]),) + _TAIL)


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
    if fragf & 0x1FFF:
        head = l2 + _N5 + (src, dst, proto, ttl, tos, ipid, df, FRAG_LATER)
        return _new(Packet, head + _N10 + _INNER_NONE + (bytes(frame[l4:end]),) + _TAIL)
    frag = FRAG_FIRST if fragf & 0x2000 else FRAG_NONE
    head = l2 + _N5 + (src, dst, proto, ttl, tos, ipid, df, frag)
    avail = end - l4

    if proto == PROTO_TCP:
        if avail < 20:
            raise ParseError("bad_l4_length", f"TCP header needs 20 bytes, IP payload has {avail}")
        sp, dp, seq, ack, doff, flags, win, _c, _u = _TCP.unpack_from(frame, l4)
        dlen = (doff >> 4) << 2
        if dlen < 20 or dlen > avail:
            raise ParseError("bad_tcp_offset", f"data offset {doff >> 4}, IP payload has {avail}")
        return _new(Packet, head + (sp, dp, flags, seq, ack, win) + (None,) * 4 + _INNER_NONE
                    + (bytes(frame[l4 + dlen:end]),) + _TAIL)

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
        return _new(Packet, head + (sp, dp) + (None,) * 8 + _INNER_NONE + (bytes(frame[l4 + 8:pend]),)
                    + _TAIL)

    if proto == PROTO_ICMP:
        if avail < 8:
            raise ParseError("bad_l4_length", f"ICMP header needs 8 bytes, IP payload has {avail}")
        itype, code, _c, iid, iseq = _ICMP.unpack_from(frame, l4)
        head += (None,) * 6 + (itype, code, iid, iseq)
        if itype in ICMP_ERROR_TYPES:
            return _new(Packet, head + _parse_carried(frame, l4 + 8, end) + _TAIL)
        return _new(Packet, head + _INNER_NONE + (bytes(frame[l4 + 8:end]),) + _TAIL)

    return _new(Packet, head + _N10 + _INNER_NONE + (bytes(frame[l4:end]),) + _TAIL)


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
    except (struct.error, TypeError, OverflowError) as e:
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


from packet.rewrite import rewrite  # noqa: E402  (rewrite uses the layouts above)
