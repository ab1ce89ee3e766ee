"""Fast path: the forwarding rate of cached flows through RealDatapath between two veths, next to raw
AF_PACKET echo loops measured in the same run (the floors).

Owns its setup and removes it: two namespaces ``sn-<hex>`` (a generator and a sink), a veth pair into each
(root ends configured as datapath ends), a generator process in the first namespace (pinned to one cpu,
sending ``flows`` distinct 64-byte UDP frames round robin through AF_PACKET as fast as it can; killed by pid),
and, per mode, one child process (spawn, pinned to the other cpu) that reads the generator's veth and writes
the sink's for ``duration`` seconds:

    floor_raw     socket.recv on an rx socket (IGNORE_OUTGOING) -> socket.send, no parsing
    floor_ring    TPACKET_V2 rx ring (mmap) -> socket.send, no parsing
    floor_port    AfPacketPort.recv_batch (auxdata + vnet header, frame repair) -> AfPacketPort.send
    fastpath      RealDatapath.poll_ready: parse, flow key, exact-match hit, execute ("output")
    fastpath_rw   the same with a rewrite per packet (eth_dst, ttl - 1: incremental IP checksum update)

Reported per mode: ``pps`` (frames the loop sent per second), ``delivered_pps`` (the sink veth's kernel
tx counter), ``offered_pps`` (frames the generator put on its veth), and the drops the kernel counted.
The machine has 2 cores and is shared, so only figures of one run are comparable.

    python -m bench.fastpath [duration_s] [flows]
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid

from engine.datapath import netdev
from packet.codec import build
from packet.packet import PROTO_UDP, Packet

MODES = ("floor_raw", "floor_ring", "floor_port", "fastpath", "fastpath_rw")
SRC_MAC, DST_MAC = 0x025E000000A1, 0x025E000000B1

GENERATOR = """
import os, socket, sys
try:
    os.sched_setaffinity(0, {int(sys.argv[2])})
except OSError:
    pass
frames = [bytes.fromhex(h) for h in sys.argv[3].split(",")]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
s.bind((sys.argv[1], 0))
send = s.send
while True:
    for f in frames:
        try:
            send(f)
        except OSError:
            pass
