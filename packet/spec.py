"""The packet spec of CONTRACTS §2: ``key=value,key=value`` text <-> Packet, and the JSON form of a Packet.

Owns the text forms of every field (MAC/IP text, protocol names, ``syn|ack`` flags), the defaults of a spec
(TTL 64, random ids/ports/sequence numbers from a caller-supplied ``random.Random``) and the inference of the
packet kind (arp_* keys → ARP, IP keys → IPv4, an explicit other eth_type → a bare L2 frame).

Keys: the CONTRACTS §2 keys plus extensions named after Packet fields (vlan_pcp, ip_id, ip_df, frag, tcp_seq,
tcp_ack, tcp_window, inner_ttl, inner_ip_id, inner_tos).  A payload is only its length (zero bytes); the
carried L4 bytes of an ICMP error (inner_rest) get a fixed default, so format_spec() → parse_spec()
round-trips packets whose payload and inner_rest are those defaults.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable

from packet.addr import int2ip, int2mac, ip2int, mac2int
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
    PROTO_BY_NUMBER,
    PROTO_ICMP,
    PROTO_NAMES,
    PROTO_TCP,
    PROTO_UDP,
    TCP_FLAGS,
    Packet,
)

__all__ = ["SpecError", "parse_spec", "format_spec", "packet_to_dict", "SPEC_KEYS"]

BROADCAST = 0xFFFFFFFFFFFF
_ETH_NAMES = {"ipv4": ETH_TYPE_IPV4, "ip": ETH_TYPE_IPV4, "arp": ETH_TYPE_ARP, "ipv6": ETH_TYPE_IPV6}
_FRAG_NAMES = {"no": FRAG_NONE, "first": FRAG_FIRST, "later": FRAG_LATER}
_FRAG_TEXT = {FRAG_FIRST: "first", FRAG_LATER: "later"}
_BOOLS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
MAX_PAYLOAD = 65000
# The carried L4 bytes after the ports (TCP: sequence number; UDP: length + checksum) or around the id (ICMP:
# type/code/checksum + sequence) of an ICMP error built from a spec.
DEFAULT_INNER_REST = {PROTO_TCP: b"\0\0\0\0", PROTO_UDP: b"\0\0\0\0", PROTO_ICMP: b"\x08\0\0\0\0\x01"}


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


def _proto(key: str, v: str) -> int:
    if v.lower() in PROTO_NAMES:
        return PROTO_NAMES[v.lower()]
    return _int_parser("a protocol (tcp, udp, icmp or 0-255)", 255)(key, v)


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
}
SPEC_KEYS = tuple(_PARSERS)

_L2 = {"eth_src", "eth_dst", "eth_type", "vlan", "vlan_pcp"}
_ARP_KEYS = {"arp_op", "arp_sha", "arp_spa", "arp_tha", "arp_tpa"}
_IP_KEYS = {"ip_src", "ip_dst", "proto", "ttl", "tos", "ip_id", "ip_df", "frag"}
_PORT_KEYS = {"tp_src", "tp_dst"}
_TCP_KEYS = {"tcp_flags", "tcp_seq", "tcp_ack", "tcp_window"}
_ICMP_KEYS = {"icmp_type", "icmp_code", "icmp_id", "icmp_seq"}
_INNER_KEYS = {k for k in _PARSERS if k.startswith("inner_")}
_L4_KEYS = _PORT_KEYS | _TCP_KEYS | _ICMP_KEYS | _INNER_KEYS


def parse_spec(text: str, rng: _random.Random | None = None) -> Packet:
    """``key=value,...`` → Packet.  Missing fields get defaults; random ones are drawn from ``rng``."""
    rng = rng if rng is not None else _random  # the module functions share its hidden instance
    given, raw = _fields(text)
    if not given:
        raise SpecError("empty packet spec")
    return _make(_Given(given, raw), rng)


def parse_match(text: str) -> dict[str, object]:
    """A spec used as a match (``shardnet ctl dump-flows --match``): only the fields given, parsed as in a
    packet spec, plus ``in_port`` (a port id).  No defaults."""
    port = None
    rest = []
    for item in text.split(","):
        key, _, value = item.strip().partition("=")
        if key.strip() == "in_port":
            port = value.strip()
        elif item.strip():
            rest.append(item)
    given, _raw = _fields(",".join(rest))
    if port is not None:
        given["in_port"] = port
    return given


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


# ---- Packet → text / JSON ----

_MAC_FIELDS = frozenset({"eth_src", "eth_dst", "arp_sha", "arp_tha"})
_IP_FIELDS = frozenset({"arp_spa", "arp_tpa", "ip_src", "ip_dst", "inner_ip_src", "inner_ip_dst"})
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
            continue
        if key in _MAC_FIELDS:
            v = int2mac(v)
        elif key in _IP_FIELDS:
            v = int2ip(v)
        elif key == "eth_type":
            inferred = (v == ETH_TYPE_IPV4 and pkt.ip_src is not None) or (v == ETH_TYPE_ARP and pkt.arp_op)
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
