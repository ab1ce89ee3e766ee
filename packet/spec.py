"""The packet spec of CONTRACTS §2: ``key=value,key=value`` text <-> Packet, and the JSON form of a Packet.

Owns the text forms of every field (MAC/IP text, protocol names, ``syn|ack`` flags), the defaults of a spec
(TTL 64, random ids/ports/sequence numbers from a caller-supplied ``random.Random``) and the inference of the
packet kind (arp_* keys → ARP, IP keys → IPv4, an explicit other eth_type → a bare L2 frame).

Keys: the CONTRACTS §2 keys plus extensions named after Packet fields (vlan_pcp, ip_id, ip_df, frag, tcp_seq,
tcp_ack, tcp_window, inner_ttl, inner_ip_id, inner_tos).  A payload is only its length (zero bytes); the
carried L4 bytes of an ICMP error (inner_rest) get a fixed default, so format_spec() → parse_spec()
round-trips packets whose payload and inner_rest are those defaults.

IPv6 (any of these keys makes the packet IPv6; ``eth_type=ipv6`` alone is still a bare L2 frame): ``ipv6_src``,
``ipv6_dst``, ``hop_limit`` (64; 255 for neighbor discovery), ``tclass``, ``flow_label``, ``ipv6_ext``
(extension headers, ``|``-joined: ``hbh``, ``rt``, ``dst`` are empty (padded) hop-by-hop, routing (type 0,
no segments left) and destination options headers, ``TYPE:HEX`` any header by its body after the
next-header byte; ``frag=first|later`` adds a fragment header), ``proto`` (``icmpv6`` when ICMPv6/ND keys
are given, else ``tcp``), ``tp_src``/``tp_dst``/``tcp_*`` as for IPv4, ``icmpv6_type`` (128, echo request),
``icmpv6_code``, ``icmp_id``/``icmp_seq`` of an echo, ``icmpv6_data`` (the word after the checksum: MTU,
pointer, NA flags, RA hop limit/flags/lifetime), ``nd_target``, ``nd_sll``/``nd_tll`` (a MAC or ``none``),
``nd_mtu``, ``nd_reachable``, ``nd_retrans``, ``nd_prefixes`` (``2001:db8::/64`` or
``PREFIX/LEN@FLAGS:VALID:PREFERRED``, ``|``-joined), ``nd_opts`` (``TYPE:HEX``, ``|``-joined), and for the
packet an ICMPv6 error carries ``inner_ipv6_src``/``inner_ipv6_dst``/``inner_hop_limit``/``inner_tclass``/
``inner_flow_label``/``inner_ipv6_ext`` with the shared ``inner_proto``/``inner_tp_src``/``inner_tp_dst``/
``inner_icmp_id``.  Defaults follow neighbor discovery: an NS goes to the target's solicited-node address,
an RS to all routers, an RA to all nodes, a multicast destination to its 33:33 MAC, and the link-layer
option is the sender's MAC (none for an NS/RS from ``::``).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable

from packet.addr import (
    IPV6_ALL_NODES,
    IPV6_ALL_ROUTERS,
    int2ip,
    int2ip6,
    int2mac,
    ip2int,
    ip6_2int,
    ipv6_multicast_mac,
    is_ipv6_multicast,
    mac2int,
    parse_cidr,
    parse_cidr6,
    prefix_mask,
    prefix_mask6,
    solicited_node,
)
from packet.codec import FRAG_LATER_OFFSET
from packet.packet import (
    ARP_REQUEST,
    ETH_TYPE_ARP,
    ETH_TYPE_IPV4,
    ETH_TYPE_IPV6,
    FRAG_FIRST,
    FRAG_LATER,
    FRAG_NONE,
    ICMP_ECHO_REQUEST,
    ICMP_ERROR_TYPES,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    ICMPV6_ERROR_TYPES,
    ICMPV6_PACKET_TOO_BIG,
    IPV6_DEST_OPTS,
    IPV6_FRAGMENT,
    IPV6_HOP_BY_HOP,
    IPV6_ROUTING,
    MAX_IPV6_EXT_HEADERS,
    ND_NA_OVERRIDE,
    ND_NA_SOLICITED,
    ND_NEIGHBOR_ADVERT,
    ND_NEIGHBOR_SOLICIT,
    ND_ROUTER_ADVERT,
    ND_ROUTER_SOLICIT,
    ND_TYPES,
    PROTO_BY_NUMBER,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_NAMES,
    PROTO_TCP,
    PROTO_UDP,
    TCP_FLAGS,
    Packet,
    ext_frag,
)

__all__ = ["SpecError", "parse_spec", "parse_match", "format_spec", "packet_to_dict", "SPEC_KEYS", "AddrMatch",
           "field_matches"]

BROADCAST = 0xFFFFFFFFFFFF
_ETH_NAMES = {"ipv4": ETH_TYPE_IPV4, "ip": ETH_TYPE_IPV4, "arp": ETH_TYPE_ARP, "ipv6": ETH_TYPE_IPV6}
_FRAG_NAMES = {"no": FRAG_NONE, "first": FRAG_FIRST, "later": FRAG_LATER}
_FRAG_TEXT = {FRAG_FIRST: "first", FRAG_LATER: "later"}
_BOOLS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
MAX_PAYLOAD = 65000
# The carried L4 bytes after the ports (TCP: sequence number; UDP: length + checksum) or around the id (ICMP:
# type/code/checksum + sequence) of an ICMP error built from a spec.
DEFAULT_INNER_REST = {PROTO_TCP: b"\0\0\0\0", PROTO_UDP: b"\0\0\0\0", PROTO_ICMP: b"\x08\0\0\0\0\x01",
                      PROTO_ICMPV6: b"\x80\0\0\0\0\x01"}
# The empty (padded) extension headers of the spec's ipv6_ext names: body after the next-header byte.
_PADN6 = b"\x00\x01\x04\x00\x00\x00\x00"            # length 0, PadN of 4 bytes
EXT_NAMES = {"hbh": (IPV6_HOP_BY_HOP, _PADN6), "rt": (IPV6_ROUTING, b"\x00\x00\x00\x00\x00\x00\x00"),
             "dst": (IPV6_DEST_OPTS, _PADN6)}
_EXT_BY_VALUE = {v: k for k, v in EXT_NAMES.items()}
# Prefix information defaults (RFC 4861 §6.2.1): on-link + autonomous, 30 days valid, 7 days preferred.
ND_PREFIX_DEFAULTS = (0xC0, 2592000, 604800)


class SpecError(ValueError):
    """A bad packet spec; the message names the key and the value."""


def _int_parser(what: str, hi: int, lo: int = 0) -> Callable[[str, str], int]:
    def parse(key: str, v: str) -> int:
        try:
            n = int(v, 0)
        except ValueError:
            n = -1
        if not lo <= n <= hi:
            raise SpecError(f"{key}: not {what}: {v!r}")
        return n
    return parse


def _mac(key: str, v: str) -> int:
    try:
        return mac2int(v)
    except ValueError:
        raise SpecError(f"{key}: not a MAC address: {v!r}") from None


def _ip(key: str, v: str) -> int:
    try:
        return ip2int(v)
    except ValueError:
        raise SpecError(f"{key}: not an IPv4 address: {v!r}") from None


def _ip6(key: str, v: str) -> int:
    try:
        return ip6_2int(v)
    except ValueError:
        raise SpecError(f"{key}: not an IPv6 address: {v!r}") from None


def _mac_or_none(key: str, v: str) -> int | None:
    return None if v.lower() == "none" else _mac(key, v)


def _hex_items(key: str, v: str, what: str) -> list[tuple[int, bytes]]:
    out = []
    for item in v.split("|"):
        t, sep, h = item.partition(":")
        try:
            if not sep:
                raise ValueError
            n = int(t, 0)
            data = bytes.fromhex(h)
            if not 0 <= n <= 255:
                raise ValueError
        except ValueError:
            raise SpecError(f"{key}: not {what}: {item!r}") from None
        out.append((n, data))
    return out


def _ext(key: str, v: str) -> tuple:
    items = []
    for item in v.split("|"):
        if item.lower() in EXT_NAMES:
            items.append(EXT_NAMES[item.lower()])
        else:
            items.extend(_hex_items(key, item, "an extension header (hbh, rt, dst or TYPE:HEX)"))
    if len(items) > MAX_IPV6_EXT_HEADERS:
        raise SpecError(f"{key}: more than {MAX_IPV6_EXT_HEADERS} extension headers")
    return tuple(items)


def _nd_opts(key: str, v: str) -> tuple:
    opts = tuple(_hex_items(key, v, "an ND option (TYPE:HEX, the bytes after type and length)"))
    for t, data in opts:
        if (len(data) + 2) & 7:
            raise SpecError(f"{key}: option {t}: {len(data)} bytes, an option is 8n - 2 after type and length")
    return opts


def _prefixes(key: str, v: str) -> tuple:
    out = []
    for item in v.split("|"):
        cidr, sep, rest = item.partition("@")
        try:
            addr, slash, plen = cidr.partition("/")
            if not slash or not plen.isdigit() or int(plen) > 255:
                raise ValueError
            net, length = ip6_2int(addr), int(plen)   # as on the wire: host bits and any length byte kept
            flags, valid, pref = ND_PREFIX_DEFAULTS
            if sep:
                f, v2, p2 = rest.split(":")
                flags, valid, pref = int(f, 0), int(v2, 0), int(p2, 0)
                if not (0 <= flags <= 255 and 0 <= valid <= 0xFFFFFFFF and 0 <= pref <= 0xFFFFFFFF):
                    raise ValueError
        except ValueError:
            raise SpecError(f"{key}: not a prefix (PREFIX/LEN or PREFIX/LEN@FLAGS:VALID:PREFERRED): {item!r}") \
                from None
        out.append((net, length, flags, valid, pref))
    return tuple(out)


def _proto(key: str, v: str) -> int:
    if v.lower() in PROTO_NAMES:
        return PROTO_NAMES[v.lower()]
    return _int_parser("a protocol (tcp, udp, icmp, icmpv6 or 0-255)", 255)(key, v)


def _eth_type(key: str, v: str) -> int:
    if v.lower() in _ETH_NAMES:
        return _ETH_NAMES[v.lower()]
    return _int_parser("an ethertype", 0xFFFF, 0x600)(key, v)


def _flags(key: str, v: str) -> int:
    if v.lower() == "none":
        return 0
    if v[:1].isdigit():
        return _int_parser("TCP flags", 0xFF)(key, v)
    bits = 0
    for name in v.lower().split("|"):
        if name not in TCP_FLAGS:
            raise SpecError(f"{key}: not a TCP flag: {name!r} (one of {'|'.join(TCP_FLAGS)})")
        bits |= TCP_FLAGS[name]
    return bits


def _choice(table: dict, what: str) -> Callable[[str, str], object]:
    def parse(key: str, v: str):
        try:
            return table[v.lower()]
        except KeyError:
            raise SpecError(f"{key}: not {what}: {v!r}") from None
    return parse


_u8, _u16, _u32 = _int_parser("a number 0-255", 255), _int_parser("a 16-bit number", 0xFFFF), \
    _int_parser("a 32-bit number", 0xFFFFFFFF)
_port = _int_parser("a port number", 0xFFFF)
_PARSERS: dict[str, Callable[[str, str], object]] = {
    "eth_src": _mac, "eth_dst": _mac, "eth_type": _eth_type, "vlan": _int_parser("a VLAN id (0-4095)", 4095),
    "vlan_pcp": _int_parser("a priority (0-7)", 7),
    "arp_op": _int_parser("an ARP opcode", 0xFFFF), "arp_sha": _mac, "arp_spa": _ip, "arp_tha": _mac,
    "arp_tpa": _ip,
    "ip_src": _ip, "ip_dst": _ip, "proto": _proto, "ttl": _int_parser("a TTL (0-255)", 255), "tos": _u8,
    "ip_id": _u16, "ip_df": _choice(_BOOLS, "a boolean"), "frag": _choice(_FRAG_NAMES, "no|first|later"),
    "tp_src": _port, "tp_dst": _port, "tcp_flags": _flags, "tcp_seq": _u32, "tcp_ack": _u32,
    "tcp_window": _u16,
    "icmp_type": _u8, "icmp_code": _u8, "icmp_id": _u16, "icmp_seq": _u16,
    "payload_len": _int_parser(f"a length (0-{MAX_PAYLOAD})", MAX_PAYLOAD),
    "inner_ip_src": _ip, "inner_ip_dst": _ip, "inner_proto": _proto, "inner_tp_src": _port,
    "inner_tp_dst": _port, "inner_icmp_id": _u16, "inner_ttl": _int_parser("a TTL (0-255)", 255),
    "inner_ip_id": _u16, "inner_tos": _u8,
    # IPv6
    "ipv6_src": _ip6, "ipv6_dst": _ip6, "hop_limit": _int_parser("a hop limit (0-255)", 255), "tclass": _u8,
    "flow_label": _int_parser("a flow label (20 bits)", 0xFFFFF), "ipv6_ext": _ext,
    "icmpv6_type": _u8, "icmpv6_code": _u8, "icmpv6_data": _u32,
    "nd_target": _ip6, "nd_sll": _mac_or_none, "nd_tll": _mac_or_none, "nd_mtu": _u32, "nd_reachable": _u32,
    "nd_retrans": _u32, "nd_prefixes": _prefixes, "nd_opts": _nd_opts,
    "inner_ipv6_src": _ip6, "inner_ipv6_dst": _ip6, "inner_hop_limit": _int_parser("a hop limit (0-255)", 255),
    "inner_tclass": _u8, "inner_flow_label": _int_parser("a flow label (20 bits)", 0xFFFFF),
    "inner_ipv6_ext": _ext,
}
SPEC_KEYS = tuple(_PARSERS)

_L2 = {"eth_src", "eth_dst", "eth_type", "vlan", "vlan_pcp"}
_ARP_KEYS = {"arp_op", "arp_sha", "arp_spa", "arp_tha", "arp_tpa"}
_IP_KEYS = {"ip_src", "ip_dst", "proto", "ttl", "tos", "ip_id", "ip_df", "frag"}
_PORT_KEYS = {"tp_src", "tp_dst"}
_TCP_KEYS = {"tcp_flags", "tcp_seq", "tcp_ack", "tcp_window"}
_ICMP_KEYS = {"icmp_type", "icmp_code", "icmp_id", "icmp_seq"}
_INNER6_KEYS = {"inner_ipv6_src", "inner_ipv6_dst", "inner_hop_limit", "inner_tclass", "inner_flow_label",
                "inner_ipv6_ext"}
_INNER_SHARED = {"inner_proto", "inner_tp_src", "inner_tp_dst", "inner_icmp_id"}
_INNER_KEYS = {k for k in _PARSERS if k.startswith("inner_")} - _INNER6_KEYS
_L4_KEYS = _PORT_KEYS | _TCP_KEYS | _ICMP_KEYS | _INNER_KEYS
_IP6_KEYS = {"ipv6_src", "ipv6_dst", "hop_limit", "tclass", "flow_label", "ipv6_ext"}
_ICMP6_KEYS = {"icmpv6_type", "icmpv6_code", "icmpv6_data"}
_ND_KEYS = {"nd_target", "nd_sll", "nd_tll", "nd_mtu", "nd_reachable", "nd_retrans", "nd_prefixes", "nd_opts"}
_V6_ONLY_KEYS = _IP6_KEYS | _ICMP6_KEYS | _ND_KEYS | _INNER6_KEYS
_V4_ONLY_KEYS = {"ip_src", "ip_dst", "ttl", "tos", "ip_id", "ip_df", "icmp_type", "icmp_code", "inner_ip_src",
                 "inner_ip_dst", "inner_ttl", "inner_ip_id", "inner_tos"}
# The ND keys each message type takes (besides icmpv6_data and nd_opts).
_ND_TYPE_KEYS = {ND_ROUTER_SOLICIT: {"nd_sll"},
                 ND_ROUTER_ADVERT: {"nd_sll", "nd_mtu", "nd_reachable", "nd_retrans", "nd_prefixes"},
                 ND_NEIGHBOR_SOLICIT: {"nd_target", "nd_sll"}, ND_NEIGHBOR_ADVERT: {"nd_target", "nd_tll"}}


def parse_spec(text: str, rng: _random.Random | None = None) -> Packet:
    """``key=value,...`` → Packet.  Missing fields get defaults; random ones are drawn from ``rng``."""
    rng = rng if rng is not None else _random  # the module functions share its hidden instance
    given, raw = _fields(text)
    if not given:
        raise SpecError("empty packet spec")
    return _make(_Given(given, raw), rng)


_ADDR_KEYS = {"arp_spa": 32, "arp_tpa": 32, "ip_src": 32, "ip_dst": 32, "inner_ip_src": 32, "inner_ip_dst": 32,
              "ipv6_src": 128, "ipv6_dst": 128, "nd_target": 128, "inner_ipv6_src": 128, "inner_ipv6_dst": 128}


class AddrMatch:
    """An address field of a match given as a CIDR and/or negated (``ip_src=10.0.0.0/8``,
    ``ipv6_dst=!2001:db8::/32``): ``matches(value)``; an absent field (None) never matches, negated or not."""

    __slots__ = ("net", "length", "negate", "bits", "mask")

    def __init__(self, net: int, length: int, negate: bool, bits: int):
        self.net, self.length, self.negate, self.bits = net, length, negate, bits
        self.mask = prefix_mask(length) if bits == 32 else prefix_mask6(length)

    def matches(self, value: int | None) -> bool:
        if value is None:
            return False
        return ((value & self.mask) == self.net) != self.negate

    def __repr__(self) -> str:
        text = int2ip(self.net) if self.bits == 32 else int2ip6(self.net)
        return f"AddrMatch({'!' if self.negate else ''}{text}/{self.length})"


def field_matches(want: object, actual: object) -> bool:
    """Does a field's value satisfy a parse_match value (an exact value or an AddrMatch)?"""
    if type(want) is AddrMatch:
        return want.matches(actual)
    return actual == want


