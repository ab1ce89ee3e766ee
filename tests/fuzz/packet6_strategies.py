"""IPv6 test helpers for the packet codec: hypothesis strategies for IPv6 Packets in build()'s canonical form
(extension header chains, fragments, ICMPv6 echo/errors/unknown types, neighbor discovery), and the scapy
side: a dissection of an IPv6 frame into Packet fields and a checksum check.

scapy is the independent oracle as for IPv4 (tests/fuzz/packet_strategies.py): field values come from scapy's
own layers (addresses, hop limit, class, flow label, ports, ICMPv6 type fields, ND targets and options), and
L4 checksums are verified with scapy's checksum function over scapy's own pseudo-header (in6_pseudoheader,
which also applies the routing header's final destination).
"""

from __future__ import annotations

from hypothesis import strategies as st
from scapy.layers.inet import TCP, UDP, TCPerror, UDPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    IPv6ExtHdrSegmentRouting,
    in6_pseudoheader,
)
from scapy.layers.l2 import Dot1Q
from scapy.packet import Packet as ScapyPacket
from scapy.packet import Raw
from scapy.utils import checksum as scapy_checksum

from packet.packet import (
    ETH_TYPE_IPV6,
    FRAG_FIRST,
    FRAG_LATER,
    FRAG_NONE,
    ICMPV6_ERROR_TYPES,
    Packet,
)
from tests.fuzz.packet_strategies import dissect, l2, macs, payloads, u8, u16, u32

ip6s = st.integers(0, 2**128 - 1)
flow_labels = st.integers(0, 0xFFFFF)
# L4 protocols scapy dissects as raw bytes after IPv6 (not an extension header, TCP/UDP/ICMPv6, AH/ESP, IPv4,
# mobility)
OTHER_PROTOS6 = st.integers(0, 255).filter(lambda p: p not in (0, 4, 6, 17, 43, 44, 50, 51, 58, 60, 135))
# ICMPv6 types neither modelled (echo, errors, ND) nor given a structure by scapy: raw word + payload
OTHER_ICMPV6 = st.sampled_from([0, 5, 100, 127, 138, 150, 200, 255])
# ND option types scapy has no class for (so it keeps them as raw bytes)
OTHER_ND_OPTS = st.sampled_from([15, 16, 20, 21, 100, 200, 253])


@st.composite
def _opts_body(draw, t: int) -> tuple[int, bytes]:
    """A hop-by-hop / destination options header: length byte then PadN-filled options (+ router alert)."""
    n = draw(st.integers(0, 2))
    room = (n + 1) * 8 - 2
    opts = b""
    if t == 0 and room >= 8 and draw(st.booleans()):
        opts = b"\x05\x02" + draw(st.binary(min_size=2, max_size=2))       # router alert
    pad = room - len(opts)
    opts += b"\x01" + bytes([pad - 2]) + draw(st.binary(min_size=pad - 2, max_size=pad - 2))
    return (t, bytes([n]) + opts)


@st.composite
def _routing(draw) -> tuple[int, bytes]:
    """Routing header: type 0 (address list) or 4 (segment routing), segments left 0..n."""
    n = draw(st.integers(0, 3))
    addrs = b"".join(draw(ip6s).to_bytes(16, "big") for _ in range(n))
    if n and draw(st.booleans()):
        return (43, bytes([2 * n, 4, draw(st.integers(0, n)), n - 1, 0]) + bytes(2) + addrs)
    return (43, bytes([2 * n, 0, draw(st.integers(0, n))]) + bytes(4) + addrs)


def _frag_body(offset: int, more: bool, ident: int) -> bytes:
    return b"\0" + (offset << 3 | int(more)).to_bytes(2, "big") + ident.to_bytes(4, "big")


