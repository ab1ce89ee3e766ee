"""The store shell: what the workers ask of the store, and what the store tells the workers and the datapath.

Owns the requests of the workers and the relay of store changes, run on the service thread (engine/service.py,
which reads the sockets and calls in here; ``send(target, msg)`` is its non-blocking send):

- FragmentRequest: the topology records of an object, from the mirror.  One that does not exist (yet) is
  answered "absent" and remembered (``awaited``); ``push_awaited`` sends it once it exists — the service calls
  it when an edit settled, as the records of one edit land one by one.
- LeaseRequest / LeaseRelease: SNAT port blocks, leased in the store under ``cfg.lease_owner(worker)``.  The
  answer is LeaseGranted (a block, or -1: the range is exhausted) or LeaseFailed (the store did not answer in
  time, the store-call queue was full, the call failed: ``supervisor_lease_<reason>``).
- MacLearned / ArpLearned from a local worker: written to the replicated tables (engine/tables.py).

Every store call (leases, releases, table writes, ticks and subscriptions) runs on the store-call executor
(engine/storecalls.py), never here: this thread only submits them and handles their results (``calls``).
- A topology change: TopologyChanged to every worker, a new port map to the datapath (SetPortMap, no answer
  wanted); with the real datapath a port that moved here asks its previous host for its flow state.
- An entry another agent learned or removed (the tables' relay): sent to every worker; so is a change of the
  store session's state (StoreStatus), and on "connected" the table writes that failed meanwhile are retried.
- A StateRequest from another host (authenticated by the datapath): answered by our workers only when the
  store says the port now lives on the requester, once per (host, port) every few seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from backchannel import messages as m
from engine import portmap
from engine.storecalls import StoreCalls
from packet.addr import int2ip
from topology.store.base import StoreError

DP = m.DATAPATH_INDEX
STATE_REQUEST_WAIT_S = 5.0         # a state request waits this long for our mirror to see the port's move
STATE_REQUEST_EVERY_S = 5.0        # at most one answer per (host, port) this often
MAX_WAITING_STATE_REQUESTS = 1024
log = logging.getLogger(__name__)


class StoreShell:
    def __init__(self, cfg, counters: dict, mirror, tables, allocator, send: Callable[[int, tuple], bool],
                 calls: StoreCalls):
        self.cfg = cfg
        self.counters = counters                       # the agent's: supervisor_<event>
        for name in ("supervisor_fragment_requests", "supervisor_lease_requests", "supervisor_topology_changes"):
            counters.setdefault(name, 0)
        self.mirror, self.tables, self.allocator = mirror, tables, allocator
        self.send = send
        self.calls = calls
        self._tick_pending = False
        self.awaited: dict[tuple[str, str], set[int]] = {}     # (kind, name) → workers waiting for it
        self.bound: dict[str, str] = {}                # real datapath: port id → host, as last seen
        self.state_requests: dict[tuple[str, str], float] = {}  # (requester, port) → until when it may wait
        self.state_answered: dict[tuple[str, str], float] = {}  # (requester, port) → when it was last answered

    def _workers(self):
        return range(self.cfg.workers)

    # -- requests of the workers -----------------------------------------------------------------------------
    def handle(self, msg) -> bool:
        """Serve one request of a worker; False when ``msg`` is not one."""
        t = type(msg)
        if t is m.FragmentRequest:
            self.counters["supervisor_fragment_requests"] += 1
            records = self.mirror.fragment(msg.kind, msg.name)
            if records[0][2] is None:                  # not there (yet): push it when it appears
                self.awaited.setdefault((msg.kind, msg.name), set()).add(msg.worker)
            if 0 <= msg.worker < self.cfg.workers:
                self.send(msg.worker, m.Fragment(msg.kind, msg.name, records))
        elif t is m.LeaseRequest:
            self.counters["supervisor_lease_requests"] += 1
            self._lease(msg)
        elif t is m.LeaseRelease:
            if not self.calls.submit("leases", self.allocator.release, self.cfg.lease_owner(msg.worker), msg.device,
                                     msg.ip, msg.block, done=self._released):
                self._count("supervisor_lease_releases_refused")   # the block stays ours until the session ends
        elif t is m.MacLearned or t is m.ArpLearned:
            if not self.calls.submit("tables", self.tables.learned, msg):
                self._count("supervisor_table_writes_refused")
        elif t is m.StateRequest:
            self._state_request(msg, time.monotonic())
        else:
            return False
        return True

    # -- store calls (submitted here, run on the executor, their results handled here) ------------------------
    def _lease(self, msg: m.LeaseRequest) -> None:
        w = msg.worker
        if not 0 <= w < self.cfg.workers:
            self._count("supervisor_lease_requests_refused")
            return

        def done(block, error) -> None:
            if error is not None:
                reason = "store_unavailable" if isinstance(error, StoreError) else "store_error"
                self._count(f"supervisor_lease_{reason}")
                if reason == "store_error":
                    log.warning("SNAT lease on %s for %s failed: %s: %s", msg.device, int2ip(msg.ip),
                                type(error).__name__, error)
                self.send(w, m.LeaseFailed(msg.device, msg.ip, reason))
                return
            if block is None:
                log.warning("SNAT: no free port block on %s for %s ports %d-%d (worker %d): its packets are dropped",
                            msg.device, int2ip(msg.ip), msg.port_start, msg.port_end, w)
            self.send(w, m.LeaseGranted(msg.device, msg.ip, -1 if block is None else block))

        if not self.calls.submit("leases", self.allocator.lease, self.cfg.lease_owner(w), msg.device, msg.ip,
                                 msg.port_start, msg.port_end, done=done):
            self._count("supervisor_lease_store_busy")
            self.send(w, m.LeaseFailed(msg.device, msg.ip, "store_busy"))

    def _released(self, _result, error) -> None:
        if error is not None:                          # the node goes with the session, or stays ours
            self._count("supervisor_lease_release_errors")

    def tick(self) -> None:
        """The replicated tables' periodic work (expiry of our entries), one at a time on the tables lane."""
        if self._tick_pending:
            return

        def done(_result, _error) -> None:
            self._tick_pending = False

        self._tick_pending = self.calls.submit("tables", self.tables.tick, done=done)

    # -- state requests from other hosts (authenticated by the datapath, checked here) ---------------------------
    def _state_request(self, msg: m.StateRequest, now: float) -> None:
        """Another host says port ``msg.port`` moved to it: its flow state is sent there only if the store says
        so (the request may arrive before our mirror saw the move: it waits up to STATE_REQUEST_WAIT_S), and at
        most once per STATE_REQUEST_EVERY_S per (host, port)."""
        key = (msg.requester, msg.port)
        last = self.state_answered.get(key)
        if last is not None and now - last < STATE_REQUEST_EVERY_S:
            self._count("supervisor_state_requests_rate_limited")
            return
        if portmap.bindings(self.mirror.objects).get(msg.port) != msg.requester:
            if key not in self.state_requests and len(self.state_requests) >= MAX_WAITING_STATE_REQUESTS:
                self._count("supervisor_state_requests_refused")
                return
            self.state_requests.setdefault(key, now + STATE_REQUEST_WAIT_S)
            return
        self.state_requests.pop(key, None)
        if len(self.state_answered) >= MAX_WAITING_STATE_REQUESTS:
            self.state_answered = {k: t for k, t in self.state_answered.items() if now - t < STATE_REQUEST_EVERY_S}
        self.state_answered[key] = now
        self._count("supervisor_state_requests_answered")
        for i in self._workers():
            self.send(i, msg)

    def _recheck_state_requests(self, now: float) -> None:
        for (requester, port), until in list(self.state_requests.items()):
            if now > until:
                del self.state_requests[(requester, port)]
                self._count("supervisor_state_requests_refused")
            else:
                self._state_request(m.StateRequest(requester, port), now)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def push_awaited(self) -> None:
        """Objects workers asked for that did not exist: send those that exist now."""
        for (kind, name), workers in list(self.awaited.items()):
            records = self.mirror.fragment(kind, name)
            if records[0][2] is None:
                continue
            del self.awaited[(kind, name)]
            for w in workers:
                self.send(w, m.Fragment(kind, name, records))

    # -- changes from the store ------------------------------------------------------------------------------
    def relay(self, msg) -> None:
        """A replicated-table entry another agent learned, or one that vanished: to every worker; the live
        hosts (the registry changed): to the datapath."""
        if type(msg) is m.SetLiveHosts:
            self.send(DP, msg)
            return
        if type(msg) is m.StoreStatus and msg.state == "connected":
            self.calls.submit("tables", self.tables.retry_unwritten)
        for i in self._workers():
            self.send(i, msg)

    def topology_changed(self, kind: str, name: str) -> None:
        self.counters["supervisor_topology_changes"] += 1
        if self.state_requests:
            self._recheck_state_requests(time.monotonic())
        if kind in portmap.DEVICE_KINDS and self.mirror.get(kind, name) is not None:
            self.calls.submit("tables", self.tables.watch_device, kind, name)
        if kind in (*portmap.DEVICE_KINDS, "host"):
            self.send(DP, portmap.set_port_map(0, portmap.port_map(self.mirror.objects, self.cfg.host)))
            if self.cfg.datapath == "real":
                self._fetch_moved_state()
        for i in self._workers():
            self.send(i, m.TopologyChanged(kind, name))

    def note_bindings(self) -> None:
        """Remember the port bindings as they are now (real datapath, at start): moves are seen from here."""
        self.bound = portmap.bindings(self.mirror.objects)

    def _fetch_moved_state(self) -> None:
        """Ports moved here: ask their previous hosts for their flow state."""
        self.bound, requests = portmap.moved_state_requests(self.bound, self.mirror.objects, self.cfg.host)
        for msg in requests:
            self.counters["supervisor_state_fetches"] = self.counters.get("supervisor_state_fetches", 0) + 1
            self.send(DP, msg)
