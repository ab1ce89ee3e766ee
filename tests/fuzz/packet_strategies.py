"""Shared test helpers for the packet codec: hypothesis strategies for Packets in build()'s canonical form,
a scapy dissector restricted to the layers shardnet models, and scapy-side checks (fields, checksums).

scapy is the independent oracle: field values are read from scapy's dissection, and checksums are checked by
clearing them in scapy and letting scapy recompute them.
"""

from __future__ import annotations

from contextlib import contextmanager

from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, ICMPerror, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import NoPayload
from scapy.utils import checksum as scapy_checksum

from packet.packet import (
    ETH_TYPE_ARP,
    ETH_TYPE_IPV4,
    ETH_TYPE_IPV6,
    ETH_TYPE_VLAN,
    FRAG_FIRST,
    FRAG_LATER,
    FRAG_NONE,
    ICMP_ERROR_TYPES,
    Packet,
)

macs = st.integers(0, 2**48 - 1)
ips = st.integers(0, 2**32 - 1)
u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
payloads = st.binary(max_size=48)
OTHER_PROTOS = st.integers(0, 255).filter(lambda p: p not in (1, 6, 17))
OTHER_ETH = st.integers(0x0600, 0xFFFF).filter(lambda t: t not in (ETH_TYPE_IPV4, ETH_TYPE_ARP, ETH_TYPE_VLAN,
                                                                   ETH_TYPE_IPV6))
# Non-error ICMP types whose header scapy reads as 8 bytes (it wants more for timestamp/address-mask types).
NON_ERROR_ICMP = st.sampled_from([0, 8, 100, 200, 255])


@st.composite
def l2(draw, eth_type: int) -> dict:
    vlan = draw(st.none() | st.integers(0, 4095))
    return dict(eth_src=draw(macs), eth_dst=draw(macs), eth_type=eth_type, vlan=vlan,
                vlan_pcp=0 if vlan is None else draw(st.integers(0, 7)))


@st.composite
def ip_part(draw, proto: int, frag: int = FRAG_NONE) -> dict:
    return dict(ip_src=draw(ips), ip_dst=draw(ips), proto=proto, ttl=draw(u8), tos=draw(u8), ip_id=draw(u16),
                ip_df=draw(st.booleans()), frag=frag)


@st.composite
def carried(draw) -> dict:
    """inner_* fields of an ICMP error, canonical: payload only when 8 carried L4 bytes are complete."""
    proto = draw(st.sampled_from([6, 17, 1, 47]))
    n = draw(st.integers(0, 8))
    d = dict(inner_ip_src=draw(ips), inner_ip_dst=draw(ips), inner_proto=proto, inner_ttl=draw(u8),
             inner_ip_id=draw(u16), inner_tos=draw(u8))
    if proto in (6, 17) and n >= 4:
        d.update(inner_tp_src=draw(u16), inner_tp_dst=draw(u16), inner_rest=draw(st.binary(min_size=n - 4,
                                                                                              max_size=n - 4)))
    elif proto == 1 and n >= 6:
        d.update(inner_icmp_id=draw(u16), inner_rest=draw(st.binary(min_size=n - 2, max_size=n - 2)))
    else:
        d["inner_rest"] = draw(st.binary(min_size=n, max_size=n))
    d["payload"] = draw(payloads) if n == 8 else b""
    return d


