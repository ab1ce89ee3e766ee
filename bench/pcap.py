"""Classic libpcap files (what ``tcpdump -w`` writes), Ethernet link type only: read for ``bench --pcap``,
write for tests and for saving synthetic traffic.

Owns nothing but the format: a 24-byte global header (magic 0xa1b2c3d4 for µs or 0xa1b23c4d for ns timestamps,
in either byte order), then per record ts_sec, ts_frac, incl_len, orig_len and incl_len bytes.  pcapng, other
link types and truncated or oversized records are ``PcapError`` naming the file and the offset.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from typing import NamedTuple

MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D
PCAPNG_MAGIC = 0x0A0D0D0A
LINKTYPE_ETHERNET = 1
MAX_RECORD = 262_144


class PcapError(ValueError):
    pass


class Record(NamedTuple):
    ts: float            # seconds since the epoch
    frame: bytes         # the captured bytes (may be shorter than orig_len when the capture was truncated)
    orig_len: int


def iter_pcap(path: str | os.PathLike) -> Iterator[Record]:
    try:
        f = open(path, "rb")
    except OSError as e:
        raise PcapError(f"{path}: {e.strerror or e}") from None
    with f:
        head = f.read(24)
        if len(head) < 24:
            raise PcapError(f"{path}: not a pcap file (shorter than the 24-byte header)")
        magic = struct.unpack("<I", head[:4])[0]
        if magic == PCAPNG_MAGIC:
            raise PcapError(f"{path}: pcapng is not supported; convert with `tcpdump -r IN -w OUT`")
        for order in ("<", ">"):
            m = struct.unpack(order + "I", head[:4])[0]
            if m in (MAGIC_US, MAGIC_NS):
                break
        else:
            raise PcapError(f"{path}: not a pcap file (magic {magic:#010x})")
        frac = 1e-9 if m == MAGIC_NS else 1e-6
        _, _, _, _, snaplen, linktype = struct.unpack(order + "HHiIII", head[4:])
        if linktype & 0xFFFF != LINKTYPE_ETHERNET:
            raise PcapError(f"{path}: link type {linktype & 0xFFFF} is not Ethernet (1)")
        rec = struct.Struct(order + "IIII")
        offset = 24
        while True:
            rh = f.read(16)
            if not rh:
                return
            if len(rh) < 16:
                raise PcapError(f"{path}: truncated record header at offset {offset}")
            sec, sub, incl, orig = rec.unpack(rh)
            if incl > MAX_RECORD:
                raise PcapError(f"{path}: record at offset {offset} claims {incl} bytes (corrupt file?)")
            data = f.read(incl)
            if len(data) < incl:
                raise PcapError(f"{path}: truncated record at offset {offset}")
            yield Record(sec + sub * frac, data, orig)
            offset += 16 + incl


def read_pcap(path: str | os.PathLike) -> list[Record]:
    return list(iter_pcap(path))


def write_pcap(path: str | os.PathLike, frames: Iterable[bytes | tuple[float, bytes]]) -> int:
    """Write frames (bytes, or (timestamp, bytes)) as a µs-resolution Ethernet pcap; returns the count."""
    n = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", MAGIC_US, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET))
        for item in frames:
            ts, frame = item if isinstance(item, tuple) else (float(n) * 1e-3, item)
            sec = int(ts)
            f.write(struct.pack("<IIII", sec, int(round((ts - sec) * 1e6)) % 1_000_000, len(frame), len(frame)))
            f.write(frame)
            n += 1
    return n