@st.composite
def ext_chains(draw, frag: int | None = None, routing: bool = True) -> tuple:
    """A canonical extension header chain; ``frag``: which fragment header (None: drawn, maybe none)."""
    ext = []
    if draw(st.booleans()):
        ext.append(draw(_opts_body(0)))
    for _ in range(draw(st.integers(0, 2))):
        ext.append(draw(_routing()) if routing and draw(st.booleans()) else draw(_opts_body(60)))
    if frag is None:
        frag = draw(st.sampled_from([None, FRAG_NONE, FRAG_FIRST]))
    if frag is not None:
        offset = draw(st.integers(1, 8191)) if frag == FRAG_LATER else 0
        ext.append((44, _frag_body(offset, frag == FRAG_FIRST or (frag == FRAG_LATER and draw(st.booleans())),
                                   draw(u32))))
        if frag != FRAG_LATER and draw(st.booleans()):
            ext.append(draw(_opts_body(60)))
    return tuple(ext)


@st.composite
def ip6_part(draw, proto: int, frag: int | None = None, routing: bool = True) -> dict:
    ext = draw(ext_chains(frag, routing)) if frag is not None or draw(st.booleans()) else ()
    f = FRAG_NONE
    for t, body in ext:
        if t == 44:
            offm = body[1] << 8 | body[2]
            f = FRAG_LATER if offm & 0xFFF8 else FRAG_FIRST if offm & 1 else FRAG_NONE
    return dict(ipv6_src=draw(ip6s), ipv6_dst=draw(ip6s), proto=proto, hop_limit=draw(u8), tclass=draw(u8),
                flow_label=draw(flow_labels), ipv6_ext=ext, frag=f)


@st.composite
def carried6(draw) -> dict:
    """The inner fields of an ICMPv6 error, canonical: payload only when 8 carried L4 bytes are complete."""
    proto = draw(st.sampled_from([6, 17, 58, 47]))
    later = draw(st.integers(0, 5)) == 0
    ext = draw(ext_chains(FRAG_LATER if later else None, routing=False)) if later or draw(st.booleans()) else ()
    n = draw(st.integers(0, 8))
    d = dict(inner_ipv6_src=draw(ip6s), inner_ipv6_dst=draw(ip6s), inner_proto=proto, inner_hop_limit=draw(u8),
             inner_tclass=draw(u8), inner_flow_label=draw(flow_labels), inner_ipv6_ext=ext)
    if not later and proto in (6, 17) and n >= 4:
        d.update(inner_tp_src=draw(u16), inner_tp_dst=draw(u16),
                 inner_rest=draw(st.binary(min_size=n - 4, max_size=n - 4)))
    elif not later and proto == 58 and n >= 6:
        d.update(inner_icmp_id=draw(u16), inner_rest=draw(st.binary(min_size=n - 2, max_size=n - 2)))
    else:
        d["inner_rest"] = draw(st.binary(min_size=n, max_size=n))
    d["payload"] = draw(payloads) if n == 8 else b""
    return d


@st.composite
def _nd_fields(draw, t: int) -> dict:
    d: dict = {"icmpv6_data": draw(u32)}
    if t in (135, 136):
        d["nd_target"] = draw(ip6s)
    if t in (133, 134, 135) and draw(st.booleans()):
        d["nd_sll"] = draw(macs)
    if t == 136 and draw(st.booleans()):
        d["nd_tll"] = draw(macs)
    if t == 134:
        d.update(nd_reachable=draw(u32), nd_retrans=draw(u32))
        if draw(st.booleans()):
            d["nd_mtu"] = draw(u32)
        d["nd_prefixes"] = tuple(draw(st.lists(st.tuples(ip6s, u8, u8, u32, u32), max_size=2)))
    d["nd_opts"] = tuple(draw(st.lists(st.tuples(OTHER_ND_OPTS, st.integers(0, 2).map(lambda k: k * 8 + 6).flatmap(
        lambda size: st.binary(min_size=size, max_size=size))), max_size=2)))
    return d


KINDS6 = ("tcp6", "udp6", "echo6", "error6", "ns", "na", "rs", "ra", "icmp6_other", "ip6_other", "frag_first6",
          "frag_later6")


