"""The agent's store session: the store, the topology mirror, the NAT block allocator, the replicated tables,
the deployment keys — opened in that order, closed in the reverse one — and the session's connection state.

Owns: the store handle (topology.store.uri), the StoreMirror (topology.mirror: the records the workers' fragments
come from), the StoreNatAllocator (SNAT blocks leased as ephemeral nodes, so agents sharing a store never hold
the same block), the SharedTables (engine/tables.py: replicated MAC/ARP tables, this host's registration), and
``state`` (connected | suspended | lost), followed through the store's state listener, logged once per change
(``supervisor_store_connected``, ``supervisor_store_state_changes``) and relayed to the workers (StoreStatus).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from backchannel import messages as m
from engine import portmap
from engine.tables import SharedTables
from topology.loader import load_topology
from topology.mirror import StoreMirror
from topology.store.leases import StoreNatAllocator
from topology.store.registry import HostWatcher
from topology.store.secrets import SecretsError, flow_state_keys, parse_keys
from topology.store.topo import read_tunnel_keys, write_topology
from topology.store.uri import open_store

log = logging.getLogger(__name__)


class SessionError(RuntimeError):
    pass


class StoreSession:
    def __init__(self, cfg, counters: dict):
        self.cfg = cfg
        self.counters = counters                       # the agent's: supervisor_store_<event>
        self.store = None
        self.mirror: StoreMirror | None = None
        self.allocator: StoreNatAllocator | None = None
        self.tables: SharedTables | None = None
        self.state = "connected"
        counters["supervisor_store_connected"] = 1
        counters["supervisor_store_state_changes"] = 0
        self._sub = None
        self.live: HostWatcher | None = None
        self._live: dict[str, object] = {}
        self._relay: Callable[[tuple], None] | None = None

    def open(self, on_change: Callable[[str, str], None], relay: Callable[[tuple], None]) -> None:
        """Open everything; a given topology file is written into the store first (a diff)."""
        cfg = self.cfg
        self.store = open_store(cfg.store)
        self._sub = self.store.add_state_listener(self._on_state)
        if cfg.topology:
            write_topology(self.store, load_topology(cfg.topology, tunnel_keys=read_tunnel_keys(self.store)))
        self.mirror = StoreMirror(self.store, on_change)
        if not self.mirror.wait_ready(cfg.start_timeout_s):
            raise SessionError("the topology store did not answer")
        self.allocator = StoreNatAllocator(self.store, cfg.host or "agent")
        self.tables = SharedTables(self.store, cfg.host or "agent", relay,
                                   max_macs_per_bridge=cfg.max_macs_per_bridge,
                                   max_arps_per_router=cfg.max_arps_per_router, learn_rate=cfg.learn_rate,
                                   learn_burst=cfg.learn_burst)
        for kind in portmap.DEVICE_KINDS:
            for name in [n for (k, n) in list(self.mirror.objects) if k == kind]:
                self.tables.watch_device(kind, name)
        host = self.host()
        if host is not None:
            self.tables.register(host.tunnel_ip)
        self._relay = relay
        self.live = HostWatcher(self.store, self._live_changed)
        self._live.update(self.live.hosts())

    def live_hosts(self) -> m.SetLiveHosts:
        """The hosts whose agent is alive now, as the datapath's command (no answer wanted)."""
        return m.SetLiveHosts(0, tuple(sorted(self._live)))

    def _live_changed(self, name: str, old, new) -> None:
        """The host registry changed (store thread): a host's agent came or went."""
        if new is None:
            self._live.pop(name, None)
        else:
            self._live[name] = new
        if self._relay is not None:
            self._relay(self.live_hosts())

    def host(self):
        """This agent's host record (None without a host name, or when the topology has none)."""
        return self.mirror.get("host", self.cfg.host) if self.cfg.host and self.mirror else None

    def flow_state_keys(self) -> tuple[bytes, ...]:
        """The deployment keys of the flow-state tunnel: the configuration's, else the store's (made there by
        the first agent that found none)."""
        try:
            if self.cfg.flow_state_keys:
                return parse_keys(self.cfg.flow_state_keys, "flow_state_keys")
            return flow_state_keys(self.store)
        except SecretsError as e:
            raise SessionError(str(e)) from None

    def stats(self) -> dict:
        """The mirror's, the tables' and the store's own counters (suspensions, expiries, reconnects)."""
        store = getattr(self.store, "counters", None) or {}
        return {**(self.mirror.counters if self.mirror else {}), **(self.tables.stats() if self.tables else {}),
                **{k: v for k, v in store.items() if k.startswith("store_")}}

    def _on_state(self, state) -> None:
        """The store's connection state changed (store thread): one line per change; the workers hear of it."""
        previous, self.state = self.state, str(state)
        if previous == self.state:
            return
        self.counters["supervisor_store_connected"] = int(self.state == "connected")
        self.counters["supervisor_store_state_changes"] += 1
        if self._relay is not None:
            self._relay(m.StoreStatus(self.state))
        if self.state == "suspended":
            log.warning("store connection lost (%s): cached topology keeps forwarding, store requests wait",
                        self.cfg.store)
        elif self.state == "lost":
            log.warning("store session expired (%s): owned entries are written again on reconnect", self.cfg.store)
        elif previous != "connected":
            log.info("store connected again (%s) after %s", self.cfg.store, previous)

    def close(self) -> None:
        if self.live is not None:
            self.live.close()
        if self.tables is not None:
            self.tables.close()
        if self.mirror is not None:
            self.mirror.close()
        if self._sub is not None:
            self._sub.cancel()
        if self.store is not None:
            self.store.close()