def parse_match(text: str) -> dict[str, object]:
    """A spec used as a match (``shardnet ctl dump-flows --match``): only the fields given, parsed as in a
    packet spec, plus ``in_port`` (a port id).  No defaults.  An address key (IPv4 or IPv6) also takes a CIDR
    and a leading ``!``; its value is then an AddrMatch (test with field_matches), else the address int."""
    port = None
    rest = []
    addrs: dict[str, object] = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if key == "in_port":
            port = value
        elif key in _ADDR_KEYS and (value.startswith("!") or "/" in value):
            if key in addrs:
                raise SpecError(f"{key}: given twice")
            addrs[key] = _addr_match(key, value)
        elif item.strip():
            rest.append(item)
    given, _raw = _fields(",".join(rest))
    for key, v in addrs.items():
        if key in given:
            raise SpecError(f"{key}: given twice")
        given[key] = v
    if port is not None:
        given["in_port"] = port
    return given


def _addr_match(key: str, value: str) -> AddrMatch:
    negate = value.startswith("!")
    text = value[1:].strip() if negate else value
    bits = _ADDR_KEYS[key]
    try:
        net, length = parse_cidr(text) if bits == 32 else parse_cidr6(text)
    except ValueError:
        what = "an IPv4 address or CIDR" if bits == 32 else "an IPv6 address or CIDR"
        raise SpecError(f"{key}: not {what}: {value!r}") from None
    return AddrMatch(net, length, negate, bits)