"""


def make_frames(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        p = Packet(eth_src=SRC_MAC, eth_dst=DST_MAC, ip_src=0xC6336401, ip_dst=0xC6336402, proto=PROTO_UDP,
                   ttl=64, tos=0, ip_id=0, tp_src=10_000 + i, tp_dst=9, payload=bytes(18))
        out.append(build(p))
    return out


def _pin(cpu: int | None) -> bool:
    try:
        if cpu is None or cpu not in os.sched_getaffinity(0):
            return False
        os.sched_setaffinity(0, {cpu})
        return True
    except OSError:
        return False


def _raw_rx(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.setsockopt(263, 23, 1)                                    # PACKET_IGNORE_OUTGOING
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((ifname, 3))
    s.setblocking(False)
    return s


def _raw_tx(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.bind((ifname, 0))
    s.setblocking(False)
    return s


def _loop(fd: int, duration: float, step) -> tuple[int, float]:
    ep = select.epoll()
    ep.register(fd, select.EPOLLIN)
    n = 0
    t0 = time.perf_counter()
    end = t0 + duration
    while time.perf_counter() < end:
        if ep.poll(0.05):
            n += step()
    dt = time.perf_counter() - t0
    ep.close()
    return n, dt


def _floor_raw(a: str, b: str, duration: float) -> tuple[int, float, int]:
    rx, tx = _raw_rx(a), _raw_tx(b)
    recv, send = rx.recv, tx.send

    def step() -> int:
        c = 0
        try:
            while c < 64:
                f = recv(2048)
                try:
                    send(f)
                except OSError:
                    pass
                c += 1
        except BlockingIOError:
            pass
        return c

    n, dt = _loop(rx.fileno(), duration, step)
    drops = struct.unpack("=II", rx.getsockopt(263, 6, 8))[1]
    rx.close()
    tx.close()
    return n, dt, drops


def _floor_ring(a: str, b: str, duration: float, frame_size: int = 2048, frame_nr: int = 4096
                ) -> tuple[int, float, int]:
    rx, tx = _raw_rx(a), _raw_tx(b)
    rx.setsockopt(263, 10, 1)                                   # PACKET_VERSION = TPACKET_V2
    block = 1 << 20
    rx.setsockopt(263, 5, struct.pack("=IIII", block, frame_size * frame_nr // block, frame_size, frame_nr))
    ring = mmap.mmap(rx.fileno(), frame_size * frame_nr)
    send = tx.send
    hdr = struct.Struct("=IIIHH")                              # status len snaplen mac net
    state = {"i": 0}

    def step() -> int:
        c = 0
        i = state["i"]
        while True:
            off = i * frame_size
            status, _len, snap, mac, _net = hdr.unpack_from(ring, off)
            if not status & 1:                                   # TP_STATUS_USER
                break
            f = ring[off + mac:off + mac + snap]
            ring[off:off + 4] = b"\0\0\0\0"
            try:
                send(f)
            except OSError:
                pass
            i = (i + 1) % frame_nr
            c += 1
        state["i"] = i
        return c

    n, dt = _loop(rx.fileno(), duration, step)
    drops = struct.unpack("=II", rx.getsockopt(263, 6, 8))[1]
    ring.close()
    rx.close()
    tx.close()
    return n, dt, drops


def _floor_port(a: str, b: str, duration: float) -> tuple[int, float, int]:
    from engine.datapath.afpacket import AfPacketPort

    pa, pb = AfPacketPort(a), AfPacketPort(b)
    send = pb.send

    def step() -> int:
        frames = pa.recv_batch(64)
        for f in frames:
            send(f)
        return len(frames)

    n, dt = _loop(pa.fileno(), duration, step)
    drops = pa.kernel_stats()[1]
    pa.close()
    pb.close()
    return n, dt, drops


def _fastpath(a: str, b: str, duration: float, frames: list[bytes], rewrite: bool) -> tuple[int, float, int]:
    from engine.datapath.real import RealDatapath
    from packet.codec import parse
    from packet.flowkey import flow_key

    dp = RealDatapath({"a": a, "b": b}, max_flows=len(frames) * 2)
    actions = [("set", "eth_dst", 0x025E000000C1), ("set", "ttl", 63)] if rewrite else []
    for f in frames:
        dp.cache.install(flow_key(parse(f), "a"), [*actions, ("output", "b")], 0, 0.0, 0.0, time.monotonic())
    fd = dp.ports["a"].fileno()
    misses = [0]

    def step() -> int:
        before = dp.counters["datapath_rx"]
        misses[0] += len(dp.poll_ready(fd, time.monotonic()))
        return dp.counters["datapath_rx"] - before

    n, dt = _loop(fd, duration, step)
    drops = dp.ports["a"].kernel_stats()[1]
    dp.refresh_counters()
    assert dp.counters["datapath_hits"] >= n - misses[0]
    dp.close()
    return n - misses[0], dt, drops


def _child(mode: str, a: str, b: str, duration: float, frames: list[bytes], cpu: int | None, conn) -> None:
    try:
        pinned = _pin(cpu)
        if mode == "floor_raw":
            r = _floor_raw(a, b, duration)
        elif mode == "floor_ring":
            r = _floor_ring(a, b, duration)
        elif mode == "floor_port":
            r = _floor_port(a, b, duration)
        else:
            r = _fastpath(a, b, duration, frames, rewrite=mode == "fastpath_rw")
        conn.send(("ok", pinned, *r))
    except BaseException as e:   # noqa: B036 - reported to the parent
        conn.send(("error", repr(e)))


def _stat(ifname: str, what: str) -> int:
    with open(f"/sys/class/net/{ifname}/statistics/{what}") as f:
        return int(f.read())


def measure_fastpath(duration: float = 2.0, flows: int = 64, modes=MODES, cpus: tuple[int, int] = (0, 1)
                     ) -> dict:
    """Run each mode for ``duration`` seconds; returns {mode: {"pps", "delivered_pps", "offered_pps",
    "kernel_drops", "pinned"}, "flows", "duration_s", "frame_bytes"}.  Needs root."""
    if os.geteuid() != 0:
        raise RuntimeError("the fast-path benchmark needs root (namespaces, veth, AF_PACKET)")
    tag = uuid.uuid4().hex[:8]
    ns_gen, ns_sink = f"sn-{tag}g", f"sn-{tag}s"
    h_gen, h_sink = f"sv{tag}g", f"sv{tag}s"
    frames = make_frames(flows)
    gen = None
    created_ns: list[str] = []
    created_links: list[str] = []
    mpc = mp.get_context("spawn")
    out: dict = {"flows": flows, "duration_s": duration, "frame_bytes": len(frames[0])}
    try:
        for ns, host in ((ns_gen, h_gen), (ns_sink, h_sink)):
            netdev.create_netns(ns)
            created_ns.append(ns)
            netdev.create_veth(host, "eth0", ns)
            created_links.append(host)
            netdev.configure_datapath_end(host)
            netdev.configure_ns_end(ns, "eth0")
        gen = subprocess.Popen(["ip", "netns", "exec", ns_gen, sys.executable, "-c", GENERATOR, "eth0",
                                str(cpus[1]), ",".join(f.hex() for f in frames)], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        if gen.poll() is not None:
            raise RuntimeError(f"generator died: {gen.stderr.read().decode()[-500:]}")
        for mode in modes:
            recv_end, send_end = mpc.Pipe(duplex=False)
            rx0, tx0 = _stat(h_gen, "rx_packets"), _stat(h_sink, "tx_packets")
            p = mpc.Process(target=_child, args=(mode, h_gen, h_sink, duration, frames, cpus[0], send_end),
                            daemon=True)
            p.start()
            if not recv_end.poll(duration + 60):
                p.kill()
                raise RuntimeError(f"{mode}: no result")
            r = recv_end.recv()
            p.join(10)
            if r[0] != "ok":
                raise RuntimeError(f"{mode}: {r[1]}")
            _ok, pinned, n, dt, drops = r
            rx1, tx1 = _stat(h_gen, "rx_packets"), _stat(h_sink, "tx_packets")
            out[mode] = {"pps": n / dt, "delivered_pps": (tx1 - tx0) / dt, "offered_pps": (rx1 - rx0) / dt,
                         "kernel_drops": drops, "pinned": pinned}
    finally:
        if gen is not None:
            try:
                os.killpg(gen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            gen.wait(5)
            gen.stderr.close()
        for link in created_links:
            netdev.delete_link(link)
        for ns in created_ns:
            netdev.delete_netns(ns)
    return out


if __name__ == "__main__":
    import json

    d = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    fl = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    print(json.dumps(measure_fastpath(d, fl), indent=1))
