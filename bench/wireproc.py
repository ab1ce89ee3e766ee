"""Child processes of ``shardnet bench --datapath real``, one role each (``python -m bench.wireproc ROLE JSON``):

    send       in the sender namespace: ``count`` distinct UDP 5-tuples from frame index ``first`` on, paced at
               ``rate`` frames/s through an AF_PACKET socket on eth0 (frames built from one template: only the
               ports, the index in the payload and the UDP checksum change); stops at ``count`` or ``max_s``.
               With ``cycle`` = n, frame k carries index ``first + k % n``: n established flows sent over and
               over (the overload bench's cached flows).
    sink       in the sink namespace: counts the frames on eth0 (AF_PACKET) that carry ``tag`` in their UDP
               payload, distinct frame indexes too; UDP sockets bound on the destination ports (never read) so
               the namespace's kernel answers no ICMP port-unreachable; stops on a line on stdin, EOF or max_s.
               With ``split`` = n, frames whose index is below ``first + n`` are also counted apart
               (``matched_below_split``): one sink for the cached flows and the new ones of the overload bench.
    echo       in the root namespace: the floor of a userspace forwarder, AF_PACKET recv on ``a`` -> send on ``b``
               with no parsing, until stdin closes or max_s.
    tcpserver  in the sink namespace: accepts and closes connections until stdin closes or max_s.
    tcpclient  in the sender namespace: ``n`` connects spaced by ``spacing_s`` (each a new 5-tuple), the time of
               each connect() in µs.

Each prints one JSON line at the end (and ``ready`` first where the parent waits for it).  Every loop is
bounded in count and time.  Frame layout (``frame``): Ethernet, IPv4 (no options) or IPv6 (no extension
header: addresses above 2**32 make an IPv6 template, flow label 0, hop limit 64), UDP, 18 bytes of payload:
8-byte tag, 4-byte index, 1-byte copy number, 5 zero bytes (the payload at offset 42, or 62 for IPv6).  The
sink and the TCP server take ``ipv6`` (sockets of that family).  Index i uses source port 1024 + i % 64512 and
destination port DST_PORT_BASE + (i // 64512) % DST_PORTS: 6.2 M distinct 5-tuples (30 s at
160k/s: 4.8 M).
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import time

DST_PORT_BASE = 10_000
DST_PORTS = 96
SRC_PORTS = 64_512
PAYLOAD = 18
FRAME_LEN = 14 + 20 + 8 + PAYLOAD
FRAME_LEN6 = 14 + 40 + 8 + PAYLOAD
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23
PACKET_STATISTICS = 6
ETH_P_ALL = 0x0003


def ports(i: int) -> tuple[int, int]:
    return 1024 + i % SRC_PORTS, DST_PORT_BASE + (i // SRC_PORTS) % DST_PORTS


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


class FrameMaker:
    """Frames of one flow template (MACs, addresses, tag); ``frame(i, copy)`` fills in the rest.  Addresses
    above 2**32 make IPv6 frames."""

    def __init__(self, eth_src: int, eth_dst: int, ip_src: int, ip_dst: int, tag: bytes):
        if len(tag) != 8:
            raise ValueError("tag: 8 bytes")
        udp_len = 8 + PAYLOAD
        self.v6 = ip_src >> 32 or ip_dst >> 32
        if self.v6:
            ip = struct.pack("!IHBB", 0x60000000, udp_len, 17, 64) + ip_src.to_bytes(16, "big") \
                + ip_dst.to_bytes(16, "big")
            ethertype, addr_sum = 0x86DD, sum(struct.unpack("!16H", ip[8:40]))
        else:
            ip = bytearray(struct.pack("!BBHHHBBHII", 0x45, 0, 20 + udp_len, 0, 0x4000, 64, 17, 0, ip_src, ip_dst))
            struct.pack_into("!H", ip, 10, 0xFFFF ^ _fold(sum(struct.unpack("!10H", ip))))
            ethertype = 0x0800
            addr_sum = (ip_src >> 16) + (ip_src & 0xFFFF) + (ip_dst >> 16) + (ip_dst & 0xFFFF)
        self.head = struct.pack("!6s6sH", eth_dst.to_bytes(6, "big"), eth_src.to_bytes(6, "big"), ethertype) + ip
        self.l4 = len(self.head)
        self.tag = tag
        # the UDP checksum over everything that does not change: pseudo header, length, tag
        self.base = addr_sum + 17 + 2 * udp_len + sum(struct.unpack("!4H", tag))
        self.buf = bytearray(self.head + bytes(8) + tag + bytes(10))

    def frame(self, i: int, copy: int = 0) -> bytes:
        sp, dp = ports(i)
        idx = i & 0xFFFFFFFF
        s = _fold(self.base + sp + dp + (idx >> 16) + (idx & 0xFFFF) + (copy << 8))
        c = 0xFFFF ^ s
        struct.pack_into("!HHHH", self.buf, self.l4, sp, dp, 8 + PAYLOAD, c or 0xFFFF)
        struct.pack_into("!IB", self.buf, self.l4 + 16, idx, copy)
        return bytes(self.buf)


def parse_probe(frame: bytes, tag: bytes) -> tuple[int, int] | None:
    """(index, copy) of a frame of ours (IPv4 without options or IPv6, UDP, our tag), else None."""
    if len(frame) >= FRAME_LEN6 and frame[12:14] == b"\x86\xdd" and frame[20] == 17:
        off = 62
    elif len(frame) >= FRAME_LEN and frame[12:14] == b"\x08\x00" and frame[14] == 0x45 and frame[23] == 17:
        off = 42
    else:
        return None
    if frame[off:off + 8] != tag:
        return None
    idx, copy = struct.unpack_from("!IB", frame, off + 8)
    return idx, copy


def _tx_socket(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.bind((ifname, 0))
    return s


def _rx_socket(ifname: str, ignore_outgoing: bool = True) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    if ignore_outgoing:
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    s.bind((ifname, ETH_P_ALL))
    s.setblocking(False)
    return s


def kernel_drops(s: socket.socket) -> int:
    return struct.unpack("=II", s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]


def _stdin_closed(timeout: float) -> bool:
    r, _, _ = select.select([sys.stdin], [], [], timeout)
    return bool(r)


# --- roles ---------------------------------------------------------------------------------------------------

def send(a: dict) -> dict:
    fm = FrameMaker(a["eth_src"], a["eth_dst"], a["ip_src"], a["ip_dst"], bytes.fromhex(a["tag"]))
    s = _tx_socket(a.get("ifname", "eth0"))
    first, count, rate, max_s = a["first"], a["count"], float(a["rate"]), float(a["max_s"])
    cycle = int(a.get("cycle") or 0)
    tx = s.send
    frame = fm.frame
    if cycle > 0:
        made = [fm.frame(first + k) for k in range(cycle)]
        frame = lambda i: made[(i - first) % cycle]       # noqa: E731 - the loop's one call, kept cheap
    sent = errors = 0
    t0 = time.perf_counter()
    clock = time.perf_counter
    while sent + errors < count:
        now = clock()
        el = now - t0
        if el > max_s:
            break
        due = min(count, int(el * rate) + 1)
        while sent + errors < due:
            try:
                tx(frame(first + sent + errors))
                sent += 1
            except OSError:
                errors += 1
        wait = t0 + (sent + errors) / rate - clock()
        if wait > 0:
            time.sleep(max(wait, 0.0005))
    return {"sent": sent, "send_errors": errors, "seconds": clock() - t0}


def sink(a: dict) -> dict:
    tag = bytes.fromhex(a["tag"])
    first, count = a["first"], a["count"]
    rx = _rx_socket(a.get("ifname", "eth0"))
    holes = []
    v6 = bool(a.get("ipv6"))
    for k in range(DST_PORTS):                      # swallow the frames: no ICMP port unreachable back
        u = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        u.bind(("::" if v6 else "0.0.0.0", DST_PORT_BASE + k))
        holes.append(u)
    seen = bytearray(count)
    matched = unique = other = below = 0
    split = int(a.get("split") or 0)
    print("ready", flush=True)
    deadline = time.monotonic() + float(a["max_s"])
    fd, stdin = rx.fileno(), sys.stdin.fileno()
    recv = rx.recv
    off = 62 if v6 else 42
    end, need = off + 8, FRAME_LEN6 if v6 else FRAME_LEN
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd, stdin], [], [], 0.05)
        if stdin in r:
            break
        if fd not in r:
            continue
        for _ in range(256):
            try:
                f = recv(2048)
            except BlockingIOError:
                break
            if len(f) >= need and f[off:end] == tag:
                matched += 1
                j = struct.unpack_from("!I", f, end)[0] - first
                if 0 <= j < split:
                    below += 1
                if 0 <= j < count and not seen[j]:
                    seen[j] = 1
                    unique += 1
            else:
                other += 1
    while True:                                     # what is already queued counts too
        try:
            f = recv(2048)
        except BlockingIOError:
            break
        if len(f) >= need and f[off:end] == tag:
            matched += 1
            j = struct.unpack_from("!I", f, end)[0] - first
            if 0 <= j < split:
                below += 1
            if 0 <= j < count and not seen[j]:
                seen[j] = 1
                unique += 1
    out = {"matched": matched, "unique": unique, "other": other, "kernel_drops": kernel_drops(rx)}
    if split:
        out["matched_below_split"] = below
        out["unique_below_split"] = sum(seen[:split])
    for u in holes:
        u.close()
    rx.close()
    return out


def echo(a: dict) -> dict:
    rx, tx = _rx_socket(a["a"]), _tx_socket(a["b"])
    fd, stdin = rx.fileno(), sys.stdin.fileno()
    n = 0
    print("ready", flush=True)
    deadline = time.monotonic() + float(a["max_s"])
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd, stdin], [], [], 0.05)
        if stdin in r:
            break
        for _ in range(64):
            try:
                f = rx.recv(2048)
            except BlockingIOError:
                break
            try:
                tx.send(f)
                n += 1
            except OSError:
                pass
    rx.close()
    tx.close()
    return {"forwarded": n}


def tcpserver(a: dict) -> dict:
    v6 = bool(a.get("ipv6"))
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::" if v6 else "0.0.0.0", a["port"]))
    s.listen(512)
    s.setblocking(False)
    n = 0
    print("ready", flush=True)
    deadline = time.monotonic() + float(a["max_s"])
    stdin = sys.stdin.fileno()
    while time.monotonic() < deadline:
        r, _, _ = select.select([s, stdin], [], [], 0.1)
        if stdin in r:
            break
        if s in r:
            try:
                c, _ = s.accept()
            except BlockingIOError:
                continue
            c.close()
            n += 1
    s.close()
    return {"accepted": n}


def tcpclient(a: dict) -> dict:
    samples, failures = [], 0
    clock = time.perf_counter_ns
    deadline = time.monotonic() + float(a["max_s"])
    for _ in range(a["n"]):
        if time.monotonic() > deadline:
            break
        c = socket.socket(socket.AF_INET6 if ":" in a["ip"] else socket.AF_INET)
        c.settimeout(float(a.get("timeout_s", 2.0)))
        t0 = clock()
        try:
            c.connect((a["ip"], a["port"]))
            samples.append((clock() - t0) / 1000.0)
        except OSError:
            failures += 1
        finally:
            c.close()
        time.sleep(float(a["spacing_s"]))
    return {"connect_us": samples, "failures": failures}


ROLES = {"send": send, "sink": sink, "echo": echo, "tcpserver": tcpserver, "tcpclient": tcpclient}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ROLES:
        print(f"usage: python -m bench.wireproc {{{','.join(ROLES)}}} JSON", file=sys.stderr)
        return 2
    out = ROLES[argv[0]](json.loads(argv[1]))
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    os._exit(0)                                      # nothing left to tear down: skip interpreter shutdown


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