def _fields(text: str) -> tuple[dict[str, object], dict[str, str]]:
    given: dict[str, object] = {}
    raw: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise SpecError(f"{item!r}: expected key=value")
        if key not in _PARSERS:
            raise SpecError(f"{key}: unknown key (known: {', '.join(SPEC_KEYS)})")
        if key in given:
            raise SpecError(f"{key}: given twice")
        given[key] = _PARSERS[key](key, value)
        raw[key] = value
    return given, raw


class _Given(dict):
    """The parsed values of a spec, remembering the text of each for error messages."""

    def __init__(self, parsed: dict[str, object], raw: dict[str, str]):
        super().__init__(parsed)
        self.raw = raw

    def bad(self, key: str, why: str) -> SpecError:
        return SpecError(f"{key}: does not apply to {why}: {self.raw[key]!r}")


def _reject(given: _Given, allowed: set[str], why: str) -> None:
    for key in given:
        if key not in allowed:
            raise given.bad(key, why)


def _local_mac(rng: _random.Random) -> int:
    return 0x02 << 40 | rng.getrandbits(40)


def _make(g: _Given, rng: _random.Random) -> Packet:
    if "eth_type" in g:
        et = g["eth_type"]
    elif g.keys() & _ARP_KEYS:
        et = ETH_TYPE_ARP
    elif g.keys() & _V6_ONLY_KEYS:
        et = ETH_TYPE_IPV6
    else:
        et = ETH_TYPE_IPV4
    eth_src = g["eth_src"] if "eth_src" in g else _local_mac(rng)
    base = {"eth_src": eth_src, "eth_type": et, "vlan": g.get("vlan"), "vlan_pcp": g.get("vlan_pcp", 0)}
    if et == ETH_TYPE_ARP:
        _reject(g, _L2 | _ARP_KEYS, "an ARP packet")
        op = g.get("arp_op", ARP_REQUEST)
        if "arp_tpa" not in g:
            raise SpecError("arp_tpa: missing (the address asked for / answered)")
        tha = g.get("arp_tha", 0)
        dst = g.get("eth_dst", BROADCAST if op == ARP_REQUEST or not tha else tha)
        return Packet(eth_dst=dst, arp_op=op, arp_sha=g.get("arp_sha", eth_src), arp_spa=g.get("arp_spa", 0),
                      arp_tha=tha, arp_tpa=g["arp_tpa"], **base)
    if et == ETH_TYPE_IPV6 and g.keys() & _V6_ONLY_KEYS:
        return _make6(g, rng, base)
    dst = g["eth_dst"] if "eth_dst" in g else _local_mac(rng)
    payload = bytes(g.get("payload_len", 0))
    if et != ETH_TYPE_IPV4:
        _reject(g, _L2 | {"payload_len"}, f"ethertype {et:#06x}")
        return Packet(eth_dst=dst, payload=payload, **base)
    for key in ("ip_src", "ip_dst"):
        if key not in g:
            raise SpecError(f"{key}: missing (an IPv4 packet needs both addresses; eth_type=N for bare L2)")
    if "proto" in g:
        proto = g["proto"]
    elif g.keys() & (_ICMP_KEYS | _INNER_KEYS):
        proto = PROTO_ICMP
    else:
        proto = PROTO_TCP
    frag = g.get("frag", FRAG_NONE)
    ip = dict(ip_src=g["ip_src"], ip_dst=g["ip_dst"], proto=proto, ttl=g.get("ttl", 64), tos=g.get("tos", 0),
              ip_id=g["ip_id"] if "ip_id" in g else rng.getrandbits(16), ip_df=g.get("ip_df", False),
              frag=frag)
    common = _L2 | _IP_KEYS | {"payload_len"}
    name = PROTO_BY_NUMBER.get(proto, str(proto))
    if frag == FRAG_LATER:
        _reject(g, common, "a later fragment (it has no L4 header)")
        return Packet(eth_dst=dst, payload=payload, **base, **ip)
    l4: dict[str, object] = {}
    if proto in (PROTO_TCP, PROTO_UDP):
        _reject(g, common | _PORT_KEYS | (_TCP_KEYS if proto == PROTO_TCP else set()), f"proto {name}")
        l4["tp_src"] = g["tp_src"] if "tp_src" in g else rng.randint(32768, 60999)
        l4["tp_dst"] = g["tp_dst"] if "tp_dst" in g else rng.randint(1024, 65535)
        if proto == PROTO_TCP:
            l4.update(tcp_flags=g.get("tcp_flags", TCP_FLAGS["syn"]), tcp_ack=g.get("tcp_ack", 0),
                      tcp_seq=g["tcp_seq"] if "tcp_seq" in g else rng.getrandbits(32),
                      tcp_window=g.get("tcp_window", 65535))
    elif proto == PROTO_ICMP:
        itype = g.get("icmp_type", ICMP_ECHO_REQUEST)
        error = itype in ICMP_ERROR_TYPES
        _reject(g, common | _ICMP_KEYS | (_INNER_KEYS if error else set()),
                f"ICMP type {itype}" if _INNER_KEYS & g.keys() else f"proto {name}")
        l4.update(icmp_type=itype, icmp_code=g.get("icmp_code", 0),
                  icmp_id=g["icmp_id"] if "icmp_id" in g else 0 if error else rng.getrandbits(16),
                  icmp_seq=g.get("icmp_seq", 0 if error else 1))
        if error:
            l4.update(_inner(g, ip, rng))
    else:
        _reject(g, common, f"proto {name}")
    return Packet(eth_dst=dst, payload=payload, **base, **ip, **l4)


