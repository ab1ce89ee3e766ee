"""Agent state the simulation reads: learned MACs, ARP entries, flow state (conntrack and NAT).

The simulation only *reads* an AgentState; what it wants changed comes back as effects in the SimResult, and
the shell (the trace session, a worker) applies them with ``LocalState.apply``.  ``LocalState`` is the
in-memory implementation used by the trace and by each worker for its own shard; replicated tables in a store
implement the same read methods.

Ownership: a LocalState belongs to exactly one simulation shell (one trace session, one worker process).

Bounded: every table here can be grown by a VM or a peer, so each has a cap, and what a cap refuses is counted
(``counters``):

- **flow state** (``max_flow_state`` entries, replicas included).  Entries are *local* (written by this shell's
  simulations: ``apply``) or *replicas* (pushed by another worker or host, or restored: ``add_replicas``).  A
  full table makes room by evicting replicas, oldest first (a replica is a copy of another's state, re-sent by
  its owner's next use, and an old one is the least likely to be read again); it never evicts a local entry.
  So a local write that finds no replica to evict is refused — the worker checks first (``make_room``) and
  drops the new connection instead (drop reason ``flow_state_full``) — and a replica likewise is refused
  (``state_replicas_refused``): no peer can push out this shell's own connections or grow the table past
  its cap.
- **learned MACs**, per bridge (``max_macs_per_bridge``) and per port (``max_macs_per_port``), MidoNet-style: a
  new MAC beyond either cap is not learned (the bridge floods to it, as to any unknown MAC).  A MAC moving to
  a port that is full is forgotten where it was (that place is wrong now) and not learned at the new one.
- **ARP entries** per router (``max_arps_per_router``): a new entry beyond the cap is refused, unless the
  caller forces it (an answer this worker is waiting for), which evicts the router's oldest entry.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Protocol

from topology.nat_leases import BLOCK_SIZE
from workers.simulation.result import (
    FWD_SNAT,
    REV_SNAT,
    ArpTableWrite,
    FlowStateTouch,
    FlowStateWrite,
    MacTableWrite,
    StateKey,
)

DEFAULT_FLOW_STATE_IDLE_S = 60.0
DEFAULT_MAC_EXPIRY_S = 300.0
DEFAULT_ARP_EXPIRY_S = 3600.0
DEFAULT_ARP_STALE_S = 1800.0
DEFAULT_MAX_FLOW_STATE = 300_000             # per shell (worker): ~100k connections with SNAT (3 entries each)
DEFAULT_MAX_MACS_PER_BRIDGE = 4096
DEFAULT_MAX_MACS_PER_PORT = 1024
DEFAULT_MAX_ARPS_PER_ROUTER = 4096


class AgentState(Protocol):
    def mac_lookup(self, bridge: str, vlan: int, mac: int) -> str | None: ...
    def arp_lookup(self, router: str, ip: int, now: float) -> int | None: ...
    def flow_state_get(self, kind: str, key: StateKey, now: float) -> object: ...
    def nat_blocks(self, device: str, ip: int) -> list[int]: ...


MISSING = object()


class PendingState:
    """An AgentState seen through effects that are not applied yet: those of the simulation that generated a
    packet, read by that packet's onward walk in the same call (the NAT binding an ICMP error is translated
    back by, the ARP entry an answered request taught, the MAC the bridge just learned).  Read-only like any
    AgentState; anything else (``prefer_snat_port``) is the base state's."""

    __slots__ = ("base", "macs", "arps", "flows")

    def __init__(self, base: AgentState, effects):
        self.base = base
        self.macs: dict[tuple[str, int, int], str] = {}
        self.arps: dict[tuple[str, int], int] = {}
        self.flows: dict[tuple[str, tuple], object] = {}
        for e in effects:
            t = type(e)
            if t is MacTableWrite:
                self.macs[(e.bridge, e.vlan, e.mac)] = e.port
            elif t is ArpTableWrite:
                self.arps[(e.router, e.ip)] = e.mac
            elif t is FlowStateWrite:
                self.flows[(e.kind, e.key)] = e.value

    def mac_lookup(self, bridge: str, vlan: int, mac: int) -> str | None:
        hit = self.macs.get((bridge, vlan, mac))
        return hit if hit is not None else self.base.mac_lookup(bridge, vlan, mac)

    def arp_lookup(self, router: str, ip: int, now: float) -> int | None:
        hit = self.arps.get((router, ip))
        return hit if hit is not None else self.base.arp_lookup(router, ip, now)

    def flow_state_get(self, kind: str, key: StateKey, now: float) -> object:
        hit = self.flows.get((kind, key), MISSING)
        return hit if hit is not MISSING else self.base.flow_state_get(kind, key, now)

    def nat_blocks(self, device: str, ip: int) -> list[int]:
        return self.base.nat_blocks(device, ip)

    def __getattr__(self, name: str):
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)


