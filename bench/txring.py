"""A cheap load generator for the overload bench: UDP frames of bench.wireproc's layout sent through an AF_PACKET
``PACKET_TX_RING`` (TPACKET_V2, mmap) — ``python -m bench.txring JSON`` inside the sender namespace.

Same arguments and the same JSON answer as ``bench.wireproc send`` (``first``, ``count``, ``rate``, ``max_s``,
``cycle``, the FrameMaker fields, ``ifname``) plus ``cpu_s``: the sender's own CPU (utime + stime from
/proc/self/stat) at the end, and ``ring_full_waits``.  ``nice`` (optional): the sender's nice value, for itself
and its autogroup (it stands for traffic from a wire, which costs the host no CPU: on 2 vCPUs it must not be
starved by what it measures).  What is cheaper than one ``send()`` per frame:

- the ring's slots are filled in batches by numpy (one vectorised write per changing field for a whole batch:
  ports, UDP checksum, index), the frame template is written into every slot once at the start;
- one ``send(b"")`` per batch hands every slot marked TP_STATUS_SEND_REQUEST to the kernel.

Pacing: as wireproc's sender (frames due by ``el * rate``), so a batch is what fell due since the last one
(≤ ``batch``).  A slot is reused only once the kernel gave it back (TP_STATUS_AVAILABLE; TP_STATUS_WRONG_FORMAT
counts a send error).  Bounded by ``count`` and ``max_s``; at the end it waits at most 1 s for the kernel to
take what is still queued and counts what it did not take as not sent.
"""

from __future__ import annotations

import json
import mmap
import os
import socket
import struct
import sys
import time

import numpy as np

from bench.wireproc import DST_PORT_BASE, DST_PORTS, FRAME_LEN, PAYLOAD, SRC_PORTS, FrameMaker

SOL_PACKET = 263
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_QDISC_BYPASS = 20
TPACKET_V2 = 1
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1
TP_STATUS_SENDING = 2
TP_STATUS_WRONG_FORMAT = 4
TX_DATA = 32                        # TPACKET_ALIGN(sizeof(tpacket2_hdr)): where a tx frame's data begins
SLOT = 128                          # a slot: header + a 60-byte frame, 16-byte aligned
BLOCK = 4096
VAR_AT, VAR_END = 34, 55            # the bytes of a frame that differ between frames: UDP header .. copy number
CHUNK = 65536                       # frames whose varying bytes are computed at once