def _inner(g: _Given, ip: dict, rng: _random.Random) -> dict:
    """Defaults of the carried header: the reported packet went from our destination to our source."""
    if "inner_proto" in g:
        proto = g["inner_proto"]
    else:
        proto = PROTO_ICMP if "inner_icmp_id" in g else PROTO_TCP
    inner = dict(inner_ip_src=g.get("inner_ip_src", ip["ip_dst"]),
                 inner_ip_dst=g.get("inner_ip_dst", ip["ip_src"]), inner_proto=proto,
                 inner_ttl=g.get("inner_ttl", 64), inner_tos=g.get("inner_tos", 0),
                 inner_ip_id=g["inner_ip_id"] if "inner_ip_id" in g else rng.getrandbits(16),
                 inner_rest=DEFAULT_INNER_REST.get(proto, b""))
    name = PROTO_BY_NUMBER.get(proto, str(proto))
    if proto in (PROTO_TCP, PROTO_UDP):
        if "inner_icmp_id" in g:
            raise g.bad("inner_icmp_id", f"inner_proto {name}")
        inner["inner_tp_src"] = g["inner_tp_src"] if "inner_tp_src" in g else rng.randint(32768, 60999)
        inner["inner_tp_dst"] = g["inner_tp_dst"] if "inner_tp_dst" in g else rng.randint(1024, 65535)
    else:
        for key in ("inner_tp_src", "inner_tp_dst"):
            if key in g:
                raise g.bad(key, f"inner_proto {name}")
        if proto == PROTO_ICMP:
            inner["inner_icmp_id"] = g["inner_icmp_id"] if "inner_icmp_id" in g else rng.getrandbits(16)
        elif "inner_icmp_id" in g:
            raise g.bad("inner_icmp_id", f"inner_proto {name}")
    return inner


