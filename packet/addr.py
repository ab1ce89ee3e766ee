"""Address helpers shared by every layer: IPv4 and MAC addresses are plain ints inside shardnet.

Ints hash and compare fast and make longest-prefix match a mask-and-compare; text forms exist only at the
edges (files, packet specs, JSON output).
"""

from __future__ import annotations

import socket
import struct

BROADCAST_MAC = 0xFFFFFFFFFFFF
_IP_STRUCT = struct.Struct("!I")


def ip2int(text: str) -> int:
    """Dotted quad → int. Raises ValueError with the offending text."""
    try:
        return _IP_STRUCT.unpack(socket.inet_aton(text))[0] if text.count(".") == 3 else _bad_ip(text)
    except OSError:
        return _bad_ip(text)


def _bad_ip(text: str) -> int:
    raise ValueError(f"not an IPv4 address: {text!r}")


def int2ip(value: int) -> str:
    return socket.inet_ntoa(_IP_STRUCT.pack(value))


def ip_text(value: int) -> str:
    """An IPv4 or an IPv6 address as text, for records that hold either (flow-state keys, NAT bindings, table
    entries): below 2**32 it is IPv4 — an IPv6 address there would be ``::a.b.c.d``, which shardnet never routes."""
    return socket.inet_ntoa(_IP_STRUCT.pack(value)) if value <= 0xFFFFFFFF else int2ip6(value)


def ip_port_text(ip: int, port: int) -> str:
    """``ip:port``, with an IPv6 address in brackets (``[2001:db8::1]:80``)."""
    return f"{int2ip(ip)}:{port}" if ip <= 0xFFFFFFFF else f"[{int2ip6(ip)}]:{port}"


def mac2int(text: str) -> int:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) in (1, 2) for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    try:
        return int("".join(p.zfill(2) for p in parts), 16)
    except ValueError:
        raise ValueError(f"not a MAC address: {text!r}") from None


def int2mac(value: int) -> str:
    h = f"{value:012x}"
    return ":".join(h[i : i + 2] for i in range(0, 12, 2))


def prefix_mask(length: int) -> int:
    return (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0


def parse_cidr(text: str) -> tuple[int, int]:
    """'10.0.0.0/24' or '10.0.0.1' → (network int, prefix length). Host bits are cleared."""
    if "/" in text:
        addr, _, plen = text.partition("/")
        if not plen.isdigit() or not 0 <= int(plen) <= 32:
            raise ValueError(f"not a CIDR prefix: {text!r}")
        length = int(plen)
    else:
        addr, length = text, 32
    return ip2int(addr) & prefix_mask(length), length


def parse_interface_address(text: str) -> tuple[int, int]:
    """'10.0.0.1/24' → (10.0.0.1 as int, 24): the host bits are kept (an interface address)."""
    addr, sep, plen = text.partition("/")
    if not sep or not plen.isdigit() or not 0 < int(plen) <= 32:
        raise ValueError(f"not an address with prefix length: {text!r}")
    return ip2int(addr), int(plen)


def in_prefix(ip: int, net: int, length: int) -> bool:
    return (ip & prefix_mask(length)) == net


def cidr_str(net: int, length: int) -> str:
    return f"{int2ip(net)}/{length}"


# ---- IPv6: 128-bit ints ----

IPV6_ALL_NODES = 0xFF02 << 112 | 1
IPV6_ALL_ROUTERS = 0xFF02 << 112 | 2
_SOLICITED_NODE = 0xFF02 << 112 | 1 << 32 | 0xFF << 24    # ff02::1:ff00:0/104


def ip6_2int(text: str) -> int:
    """IPv6 text (any RFC 4291 form, including ``::ffff:1.2.3.4``) → int.  Raises ValueError."""
    if ":" not in text or "%" in text:
        raise ValueError(f"not an IPv6 address: {text!r}")
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except OSError:
        raise ValueError(f"not an IPv6 address: {text!r}") from None


def int2ip6(value: int) -> str:
    """int → IPv6 text in the RFC 5952 canonical (compressed, lower-case) form."""
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


def prefix_mask6(length: int) -> int:
    return ((1 << 128) - 1) ^ ((1 << (128 - length)) - 1)


def parse_cidr6(text: str) -> tuple[int, int]:
    """'2001:db8::/32' or '2001:db8::1' → (network int, prefix length). Host bits are cleared."""
    addr, sep, plen = text.partition("/")
    if sep:
        if not plen.isdigit() or not 0 <= int(plen) <= 128:
            raise ValueError(f"not an IPv6 CIDR prefix: {text!r}")
        length = int(plen)
    else:
        length = 128
    return ip6_2int(addr) & prefix_mask6(length), length


def cidr6_str(net: int, length: int) -> str:
    return f"{int2ip6(net)}/{length}"


def solicited_node(addr: int) -> int:
    """The solicited-node multicast address of ``addr`` (RFC 4291 §2.7.1): ff02::1:ffXX:XXXX."""
    return _SOLICITED_NODE | addr & 0xFFFFFF


def ipv6_multicast_mac(addr: int) -> int:
    """The Ethernet address an IPv6 multicast address maps to (RFC 2464 §7): 33:33 + its low 32 bits."""
    return 0x3333 << 32 | addr & 0xFFFFFFFF


def is_ipv6_multicast(addr: int) -> bool:
    return addr >> 120 == 0xFF
