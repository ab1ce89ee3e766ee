"""Wire-to-wire latency of first and cached packets, timed by the kernel on the two root veth ends.

Owns, for one probe: an AF_PACKET tx socket opened inside the sender namespace (bench.wirerig.in_netns) and
two capture sockets in the root namespace with SO_TIMESTAMPNS: one on the sender's root end (frames coming
out of the sender namespace: what the forwarder reads; PACKET_IGNORE_OUTGOING) and one on the sink's root end
(frames the forwarder transmits: only PACKET_OUTGOING ones are kept).  The forwarder in between can be
anything (a shardnet agent, Open vSwitch, the floor's echo loop); the captures are ordinary packet taps and
change nothing for it.

``probe_latency``: ``n`` fresh 5-tuples, each sent twice ``spacing_s`` apart (copy 0 is the flow's first
packet: a flow setup; copy 1 finds the flow installed), one every ``spacing_s``.  Latency = the kernel
timestamp on the sink's end minus the one on the sender's end (CLOCK_REALTIME, the same clock).  Returns the
samples in µs of both kinds and how many of each were seen.
"""

from __future__ import annotations

import socket
import struct
import time

from bench.wireproc import ETH_P_ALL, PACKET_IGNORE_OUTGOING, SOL_PACKET, FrameMaker, parse_probe
from bench.wirerig import in_netns

SO_TIMESTAMPNS = 35
PACKET_OUTGOING = 4


def _capture(ifname: str, outgoing: bool) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    if not outgoing:
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((ifname, ETH_P_ALL))
    s.setblocking(False)
    return s


def _drain(s: socket.socket, tag: bytes, outgoing: bool) -> dict[tuple[int, int], int]:
    """{(index, copy): kernel timestamp ns} of the frames of ours queued on ``s``."""
    out: dict[tuple[int, int], int] = {}
    while True:
        try:
            data, anc, _flags, addr = s.recvmsg(2048, socket.CMSG_SPACE(16))
        except BlockingIOError:
            return out
        if outgoing and addr[2] != PACKET_OUTGOING:
            continue
        key = parse_probe(data, tag)
        if key is None or key in out:
            continue
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("qq", raw[:16])
                out[key] = sec * 1_000_000_000 + nsec


def probe_latency(rig, maker_args: dict, first: int, n: int, spacing_s: float, tag: bytes,
                  settle_s: float = 0.5) -> dict:
    """Send ``n`` probe pairs through whatever forwards between the rig's root ends; see the module doc."""
    fm = FrameMaker(maker_args["eth_src"], maker_args["eth_dst"], maker_args["ip_src"], maker_args["ip_dst"], tag)
    cin, cout = _capture(rig.sender_if, False), _capture(rig.sink_if, True)

    def open_tx() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        s.bind(("eth0", 0))
        return s

    tx = in_netns(rig.sender_ns, open_tx)
    t_in: dict = {}
    t_out: dict = {}
    try:
        for k in range(n):
            f0, f1 = fm.frame(first + k, 0), fm.frame(first + k, 1)
            tx.send(f0)
            time.sleep(spacing_s)
            tx.send(f1)
            time.sleep(spacing_s)
            if k % 32 == 31:
                t_in.update(_drain(cin, tag, False))
                t_out.update(_drain(cout, tag, True))
        time.sleep(settle_s)
        t_in.update(_drain(cin, tag, False))
        t_out.update(_drain(cout, tag, True))
    finally:
        tx.close()
        cin.close()
        cout.close()
    first_us, cached_us = [], []
    for key, t1 in t_out.items():
        t0 = t_in.get(key)
        if t0 is None:
            continue
        (first_us if key[1] == 0 else cached_us).append((t1 - t0) / 1000.0)
    return {"first_us": first_us, "cached_us": cached_us, "sent_pairs": n, "seen_in": len(t_in),
            "seen_out": len(t_out), "spacing_s": spacing_s}