def _make6(g: _Given, rng: _random.Random, base: dict) -> Packet:  # noqa: C901 - one table of defaults
    eth_src = base["eth_src"]
    if "proto" in g:
        proto = g["proto"]
    elif g.keys() & (_ICMP6_KEYS | _ND_KEYS | _INNER6_KEYS | _INNER_SHARED | {"icmp_id", "icmp_seq"}):
        proto = PROTO_ICMPV6
    else:
        proto = PROTO_TCP
    itype = None
    if proto == PROTO_ICMPV6:
        if "icmpv6_type" in g:
            itype = g["icmpv6_type"]
        elif "nd_target" in g:
            itype = ND_NEIGHBOR_SOLICIT
        elif g.keys() & (_INNER6_KEYS | _INNER_SHARED):
            itype = 1
        else:
            itype = ICMPV6_ECHO_REQUEST
    nd = itype in ND_TYPES
    if "ipv6_src" not in g:
        raise SpecError("ipv6_src: missing (an IPv6 packet needs a source; :: for the unspecified address)")
    src = g["ipv6_src"]
    if "ipv6_dst" in g:
        dst6 = g["ipv6_dst"]
    elif itype == ND_NEIGHBOR_SOLICIT and "nd_target" in g:
        dst6 = solicited_node(g["nd_target"])
    elif itype == ND_ROUTER_SOLICIT:
        dst6 = IPV6_ALL_ROUTERS
    elif itype in (ND_ROUTER_ADVERT, ND_NEIGHBOR_ADVERT):
        dst6 = IPV6_ALL_NODES
    else:
        raise SpecError("ipv6_dst: missing (an IPv6 packet needs a destination)")
    multicast = is_ipv6_multicast(dst6)
    if "eth_dst" in g:
        eth_dst = g["eth_dst"]
    else:
        eth_dst = ipv6_multicast_mac(dst6) if multicast else _local_mac(rng)
    for key in g.keys() & _V4_ONLY_KEYS:
        raise g.bad(key, "an IPv6 packet")
    ext = list(g.get("ipv6_ext", ()))
    frag = g.get("frag", FRAG_NONE)
    if any(t == IPV6_FRAGMENT for t, _b in ext):
        if "frag" in g and ext_frag(ext) != frag:
            raise g.bad("frag", "the fragment header given in ipv6_ext")
        frag = ext_frag(ext)
    elif frag != FRAG_NONE:
        offm = FRAG_LATER_OFFSET << 3 if frag == FRAG_LATER else 1
        ext.append((IPV6_FRAGMENT, b"\0" + offm.to_bytes(2, "big") + rng.getrandbits(32).to_bytes(4, "big")))
    if len(ext) > MAX_IPV6_EXT_HEADERS:
        raise SpecError(f"ipv6_ext: more than {MAX_IPV6_EXT_HEADERS} extension headers")
    ip = dict(ipv6_src=src, ipv6_dst=dst6, proto=proto, hop_limit=g.get("hop_limit", 255 if nd else 64),
              tclass=g.get("tclass", 0), flow_label=g.get("flow_label", 0), ipv6_ext=tuple(ext), frag=frag)
    common = _L2 | _IP6_KEYS | {"proto", "frag", "payload_len"}
    payload = bytes(g.get("payload_len", 0))
    name = PROTO_BY_NUMBER.get(proto, str(proto))
    if frag == FRAG_LATER:
        _reject(g, common, "a later fragment (it has no L4 header)")
        return Packet(eth_dst=eth_dst, payload=payload, **base, **ip)
    l4: dict[str, object] = {}
    if proto in (PROTO_TCP, PROTO_UDP):
        _reject(g, common | _PORT_KEYS | (_TCP_KEYS if proto == PROTO_TCP else set()), f"proto {name}")
        l4["tp_src"] = g["tp_src"] if "tp_src" in g else rng.randint(32768, 60999)
        l4["tp_dst"] = g["tp_dst"] if "tp_dst" in g else rng.randint(1024, 65535)
        if proto == PROTO_TCP:
            l4.update(tcp_flags=g.get("tcp_flags", TCP_FLAGS["syn"]), tcp_ack=g.get("tcp_ack", 0),
                      tcp_seq=g["tcp_seq"] if "tcp_seq" in g else rng.getrandbits(32),
                      tcp_window=g.get("tcp_window", 65535))
    elif proto == PROTO_ICMPV6:
        why = f"ICMPv6 type {itype}"
        l4.update(icmpv6_type=itype, icmpv6_code=g.get("icmpv6_code", 0))
        if itype in (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY):
            _reject(g, common | {"icmpv6_type", "icmpv6_code", "icmp_id", "icmp_seq"}, why)
            l4.update(icmp_id=g["icmp_id"] if "icmp_id" in g else rng.getrandbits(16),
                      icmp_seq=g.get("icmp_seq", 1))
        elif itype in ICMPV6_ERROR_TYPES:
            _reject(g, common | _ICMP6_KEYS | _INNER6_KEYS | _INNER_SHARED, why)
            l4["icmpv6_data"] = g.get("icmpv6_data", 1280 if itype == ICMPV6_PACKET_TOO_BIG else 0)
            l4.update(_inner6(g, ip, rng))
        elif nd:
            _reject(g, (common - {"payload_len"}) | _ICMP6_KEYS | {"nd_opts"} | _ND_TYPE_KEYS[itype], why)
            l4.update(_nd(g, itype, src, eth_src, multicast))
        else:
            _reject(g, common | _ICMP6_KEYS, why)
            l4["icmpv6_data"] = g.get("icmpv6_data", 0)
    else:
        _reject(g, common, f"proto {name}")
    return Packet(eth_dst=eth_dst, payload=payload, **base, **ip, **l4)


