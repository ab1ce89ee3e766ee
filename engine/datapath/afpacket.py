"""One datapath port on a Linux interface: AF_PACKET raw sockets, batched non-blocking reads, frame repair.

Owns two sockets per interface: an rx socket (ETH_P_ALL, PACKET_IGNORE_OUTGOING so it never sees what
anyone transmits on the interface, PACKET_AUXDATA, PACKET_VNET_HDR) and a tx socket (protocol 0: it receives
nothing), plus the port's counters.  It makes no forwarding decision.

What the kernel hands an rx socket is not always a wire frame; ``recv_batch`` returns wire frames:

- **Partial checksums.** A veth leaves TCP/UDP checksums to "hardware": the auxdata status carries
  TP_STATUS_CSUMNOTREADY and the checksum field holds only the pseudo-header sum.  The virtio-net header
  (PACKET_VNET_HDR) says where: NEEDS_CSUM with csum_start / csum_offset.  We complete it the way a NIC
  would: the internet checksum (packet.checksum) of everything from csum_start, stored at
  csum_start + csum_offset (a UDP 0 becomes 0xFFFF).  Works for IPv4 and IPv6 alike.
- **Segmentation offload.** With tx offload on, a sender's TCP stack hands the veth up to 64 KB "super
  frames" (auxdata TP_STATUS_GSO_TCP).  Sent on as they are, the next interface refuses them (EMSGSIZE).  The
  virtio-net header gives gso_size (the sender's MSS), so we segment in software like the kernel's GSO:
  per segment the IP length (IPv4: id + i, header checksum), TCP seq, FIN/PSH only on the last, CWR only on
  the first, a full TCP checksum.  Other GSO types (UDP_L4) are dropped and counted.
- **VLAN.** The kernel strips an 802.1Q tag before packet sockets see the frame and reports it in auxdata
  (TP_STATUS_VLAN_VALID, tp_vlan_tci, tp_vlan_tpid): the tag is put back.

Costs measured on this machine (2 cores, noisy): plain recv ~140-190k pps, recvmsg + auxdata ~115-130k pps,
recvmsg + auxdata + vnet header ~90-110k pps.  The vnet header is kept anyway: without it the MSS of a
super frame and the checksum offsets would have to be guessed.

The rx path is an mmap ring (``PACKET_RX_RING``, TPACKET_V2) by default (``ring_slots``; 0: one
``recvmsg`` per frame as before).  The kernel writes each frame into a fixed 2 KB slot with the virtio-net
header right in front of it (PACKET_VNET_HDR applies to the ring: tests/e2e/test_datapath_ring.py reads the
NEEDS_CSUM offsets and the GSO fields from ring slots), the auxdata fields are in the slot's tpacket2_hdr
(tp_status, tp_vlan_tci, tp_vlan_tpid), so ``recv_batch`` runs the same repair on a ring frame as on a
recvmsg'd one, without a system call per frame.  A frame larger than a slot (a 64 KB GSO super frame) is not
truncated: with PACKET_COPY_THRESH the kernel queues a full copy on the socket's ordinary receive queue and
marks the slot TP_STATUS_COPY; at that slot ``recv_batch`` takes the frame with ``recvmsg`` (the old path;
``afpacket_rx_copied`` counts them).  TPACKET_V3's variable-size frames would hold super frames too, but its
blocks reach the reader only when full or after a retire timeout of a millisecond or more: latency at low
rates.  A truncated frame without a copy (the receive buffer was full) is dropped and counted
(``afpacket_rx_dropped``).

Costs measured on this machine (bench/fastpath.py, one run, 60-byte frames, saturated): echo loop with plain
recv ~307k pps, with a TPACKET_V2 rx ring ~391k pps, with the recvmsg path of this class ~185k pps;
cached-flow forwarding through RealDatapath ~110k pps with the recvmsg path.
"""

from __future__ import annotations

import errno
import mmap
import socket
import struct

from packet.checksum import checksum, ones_sum

SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_STATISTICS = 6
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
PACKET_COPY_THRESH = 7
PACKET_RX_RING = 5
PACKET_VERSION = 10
TPACKET_V2 = 1
ETH_P_ALL = 0x0003

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 0x1
TP_STATUS_COPY = 0x2

