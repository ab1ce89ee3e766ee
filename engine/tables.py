"""The agent's side of the replicated MAC and ARP tables (topology.store.tables) — a shell of the supervisor.

Owns one MacTable per bridge and one ArpTable per router, all written under this agent's name (its host) and
kept by one OwnedEntries (so they come back after a session loss), plus this agent's host registration.

- What a local worker learned (MacLearned / ArpLearned sent to the supervisor) is written to the table:
  the entry is ephemeral and owned by this agent.
- What another agent learned arrives through the table's watches and is relayed to every local worker
  (``relay(msg)``, called on the store's delivery thread: the supervisor queues it for its socket thread).
- An entry that vanished (its owner's session died, or it expired) is relayed as TableEntryRemoved: workers
  forget it and invalidate the flows tagged with it.

Times are wall-clock (``time.time()``), as the tables compare them across hosts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from backchannel import messages as m
from topology.store.base import StoreError
from topology.store.registry import register_host
from topology.store.session import OwnedEntries
from topology.store.tables import ArpTable, MacTable

log = logging.getLogger(__name__)


class SharedTables:
    def __init__(self, store, owner: str, relay: Callable[[tuple], None], mac_expiry_s: float = 600.0):
        self.store = store
        self.owner = owner
        self.relay = relay
        self.mac_expiry_s = mac_expiry_s
        self.owned = OwnedEntries(store)
        self.macs: dict[str, MacTable] = {}
        self.arps: dict[str, ArpTable] = {}
        self.counters = {"tables_local_writes": 0, "tables_remote_relayed": 0, "tables_removed_relayed": 0,
                         "tables_write_errors": 0}

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

    def learned(self, msg) -> None:
        """A local worker learned an entry: write it as ours."""
        now = time.time()
        try:
            if type(msg) is m.MacLearned:
                self.watch_device("bridge", msg.bridge)
                self.macs[msg.bridge].learn(msg.mac, msg.port, now, msg.vlan)
            else:
                self.watch_device("router", msg.router)
                self.arps[msg.router].put(msg.ip, msg.mac, now)
            self.counters["tables_local_writes"] += 1
        except StoreError as e:
            self.counters["tables_write_errors"] += 1
            log.warning("replicated table write failed: %s", e)

    def tick(self) -> None:
        now = time.time()
        for t in (*self.macs.values(), *self.arps.values()):
            try:
                t.tick(now)
            except StoreError:
                self.counters["tables_write_errors"] += 1

    def stats(self) -> dict:
        out = dict(self.counters)
        for t in (*self.macs.values(), *self.arps.values()):
            for k, v in t.counters.items():
                out[k] = out.get(k, 0) + v
        return out

    def close(self) -> None:
        for t in (*self.macs.values(), *self.arps.values()):
            t.close()
        self.owned.close()
