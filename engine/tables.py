"""The agent's side of the replicated MAC and ARP tables (topology.store.tables) — a shell of the supervisor.

Owns one MacTable per bridge and one ArpTable per router, all written under this agent's name (its host) and
kept by one OwnedEntries (so they come back after a session loss), plus this agent's host registration.

- What a local worker learned (MacLearned / ArpLearned sent to the supervisor) is written to the table:
  the entry is ephemeral and owned by this agent.
- What another agent learned arrives through the table's watches and is relayed to every local worker
  (``relay(msg)``, called on the store's delivery thread: the supervisor queues it for its socket thread).
- An entry that vanished (its owner's session died, or it expired) is relayed as TableEntryRemoved: workers
  forget it and invalidate the flows tagged with it.

Bounded: the store's tables are shared by every agent, so a VM spraying source MACs (or ARP replies) must not
turn into as many store writes.  A local entry is written only
- while the device's table (every agent's entries) is under its cap (``max_macs_per_bridge``,
  ``max_arps_per_router``; counted ``tables_full_refused``), and
- within the write rate of its port (MACs) or router (ARP): a token bucket of ``learn_rate`` writes/s and
  ``learn_burst`` (counted ``tables_learn_rate_limited``).  A refresh of an entry that is ours already costs
  no write and no token.
What is refused stays learned in the worker that learned it (and its agent's other workers): the other agents
flood to that MAC or ARP themselves, and the worker sends it again when it learns it again.  A write the
store failed (quorum lost) is kept (``unwritten``, at most MAX_UNWRITTEN, the newest per key) and written
again when the session is connected again (``retry_unwritten``; ``tables_rewritten``).

Threading: every method but ``stats`` runs on the supervisor's store-call thread of the tables lane
(engine/storecalls.py), one call at a time; the watches' callbacks run on the store's dispatcher thread.

Times are wall-clock (``time.time()``), as the tables compare them across hosts; the rate limit uses
``clock`` (monotonic).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from backchannel import messages as m
from engine.dispatcher import TokenBucket
from topology.store.base import StoreError
from topology.store.registry import register_host
from topology.store.session import OwnedEntries
from topology.store.tables import ArpTable, MacTable

log = logging.getLogger(__name__)
MAX_UNWRITTEN = 4096                # learned entries kept for a retry after the store failed their write


class SharedTables:
    def __init__(self, store, owner: str, relay: Callable[[tuple], None], mac_expiry_s: float = 600.0, *,
                 max_macs_per_bridge: int = 4096, max_arps_per_router: int = 4096, learn_rate: float = 20.0,
                 learn_burst: float = 100.0, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.owner = owner
        self.relay = relay
        self.mac_expiry_s = mac_expiry_s
        self.max_macs_per_bridge, self.max_arps_per_router = max_macs_per_bridge, max_arps_per_router
        self.learn_rate, self.learn_burst = learn_rate, learn_burst
        self.clock = clock
        self.buckets: dict[tuple[str, str], TokenBucket] = {}     # ("port", id) / ("router", name) → writes
        self.owned = OwnedEntries(store)
        self.macs: dict[str, MacTable] = {}
        self.arps: dict[str, ArpTable] = {}
        self.counters = {"tables_local_writes": 0, "tables_remote_relayed": 0, "tables_removed_relayed": 0,
                         "tables_write_errors": 0, "tables_learn_rate_limited": 0, "tables_full_refused": 0,
                         "tables_rewritten": 0, "tables_unwritten_dropped": 0}
        self.unwritten: dict[tuple, tuple] = {}      # (kind, device, key) → the learned message, oldest first

    def register(self, tunnel_ip: int) -> None:
        register_host(self.store, self.owner, tunnel_ip, self.owned)

    def watch_device(self, kind: str, name: str) -> None:
        """Subscribe to the table of a bridge or router (idempotent)."""
        if kind == "bridge" and name not in self.macs:
            self.macs[name] = MacTable(self.store, name, self.owner, self.mac_expiry_s,
                                       on_change=self._changed(name), owned=self.owned)
        elif kind == "router" and name not in self.arps:
            self.arps[name] = ArpTable(self.store, name, self.owner, on_change=self._changed(name),
                                       owned=self.owned)

    def _changed(self, device: str):
        def cb(kind, key, old, new):
            if new is not None:
                if new.owner == self.owner:
                    return
                self.counters["tables_remote_relayed"] += 1
                if kind == "mac":
                    vlan, mac = key
                    self.relay(m.MacLearned(device, vlan, mac, new.port, -1))
                else:
                    self.relay(m.ArpLearned(device, key, new.mac, -1))
            elif old is not None:
                self.counters["tables_removed_relayed"] += 1
                if kind == "mac":
                    vlan, mac = key
                    self.relay(m.TableEntryRemoved("mac", device, vlan, mac))
                else:
                    self.relay(m.TableEntryRemoved("arp", device, 0, key))
        return cb

    def learned(self, msg) -> bool:
        """A local worker learned an entry: write it as ours, unless the table is full or the port (router) is
        over its write rate.  True when it was written (or refreshed)."""
        now = time.time()
        try:
            if type(msg) is m.MacLearned:
                self.watch_device("bridge", msg.bridge)
                table = self.macs[msg.bridge]
                if not table.is_current(msg.mac, msg.port, msg.vlan):      # else a refresh: no write
                    have = table.entry((msg.vlan, msg.mac))
                    if not self._admit(table, have, self.max_macs_per_bridge, ("port", msg.port)):
                        return False
                table.learn(msg.mac, msg.port, now, msg.vlan)
            else:
                self.watch_device("router", msg.router)
                table = self.arps[msg.router]
                if not self._admit(table, table.entry(msg.ip), self.max_arps_per_router, ("router", msg.router)):
                    return False
                table.put(msg.ip, msg.mac, now)
            self.counters["tables_local_writes"] += 1
            return True
        except StoreError as e:
            self.counters["tables_write_errors"] += 1
            log.warning("replicated table write failed (written again once the store is back): %s", e)
            self._keep_unwritten(msg)
            return False

    def _keep_unwritten(self, msg) -> None:
        key = ("mac", msg.bridge, msg.vlan, msg.mac) if type(msg) is m.MacLearned else ("arp", msg.router, msg.ip)
        self.unwritten.pop(key, None)
        if len(self.unwritten) >= MAX_UNWRITTEN:
            del self.unwritten[next(iter(self.unwritten))]
            self.counters["tables_unwritten_dropped"] += 1
        self.unwritten[key] = msg

    def retry_unwritten(self) -> int:
        """Write again what the store failed to take (the session is connected again); how many were written."""
        pending, self.unwritten = self.unwritten, {}
        n = 0
        for msg in pending.values():
            if self.learned(msg):
                n += 1
        self.counters["tables_rewritten"] += n
        return n

    def _admit(self, table, have, cap: int, bucket_key: tuple[str, str]) -> bool:
        """Whether a store write for a learned entry may happen: room in ``table`` for a new key, and a token of
        ``bucket_key``'s write rate."""
        if have is None and table.held() >= cap:      # writes in flight count: the mirror lags behind them
            self.counters["tables_full_refused"] += 1
            return False
        now = self.clock()
        bucket = self.buckets.get(bucket_key)
        if bucket is None:
            bucket = self.buckets[bucket_key] = TokenBucket(self.learn_rate, self.learn_burst, now)
        if not bucket.take(now):
            self.counters["tables_learn_rate_limited"] += 1
            return False
        return True

    def tick(self) -> None:
        now = time.time()
        for t in (*self.macs.values(), *self.arps.values()):
            try:
                t.tick(now)
            except StoreError:
                self.counters["tables_write_errors"] += 1

    def stats(self) -> dict:
        out = dict(self.counters)
        out["tables_unwritten_now"] = len(self.unwritten)
        for t in (*list(self.macs.values()), *list(self.arps.values())):
            for k, v in t.counters.items():
                out[k] = out.get(k, 0) + v
        return out

    def close(self) -> None:
        for t in (*self.macs.values(), *self.arps.values()):
            t.close()
        self.owned.close()