def _nd(g: _Given, itype: int, src: int, eth_src: int, multicast: bool) -> dict:
    """Defaults of a neighbor discovery message: the sender's MAC in the link-layer option (none from ::)."""
    own_ll = None if src == 0 else eth_src
    out: dict[str, object] = {"nd_opts": g.get("nd_opts", ())}
    if itype in (ND_NEIGHBOR_SOLICIT, ND_NEIGHBOR_ADVERT):
        if "nd_target" not in g:
            raise SpecError("nd_target: missing (the address solicited / advertised)")
        out["nd_target"] = g["nd_target"]
    if itype == ND_NEIGHBOR_ADVERT:
        flags = ND_NA_OVERRIDE if multicast else ND_NA_SOLICITED | ND_NA_OVERRIDE
        out.update(icmpv6_data=g.get("icmpv6_data", flags), nd_tll=g["nd_tll"] if "nd_tll" in g else eth_src)
        return out
    out["nd_sll"] = g["nd_sll"] if "nd_sll" in g else own_ll
    if itype == ND_ROUTER_ADVERT:
        out.update(icmpv6_data=g.get("icmpv6_data", 64 << 24 | 1800), nd_reachable=g.get("nd_reachable", 0),
                   nd_retrans=g.get("nd_retrans", 0), nd_mtu=g.get("nd_mtu"), nd_prefixes=g.get("nd_prefixes", ()))
    else:
        out["icmpv6_data"] = g.get("icmpv6_data", 0)
    return out