TP_STATUS_CSUMNOTREADY = 0x8
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
TP_STATUS_GSO_TCP = 0x100

VNET_F_NEEDS_CSUM = 1
VNET_GSO_NONE = 0
VNET_GSO_TCPV4 = 1
VNET_GSO_TCPV6 = 4
VNET_GSO_ECN = 0x80
VNET_HDR_LEN = 10

RX_BUF = 65536 + 64          # a 64 KB GSO frame + vnet header; stays under malloc's mmap threshold
ANC_BUF = socket.CMSG_SPACE(20)
RING_SLOTS = 4096            # rx ring slots per port (8 MB); 0: no ring, one recvmsg per frame
RING_SLOT = 2048             # a slot: tpacket2_hdr, vnet header and a frame of up to ~1.9 KB (more: a copy)
RING_BLOCK = 1 << 16
SHED_SAMPLE = 16             # while shedding, 1 in this many unknown frames is read all the same

_AUX = struct.Struct("=IIIHHHH")           # tpacket_auxdata: status len snaplen mac net vlan_tci vlan_tpid
_VNET = struct.Struct("=BBHHHH")           # virtio_net_hdr: flags gso_type hdr_len gso_size csum_start/off
_TPSTATS = struct.Struct("=II")            # tpacket_stats: packets drops
_T2HDR = struct.Struct("=IIIHHIIHH")       # tpacket2_hdr: status len snaplen mac net sec nsec vlan_tci vlan_tpid
_T2VLAN = struct.Struct("=24xHH")          # ... and vlan_tci vlan_tpid
_IPV4 = b"\x08\x00"
_IPV6 = b"\x86\xdd"


def shed_key(frame) -> bytes | None:
    """What shedding remembers of a frame that hit (RealDatapath.poll_ready) and compares unknown ones by: an
    IPv4 frame's addresses and ports (bytes 26..38), an IPv6 frame's addresses and the 4 bytes after its fixed
    header (22..58: its ports when it has no extension header; a flow's frames agree either way); None for other
    frames, which are never shed."""
    et = frame[12:14]
    if et == _IPV4:
        return frame[26:38]
    if et == _IPV6:
        return frame[22:58]
    return None
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_VLAN_TPIDS = (0x8100, 0x88A8)
_TCP_FIN, _TCP_PSH, _TCP_CWR = 0x01, 0x08, 0x80


class AfPacketError(OSError):
    """The interface cannot be opened (absent, down, not permitted)."""