@st.composite
def packets6(draw, kinds: tuple[str, ...] = KINDS6) -> Packet:
    kind = draw(st.sampled_from(kinds))
    frag = None
    if kind == "frag_first6":
        frag, kind = FRAG_FIRST, draw(st.sampled_from(["tcp6", "udp6", "echo6"]))
    eth = draw(l2(ETH_TYPE_IPV6))
    if kind == "frag_later6":
        return Packet(**eth, **draw(ip6_part(draw(st.sampled_from([6, 17, 58, 47])), FRAG_LATER)),
                      payload=draw(payloads))
    if kind == "ip6_other":
        return Packet(**eth, **draw(ip6_part(draw(OTHER_PROTOS6), frag)), payload=draw(payloads))
    if kind == "tcp6":
        return Packet(**eth, **draw(ip6_part(6, frag)), tp_src=draw(u16), tp_dst=draw(u16), tcp_flags=draw(u8),
                      tcp_seq=draw(u32), tcp_ack=draw(u32), tcp_window=draw(u16), payload=draw(payloads))
    if kind == "udp6":
        return Packet(**eth, **draw(ip6_part(17, frag)), tp_src=draw(u16), tp_dst=draw(u16),
                      payload=draw(payloads))
    ip = draw(ip6_part(58, frag))
    code = draw(u8)
    if kind == "echo6":
        return Packet(**eth, **ip, icmpv6_type=draw(st.sampled_from([128, 129])), icmpv6_code=code,
                      icmp_id=draw(u16), icmp_seq=draw(u16), payload=draw(payloads))
    if kind == "error6":
        return Packet(**eth, **ip, icmpv6_type=draw(st.sampled_from(sorted(ICMPV6_ERROR_TYPES))),
                      icmpv6_code=code, icmpv6_data=draw(u32), **draw(carried6()))
    if kind == "icmp6_other":
        return Packet(**eth, **ip, icmpv6_type=draw(OTHER_ICMPV6), icmpv6_code=code, icmpv6_data=draw(u32),
                      payload=draw(payloads))
    t = {"rs": 133, "ra": 134, "ns": 135, "na": 136}[kind]
    return Packet(**eth, **ip, icmpv6_type=t, icmpv6_code=code, **draw(_nd_fields(t)))


# ---- scapy side ----

_EXT_LAYERS = {IPv6ExtHdrHopByHop: 0, IPv6ExtHdrDestOpt: 60, IPv6ExtHdrRouting: 43, IPv6ExtHdrSegmentRouting: 43,
               IPv6ExtHdrFragment: 44}
# icmpv6_data of the errors in scapy's fields (RFC 4884 length + unused, MTU, pointer)
_ERRORS = {ICMPv6DestUnreach: lambda e: e.length << 24 | e.unused, ICMPv6PacketTooBig: lambda e: e.mtu,
           ICMPv6TimeExceeded: lambda e: e.length << 24 | e.unused, ICMPv6ParamProblem: lambda e: e.ptr}


def _i6(text: str) -> int:
    import ipaddress
    return int(ipaddress.IPv6Address(text))


def _mac(text: str) -> int:
    return int(text.replace(":", ""), 16)


def _walk(frame: bytes, layer, p: int, nh: int) -> tuple:
    """scapy's extension header layers from ``layer`` (at offset p, ``nh`` its type) → (ext, frag, L4 proto,
    L4 offset, L4 layer)."""
    ext, frag = [], FRAG_NONE
    while type(layer) in _EXT_LAYERS:
        t = _EXT_LAYERS[type(layer)]
        assert t == nh, f"scapy layer {type(layer).__name__} where next header is {nh}"
        hl = 8 if t == 44 else (layer.len + 1) * 8
        ext.append((t, frame[p + 1:p + hl]))
        nh = layer.nh
        p += hl
        if t == 44:
            frag = FRAG_LATER if layer.offset else FRAG_FIRST if layer.m else FRAG_NONE
            if frag == FRAG_LATER:
                return tuple(ext), frag, nh, p, None
        layer = layer.payload
    return tuple(ext), frag, nh, p, layer