def _inner6(g: _Given, ip: dict, rng: _random.Random) -> dict:
    """Defaults of the packet an ICMPv6 error carries: it went from our destination to our source."""
    if "inner_proto" in g:
        proto = g["inner_proto"]
    else:
        proto = PROTO_ICMPV6 if "inner_icmp_id" in g else PROTO_TCP
    ext = g.get("inner_ipv6_ext", ())
    later = ext_frag(ext) == FRAG_LATER
    inner = dict(inner_ipv6_src=g.get("inner_ipv6_src", ip["ipv6_dst"]),
                 inner_ipv6_dst=g.get("inner_ipv6_dst", ip["ipv6_src"]), inner_proto=proto,
                 inner_hop_limit=g.get("inner_hop_limit", 64), inner_tclass=g.get("inner_tclass", 0),
                 inner_flow_label=g.get("inner_flow_label", 0), inner_ipv6_ext=ext,
                 inner_rest=b"" if later else DEFAULT_INNER_REST.get(proto, b""))
    name = PROTO_BY_NUMBER.get(proto, str(proto))
    if proto in (PROTO_TCP, PROTO_UDP) and not later:
        if "inner_icmp_id" in g:
            raise g.bad("inner_icmp_id", f"inner_proto {name}")
        inner["inner_tp_src"] = g["inner_tp_src"] if "inner_tp_src" in g else rng.randint(32768, 60999)
        inner["inner_tp_dst"] = g["inner_tp_dst"] if "inner_tp_dst" in g else rng.randint(1024, 65535)
    else:
        for key in ("inner_tp_src", "inner_tp_dst"):
            if key in g:
                raise g.bad(key, "a carried later fragment" if later else f"inner_proto {name}")
        if proto == PROTO_ICMPV6 and not later:
            inner["inner_icmp_id"] = g["inner_icmp_id"] if "inner_icmp_id" in g else rng.getrandbits(16)
        elif "inner_icmp_id" in g:
            raise g.bad("inner_icmp_id", "a carried later fragment" if later else f"inner_proto {name}")
    return inner


