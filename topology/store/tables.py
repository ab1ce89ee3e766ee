"""Replicated MAC and ARP tables: learned entries as ephemeral store nodes, mirrored locally by every agent.

Owns the layout and the lifecycle of learned entries::

    /tables/mac/<bridge>/<vlan>/<mac>     {"port": "<port id>", "owner": "<agent>", "learned": t}
    /tables/arp/<router>/<ip>             {"mac": "..", "owner": "<agent>", "learned": t, "stale": t, "expiry": t}

(``<bridge>``/``<router>`` percent-encoded as in topology.store.topo, ``<vlan>`` decimal, 0 = untagged,
``<mac>`` as ``02:00:00:00:00:01``, ``<ip>`` dotted for IPv4 or the canonical IPv6 text (``2001:db8::1``,
packet.addr.ip_text): a router's neighbor table holds both families, an ip below 2**32 being IPv4.)  Times
are wall-clock seconds (``time.time()``), passed in as ``now`` — never read here — because ARP stale/expiry
times are compared on other hosts.

Ownership.  An entry belongs to the agent that wrote it (its node is an ephemeral of that agent's session, its
value names the agent): only the owner refreshes, changes or deletes it, and it vanishes with the owner's
session.  Owner names must be unique per agent (use the host name).  One exception, the *move*: when an agent
learns a key that another agent owns with a different value (a MAC moved to a port behind another host, an
ARP reply received elsewhere), it takes the entry over by **delete-with-version + create**: the delete names
the exact version it read, so it removes only what it saw; an ephemeral cannot change session, hence no CAS
``set`` across owners.  Within one owner a change is a CAS ``set`` (version checked).  Every write retries a
few times when it loses a race (NodeExists / BadVersion / NoNode), then raises ``TableConflict``.  An owner that
sees (through its mirror) another agent's value under one of its keys forgets the key: it no longer owns it.

MAC learning with reference counts: ``ref``/``unref`` count the local flows using a (vlan, mac); an owned
entry whose count is 0 is deleted by ``tick(now)`` once it has been idle ``expiry_s`` (a re-learn or a ref
restarts the clock).  ARP entries are *stale* after ``stale_s`` (still used; re-ARP) and *expired* after
``expiry_s`` (not used; the owner's ``tick`` deletes them).

Subscribers: every table keeps a ``TreeMirror`` (lookups are local, no off-box read) and reports each change
as ``on_change(kind, key, old, new)``: kind ``"mac"`` with key ``(vlan, mac)`` and ``MacEntry`` values, or
``"arp"`` with key ``ip`` and ``ArpEntry`` values (None = absent) — what an agent needs to invalidate the
flows tagged with that entry.  Owned entries survive session loss through ``OwnedEntries`` (re-created).
Counters: ``tables_learned``, ``tables_moves``, ``tables_refreshed``, ``tables_deleted``, ``tables_expired``,
``tables_bad_entries``, ``tables_lost_to_other``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

from packet.addr import int2mac, ip2int, ip6_2int, ip_text, mac2int
from topology.store.base import BadVersion, NodeExists, NoNode, Store, StoreError
from topology.store.session import OwnedEntries
from topology.store.topo import node_name
from topology.store.treemirror import TreeMirror

MAC_ROOT = "/tables/mac"
ARP_ROOT = "/tables/arp"
WRITE_ATTEMPTS = 5


class TableError(StoreError):
    """Base of table errors."""


class NotOwner(TableError):
    """The entry belongs to another agent: only its owner may refresh or delete it."""


class TableConflict(TableError):
    """A write kept losing races with other agents."""


@dataclass(frozen=True, slots=True)
class MacEntry:
    port: str
    owner: str
    learned: float


@dataclass(frozen=True, slots=True)
class ArpEntry:
    mac: int
    owner: str
    learned: float
    stale_at: float
    expire_at: float

    def stale(self, now: float) -> bool:
        return now >= self.stale_at

    def expired(self, now: float) -> bool:
        return now >= self.expire_at


ChangeCallback = Callable[[str, object, object, object], object]


class _OwnedTable:
    """Shared machinery: the mirror, owned writes (create / CAS / takeover), owner-only deletes."""

    kind = ""

    def __init__(self, store: Store, base: str, depth: int, owner: str, on_change: ChangeCallback | None,
                 owned: OwnedEntries | None):
        if not isinstance(owner, str) or not owner:
            raise ValueError("owner must be a non-empty string")
        self.store, self.base, self.owner = store, base, owner
        self._user_cb = on_change
        self._own_owned = owned is None
        self.owned = owned if owned is not None else OwnedEntries(store)
        self._lock = threading.RLock()
        self._mine: dict[object, object] = {}   # keys this agent owns → the entry it wrote last
        self.counters = {f"tables_{n}": 0 for n in (
            "learned", "moves", "refreshed", "deleted", "expired", "bad_entries", "lost_to_other")}
        self._entries: dict[object, object] = {}
        # keys this agent wrote that the mirror has not delivered yet: counted by ``held`` (a cap checked
        # against the mirror alone lets every write in flight past it)
        self._unmirrored: set[object] = set()
        with self._lock:    # changes delivered meanwhile wait for the lock, then apply on top of the snapshot
            self.mirror = TreeMirror(store, base, depth, self._on_raw_change)
            for raw_key, data in self.mirror.items():
                key, entry = self._decode_pair(raw_key, data)
                if key is not None and entry is not None:
                    self._entries[key] = entry

    # subclass hooks ----------------------------------------------------------------------------------
    def _key(self, raw: tuple[str, ...]) -> object: ...
    def _raw(self, key: object) -> tuple[str, ...]: ...
    def _decode(self, data: dict) -> object: ...

    # -- mirror side ----------------------------------------------------------------------------------
    def _decode_pair(self, raw: tuple[str, ...], data: bytes | None) -> tuple[object, object]:
        try:
            key = self._key(raw)
            entry = None if data is None else self._decode(json.loads(data))
            return key, entry
        except (ValueError, TypeError, KeyError):
            self.counters["tables_bad_entries"] += 1
            return None, None

    def _on_raw_change(self, raw: tuple[str, ...], _old: bytes | None, new: bytes | None) -> None:
        key, entry = self._decode_pair(raw, new)
        if key is None:
            return
        with self._lock:
            self._unmirrored.discard(key)
            old = self._entries.get(key)
            if entry is None:
                self._entries.pop(key, None)
            else:
                self._entries[key] = entry
            taken = entry is not None and entry.owner != self.owner and key in self._mine
        if taken and not self._still_mine(key):     # taken over by another agent
            with self._lock:
                self._mine.pop(key, None)
                self._forgotten(key)
            self.owned.discard(self._path(key))
            self.counters["tables_lost_to_other"] += 1
        if old != entry and self._user_cb is not None:
            self._user_cb(self.kind, key, old, entry)

    def _still_mine(self, key: object) -> bool:
        """Re-read the node: an event may be older than our own latest write (we took it back since)."""
        try:
            data, _ = self.store.get(self._path(key))
            return json.loads(data).get("owner") == self.owner
        except (StoreError, ValueError, AttributeError):
            return False

    def _forgotten(self, key: object) -> None:
        """Hook: local state of a key this agent no longer owns."""

    # -- reads (local) --------------------------------------------------------------------------------
    def __len__(self) -> int:
        """How many entries the table holds (every owner's)."""
        with self._lock:
            return len(self._entries)

    def held(self) -> int:
        """The entries the table holds plus this agent's writes the mirror has not delivered yet: what a cap on
        the table's size is checked against."""
        with self._lock:
            return len(self._entries) + len(self._unmirrored)

    def entry(self, key: object) -> object | None:
        with self._lock:
            return self._entries.get(key)

    def entries(self) -> dict:
        with self._lock:
            return dict(self._entries)

    def owned_keys(self) -> set:
        with self._lock:
            return set(self._mine)

    # -- writes ---------------------------------------------------------------------------------------
    def _path(self, key: object) -> str:
        return "/".join((self.base, *self._raw(key)))

    def _on_conflict(self, key: object) -> Callable[[str], None]:
        def lost(_path: str) -> None:
            with self._lock:
                self._unmirrored.discard(key)
                self._mine.pop(key, None)
                self._forgotten(key)
            self.counters["tables_lost_to_other"] += 1
        return lost

    def _write(self, key: object, value: dict) -> str:
        """Make this agent the owner of ``key`` with ``value``; return 'created', 'updated', 'moved'."""
        path, data = self._path(key), json.dumps(value, separators=(",", ":")).encode()
        for _ in range(WRITE_ATTEMPTS):
            try:
                self.store.create(path, data, ephemeral=True)
                result = "created"
            except NodeExists:
                try:
                    current, version = self.store.get(path)
                except NoNode:
                    continue
                try:
                    theirs = json.loads(current).get("owner")
                except (ValueError, AttributeError):
                    theirs = None
                try:
                    if theirs == self.owner:
                        self.store.set(path, data, version)
                        result = "updated"
                    else:
                        self.store.delete(path, version)
                        self.store.create(path, data, ephemeral=True)
                        result = "moved"
                except (BadVersion, NoNode, NodeExists):
                    continue
            with self._lock:
                self._mine[key] = self._decode(value)
                if key not in self._entries:
                    self._unmirrored.add(key)
            self.owned.add(path, data, self._on_conflict(key))
            return result
        raise TableConflict(f"{path}: lost {WRITE_ATTEMPTS} races with other agents")

    def _delete(self, key: object) -> bool:
        """Owner-only delete (version-checked).  False if absent; NotOwner if another agent owns it."""
        path = self._path(key)
        for _ in range(WRITE_ATTEMPTS):
            try:
                current, version = self.store.get(path)
            except NoNode:
                self._disown(key, path)
                return False
            try:
                theirs = json.loads(current).get("owner")
            except (ValueError, AttributeError):
                theirs = None
            if theirs != self.owner:
                self._disown(key, path)
                raise NotOwner(f"{path} is owned by {theirs!r}, not {self.owner!r}")
            try:
                self.store.delete(path, version)
            except NoNode:
                self._disown(key, path)
                return False
            except BadVersion:
                continue
            self._disown(key, path)
            self.counters["tables_deleted"] += 1
            return True
        raise TableConflict(f"{path}: lost {WRITE_ATTEMPTS} races with other agents")

    def _disown(self, key: object, path: str) -> None:
        with self._lock:
            self._unmirrored.discard(key)
            self._mine.pop(key, None)
            self._forgotten(key)
        self.owned.discard(path)

    def close(self) -> None:
        self.mirror.close()
        if self._own_owned:
            self.owned.close()


class MacTable(_OwnedTable):
    """The MAC table of one bridge (every VLAN): MAC → port id."""

    kind = "mac"

    def __init__(self, store: Store, bridge: str, owner: str, expiry_s: float = 300.0,
                 on_change: ChangeCallback | None = None, owned: OwnedEntries | None = None):
        self.bridge, self.expiry_s = bridge, expiry_s
        self._refs: dict[tuple[int, int], int] = {}
        self._idle_since: dict[tuple[int, int], float] = {}
        super().__init__(store, f"{MAC_ROOT}/{node_name(bridge)}", 2, owner, on_change, owned)

    def _key(self, raw):
        vlan = int(raw[0])
        if not 0 <= vlan <= 4095:
            raise ValueError(raw)
        return vlan, mac2int(raw[1])

    def _raw(self, key):
        return str(key[0]), int2mac(key[1])

    def _decode(self, d):
        return MacEntry(str(d["port"]), str(d["owner"]), float(d["learned"]))

    def _forgotten(self, key):
        self._idle_since.pop(key, None)

    def lookup(self, mac: int, vlan: int = 0) -> str | None:
        """The port id behind ``mac`` (local mirror, no store read)."""
        e = self.entry((vlan, mac))
        return e.port if e is not None else None

    def is_current(self, mac: int, port: str, vlan: int = 0) -> bool:
        """Whether ``mac`` is ours behind ``port`` already: learning it again only refreshes (no store write)."""
        with self._lock:
            mine = self._mine.get((vlan, mac))
            return mine is not None and mine.port == port

    def learn(self, mac: int, port: str, now: float, vlan: int = 0) -> str:
        """``mac`` was seen behind ``port`` on this agent.  Returns 'refreshed' (already ours, no store write),
        'created', 'updated' (our entry, new port) or 'moved' (taken over from another agent)."""
        key = (vlan, mac)
        with self._lock:
            mine = self._mine.get(key)
            if mine is not None and mine.port == port:
                if self._refs.get(key, 0) == 0:
                    self._idle_since[key] = now
                self.counters["tables_refreshed"] += 1
                return "refreshed"
        result = self._write(key, {"port": port, "owner": self.owner, "learned": now})
        with self._lock:
            if self._refs.get(key, 0) == 0:
                self._idle_since[key] = now
        self.counters["tables_moves" if result == "moved" else "tables_learned"] += 1
        return result

    def ref(self, mac: int, vlan: int = 0) -> int:
        """One more local flow uses (vlan, mac); returns the count."""
        key = (vlan, mac)
        with self._lock:
            n = self._refs[key] = self._refs.get(key, 0) + 1
            self._idle_since.pop(key, None)
            return n

    def unref(self, mac: int, now: float, vlan: int = 0) -> int:
        """One local flow using (vlan, mac) is gone; at 0 the expiry clock starts.  Returns the count."""
        key = (vlan, mac)
        with self._lock:
            n = max(0, self._refs.get(key, 0) - 1)
            if n:
                self._refs[key] = n
            else:
                self._refs.pop(key, None)
                if key in self._mine:
                    self._idle_since[key] = now
            return n

    def refs(self, mac: int, vlan: int = 0) -> int:
        with self._lock:
            return self._refs.get((vlan, mac), 0)

    def tick(self, now: float) -> list[tuple[int, int]]:
        """Delete the owned entries unused for ``expiry_s``; return their keys."""
        with self._lock:
            due = [k for k, t in self._idle_since.items()
                   if k in self._mine and not self._refs.get(k) and now - t >= self.expiry_s]
        done = []
        for key in due:
            try:
                if self._delete(key):
                    self.counters["tables_expired"] += 1
                    done.append(key)
            except NotOwner:
                pass
        return done

    def forget(self, mac: int, vlan: int = 0) -> bool:
        """Delete our entry now.  False if absent; raises NotOwner if another agent owns it."""
        return self._delete((vlan, mac))


class ArpTable(_OwnedTable):
    """The neighbor table of one router: IP (IPv4 or IPv6) → MAC, with learned, stale and expiry times."""

    kind = "arp"

    def __init__(self, store: Store, router: str, owner: str, expiry_s: float = 3600.0,
                 stale_s: float = 1800.0, on_change: ChangeCallback | None = None,
                 owned: OwnedEntries | None = None):
        if not 0 < stale_s <= expiry_s:
            raise ValueError("need 0 < stale_s <= expiry_s")
        self.router, self.expiry_s, self.stale_s = router, expiry_s, stale_s
        super().__init__(store, f"{ARP_ROOT}/{node_name(router)}", 1, owner, on_change, owned)

    def _key(self, raw):
        return parse_ip(raw[0])

    def _raw(self, key):
        return (ip_text(key),)

    def _decode(self, d):
        return ArpEntry(mac2int(d["mac"]), str(d["owner"]), float(d["learned"]), float(d["stale"]),
                        float(d["expiry"]))

    def put(self, ip: int, mac: int, now: float) -> str:
        """An ARP reply (or request) told this agent ``ip`` is at ``mac``: write the entry, owned here."""
        result = self._write(ip, {"mac": int2mac(mac), "owner": self.owner, "learned": now,
                                  "stale": now + self.stale_s, "expiry": now + self.expiry_s})
        self.counters["tables_moves" if result == "moved" else "tables_learned"] += 1
        return result

    def lookup(self, ip: int, now: float) -> ArpEntry | None:
        """The entry for ``ip`` unless absent or expired (check ``.stale(now)`` to re-ARP).  Local."""
        e = self.entry(ip)
        return None if e is None or e.expired(now) else e

    def tick(self, now: float) -> list[int]:
        """Delete the owned entries that expired; return their IPs."""
        with self._lock:
            due = [ip for ip, e in self._mine.items() if e.expired(now)]
        done = []
        for ip in due:
            try:
                if self._delete(ip):
                    self.counters["tables_expired"] += 1
                    done.append(ip)
            except NotOwner:
                pass
        return done

    def forget(self, ip: int) -> bool:
        return self._delete(ip)


def parse_ip(text: str) -> int:
    """An address as ip_text writes it → int: IPv6 when it has a colon (only above 2**32: ``::1.2.3.4`` is not a
    key ip_text makes), else dotted IPv4.  ValueError otherwise."""
    if ":" in text:
        v = ip6_2int(text)
        if v <= 0xFFFFFFFF:
            raise ValueError(f"not a neighbor-table IPv6 address: {text!r}")
        return v
    return ip2int(text)
