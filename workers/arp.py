"""A worker's neighbor broker: outstanding next-hop resolutions of this worker's routers, retries and timeouts.

Owns the pending resolutions (router, ip) → (egress port, the request packet, first sent, next retry), for
either family: an ip below 2**32 is IPv4 (the request is an ARP request), above it IPv6 (a neighbor
solicitation to the solicited-node address).  Each worker resolves on its own.  The simulation produces the
first request (a generated packet) together with the NeedArp result; the broker retries it with jitter until
the answer is learned (by any worker: the ArpLearned broadcast reaches every worker) or the timeout fails the
waiters.  Entries of the neighbor table that are stale but still used are refreshed with a new request before
they expire.  Counters: ``arp_*`` for IPv4, ``nd_*`` for IPv6 (requests, retries, resolved, timeouts,
refreshes).
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
        self.counters = {f"{fam}_{what}": 0 for fam in ("arp", "nd")
                         for what in ("requests", "retries", "resolved", "timeouts", "refreshes")}

    def _jitter(self) -> float:
        return self.retry_s * (0.75 + 0.5 * self.rng.random())

    def request(self, router: str, ip: int, port: str, pkt: Packet, now: float) -> bool:
        """Track a request the simulation generated.  True if it is new (send it now)."""
        key = (router, ip)
        if key in self.pending:
            return False
        self.pending[key] = [port, pkt, now, now + self._jitter()]
        self.counters[_fam(key[1]) + "_requests"] += 1
        return True

    def resolved(self, router: str, ip: int) -> bool:
        key = (router, ip)
        if self.pending.pop(key, None) is not None:
            self.counters[_fam(key[1]) + "_resolved"] += 1
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
                self.counters[_fam(key[1]) + "_timeouts"] += 1
            elif now >= next_retry:
                entry[3] = now + self._jitter()
                resend.append((port, pkt))
                self.counters[_fam(key[1]) + "_retries"] += 1
        return resend, failed

    def refresh(self, router: str, ip: int, port: str, pkt: Packet, now: float) -> bool:
        """Ask again for an entry that is stale but still in use; True if a request should go out now."""
        key = (router, ip)
        if self.request(router, ip, port, pkt, now):
            self.counters[_fam(key[1]) + "_refreshes"] += 1
            return True
        return False

    def next_deadline(self) -> float | None:
        return min((e[3] for e in self.pending.values()), default=None)


def _fam(ip: int) -> str:
    return "arp" if ip <= 0xFFFFFFFF else "nd"