@st.composite
def packets(draw, kinds: tuple[str, ...] = ("tcp", "udp", "icmp", "icmp_error", "arp", "l2", "ip_other",
                                            "frag_first", "frag_later")) -> Packet:
    kind = draw(st.sampled_from(kinds))
    frag = FRAG_NONE
    if kind == "frag_first":
        frag, kind = FRAG_FIRST, draw(st.sampled_from(["tcp", "udp", "icmp"]))
    if kind == "arp":
        return Packet(**draw(l2(ETH_TYPE_ARP)), arp_op=draw(u16), arp_sha=draw(macs), arp_spa=draw(ips),
                      arp_tha=draw(macs), arp_tpa=draw(ips))
    if kind == "l2":
        return Packet(**draw(l2(draw(OTHER_ETH))), payload=draw(payloads))
    eth = draw(l2(ETH_TYPE_IPV4))
    if kind == "frag_later":
        return Packet(**eth, **draw(ip_part(draw(u8), FRAG_LATER)), payload=draw(payloads))
    if kind == "ip_other":
        return Packet(**eth, **draw(ip_part(draw(OTHER_PROTOS))), payload=draw(payloads))
    if kind == "tcp":
        return Packet(**eth, **draw(ip_part(6, frag)), tp_src=draw(u16), tp_dst=draw(u16), tcp_flags=draw(u8),
                      tcp_seq=draw(u32), tcp_ack=draw(u32), tcp_window=draw(u16), payload=draw(payloads))
    if kind == "udp":
        return Packet(**eth, **draw(ip_part(17, frag)), tp_src=draw(u16), tp_dst=draw(u16),
                      payload=draw(payloads))
    icmp = dict(icmp_code=draw(u8), icmp_id=draw(u16), icmp_seq=draw(u16))
    if kind == "icmp":
        return Packet(**eth, **draw(ip_part(1, frag)), icmp_type=draw(NON_ERROR_ICMP), **icmp,
                      payload=draw(payloads))
    return Packet(**eth, **draw(ip_part(1, frag)), icmp_type=draw(st.sampled_from(sorted(ICMP_ERROR_TYPES))),
                  **icmp, **draw(carried()))


# ---- scapy side ----

_KEEP = {Ether: (IP, ARP, Dot1Q, IPv6), Dot1Q: (IP, ARP, Dot1Q, IPv6), IP: (TCP, UDP, ICMP), TCP: (), UDP: (),
         IPerror: (TCPerror, UDPerror, ICMPerror), TCPerror: (), UDPerror: ()}


@contextmanager
def modelled_layers_only():
    """Restrict scapy's dissection to the layers shardnet models (no DNS/HTTP/GRE guessing of payloads)."""
    saved = {cls: cls.__dict__.get("payload_guess") for cls in _KEEP}
    for cls, keep in _KEEP.items():
        cls.payload_guess = [(f, c) for f, c in cls.payload_guess if c in keep]
    try:
        yield
    finally:
        for cls, guess in saved.items():
            if guess is None:
                del cls.payload_guess
            else:
                cls.payload_guess = guess


def dissect(frame: bytes) -> Ether:
    with modelled_layers_only():
        return Ether(frame)


def _mac(text: str) -> int:
    return int(text.replace(":", ""), 16)


def _ip(text: str) -> int:
    a, b, c, d = (int(x) for x in text.split("."))
    return a << 24 | b << 16 | c << 8 | d