def snat_block(kind: str, key: tuple, value: tuple | None) -> tuple[str, int, int] | None:
    """(device, ip, block start) of the SNAT port block an entry's binding lives in; None if it is not SNAT.
    A reverse entry's key holds the translated address as its destination; a forward entry's value holds it.
    ``key`` may be a plain tuple (decoded from the wire)."""
    if kind == REV_SNAT:
        k = StateKey(*key)
        return (k.device, k.dst, k.dport - k.dport % BLOCK_SIZE)
    if kind == FWD_SNAT and value:
        ip, port = value
        return (StateKey(*key).device, ip, port - port % BLOCK_SIZE)
    return None


@dataclass(slots=True)
class StateEntry:
    """One flow-state entry held by a LocalState (the wire form is backchannel.messages.FlowStateEntry).  ``key``
    is a StateKey, or the equal plain tuple when the entry was replicated: ``StateKey(*key)`` to read it."""

    kind: str
    key: tuple
    value: tuple | None
    last_used: float
    idle_s: float
    tag: str | None = None          # the flow tag of this entry, computed once by whoever needs it
    replica: bool = False           # pushed by another worker or host (evictable), not written here


@dataclass
class LocalState:
    """In-memory agent state.  ``now`` is always passed in; nothing here reads a clock."""

    flow_state_idle_s: float = DEFAULT_FLOW_STATE_IDLE_S
    mac_expiry_s: float = DEFAULT_MAC_EXPIRY_S
    arp_expiry_s: float = DEFAULT_ARP_EXPIRY_S
    arp_stale_s: float = DEFAULT_ARP_STALE_S
    max_flow_state: int = DEFAULT_MAX_FLOW_STATE
    max_macs_per_bridge: int = DEFAULT_MAX_MACS_PER_BRIDGE
    max_macs_per_port: int = DEFAULT_MAX_MACS_PER_PORT
    max_arps_per_router: int = DEFAULT_MAX_ARPS_PER_ROUTER
    macs: dict[tuple[str, int, int], tuple[str, float]] = field(default_factory=dict)   # → (port, learned_at)
    arps: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)        # → (mac, learned_at)
    flow_state: dict[tuple[str, tuple], StateEntry] = field(default_factory=dict)
    blocks: dict[tuple[str, int], list[int]] = field(default_factory=dict)   # (device, ip) → held block starts
    # SNAT port use, for idle blocks and the worker's lease-ahead, from the REV_SNAT entries (replicas too; the
    # key holds the translated (ip, port) as its destination and the remote end as its source):
    # (device, ip, port) → bindings on the port; (device, ip, block) → ports of the block with a binding;
    # (device, ip, remote ip, proto, remote port) → bindings toward that remote end in the blocks held (a
    # connection toward it finds no port once they fill every held port); (device, ip) → [bindings written
    # here since the worker last looked, the most of them toward one remote end]
    snat_ports: dict[tuple[str, int, int], int] = field(default_factory=dict)
    snat_block_used: dict[tuple[str, int, int], int] = field(default_factory=dict)
    snat_toward: dict[tuple, int] = field(default_factory=dict)
    # per remote end (as snat_toward): the port bound last toward it; the NAT's next search for that remote end
    # starts right after it (RFC 6056's per-destination increment) instead of at a random port of a filling
    # block; forgotten with the remote end's last binding
    snat_next: dict[tuple, int] = field(default_factory=dict)
    snat_new: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    held_blocks: set[tuple[str, int, int]] = field(default_factory=set)
    empty_blocks: dict[tuple[str, int], int] = field(default_factory=dict)   # (device, ip) → held, no binding
    replicas: dict[tuple[str, tuple], None] = field(default_factory=dict)   # replica keys, oldest first
    macs_per_bridge: dict[str, int] = field(default_factory=dict)
    macs_per_port: dict[str, int] = field(default_factory=dict)
    arps_per_router: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))

    # -- reads (AgentState) -------------------------------------------------------------------------------
    def mac_lookup(self, bridge: str, vlan: int, mac: int) -> str | None:
        hit = self.macs.get((bridge, vlan, mac))
        return hit[0] if hit else None

    def arp_lookup(self, router: str, ip: int, now: float) -> int | None:
        hit = self.arps.get((router, ip))
        if hit is None or now - hit[1] > self.arp_expiry_s:
            return None
        return hit[0]

    def arp_until(self, router: str, ip: int) -> float | None:
        """Until when ``arp_lookup`` finds the learned entry for (router, ip), as it stands; None if none."""
        hit = self.arps.get((router, ip))
        return None if hit is None else hit[1] + self.arp_expiry_s

    def flow_state_get(self, kind: str, key: StateKey, now: float) -> object:
        e = self.flow_state.get((kind, key))
        if e is None or now - e.last_used > e.idle_s:
            return MISSING
        return e.value

    def nat_blocks(self, device: str, ip: int) -> list[int]:
        return self.blocks.get((device, ip), [])

    # -- writes (effects) ----------------------------------------------------------------------------------
    def apply(self, effects, now: float) -> list:
        """Apply a simulation's effects as local writes; returns the effects a cap refused (usually none).
        Flow state beyond the cap evicts replicas only when the caller made room first (``make_room``)."""
        refused: list = []
        for e in effects:
            t = type(e)
            if t is MacTableWrite:
                if not self.learn_mac(e.bridge, e.vlan, e.mac, e.port, now):
                    refused.append(e)
            elif t is ArpTableWrite:
                if not self.learn_arp(e.router, e.ip, e.mac, now)[0]:
                    refused.append(e)
            elif t is FlowStateWrite:
                k = (e.kind, e.key)
                fs = self.flow_state
                if self.replicas or len(fs) >= self.max_flow_state:    # else: no lookup (the setup path)
                    old = fs.get(k)
                    if old is None:
                        if len(fs) >= self.max_flow_state:
                            self.counters["state_writes_refused"] += 1
                            refused.append(e)
                            continue
                    elif old.replica:                   # written here now: ours
                        del self.replicas[k]
                if e.kind == REV_SNAT and k not in fs:
                    self._snat_port(e.key, 1, True)
                fs[k] = StateEntry(e.kind, e.key, e.value, now, self.flow_state_idle_s)
            elif t is FlowStateTouch:
                entry = self.flow_state.get((e.kind, e.key))
                if entry is not None:
                    entry.last_used = max(entry.last_used, now)
        return refused

    # -- flow state: the cap -------------------------------------------------------------------------------
    def new_entries(self, effects) -> int:
        """How many entries ``effects`` would add to the flow state (writes of keys not held yet)."""
        keys = {(e.kind, e.key) for e in effects if type(e) is FlowStateWrite}
        return sum(1 for k in keys if k not in self.flow_state)

    def make_room(self, n: int) -> list[StateEntry] | None:
        """Make room for ``n`` new entries by evicting replicas, oldest first: the evicted entries (the caller
        invalidates the flows tagged with them), or None — and nothing evicted — when even evicting every
        replica would not make room."""
        over = len(self.flow_state) + n - self.max_flow_state
        if over <= 0:
            return []
        if over > len(self.replicas):
            return None
        return self._evict_replicas(over)

    def _evict_replicas(self, n: int) -> list[StateEntry]:
        gone = []
        for k in list(itertools.islice(self.replicas, n)):
            del self.replicas[k]
            e = self.flow_state.pop(k)
            if e.kind == REV_SNAT:
                self._snat_port(e.key, -1)
            gone.append(e)
        self.counters["state_replicas_evicted"] += len(gone)
        return gone

    def add_replicas(self, entries, now: float) -> tuple[list[tuple[str, tuple]], list[StateEntry]]:
        """Entries ``(kind, key, value)`` pushed by another worker or host (or restored).  Returns (the keys
        written, the replicas evicted to make room).  A key held already is updated in place (a local entry
        stays local; a replica becomes the newest); a new one beyond the cap evicts the oldest replica, or is
        refused (counted) when every entry is local."""
        written, evicted = [], []
        fs, replicas, idle = self.flow_state, self.replicas, self.flow_state_idle_s
        for kind, key, value in entries:
            k = (kind, key)
            e = fs.get(k)
            if e is not None:
                e.value, e.last_used = value, max(e.last_used, now)
                if k in replicas:
                    del replicas[k]
                    replicas[k] = None
                written.append(k)
                continue
            if len(fs) >= self.max_flow_state:
                if not replicas:
                    self.counters["state_replicas_refused"] += 1
                    continue
                evicted.extend(self._evict_replicas(1))
            fs[k] = StateEntry(kind, key, value, now, idle, None, True)
            replicas[k] = None
            if kind == REV_SNAT:
                self._snat_port(key, 1)
            written.append(k)
        return written, evicted

    # -- learned MACs and ARP entries: the caps ------------------------------------------------------------
    def learn_mac(self, bridge: str, vlan: int, mac: int, port: str, now: float) -> bool:
        """``mac`` seen behind ``port`` (a port id).  False when a cap refused it (then it is not known at all:
        a move's old place is forgotten too)."""
        key = (bridge, vlan, mac)
        old = self.macs.get(key)
        if old is not None and old[0] == port:
            self.macs[key] = (port, now)
            return True
        if self.macs_per_port.get(port, 0) >= self.max_macs_per_port:
            self.counters["macs_refused_port"] += 1
        elif old is None and self.macs_per_bridge.get(bridge, 0) >= self.max_macs_per_bridge:
            self.counters["macs_refused_bridge"] += 1
        else:
            if old is None:
                self.macs_per_bridge[bridge] = self.macs_per_bridge.get(bridge, 0) + 1
            else:
                _decrement(self.macs_per_port, old[0])
            self.macs_per_port[port] = self.macs_per_port.get(port, 0) + 1
            self.macs[key] = (port, now)
            return True
        if old is not None:
            self.forget_mac(bridge, vlan, mac)
        return False

    def learn_arp(self, router: str, ip: int, mac: int, now: float, force: bool = False) -> tuple[bool, int | None]:
        """``ip`` is at ``mac`` for ``router``.  Returns (learned, the IP evicted for it or None).  A new entry
        beyond the router's cap is refused, or with ``force`` replaces the router's oldest entry."""
        key = (router, ip)
        evicted = None
        if key not in self.arps:
            if self.arps_per_router.get(router, 0) >= self.max_arps_per_router:
                if not force:
                    self.counters["arps_refused"] += 1
                    return False, None
                oldest = min((k for k in self.arps if k[0] == router), key=lambda k: self.arps[k][1])
                self.forget_arp(*oldest)
                self.counters["arps_evicted"] += 1
                evicted = oldest[1]
            self.arps_per_router[router] = self.arps_per_router.get(router, 0) + 1
        self.arps[key] = (mac, now)
        return True, evicted

    def add_nat_block(self, device: str, ip: int, start: int) -> None:
        held = self.blocks.setdefault((device, ip), [])
        if start not in held:
            held.append(start)
            self.held_blocks.add((device, ip, start))
            if (device, ip, start) not in self.snat_block_used:
                self.empty_blocks[(device, ip)] = self.empty_blocks.get((device, ip), 0) + 1

    def forget_mac(self, bridge: str, vlan: int, mac: int) -> None:
        old = self.macs.pop((bridge, vlan, mac), None)
        if old is not None:
            _decrement(self.macs_per_bridge, bridge)
            _decrement(self.macs_per_port, old[0])

    def forget_arp(self, router: str, ip: int) -> None:
        if self.arps.pop((router, ip), None) is not None:
            _decrement(self.arps_per_router, router)

    def idle_nat_blocks(self) -> list[tuple[str, int, int]]:
        """Held (device, ip, block) with no SNAT binding left in them: candidates for release."""
        used = self.snat_block_used
        return [(dev, ip, b) for (dev, ip), blocks in self.blocks.items() for b in blocks
                if (dev, ip, b) not in used]

    def empty_nat_blocks(self, device: str, ip: int) -> int:
        """How many of the blocks held for (device, ip) have no binding at all."""
        return self.empty_blocks.get((device, ip), 0)

    def _snat_port(self, key: tuple, d: int, local: bool = False) -> None:
        """A REV_SNAT entry with ``key`` came (+1) or went (-1).  A port bound toward one remote end still
        serves the others, so what runs a NAT dry is the bindings toward one remote end (``snat_toward``); the
        ports with none at all tell the blocks that are idle.  Bindings in blocks not held here (replicas of
        another worker's) count only for idleness."""
        device, ip, port = key[5], key[1], key[4]
        block = (device, ip, port - port % BLOCK_SIZE)
        p = (device, ip, port)
        ports = self.snat_ports
        n = ports.get(p, 0) + d
        if n > 0:
            ports[p] = n
        else:
            ports.pop(p, None)
        held = block in self.held_blocks
        if n == (1 if d > 0 else 0):                   # the port became used, or free
            used = self.snat_block_used
            if d > 0:
                u = used[block] = used.get(block, 0) + 1
                if held and u == 1:                    # the block is not empty any more
                    _decrement(self.empty_blocks, block[:2])
                elif held and u == BLOCK_SIZE:         # every port bound: tried last (see below)
                    self._move_block(block, first=True)
            else:
                u = used.get(block, 0)
                _decrement(used, block)
                if held and u == 1:
                    self.empty_blocks[block[:2]] = self.empty_blocks.get(block[:2], 0) + 1
                if held and u == BLOCK_SIZE:           # a port of a full block came free: tried first
                    self._move_block(block, first=False)
        if not held:
            return
        toward = (device, ip, key[0], key[2], key[3])
        n = self.snat_toward.get(toward, 0) + d
        if n > 0:
            self.snat_toward[toward] = n
            if d > 0:
                self.snat_next[toward] = port
        else:
            self.snat_toward.pop(toward, None)
            self.snat_next.pop(toward, None)
        if local:
            new = self.snat_new.get(block[:2])
            if new is None:
                self.snat_new[block[:2]] = [1, n]
            else:
                new[0] += 1
                if n > new[1]:
                    new[1] = n

    def _move_block(self, block: tuple[str, int, int], first: bool) -> None:
        """The NAT tries the blocks from the end of the list (the newest first, the likeliest to have room): a
        block with every port bound goes to the front, one whose port came free back to the end.  Else, once
        the newest block is full, every new connection would walk the full blocks (64 lookups each) to reach
        the ports that expiry freed in an old one.  Only the order changes: every block is still tried."""
        held = self.blocks.get(block[:2])
        if held is None or len(held) < 2:
            return
        held.remove(block[2])
        if first:
            held.insert(0, block[2])
        else:
            held.append(block[2])

    def snat_capacity(self, device: str, ip: int, lo: int, hi: int) -> int:
        """The ports of the blocks held for (device, ip) inside [lo, hi] (the edge blocks may stick out)."""
        cap = BLOCK_SIZE * len(self.blocks.get((device, ip), ()))
        held = self.held_blocks
        if (device, ip, lo - lo % BLOCK_SIZE) in held:
            cap -= lo % BLOCK_SIZE
        if (device, ip, hi - hi % BLOCK_SIZE) in held:
            cap -= BLOCK_SIZE - 1 - hi % BLOCK_SIZE
        return cap

    def snat_dry(self, device: str, ip: int, remote: int, proto: int, rport: int, lo: int, hi: int) -> bool:
        """Every port of the held blocks inside [lo, hi] is bound toward (remote, proto, rport): a connection
        toward it would walk them all to find none (the NAT asks for a lease at once instead).  An idle entry
        not swept yet still counts as bound: at worst a block is leased a sweep (a second) early."""
        n = self.snat_toward.get((device, ip, remote, proto, rport))
        return n is not None and n >= self.snat_capacity(device, ip, lo, hi)

    def remove_nat_block(self, device: str, ip: int, block: int) -> None:
        held = self.blocks.get((device, ip))
        if held and block in held:
            held.remove(block)
            self.held_blocks.discard((device, ip, block))
            if (device, ip, block) not in self.snat_block_used:
                _decrement(self.empty_blocks, (device, ip))
            if not held:
                del self.blocks[(device, ip)]

    def stale_arps(self, now: float) -> list[tuple[str, int]]:
        return [k for k, (_, t) in self.arps.items() if now - t > self.arp_stale_s]

    def expire(self, now: float) -> list[StateEntry]:
        """Remove idle flow-state entries, stale MACs and ARP entries; return the flow-state entries removed
        (their keys are the tags of the flows to invalidate; NAT entries release their ports).  One pass over
        the whole shard: the worker's shell sweeps in slices instead (``sweep``, ``expire_tables``)."""
        gone, _ = self.sweep(list(self.flow_state.values()), 0, None, now)
        self.expire_tables(now)
        return gone

    def expire_tables(self, now: float) -> int:
        """Stale MACs and ARP entries (tables bounded by their caps: one pass is short); how many went."""
        macs = [k for k, (_, t) in self.macs.items() if now - t > self.mac_expiry_s]
        for k in macs:
            self.forget_mac(*k)
        arps = [k for k, (_, t) in self.arps.items() if now - t > self.arp_expiry_s]
        for k in arps:
            self.forget_arp(*k)
        return len(macs) + len(arps)

    def sweep(self, entries: list[StateEntry], start: int, budget: int | None, now: float,
              in_use=None, tag_of=None) -> tuple[list[StateEntry], int]:
        """Visit ``entries`` from ``start`` (a list taken from ``flow_state`` when the pass began, so the pass can
        be spread over many loop turns while the table changes): an entry no longer held, or replaced since, is
        skipped; one used by an installed flow (its tag in ``in_use``; ``tag_of(entry)`` makes the tag, once per
        entry) is alive and its idle time restarts; one idle longer than its ``idle_s`` is removed.  Only
        entries past half their idle time are looked up in ``in_use``.  ``budget``: a visit costs 1 and making
        a tag ``TAG_COST`` more (string formatting); None visits every entry.  Returns (the entries removed,
        where to go on)."""
        fs, replicas = self.flow_state, self.replicas
        end = len(entries)
        left = end if budget is None else budget
        gone = []
        i = start
        while i < end and left > 0:
            e = entries[i]
            i += 1
            left -= 1
            age = now - e.last_used
            if age < e.idle_s / 2:                      # young: no keep-alive, no expiry yet
                continue
            k = (e.kind, e.key)
            if fs.get(k) is not e:                      # removed or replaced since the pass began
                continue
            if in_use is not None:
                tag = e.tag
                if tag is None:
                    tag = e.tag = tag_of(e)
                    left -= TAG_COST
                if tag in in_use:
                    e.last_used = now
                    continue
            if age > e.idle_s:
                del fs[k]
                if e.replica:
                    replicas.pop(k, None)
                if e.kind == REV_SNAT:                  # the lease-ahead's free-port count
                    self._snat_port(e.key, -1)
                gone.append(e)
        return gone, i


TAG_COST = 32                                        # a tag's formatting against one visit (sweep's budget)
COUNTERS = ("state_writes_refused", "state_replicas_evicted", "state_replicas_refused", "macs_refused_port",
            "macs_refused_bridge", "arps_refused", "arps_evicted")


def _decrement(counts: dict[str, int], name: str) -> None:
    n = counts.get(name, 0) - 1
    if n > 0:
        counts[name] = n
    else:
        counts.pop(name, None)
