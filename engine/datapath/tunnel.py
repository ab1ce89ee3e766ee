"""The agent's tunnel endpoint: VXLAN-format frames (RFC 7348) over a UDP socket.

Owns one non-blocking UDP socket bound on the agent's own tunnel address (a loopback address of
127.0.0.0/8 on one machine, so several agents can share a port with distinct addresses), the VXLAN header
format and the tunnel counters.  The VNI is the egress port's tunnel key; 0xFFFFFF
(topology.model.TUNNEL_KEY_FLOW_STATE) carries flow-state replication, whose payload is not a frame.

Header: flags (0x08 = "VNI valid"), 24 reserved bits, VNI (24 bits), 8 reserved bits.  On receipt the
reserved bits are ignored (RFC 7348); a datagram shorter than the header, a flags byte other than 0x08, or a
data VNI whose inner frame is shorter than an Ethernet header is dropped and counted.

``remote_port`` (default: the bound port) is where frames are sent; it differs from the bound port only
when talking to a peer that listens elsewhere (Linux's VXLAN device in the tests).
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from topology.model import TUNNEL_KEY_FLOW_STATE

VXLAN_PORT = 4789
VXLAN_FLAGS = 0x08
HDR_LEN = 8
MAX_VNI = 0xFFFFFF
RX_BUF = 65536 + 64

_HDR = struct.Struct("!II")


class TunnelError(OSError):
    """The tunnel socket cannot be opened or a send is malformed."""


def ip_to_int(ip: str | int) -> int:
    if isinstance(ip, int):
        return ip
    return int(ipaddress.IPv4Address(ip))


def int_to_ip(ip: int) -> str:
    return str(ipaddress.IPv4Address(ip))


class VxlanTunnel:
    def __init__(self, local_ip: str | int, port: int = VXLAN_PORT, remote_port: int | None = None,
                 rcvbuf: int = 4 << 20, sndbuf: int = 4 << 20):
        try:
            self.local_ip = ip_to_int(local_ip)
        except ValueError as e:
            raise TunnelError(0, f"bad tunnel address {local_ip!r}: {e}") from None
        self.port = port
        self.remote_port = remote_port or port
        self.counters = {"tunnel_rx": 0, "tunnel_tx": 0, "tunnel_rx_short": 0, "tunnel_rx_bad_flags": 0,
                         "tunnel_tx_errors": 0}
        self._addr: dict[int, tuple[str, int]] = {}
        self._hdr: dict[int, bytes] = {}
        self._src: dict[str, int] = {}
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            s.bind((int_to_ip(self.local_ip), port))
            s.setblocking(False)
        except OSError as e:
            s.close()
            raise TunnelError(e.errno, f"cannot bind VXLAN socket on {int_to_ip(self.local_ip)}:{port}: "
                                       f"{e.strerror or e}") from None
        self.sock = s
        self._sendto = s.sendto
        self._recvfrom = s.recvfrom

    def fileno(self) -> int:
        return self.sock.fileno()

    def header(self, vni: int) -> bytes:
        h = self._hdr.get(vni)
        if h is None:
            if not 0 <= vni <= MAX_VNI:
                raise TunnelError(0, f"VNI {vni} out of range 0..{MAX_VNI}")
            h = self._hdr[vni] = _HDR.pack(VXLAN_FLAGS << 24, vni << 8)
        return h

    def send(self, remote_ip: int, vni: int, frame: bytes) -> bool:
        """Encapsulate ``frame`` with ``vni`` and send it to the agent at ``remote_ip`` (an int)."""
        addr = self._addr.get(remote_ip)
        if addr is None:
            addr = self._addr[remote_ip] = (int_to_ip(remote_ip), self.remote_port)
        try:
            self._sendto(self.header(vni) + frame, addr)
        except OSError:                          # ENOBUFS/EAGAIN (full), EMSGSIZE
            self.counters["tunnel_tx_errors"] += 1
            return False
        self.counters["tunnel_tx"] += 1
        return True

    def send_state(self, remote_ip: int, payload: bytes) -> bool:
        """Flow-state replication: ``payload`` on the reserved VNI."""
        return self.send(remote_ip, TUNNEL_KEY_FLOW_STATE, payload)

    def recv_batch(self, max_n: int = 64) -> list[tuple[int, int, bytes]]:
        """(source ip as int, VNI, inner frame) for each well-formed datagram, until EAGAIN or ``max_n``."""
        out = []
        c = self.counters
        src_cache = self._src
        for _ in range(max_n):
            try:
                data, (src, _sport) = self._recvfrom(RX_BUF)
            except BlockingIOError:
                break
            except OSError:
                break
            c["tunnel_rx"] += 1
            if len(data) < HDR_LEN:
                c["tunnel_rx_short"] += 1
                continue
            word0, word1 = _HDR.unpack_from(data)
            if word0 >> 24 != VXLAN_FLAGS:
                c["tunnel_rx_bad_flags"] += 1
                continue
            vni = word1 >> 8
            if vni != TUNNEL_KEY_FLOW_STATE and len(data) < HDR_LEN + 14:
                c["tunnel_rx_short"] += 1
                continue
            ip = src_cache.get(src)
            if ip is None:
                if len(src_cache) >= 4096:
                    src_cache.clear()
                ip = src_cache[src] = ip_to_int(src)
            out.append((ip, vni, data[HDR_LEN:]))
        return out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> VxlanTunnel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