# ---- Packet → text / JSON ----

_MAC_FIELDS = frozenset({"eth_src", "eth_dst", "arp_sha", "arp_tha", "nd_sll", "nd_tll"})
_IP_FIELDS = frozenset({"arp_spa", "arp_tpa", "ip_src", "ip_dst", "inner_ip_src", "inner_ip_dst"})
_IP6_FIELDS = frozenset({"ipv6_src", "ipv6_dst", "nd_target", "inner_ipv6_src", "inner_ipv6_dst"})
_ND_LL = {"nd_sll": (ND_ROUTER_SOLICIT, ND_ROUTER_ADVERT, ND_NEIGHBOR_SOLICIT), "nd_tll": (ND_NEIGHBOR_ADVERT,)}
_TUPLE_FIELDS = frozenset({"ipv6_ext", "inner_ipv6_ext", "nd_prefixes", "nd_opts"})


def ext_text(ext: tuple) -> str:
    """Extension headers → the spec's ipv6_ext text (names for the empty ones, else TYPE:HEX)."""
    return "|".join(_EXT_BY_VALUE.get((t, bytes(b))) or f"{t}:{bytes(b).hex()}" for t, b in ext)


def prefixes_text(prefixes: tuple) -> str:
    out = []
    for net, length, flags, valid, pref in prefixes:
        text = f"{int2ip6(net)}/{length}"
        if (flags, valid, pref) != ND_PREFIX_DEFAULTS:
            text += f"@{flags:#04x}:{valid}:{pref}"
        out.append(text)
    return "|".join(out)


def _tuple_text(key: str, v: tuple) -> str:
    if key == "nd_prefixes":
        return prefixes_text(v)
    if key == "nd_opts":
        return "|".join(f"{t}:{bytes(d).hex()}" for t, d in v)
    return ext_text(v)
_ORDER = tuple(k for k in SPEC_KEYS if k != "payload_len") + ("payload_len",)


def flags_text(bits: int) -> str:
    """TCP flag bits → ``syn|ack`` (``none`` for 0)."""
    return "|".join(n for n, b in TCP_FLAGS.items() if bits & b) or "none"


def _items(pkt: Packet, explicit_eth_type: bool) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for key in _ORDER:
        if key == "payload_len":
            if pkt.payload:
                out.append((key, len(pkt.payload)))
            continue
        v = getattr(pkt, key)
        if v is None:
            if key in _ND_LL and pkt.icmpv6_type in _ND_LL[key] and pkt.proto == PROTO_ICMPV6:
                out.append((key, "none"))         # the spec's default would add the option
            continue
        if key in _MAC_FIELDS:
            v = int2mac(v)
        elif key in _IP_FIELDS:
            v = int2ip(v)
        elif key in _IP6_FIELDS:
            v = int2ip6(v)
        elif key in _TUPLE_FIELDS:
            if not v:
                continue
            v = _tuple_text(key, v)
        elif key == "eth_type":
            inferred = (v == ETH_TYPE_IPV4 and pkt.ip_src is not None) or (v == ETH_TYPE_ARP and pkt.arp_op) \
                or (v == ETH_TYPE_IPV6 and pkt.ipv6_src is not None)
            if inferred and not explicit_eth_type:
                continue
            v = f"{v:#06x}"
        elif key == "vlan_pcp":
            if pkt.vlan is None or not v:
                continue
        elif key == "ip_df":
            if pkt.ip_src is None or not v:
                continue
        elif key == "frag":
            if not v:
                continue
            v = _FRAG_TEXT[v]
        elif key in ("proto", "inner_proto"):
            v = PROTO_BY_NUMBER.get(v, v)
        elif key == "tcp_flags":
            v = flags_text(v)
        out.append((key, v))
    return out


def format_spec(pkt: Packet) -> str:
    """Packet → spec text (the inverse of parse_spec for the fields a spec can carry)."""
    return ",".join(f"{k}={'1' if v is True else v}" for k, v in _items(pkt, explicit_eth_type=False))


def packet_to_dict(pkt: Packet) -> dict[str, object]:
    """Packet → JSON-ready dict with the spec keys; only fields that are set; payload as payload_len."""
    return dict(_items(pkt, explicit_eth_type=True))