def scapy_view6(frame: bytes) -> dict:  # noqa: C901 - one field table
    """The Packet fields of an IPv6 ``frame`` as scapy reads them."""
    s = dissect(frame)
    v = dict(eth_src=_mac(s.src), eth_dst=_mac(s.dst), eth_type=s.type, vlan=None, vlan_pcp=0)
    off, ip = 14, s.payload
    if isinstance(ip, Dot1Q):
        v.update(vlan=ip.vlan, vlan_pcp=ip.prio, eth_type=ip.type)
        off, ip = 18, ip.payload
    assert type(ip) is IPv6, f"scapy did not read IPv6: {ip!r}"
    v.update(ipv6_src=_i6(ip.src), ipv6_dst=_i6(ip.dst), hop_limit=ip.hlim, tclass=ip.tc, flow_label=ip.fl)
    end = off + 40 + ip.plen
    ext, frag, nh, p, l4 = _walk(frame, ip.payload, off + 40, ip.nh)
    v.update(ipv6_ext=ext, frag=frag, proto=nh)
    if frag == FRAG_LATER:
        v["payload"] = frame[p:end]
        return v
    if isinstance(l4, TCP):
        v.update(tp_src=l4.sport, tp_dst=l4.dport, tcp_flags=int(l4.flags) & 0xFF, tcp_seq=l4.seq,
                 tcp_ack=l4.ack, tcp_window=l4.window, payload=frame[p + l4.dataofs * 4:end])
    elif isinstance(l4, UDP):
        v.update(tp_src=l4.sport, tp_dst=l4.dport, payload=frame[p + 8:end if frag else p + l4.len])
    elif nh == 58:
        if isinstance(l4, Raw):                         # a type scapy gives no structure: from the bytes
            v.update(icmpv6_type=frame[p], icmpv6_code=frame[p + 1])
        else:
            v.update(icmpv6_type=l4.type, icmpv6_code=l4.code)
        if isinstance(l4, (ICMPv6EchoRequest, ICMPv6EchoReply)):
            v.update(icmp_id=l4.id, icmp_seq=l4.seq, payload=frame[p + 8:end])
        elif type(l4) in _ERRORS:
            v["icmpv6_data"] = _ERRORS[type(l4)](l4)
            v.update(_carried_view(frame, l4.payload, p + 8, end))
        elif isinstance(l4, (ICMPv6ND_NS, ICMPv6ND_NA, ICMPv6ND_RS, ICMPv6ND_RA)):
            v.update(_nd_view(frame, l4, p, end))
        else:
            v.update(icmpv6_data=int.from_bytes(frame[p + 4:p + 8], "big"), payload=frame[p + 8:end])
    else:
        v["payload"] = frame[p:end]
    return v


def _carried_view(frame: bytes, inner, p: int, end: int) -> dict:
    assert isinstance(inner, IPerror6), f"scapy did not read the carried header: {inner!r}"
    v = dict(inner_ipv6_src=_i6(inner.src), inner_ipv6_dst=_i6(inner.dst), inner_hop_limit=inner.hlim,
             inner_tclass=inner.tc, inner_flow_label=inner.fl)
    ext, frag, nh, q, il4 = _walk(frame, inner.payload, p + 40, inner.nh)
    qe = min(q + 8, end)
    v.update(inner_ipv6_ext=ext, inner_proto=nh, inner_rest=frame[q:qe], payload=frame[qe:end])
    if frag == FRAG_LATER:
        return v
    if nh in (6, 17) and qe - q >= 4:
        if isinstance(il4, (TCPerror, UDPerror)):
            sp, dp = il4.sport, il4.dport
        else:                                           # too short for scapy to make a layer of it
            sp, dp = int.from_bytes(frame[q:q + 2], "big"), int.from_bytes(frame[q + 2:q + 4], "big")
        v.update(inner_tp_src=sp, inner_tp_dst=dp, inner_rest=frame[q + 4:qe])
    elif nh == 58 and qe - q >= 6:
        iid = il4.id if isinstance(il4, (ICMPv6EchoRequest, ICMPv6EchoReply)) \
            else int.from_bytes(frame[q + 4:q + 6], "big")
        v.update(inner_icmp_id=iid, inner_rest=frame[q:q + 4] + frame[q + 6:qe])
    return v


