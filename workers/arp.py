"""A worker's ARP broker: outstanding ARP requests of this worker's routers, retries and timeouts.

Owns the pending resolutions (router, ip) → (egress port, the ARP request packet, first sent, next retry).
Each worker ARPs on its own.  The simulation produces the first ARP request (a generated packet) together with
the NeedArp result; the broker retries it with jitter until the reply is learned (by any worker: the
ArpLearned broadcast reaches every worker) or the timeout fails the waiters.  Entries of the ARP table that are
stale but still used are refreshed with a new request before they expire.
"""

from __future__ import annotations

import random

from packet.packet import Packet


class ArpBroker:
    def __init__(self, retry_s: float = 1.0, timeout_s: float = 5.0, seed: int | None = None):
        self.retry_s = retry_s
        self.timeout_s = timeout_s
        self.rng = random.Random(seed)
        self.pending: dict[tuple[str, int], list] = {}      # → [port, packet, first_sent, next_retry]
        self.counters = {"arp_requests": 0, "arp_retries": 0, "arp_resolved": 0, "arp_timeouts": 0,
                         "arp_refreshes": 0}

    def _jitter(self) -> float:
        return self.retry_s * (0.75 + 0.5 * self.rng.random())

    def request(self, router: str, ip: int, port: str, pkt: Packet, now: float) -> bool:
        """Track a request the simulation generated.  True if it is new (send it now)."""
        key = (router, ip)
        if key in self.pending:
            return False
        self.pending[key] = [port, pkt, now, now + self._jitter()]
        self.counters["arp_requests"] += 1
        return True

    def resolved(self, router: str, ip: int) -> bool:
        if self.pending.pop((router, ip), None) is not None:
            self.counters["arp_resolved"] += 1
            return True
        return False

    def tick(self, now: float) -> tuple[list[tuple[str, Packet]], list[tuple[str, int]]]:
        """(requests to send again, (router, ip) resolutions that timed out)."""
        resend, failed = [], []
        for key, entry in list(self.pending.items()):
            port, pkt, first, next_retry = entry
            if now - first >= self.timeout_s:
                del self.pending[key]
                failed.append(key)
                self.counters["arp_timeouts"] += 1
            elif now >= next_retry:
                entry[3] = now + self._jitter()
                resend.append((port, pkt))
                self.counters["arp_retries"] += 1
        return resend, failed

    def refresh(self, router: str, ip: int, port: str, pkt: Packet, now: float) -> bool:
        """Re-ARP an entry that is stale but still in use; True if a request should go out now."""
        if self.request(router, ip, port, pkt, now):
            self.counters["arp_refreshes"] += 1
            return True
        return False

    def next_deadline(self) -> float | None:
        return min((e[3] for e in self.pending.values()), default=None)
