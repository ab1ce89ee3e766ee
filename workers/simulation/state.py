"""Agent state the simulation reads: learned MACs, ARP entries, flow state (conntrack and NAT).

The simulation only *reads* an AgentState; what it wants changed comes back as effects in the SimResult, and
the shell (the trace session, a worker) applies them with ``LocalState.apply``.  ``LocalState`` is the
in-memory implementation used by the trace and by each worker for its own shard; replicated tables in a store
implement the same read methods.

Ownership: a LocalState belongs to exactly one simulation shell (one trace session, one worker process).
"""

from __future__ import annotations

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


@dataclass
class LocalState:
    """In-memory agent state.  ``now`` is always passed in; nothing here reads a clock."""

    flow_state_idle_s: float = DEFAULT_FLOW_STATE_IDLE_S
    mac_expiry_s: float = DEFAULT_MAC_EXPIRY_S
    arp_expiry_s: float = DEFAULT_ARP_EXPIRY_S
    arp_stale_s: float = DEFAULT_ARP_STALE_S
    macs: dict[tuple[str, int, int], tuple[str, float]] = field(default_factory=dict)   # → (port, learned_at)
    arps: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)        # → (mac, learned_at)
    flow_state: dict[tuple[str, tuple], StateEntry] = field(default_factory=dict)
    blocks: dict[tuple[str, int], list[int]] = field(default_factory=dict)   # (device, ip) → held block starts

    # -- reads (AgentState) -------------------------------------------------------------------------------
    def mac_lookup(self, bridge: str, vlan: int, mac: int) -> str | None:
        hit = self.macs.get((bridge, vlan, mac))
        return hit[0] if hit else None

    def arp_lookup(self, router: str, ip: int, now: float) -> int | None:
        hit = self.arps.get((router, ip))
        if hit is None or now - hit[1] > self.arp_expiry_s:
            return None
        return hit[0]

    def flow_state_get(self, kind: str, key: StateKey, now: float) -> object:
        e = self.flow_state.get((kind, key))
        if e is None or now - e.last_used > e.idle_s:
            return MISSING
        return e.value

    def nat_blocks(self, device: str, ip: int) -> list[int]:
        return self.blocks.get((device, ip), [])

    # -- writes (effects) ----------------------------------------------------------------------------------
    def apply(self, effects, now: float) -> None:
        for e in effects:
            t = type(e)
            if t is MacTableWrite:
                self.macs[(e.bridge, e.vlan, e.mac)] = (e.port, now)
            elif t is ArpTableWrite:
                self.arps[(e.router, e.ip)] = (e.mac, now)
            elif t is FlowStateWrite:
                self.flow_state[(e.kind, e.key)] = StateEntry(e.kind, e.key, e.value, now, self.flow_state_idle_s)
            elif t is FlowStateTouch:
                entry = self.flow_state.get((e.kind, e.key))
                if entry is not None:
                    entry.last_used = max(entry.last_used, now)

    def add_nat_block(self, device: str, ip: int, start: int) -> None:
        held = self.blocks.setdefault((device, ip), [])
        if start not in held:
            held.append(start)

    def forget_mac(self, bridge: str, vlan: int, mac: int) -> None:
        self.macs.pop((bridge, vlan, mac), None)

    def forget_arp(self, router: str, ip: int) -> None:
        self.arps.pop((router, ip), None)

    def idle_nat_blocks(self) -> list[tuple[str, int, int]]:
        """Held (device, ip, block) with no SNAT binding left in them: candidates for release."""
        used = {snat_block(e.kind, e.key, e.value) for e in self.flow_state.values() if e.kind == REV_SNAT}
        return [(dev, ip, b) for (dev, ip), blocks in self.blocks.items() for b in blocks
                if (dev, ip, b) not in used]

    def remove_nat_block(self, device: str, ip: int, block: int) -> None:
        held = self.blocks.get((device, ip))
        if held and block in held:
            held.remove(block)
            if not held:
                del self.blocks[(device, ip)]

    def stale_arps(self, now: float) -> list[tuple[str, int]]:
        return [k for k, (_, t) in self.arps.items() if now - t > self.arp_stale_s]

    def expire(self, now: float) -> list[StateEntry]:
        """Remove idle flow-state entries, stale MACs and ARP entries; return the flow-state entries removed
        (their keys are the tags of the flows to invalidate; NAT entries release their ports)."""
        gone = [e for e in self.flow_state.values() if now - e.last_used > e.idle_s]
        for e in gone:
            del self.flow_state[(e.kind, e.key)]
        for k in [k for k, (_, t) in self.macs.items() if now - t > self.mac_expiry_s]:
            del self.macs[k]
        for k in [k for k, (_, t) in self.arps.items() if now - t > self.arp_expiry_s]:
            del self.arps[k]
        return gone