def scapy_view(frame: bytes) -> dict:  # noqa: C901 - one field table
    """The Packet fields of ``frame`` as scapy reads them (offsets from scapy's own header fields)."""
    s = dissect(frame)
    v = dict(eth_src=_mac(s.src), eth_dst=_mac(s.dst), eth_type=s.type, vlan=None, vlan_pcp=0)
    off, layer = 14, s.payload
    if isinstance(layer, Dot1Q):
        v.update(vlan=layer.vlan, vlan_pcp=layer.prio, eth_type=layer.type)
        off, layer = 18, layer.payload
    if isinstance(layer, ARP):
        v.update(arp_op=layer.op, arp_sha=_mac(layer.hwsrc), arp_spa=_ip(layer.psrc), arp_tha=_mac(layer.hwdst),
                 arp_tpa=_ip(layer.pdst), payload=b"")
        return v
    if not isinstance(layer, IP):
        v["payload"] = frame[off:]
        return v
    ip = layer
    flags = int(ip.flags)
    frag = FRAG_LATER if ip.frag else FRAG_FIRST if flags & 1 else FRAG_NONE
    v.update(ip_src=_ip(ip.src), ip_dst=_ip(ip.dst), proto=ip.proto, ttl=ip.ttl, tos=ip.tos, ip_id=ip.id,
             ip_df=bool(flags & 2), frag=frag)
    l4, end = off + ip.ihl * 4, off + ip.len
    l4p = ip.payload
    if isinstance(l4p, TCP):
        v.update(tp_src=l4p.sport, tp_dst=l4p.dport, tcp_flags=int(l4p.flags) & 0xFF, tcp_seq=l4p.seq,
                 tcp_ack=l4p.ack, tcp_window=l4p.window, payload=frame[l4 + l4p.dataofs * 4:end])
    elif isinstance(l4p, UDP):
        v.update(tp_src=l4p.sport, tp_dst=l4p.dport,
                 payload=frame[l4 + 8:end if frag else l4 + l4p.len])
    elif isinstance(l4p, ICMP):
        v.update(icmp_type=l4p.type, icmp_code=l4p.code, icmp_id=int.from_bytes(frame[l4 + 4:l4 + 6]),
                 icmp_seq=int.from_bytes(frame[l4 + 6:l4 + 8]), payload=frame[l4 + 8:end])
        inner = l4p.payload
        if isinstance(inner, IPerror):
            q = l4 + 8 + inner.ihl * 4
            qe = min(q + 8, end)
            v.update(inner_ip_src=_ip(inner.src), inner_ip_dst=_ip(inner.dst), inner_proto=inner.proto,
                     inner_ttl=inner.ttl, inner_ip_id=inner.id, inner_tos=inner.tos, inner_rest=frame[q:qe],
                     payload=frame[qe:end])
            il4 = inner.payload
            if isinstance(il4, (TCPerror, UDPerror)) and qe - q >= 4:
                v.update(inner_tp_src=il4.sport, inner_tp_dst=il4.dport, inner_rest=frame[q + 4:qe])
            elif inner.proto in (6, 17) and not inner.frag and qe - q >= 4:   # too short for scapy to dissect
                v.update(inner_tp_src=int.from_bytes(frame[q:q + 2]), inner_tp_dst=int.from_bytes(frame[q + 2:q + 4]),
                         inner_rest=frame[q + 4:qe])
            elif (isinstance(il4, ICMPerror) or inner.proto == 1 and not inner.frag) and qe - q >= 6:
                v.update(inner_icmp_id=int.from_bytes(frame[q + 4:q + 6]),
                         inner_rest=frame[q:q + 4] + frame[q + 6:qe])
    else:
        v["payload"] = frame[l4:end]
    return v


def assert_fields(pkt: Packet, view: dict) -> None:
    wrong = {k: (getattr(pkt, k), want) for k, want in view.items() if getattr(pkt, k) != want}
    assert not wrong, f"field (ours, scapy): {wrong}"


def scapy_recomputed(frame: bytes) -> bytes:
    """``frame`` after scapy recomputed every checksum we are responsible for (IP, TCP, UDP, ICMP, the carried
    IP header of an ICMP error).  Equal to ``frame`` iff all those checksums are valid.

    ICMP is checked with scapy's checksum function over the ICMP bytes rather than by a layer rebuild: when the
    carried UDP header has a short length field scapy moves the tail into a Padding layer, which its ICMP
    post_build then leaves out of the sum.  A bad ICMP checksum is reported by flipping the returned bytes.
    """
    s = dissect(frame)
    layer = s
    while not isinstance(layer, NoPayload):
        if type(layer) in (IP, TCP, UDP, IPerror):
            layer.chksum = None
        if type(layer) is ICMP:
            ip = layer.underlayer
            start = 18 if isinstance(s.payload, Dot1Q) else 14
            icmp = frame[start + ip.ihl * 4:start + ip.len]
            if scapy_checksum(icmp) != 0:
                return bytes(b ^ 0xFF for b in frame)
        layer = layer.payload
    with modelled_layers_only():
        return bytes(s)
