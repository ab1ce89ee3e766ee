"""NAT port-block leases in a coordination store: the NatAllocator of topology.nat_leases for many agents.

Owns the lease layout and the leasing protocol::

    /nat/<device>/<ip>/<block>    EPHEMERAL, value {"owner": "<lease owner>", "agent": "<agent>", "session": id}

(``<device>`` percent-encoded as in topology.store.topo, ``<ip>`` dotted, ``<block>`` the decimal first port
of a 64-port block aligned on 64; see ``nat_leases.blocks_in_range`` — a block may stick out of the range,
the caller hands out only ports inside it.)

Leasing: list the (device, ip) directory, pick a free block of the range at random and create its node,
ephemeral — the create is the atomic claim: NodeExists means another agent won the race, so try another free
block (``nat_lease_races``).  When every block of the range is held, the *least recently idled* block among
those this allocator holds but has marked idle (``mark_idle``) is reused in place — no store round trip
(``nat_reclaimed``).  Else the lease fails: ``None`` and ``nat_exhausted`` (the caller drops and counts).
Blocks are never taken from other agents.

Releasing: ``release`` deletes the node (only if its value still names this agent); ``release_idle(now, idle_s)``
releases the blocks idle for ``idle_s``; every block of an agent vanishes with its session (``close`` or
expiry).  After a session loss the held blocks are re-created (``OwnedEntries``); a block another agent took
in between is given up: ``nat_blocks_lost`` and ``on_lost(device, ip, block)``.  From the new session
until that re-creation is done ``confirmed`` is False: the caller should hand out no new port then (between
the expiry itself and the client noticing it, at most a session timeout, nobody can know: inherent).
Counters: ``nat_leases``, ``nat_releases``, ``nat_exhausted``, ``nat_lease_races``, ``nat_reclaimed``,
``nat_blocks_lost``.  Thread-safe.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable

from packet.addr import int2ip
from topology.nat_leases import BLOCK_SIZE, random_free_blocks
from topology.store.base import BadVersion, ConnState, NodeExists, NoNode, Store
from topology.store.session import OwnedEntries
from topology.store.topo import node_name

NAT_ROOT = "/nat"

BlockKey = tuple[str, int, int]          # (device, ip, block start)


class BadLeaseRequest(ValueError):
    """A lease request with a bad device, address or port range."""


def lease_dir(device: str, ip: int) -> str:
    return f"{NAT_ROOT}/{node_name(device)}/{int2ip(ip)}"


def _check(device: object, ip: object, port_start: object, port_end: object) -> None:
    if not isinstance(device, str) or not device:
        raise BadLeaseRequest(f"device must be a non-empty string: {device!r}")
    if isinstance(ip, bool) or not isinstance(ip, int) or not 0 <= ip <= 0xFFFFFFFF:
        raise BadLeaseRequest(f"ip must be an IPv4 address as int: {ip!r}")
    for p in (port_start, port_end):
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 65535:
            raise BadLeaseRequest(f"port must be an int in 0..65535: {p!r}")
    if port_start > port_end:
        raise BadLeaseRequest(f"empty port range {port_start}-{port_end}")


class StoreNatAllocator:
    """One agent's leases on one store handle.  ``owner`` names the agent (unique per agent)."""

    def __init__(self, store: Store, owner: str, seed: int | None = None,
                 on_lost: Callable[[str, int, int], object] | None = None, owned: OwnedEntries | None = None):
        if not isinstance(owner, str) or not owner:
            raise ValueError("owner must be a non-empty string")
        self.store, self.owner, self.on_lost = store, owner, on_lost
        self._own_owned = owned is None
        self.owned = owned if owned is not None else OwnedEntries(store)
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._held: dict[BlockKey, str] = {}          # block → lease owner
        self._idle: dict[BlockKey, float] = {}        # held block → idle since
        self._session = store.session_id            # the session our held blocks are known to live in
        self.counters = {f"nat_{n}": 0 for n in (
            "leases", "releases", "exhausted", "lease_races", "reclaimed", "blocks_lost")}
        # registered after OwnedEntries' listener: runs after its re-creation on CONNECTED
        self._sub = store.add_state_listener(self._on_state)

    def _on_state(self, state: ConnState) -> None:
        if state is ConnState.CONNECTED:          # after OwnedEntries re-created (or gave up) our blocks
            self._session = self.store.session_id

    @property
    def confirmed(self) -> bool:
        """False from a new session until the held blocks have been re-created in it."""
        return self._session == self.store.session_id

    def _value(self, owner: str) -> Callable[[], bytes]:
        return lambda: json.dumps({"owner": owner, "agent": self.owner, "session": self.store.session_id},
                                  separators=(",", ":")).encode()

    def _lost(self, key: BlockKey) -> Callable[[str], None]:
        def lost(_path: str) -> None:
            with self._lock:
                self._held.pop(key, None)
                self._idle.pop(key, None)
            self.counters["nat_blocks_lost"] += 1
            if self.on_lost is not None:
                self.on_lost(*key)
        return lost

    # -- NatAllocator ---------------------------------------------------------------------------------
    def lease(self, owner: str, device: str, ip: int, port_start: int, port_end: int) -> int | None:
        """Lease a free block of ``port_start..port_end`` for ``owner``; its first port, or None."""
        _check(device, ip, port_start, port_end)
        directory = lease_dir(device, ip)
        try:
            present = set(self.store.children(directory))
        except NoNode:
            present = set()
        for block in random_free_blocks(port_start, port_end, lambda b: str(b) in present, self._rng):
            key = (device, ip, block)
            try:
                self.owned.create(f"{directory}/{block}", self._value(owner), self._lost(key))
            except NodeExists:
                self.counters["nat_lease_races"] += 1
                continue
            with self._lock:
                self._held[key] = owner
            self.counters["nat_leases"] += 1
            return block
        return self._reclaim(owner, device, ip, port_start, port_end)

    def claim(self, owner: str, device: str, ip: int, block: int) -> bool:
        """Lease this exact block (an agent restoring the SNAT bindings it saved before a restart).  A node
        left by this agent's previous session (not yet expired) is taken over; another agent's is not."""
        key = (device, ip, block)
        path = f"{lease_dir(device, ip)}/{block}"
        for _ in range(2):
            try:
                self.owned.create(path, self._value(owner), self._lost(key))
            except NodeExists:
                try:
                    data, version = self.store.get(path)
                    held = json.loads(data)
                    if held.get("agent") != self.owner:
                        return False                          # another agent holds it now
                    if held.get("session") == self.store.session_id:
                        return True                           # already ours
                    self.store.delete(path, version)          # our previous session's lease
                except (NoNode, BadVersion):
                    pass
                except ValueError:
                    return False
                continue
            with self._lock:
                self._held[key] = owner
            self.counters["nat_leases"] += 1
            return True
        return False

    def _reclaim(self, owner: str, device: str, ip: int, port_start: int, port_end: int) -> int | None:
        lo, hi = port_start - port_start % BLOCK_SIZE, port_end
        with self._lock:
            idle = [(t, k) for k, t in self._idle.items() if k[:2] == (device, ip) and lo <= k[2] <= hi]
            if not idle:
                self.counters["nat_exhausted"] += 1
                return None
            _, key = min(idle)
            del self._idle[key]
            previous, self._held[key] = self._held[key], owner
        if previous != owner:       # the value names the lease owner: keep it true
            path = f"{lease_dir(device, ip)}/{key[2]}"
            value = self._value(owner)
            try:
                self.store.set(path, value())
                self.owned.add(path, value, self._lost(key))
            except NoNode:
                pass                # session loss in flight: re-created (with the new value) or lost
        self.counters["nat_reclaimed"] += 1
        return key[2]

    def release(self, owner: str, device: str, ip: int, block: int) -> None:
        """Give the block back (if ``owner`` holds it here); its node is deleted."""
        key = (device, ip, block)
        with self._lock:
            if self._held.get(key) != owner:
                return
            del self._held[key]
            self._idle.pop(key, None)
        path = f"{lease_dir(device, ip)}/{block}"
        self.owned.discard(path)
        for _ in range(3):
            try:
                data, version = self.store.get(path)
                if json.loads(data).get("agent") != self.owner:
                    break           # lost to another agent already
                self.store.delete(path, version)
                break
            except NoNode:
                break
            except BadVersion:
                continue
        self.counters["nat_releases"] += 1

    # -- idleness -------------------------------------------------------------------------------------
    def mark_idle(self, owner: str, device: str, ip: int, block: int, now: float) -> None:
        """No port of the block is in use: keep it, but let a later lease reuse it (oldest idle first)."""
        key = (device, ip, block)
        with self._lock:
            if self._held.get(key) == owner:
                self._idle.setdefault(key, now)

    def mark_busy(self, owner: str, device: str, ip: int, block: int) -> None:
        with self._lock:
            if self._held.get((device, ip, block)) == owner:
                self._idle.pop((device, ip, block), None)

    def release_idle(self, now: float, idle_s: float) -> list[BlockKey]:
        """Release every block idle for at least ``idle_s``; return them."""
        with self._lock:
            due = [(k, self._held[k]) for k, t in self._idle.items() if now - t >= idle_s]
        for (device, ip, block), owner in due:
            self.release(owner, device, ip, block)
        return [k for k, _ in due]

    def held_by(self, owner: str) -> list[BlockKey]:
        with self._lock:
            return sorted(k for k, o in self._held.items() if o == owner)

    def held(self) -> dict[BlockKey, str]:
        with self._lock:
            return dict(self._held)

    def close(self) -> None:
        """Stop listening; the blocks stay until the session ends (close the store to free them)."""
        self._sub.cancel()
        if self._own_owned:
            self.owned.close()