class AfPacketPort:
    """AF_PACKET I/O on one interface.  ``recv_batch`` reads until EAGAIN (or an empty ring slot) or ``max_n``
    reads.  ``ring_slots`` 0: no rx ring (a recvmsg per frame)."""

    def __init__(self, ifname: str, rcvbuf: int = 4 << 20, sndbuf: int = 4 << 20, ring_slots: int = RING_SLOTS):
        self.ifname = ifname
        self.counters = {"afpacket_rx": 0, "afpacket_tx": 0, "afpacket_rx_csum_fixed": 0,
                         "afpacket_rx_gso_segmented": 0, "afpacket_rx_vlan_restored": 0,
                         "afpacket_rx_dropped": 0, "afpacket_rx_errors": 0, "afpacket_tx_errors": 0,
                         "afpacket_rx_copied": 0, "afpacket_rx_shed": 0}
        rx = tx = ring = None
        try:
            # protocol 0: nothing is queued before bind
            rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            rx.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            rx.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            rx.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            ring, ring_slots = _rx_ring(rx, ring_slots) if ring_slots > 0 else (None, 0)
            rx.bind((ifname, ETH_P_ALL))
            rx.setblocking(False)
            tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            tx.bind((ifname, 0))
            tx.setblocking(False)
        except (OSError, ValueError) as e:              # ValueError: a name the kernel cannot take (a NUL)
            if ring is not None:
                ring.close()
            for s in (rx, tx):
                if s is not None:
                    s.close()
            raise AfPacketError(getattr(e, "errno", None) or errno.EINVAL,
                                f"cannot open AF_PACKET on {ifname!r}: {getattr(e, 'strerror', None) or e}") from None
        self._rx, self._tx = rx, tx
        self._recvmsg = rx.recvmsg
        self._send = tx.send
        self._ring = ring
        self._slots = ring_slots
        self._head = 0
        self._shed_seq = 0
        if ring is not None:                             # the slot headers as words (_recv_ring)
            self._u32 = memoryview(ring).cast("I")
            self._u16 = memoryview(ring).cast("H")

    def fileno(self) -> int:
        return self._rx.fileno()

    def recv_batch(self, max_n: int = 64, shed: set | None = None) -> list[bytes]:
        """Wire frames read until EAGAIN or ``max_n`` reads (a segmented super frame yields several).

        ``shed`` (the caller is saturated: see RealDatapath.poll_ready): the ``shed_key`` of the IPv4 and IPv6
        flows worth reading; any other untagged IPv4 or IPv6 frame is dropped before it is repaired or
        copied (``afpacket_rx_shed``), but for 1 in SHED_SAMPLE, so that a flow the caller has not remembered
        yet still gets through.  Other frames are never shed."""
        if self._ring is not None:
            return self._recv_ring(max_n, shed)
        out: list[bytes] = []
        append = out.append
        recvmsg = self._recvmsg
        n = 0
        while n < max_n:
            try:
                data, anc, flags, _addr = recvmsg(RX_BUF, ANC_BUF)
            except BlockingIOError:
                break
            except OSError:                     # e.g. ENETDOWN while the interface goes down
                self.counters["afpacket_rx_errors"] += 1
                break
            n += 1
            status = _AUX.unpack_from(anc[0][2])[0] if anc else 0
            if shed is not None and self._unknown(data, status, shed) and self._shed_one():
                continue
            if not status & (TP_STATUS_CSUMNOTREADY | TP_STATUS_VLAN_VALID | TP_STATUS_GSO_TCP) and not (
                    data[0] & VNET_F_NEEDS_CSUM or data[1]):
                append(data[VNET_HDR_LEN:])
            elif flags & socket.MSG_TRUNC:
                self.counters["afpacket_rx_dropped"] += 1
            else:
                aux = _AUX.unpack_from(anc[0][2]) if anc else (0,) * 7
                self._repair(data, aux[0], aux[5], aux[6], out)
        self.counters["afpacket_rx"] += n
        return out

    def _recv_ring(self, max_n: int, shed: set | None) -> list[bytes]:
        """``recv_batch`` on the rx ring: the slots the kernel handed over (TP_STATUS_USER), in order, each given
        back at once; a TP_STATUS_COPY slot's frame is read from the socket queue (the full copy).  With
        ``shed``, an unknown IPv4 or IPv6 frame is dropped in its slot, before it is even copied out.  The slot
        headers are read and written through word views of the ring (``_u32``/``_u16``: tp_status at word 0,
        tp_len 1, tp_snaplen 2, tp_mac at half-word 6): no struct call per frame on the common paths."""
        out: list[bytes] = []
        append = out.append
        ring, u32, u16, slots, head = self._ring, self._u32, self._u16, self._slots, self._head
        words = RING_SLOT // 4
        n = shed_n = 0
        seq = self._shed_seq
        while n < max_n:
            w = head * words
            status = u32[w]
            if not status & TP_STATUS_USER:
                break
            n += 1
            off = w * 4
            m = off + u16[w * 2 + 6]
            if status & TP_STATUS_COPY:
                self._recv_copy(out, shed)
            elif u32[w + 2] < u32[w + 1]:        # truncated, and no copy was queued (receive buffer full)
                self.counters["afpacket_rx_dropped"] += 1
            elif shed is not None and not status & TP_STATUS_VLAN_VALID and (
                    (ring[m + 12] == 8 and ring[m + 13] == 0 and ring[m + 26:m + 38] not in shed)
                    or (ring[m + 12] == 0x86 and ring[m + 13] == 0xDD and ring[m + 22:m + 58] not in shed)) \
                    and (seq := seq + 1) % SHED_SAMPLE:
                shed_n += 1
            elif not status & (TP_STATUS_CSUMNOTREADY | TP_STATUS_VLAN_VALID | TP_STATUS_GSO_TCP) and not (
                    ring[m - VNET_HDR_LEN] & VNET_F_NEEDS_CSUM or ring[m - VNET_HDR_LEN + 1]):
                append(ring[m:m + u32[w + 2]])
            else:
                tci, tpid = _T2VLAN.unpack_from(ring, off)
                self._repair(ring[m - VNET_HDR_LEN:m + u32[w + 2]], status, tci, tpid, out)
            u32[w] = TP_STATUS_KERNEL
            head += 1
            if head == slots:
                head = 0
        self._head = head
        self._shed_seq = seq
        c = self.counters
        c["afpacket_rx"] += n
        if shed_n:
            c["afpacket_rx_shed"] += shed_n
        return out

    def _shed_one(self) -> bool:
        """An unknown frame while shedding: True (drop it, counted) but for 1 in SHED_SAMPLE."""
        self._shed_seq += 1
        if self._shed_seq % SHED_SAMPLE:
            self.counters["afpacket_rx_shed"] += 1
            return True
        return False

    def _recv_copy(self, out: list, shed: set | None = None) -> None:
        try:
            data, anc, flags, _addr = self._recvmsg(RX_BUF, ANC_BUF)
        except BlockingIOError:                  # the copy was not queued after all
            self.counters["afpacket_rx_dropped"] += 1
            return
        except OSError:
            self.counters["afpacket_rx_errors"] += 1
            return
        if flags & socket.MSG_TRUNC:
            self.counters["afpacket_rx_dropped"] += 1
            return
        self.counters["afpacket_rx_copied"] += 1
        status, _l, _s, _m, _n, tci, tpid = _AUX.unpack_from(anc[0][2]) if anc else (0,) * 7
        if shed is not None and self._unknown(data, status, shed) and self._shed_one():
            return
        self._repair(data, status, tci, tpid, out)

    @staticmethod
    def _unknown(data: bytes, status: int, shed: set) -> bool:
        """``data`` (vnet header + frame) is an untagged IPv4 or IPv6 frame whose addresses and ports are not
        in ``shed`` (``shed_key``)."""
        if status & TP_STATUS_VLAN_VALID:
            return False
        et = data[22:24]
        if et == _IPV4:
            return data[36:48] not in shed
        return et == _IPV6 and data[32:68] not in shed

    def _repair(self, data: bytes, status: int, tci: int, tpid: int, out: list) -> None:
        vflags, gso_type, _hl, gso_size, cstart, coff = _VNET.unpack_from(data, 0)
        frame = bytearray(data[VNET_HDR_LEN:])
        if status & TP_STATUS_VLAN_VALID:
            if not status & TP_STATUS_VLAN_TPID_VALID or not tpid:
                tpid = 0x8100
            frame[12:12] = _U16.pack(tpid) + _U16.pack(tci)
            cstart += 4
            self.counters["afpacket_rx_vlan_restored"] += 1
        if gso_type != VNET_GSO_NONE:
            segs = segment_tcp(frame, gso_type & ~VNET_GSO_ECN, gso_size, cstart)
            if segs is None:
                self.counters["afpacket_rx_dropped"] += 1
                return
            self.counters["afpacket_rx_gso_segmented"] += 1
            out.extend(segs)
            return
        if vflags & VNET_F_NEEDS_CSUM:
            if not complete_checksum(frame, cstart, coff):
                self.counters["afpacket_rx_dropped"] += 1
                return
            self.counters["afpacket_rx_csum_fixed"] += 1
        out.append(bytes(frame))

    def send(self, frame: bytes) -> bool:
        try:
            self._send(frame)
        except OSError:                          # ENOBUFS/EAGAIN (full), EMSGSIZE, ENETDOWN
            self.counters["afpacket_tx_errors"] += 1
            return False
        self.counters["afpacket_tx"] += 1
        return True

    def kernel_stats(self) -> tuple[int, int]:
        """(packets, drops) the kernel counted for the rx socket since the last call (PACKET_STATISTICS)."""
        return _TPSTATS.unpack(self._rx.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPSTATS.size))

    @property
    def ring(self) -> bool:
        """True when frames are read from the mmap rx ring."""
        return self._ring is not None

    def close(self) -> None:
        if self._ring is not None:
            self._u32.release()
            self._u16.release()
            self._ring.close()
        self._rx.close()
        self._tx.close()

    def __enter__(self) -> AfPacketPort:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _rx_ring(rx: socket.socket, slots: int) -> tuple[mmap.mmap, int]:
    """A TPACKET_V2 rx ring of ``slots`` RING_SLOT-byte slots on ``rx`` (before bind: nothing is lost), mapped.
    Needs PACKET_VNET_HDR set already (the kernel refuses it once a ring exists).  PACKET_COPY_THRESH: a frame
    longer than a slot is also queued whole on the receive queue (TP_STATUS_COPY in its slot)."""
    per_block = RING_BLOCK // RING_SLOT
    slots = max(per_block, -(-slots // per_block) * per_block)
    rx.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
    rx.setsockopt(SOL_PACKET, PACKET_COPY_THRESH, 1)
    rx.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack("=IIII", RING_BLOCK, slots // per_block, RING_SLOT,
                                                          slots))
    return mmap.mmap(rx.fileno(), slots * RING_SLOT, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE), slots


def complete_checksum(frame: bytearray, cstart: int, coff: int) -> bool:
    """Finish a partial (offloaded) L4 checksum in place: the field at cstart+coff already holds the
    pseudo-header sum, so the checksum of frame[cstart:] is the final value.  False if the offsets are bad."""
    at = cstart + coff
    if cstart < 14 or at + 2 > len(frame):
        return False
    c = checksum(memoryview(frame)[cstart:])
    if c == 0 and coff == 6:                # UDP: 0 on the wire means "no checksum"
        c = 0xFFFF
    frame[at:at + 2] = _U16.pack(c)
    return True


def _l3_offset(frame) -> int:
    off = 12
    while _U16.unpack_from(frame, off)[0] in _VLAN_TPIDS:
        off += 4
    return off + 2


def segment_tcp(frame: bytearray, gso_type: int, mss: int, l4: int) -> list[bytes] | None:
    """Software TCP segmentation of a GSO super frame (IPv4 or IPv6 without extension headers) into wire
    frames carrying at most ``mss`` payload bytes each, every checksum complete.  None if malformed."""
    try:
        l3 = _l3_offset(frame)
    except struct.error:
        return None
    n = len(frame)
    if mss <= 0 or l4 + 20 > n:
        return None
    thl = (frame[l4 + 12] >> 4) << 2
    hend = l4 + thl
    if thl < 20 or hend > n:
        return None
    if gso_type == VNET_GSO_TCPV4:
        ihl = (frame[l3] & 15) << 2
        if frame[l3] >> 4 != 4 or l3 + ihl != l4 or frame[l3 + 9] != 6:
            return None
        ip_id = _U16.unpack_from(frame, l3 + 4)[0]
        addr_sum = ones_sum(frame[l3 + 12:l3 + 20])
    elif gso_type == VNET_GSO_TCPV6:
        if frame[l3] >> 4 != 6 or l3 + 40 != l4 or frame[l3 + 6] != 6:
            return None
        addr_sum = ones_sum(frame[l3 + 8:l3 + 40])
    else:
        return None
    seq = _U32.unpack_from(frame, l4 + 4)[0]
    flags = frame[l4 + 13]
    payload = bytes(frame[hend:])
    hdr = bytearray(frame[:hend])
    hdr[l4 + 16:l4 + 18] = b"\0\0"
    total = len(payload)
    out = []
    for i, off in enumerate(range(0, max(total, 1), mss)):
        chunk = payload[off:off + mss]
        seglen = thl + len(chunk)
        h = bytearray(hdr)
        if gso_type == VNET_GSO_TCPV4:
            h[l3 + 2:l3 + 4] = _U16.pack(ihl + seglen)
            h[l3 + 4:l3 + 6] = _U16.pack((ip_id + i) & 0xFFFF)
            h[l3 + 10:l3 + 12] = b"\0\0"
            h[l3 + 10:l3 + 12] = _U16.pack(checksum(h[l3:l3 + ihl]))
        else:
            h[l3 + 4:l3 + 6] = _U16.pack(seglen)
        h[l4 + 4:l4 + 8] = _U32.pack((seq + off) & 0xFFFFFFFF)
        f = flags
        if off + mss < total:
            f &= ~(_TCP_FIN | _TCP_PSH)
        if i:
            f &= ~_TCP_CWR
        h[l4 + 13] = f
        c = checksum(chunk, addr_sum + 6 + seglen + ones_sum(h[l4:]))
        h[l4 + 16:l4 + 18] = _U16.pack(c)
        out.append(bytes(h) + chunk)
    return out
