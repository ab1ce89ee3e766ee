"""The dispatcher: chooses a worker for each upcall, applies admission control, holds back duplicates.

It runs inside the datapath process (the upcall handler *is* the dispatcher, as OVS handlers read upcalls where
they arise: one hop fewer on the flow-setup path).  It owns:

- the choice: ``normalized_flow_hash(packet) % n`` — both directions of a non-NATed connection reach the same
  worker, an ICMP error reaches the worker of the flow it reports — unless the ingress port is pinned to a
  worker (``port_workers``: e.g. an uplink served by one worker);
- admission control, never blocking: a bounded number of upcalls in flight per worker and a token bucket per
  ingress port; what does not fit is dropped and counted;
- the upcalls in flight: per ``seq``, what the datapath already has of the packet — its port, frame, parsed
  packet and flow key, the worker it went to and when — so the worker's answer names only the ``seq`` and the
  packet is executed with what is kept here (``answered``): no second parse, nothing shipped back;
- held-back upcalls: while a flow's first packet is being simulated, later packets of the same flow wait here
  and are executed with the installed actions when the answer comes; bounded per flow (``max_held``) and in
  all (``max_held_total`` frames); beyond either a frame is dropped and counted (``dispatcher_held_overflow``);
- the batches: upcalls accumulate per worker and leave in one UpcallBatch (≤ ``batch`` upcalls) per flush.
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic_ns
from typing import NamedTuple

from backchannel.messages import Upcall, UpcallBatch
from packet.flowkey import normalized_flow_hash, tuple_hash
from packet.packet import ETH_TYPE_IPV4, FRAG_NONE, PROTO_TCP, PROTO_UDP

_new = tuple.__new__        # a NamedTuple built without its Python-level __new__ (one frame fewer per upcall)


class InFlight(NamedTuple):
    """An upcall sent to a worker and not answered yet (owned by the dispatcher, by seq)."""

    worker: int
    port: str
    frame: bytes
    packet: object          # the parsed packet (packet.packet.Packet)
    key: tuple              # its flow key
    sent_ns: int            # time.monotonic_ns() when it was queued (setup latency)
    sent_at: float          # the loop's clock then (reclaim)


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Dispatcher:
    def __init__(self, n_workers: int, send: Callable[[int, UpcallBatch], bool], *, max_inflight: int = 4096,
                 port_rate: float = 200_000.0, port_burst: float = 20_000.0, max_held: int = 16,
                 max_held_total: int = 16_384, batch: int = 64, port_workers: dict[str, int] | None = None):
        self.n = n_workers
        self.port_workers = port_workers or {}
        self.send = send
        self.max_inflight = max_inflight
        self.port_rate, self.port_burst = port_rate, port_burst
        self.max_held = max_held
        self.max_held_total = max_held_total
        self.held_frames = 0                            # frames in all of ``held``
        self.batch = batch
        self.inflight = [0] * n_workers
        self.pending: list[list[Upcall]] = [[] for _ in range(n_workers)]
        self.buckets: dict[str, TokenBucket] = {}
        self.held: dict[tuple, list[tuple[str, bytes, object]]] = {}   # key → frames waiting for the answer
        self.inflight_by_seq: dict[int, InFlight] = {}
        self.seq = 0
        self.quarantined: dict[tuple, float] = {}      # flow key → until when its packets are dropped
        self.counters = {"dispatcher_upcalls": 0, "dispatcher_batches": 0, "dispatcher_queue_full": 0,
                         "dispatcher_rate_limited": 0, "dispatcher_held": 0, "dispatcher_held_overflow": 0,
                         "dispatcher_send_full": 0, "dispatcher_reclaimed": 0, "dispatcher_quarantined": 0}

    def worker_for(self, pkt, port: str) -> int:
        pinned = self.port_workers.get(port) if self.port_workers else None
        if pinned is not None:
            return pinned % self.n
        proto = pkt.proto
        if (proto == PROTO_TCP or proto == PROTO_UDP) and pkt.frag == FRAG_NONE and pkt.eth_type == ETH_TYPE_IPV4 \
                and pkt.ip_src is not None:
            # the common case, straight to the 5-tuple hash: what normalized_flow_hash computes for it (an
            # unfragmented IPv4 TCP/UDP packet), two calls fewer per upcall
            return tuple_hash(proto, pkt.ip_src, pkt.tp_src, pkt.ip_dst, pkt.tp_dst) % self.n
        return normalized_flow_hash(pkt) % self.n

    def saturated(self) -> bool:
        """No worker has room for more than a few upcalls (each has at least ``max_inflight`` minus a margin
        of min(batch, max_inflight) // 4 in flight): the datapath may shed unknown frames before parsing them
        (RealDatapath.poll_ready), and the few it still parses (1 in afpacket.SHED_SAMPLE) fill that room.
        The margin keeps one answer from sending a whole read batch down the full path only to be refused
        (``dispatcher_queue_full``)."""
        m = self.max_inflight - min(self.batch, self.max_inflight) // 4
        return all(i >= m for i in self.inflight)

    def upcall(self, port: str, frame: bytes, pkt, key: tuple, now: float) -> bool:
        """A miss.  Returns False when it was held back or dropped (not sent)."""
        if self.quarantined and key in self.quarantined:
            if now < self.quarantined[key]:
                self.counters["dispatcher_quarantined"] += 1
                return False
            del self.quarantined[key]
        # one probe of ``held`` (the key is hashed once): the flow's list if it is in flight, else ``fresh`` is
        # its list from now on (taken out again if the upcall is refused below)
        fresh: list = []
        held = self.held.setdefault(key, fresh)
        if held is not fresh:
            if len(held) >= self.max_held or self.held_frames >= self.max_held_total:
                self.counters["dispatcher_held_overflow"] += 1
            else:
                held.append((port, frame, pkt))
                self.held_frames += 1
                self.counters["dispatcher_held"] += 1
            return False
        bucket = self.buckets.get(port)
        if bucket is None:
            bucket = self.buckets[port] = TokenBucket(self.port_rate, self.port_burst, now)
        if not bucket.take(now):
            del self.held[key]
            self.counters["dispatcher_rate_limited"] += 1
            return False
        w = self.worker_for(pkt, port)
        if self.inflight[w] >= self.max_inflight:
            del self.held[key]
            self.counters["dispatcher_queue_full"] += 1
            return False
        seq = self.seq = self.seq + 1
        self.inflight[w] += 1
        self.inflight_by_seq[seq] = _new(InFlight, (w, port, frame, pkt, key, monotonic_ns(), now))
        pending = self.pending[w]
        pending.append(_new(Upcall, (seq, port, frame)))
        self.counters["dispatcher_upcalls"] += 1
        if len(pending) >= self.batch:
            self._flush(w)
        return True

    def answered(self, seq: int) -> tuple[InFlight | None, list[tuple[str, bytes, object]]]:
        """The worker answered upcall ``seq``: returns (what was kept of it — None when it is not in flight
        any more: reclaimed, or its worker was purged —, the frames held back for its flow)."""
        rec = self.inflight_by_seq.pop(seq, None)
        if rec is None:
            return None, []
        self.inflight[rec.worker] -= 1
        held = self.held.pop(rec.key, None)
        if not held:
            return rec, []
        self.held_frames -= len(held)
        return rec, held

    def flush(self) -> None:
        for w in range(self.n):
            if self.pending[w]:
                self._flush(w)

    def _flush(self, w: int) -> None:
        batch, self.pending[w] = self.pending[w], []
        self.counters["dispatcher_batches"] += 1
        if not self.send(w, _new(UpcallBatch, (tuple(batch),))):
            # the worker's queue is full: these upcalls are lost; release their flows so later packets retry
            self.counters["dispatcher_send_full"] += len(batch)
            for up in batch:
                self.answered(up.seq)

    def reclaim(self, now: float, older_than_s: float = 10.0) -> int:
        """Upcalls unanswered for too long (a lost message, a stuck worker) stop counting as in flight, so
        admission control cannot wedge; their held frames are dropped.  Counted."""
        late = [seq for seq, rec in self.inflight_by_seq.items() if now - rec.sent_at > older_than_s]
        for seq in late:
            self.answered(seq)
        self.counters["dispatcher_reclaimed"] += len(late)
        return len(late)

    def quarantine(self, key: tuple, until: float, max_keys: int = 1024) -> bool:
        """Drop the packets of flow ``key`` until ``until`` (a key that was in flight when its worker crashed,
        twice).  Bounded: beyond ``max_keys`` the oldest is let go.  False when it was quarantined already."""
        new = key not in self.quarantined
        self.quarantined[key] = until
        while len(self.quarantined) > max_keys:
            del self.quarantined[next(iter(self.quarantined))]
        return new

    def forget_worker(self, w: int) -> int:
        """A worker died: its in-flight upcalls will never be answered.  Returns how many were dropped."""
        lost = [seq for seq, rec in self.inflight_by_seq.items() if rec.worker == w]
        for seq in lost:
            self.answered(seq)
        self.inflight[w] = 0
        self.pending[w] = []
        return len(lost)
