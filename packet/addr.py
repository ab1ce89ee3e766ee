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