def _nd_view(frame: bytes, l4, p: int, end: int) -> dict:
    v: dict = {"payload": b""}
    if isinstance(l4, ICMPv6ND_NA):
        v["icmpv6_data"] = l4.R << 31 | l4.S << 30 | l4.O << 29 | l4.res
    elif isinstance(l4, ICMPv6ND_RA):
        v["icmpv6_data"] = (l4.chlim << 24 | l4.M << 23 | l4.O << 22 | l4.H << 21 | l4.prf << 19 | l4.P << 18
                            | l4.res << 16 | l4.routerlifetime)
        v.update(nd_reachable=l4.reachabletime, nd_retrans=l4.retranstimer)
    else:
        v["icmpv6_data"] = l4.res
    if isinstance(l4, (ICMPv6ND_NS, ICMPv6ND_NA)):
        v["nd_target"] = _i6(l4.tgt)
    q = p + (24 if isinstance(l4, (ICMPv6ND_NS, ICMPv6ND_NA)) else 16 if isinstance(l4, ICMPv6ND_RA) else 8)
    prefixes, other = [], []
    opt = l4.payload
    while isinstance(opt, ScapyPacket) and not isinstance(opt, Raw) and q < end and opt.__class__.__name__ != \
            "NoPayload":
        size = frame[q + 1] * 8
        if type(opt) is ICMPv6NDOptSrcLLAddr and "nd_sll" not in v:
            v["nd_sll"] = _mac(opt.lladdr)
        elif type(opt) is ICMPv6NDOptDstLLAddr and "nd_tll" not in v:     # (a subclass of the source one)
            v["nd_tll"] = _mac(opt.lladdr)
        elif isinstance(opt, ICMPv6NDOptMTU) and "nd_mtu" not in v:
            v["nd_mtu"] = opt.mtu
        elif isinstance(opt, ICMPv6NDOptPrefixInfo):
            prefixes.append((_i6(opt.prefix), opt.prefixlen, opt.L << 7 | opt.A << 6 | opt.R << 5 | opt.res1,
                             opt.validlifetime, opt.preferredlifetime))
        else:
            assert opt.type == frame[q], "scapy and the frame disagree on an option's type"
            other.append((opt.type, frame[q + 2:q + size]))
        q += size
        opt = opt.payload
    assert q == end, f"scapy read ND options up to {q}, the message ends at {end}"
    v.update(nd_prefixes=tuple(prefixes), nd_opts=tuple(other))
    return v


def scapy_checksum6_ok(frame: bytes) -> bool:
    """Is the L4 checksum of an IPv6 frame valid by scapy's arithmetic over scapy's pseudo-header?  True when
    the packet has no checksummed L4 header (later fragment, other protocol)."""
    s = dissect(frame)
    off, ip = 14, s.payload
    if isinstance(ip, Dot1Q):
        off, ip = 18, ip.payload
    ext, frag, nh, p, l4 = _walk(frame, ip.payload, off + 40, ip.nh)
    if frag == FRAG_LATER or nh not in (6, 17, 58):
        return True
    seg = frame[p:off + 40 + ip.plen]
    if nh == 17 and seg[6:8] == b"\0\0":
        return False                                  # UDP over IPv6 must carry a checksum
    ph = bytes(in6_pseudoheader(nh, l4, len(seg)))
    return scapy_checksum(ph + seg) == 0