class TxRing:
    """A TPACKET_V2 tx ring of ``slots`` slots on ``ifname``; ``frames`` is a numpy view (slot, byte) of the
    frame areas, ``status`` / ``length`` the slots' tp_status / tp_len."""

    def __init__(self, ifname: str, slots: int = 4096, qdisc_bypass: bool = True):
        per_block = BLOCK // SLOT
        slots = max(per_block, slots // per_block * per_block)
        self.slots = slots
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            if qdisc_bypass:
                self.sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            self.sock.setsockopt(SOL_PACKET, PACKET_TX_RING,
                                 struct.pack("=IIII", BLOCK, slots // per_block, SLOT, slots))
            self.sock.bind((ifname, 0))
            self.mm = mmap.mmap(self.sock.fileno(), slots * SLOT, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            self.sock.close()
            raise
        raw = np.frombuffer(self.mm, dtype=np.uint8).reshape(slots, SLOT)
        words = np.frombuffer(self.mm, dtype=np.uint32).reshape(slots, SLOT // 4)
        self.frames = raw[:, TX_DATA:]
        self.status = words[:, 0]
        self.length = words[:, 1]
        self.head = 0                                   # the next slot to fill

    def free_run(self, limit: int) -> int:
        """How many slots from ``head`` on (at most ``limit``, not wrapping) the kernel has given back."""
        end = min(self.head + limit, self.slots)
        busy = np.flatnonzero(self.status[self.head:end] & (TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING))
        return int(busy[0]) if busy.size else end - self.head

    def kick(self) -> None:
        self.sock.send(b"", socket.MSG_DONTWAIT)

    def pending(self) -> int:
        return int(np.count_nonzero(self.status & (TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING)))

    def close(self) -> None:
        del self.frames, self.status, self.length
        try:
            self.mm.close()
        except BufferError:             # a caller still holds a view of the ring: the unmap waits for exit
            pass
        self.sock.close()


def _cpu_self() -> float:
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_split() -> tuple[float, float]:
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    t = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / t, int(fields[12]) / t


def _be16(a: np.ndarray) -> np.ndarray:
    return a.astype(">u2").view(np.uint8).reshape(-1, 2)


def fields(fm: FrameMaker, first: int, k0: int, n: int, cycle: int = 0) -> np.ndarray:
    """Bytes VAR_AT..VAR_END (UDP ports, length, checksum, tag, index, copy 0) of frames k0 .. k0+n-1 of a
    sender starting at index ``first`` (index ``first + k % cycle`` with ``cycle``): the same bytes as
    ``fm.frame(i)[VAR_AT:VAR_END]``, for a whole chunk at once."""
    k = np.arange(k0, k0 + n, dtype=np.int64)
    i = first + (k % cycle if cycle else k)
    sp = 1024 + i % SRC_PORTS
    dp = DST_PORT_BASE + (i // SRC_PORTS) % DST_PORTS
    idx = i & 0xFFFFFFFF
    s = fm.base + sp + dp + (idx >> 16) + (idx & 0xFFFF)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    c = 0xFFFF ^ s
    c[c == 0] = 0xFFFF
    out = np.empty((n, VAR_END - VAR_AT), dtype=np.uint8)
    out[:, 0:2] = _be16(sp)
    out[:, 2:4] = _be16(dp)
    out[:, 4:6] = _be16(np.full(n, 8 + PAYLOAD))
    out[:, 6:8] = _be16(c)
    out[:, 8:16] = np.frombuffer(fm.tag, dtype=np.uint8)
    out[:, 16:20] = idx.astype(">u4").view(np.uint8).reshape(-1, 4)
    out[:, 20] = 0
    return out


def set_nice(value: int) -> str | None:
    """This process's nice value and its autogroup's (the sender is a session of its own: with autogroup
    scheduling only the group's value weighs against other sessions).  Returns what failed, or None."""
    failed = []
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(value))
    except OSError as e:
        failed.append(f"autogroup: {e.strerror}")
    try:
        os.setpriority(os.PRIO_PROCESS, 0, value)
    except OSError as e:
        failed.append(f"setpriority: {e.strerror}")
    return "; ".join(failed) or None


def send(a: dict) -> dict:
    nice_failed = set_nice(int(a["nice"])) if a.get("nice") is not None else None
    fm = FrameMaker(a["eth_src"], a["eth_dst"], a["ip_src"], a["ip_dst"], bytes.fromhex(a["tag"]))
    first, count, rate, max_s = a["first"], a["count"], float(a["rate"]), float(a["max_s"])
    cycle = int(a.get("cycle") or 0)
    batch = int(a.get("batch") or 256)
    ring = TxRing(a.get("ifname", "eth0"), int(a.get("slots") or 4096))
    template = np.frombuffer(fm.frame(0), dtype=np.uint8)
    ring.frames[:, :FRAME_LEN] = template
    ring.length[:] = FRAME_LEN
    sent = errors = full_waits = 0
    clock = time.perf_counter
    t0 = clock()
    chunk, c0 = None, 0
    while sent < count:
        el = clock() - t0
        if el > max_s:
            break
        due = min(count, int(el * rate) + 1)
        while sent < due:
            if chunk is None or sent >= c0 + len(chunk):
                c0 = sent
                chunk = fields(fm, first, sent, min(CHUNK, count - sent), cycle)
            n = ring.free_run(min(batch, due - sent, c0 + len(chunk) - sent))
            if n == 0:
                full_waits += 1
                ring.kick()
                time.sleep(0.0002)
                if clock() - t0 > max_s:
                    break
                continue
            h = ring.head
            errors += int(np.count_nonzero(ring.status[h:h + n] == TP_STATUS_WRONG_FORMAT))
            ring.frames[h:h + n, VAR_AT:VAR_END] = chunk[sent - c0:sent - c0 + n]
            ring.status[h:h + n] = TP_STATUS_SEND_REQUEST     # after the data (x86: stores stay in order)
            ring.head = (h + n) % ring.slots
            sent += n
            try:
                ring.kick()
            except OSError:                 # ENOBUFS: the frames stay requested, the next kick retries them
                errors += 1
        wait = t0 + sent / rate - clock()
        if wait > 0:
            time.sleep(max(wait, 0.001))
    end = clock() + 1.0
    while ring.pending() and clock() < end:
        try:
            ring.kick()
        except OSError:
            pass
        time.sleep(0.001)
    left = ring.pending()
    seconds = clock() - t0
    ring.close()
    return {"sent": sent - left, "send_errors": errors, "seconds": seconds, "cpu_s": _cpu_self(),
            "cpu_user_sys_s": _cpu_split(),
            "ring_full_waits": full_waits, "not_taken": left, "payload": PAYLOAD, "nice": a.get("nice"),
            "nice_failed": nice_failed}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.txring JSON", file=sys.stderr)
        return 2
    out = send(json.loads(argv[0]))
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
