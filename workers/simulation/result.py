"""What a simulation returns: one immutable SimResult value, plus the effect and need records inside it.

The simulation never performs I/O; everything it wants done is in the result:

- ``outputs``   the packet as it leaves each exterior port (and whether it needs a tunnel to get there);
- ``generated`` packets the agent itself emits (ARP requests and replies, ICMP errors and echo replies), each
                with the exterior port it leaves from: one a device emits on an interior port has already been
                carried into the peer device and simulated onward, in the same call (``waiting`` holds those
                whose onward walk parked);
- ``effects``   changes to agent state the shell applies (MAC or ARP table written, flow state written or used);
- ``needs``     why the packet must be parked (a topology fragment, an ARP entry, a NAT port block) — the shell
                requests it and simulates the packet again from scratch when it arrives; ``need_key`` is
                what the waiting room files it under;
- ``tags``      everything the decision read, for invalidation; ``fields_read`` the packet fields it read whole
                and ``prefixes_read`` the address fields it read only up to a prefix, so that a flow can be
                installed as a wildcard match (a megaflow: workers.megaflow).
"""

from __future__ import annotations

from typing import NamedTuple

from packet.packet import Packet

FORWARD = "forward"
DROP = "drop"
CONSUMED = "consumed"
PARKED = "parked"

# How long a drop flow may stay installed: "temporary" drops depend on state that changes soon (missing ARP,
# a hop limit hit while the topology is being edited); "normal" drops are ordinary policy decisions.
EXPIRY_NORMAL = "normal"
EXPIRY_TEMPORARY = "temporary"


class Output(NamedTuple):
    port: str                  # exterior port id
    host: str | None           # host the port is bound to (None: bound to no host yet)
    tunnel_key: int | None     # set when the port lives on another host: the VXLAN key to send with
    packet: Packet
    bound: bool = True         # False: no host binds the port (a topology traced before deployment); the
                               # agent drops such outputs and counts them


class Generated(NamedTuple):
    """A packet the agent emits.  A device emits it on one of its ports; one emitted on an interior port is
    carried on into the peer device and simulated from there (simulate.simulate_generated), so in a result
    ``port`` is always where it leaves the agent, and ``origin``/``path`` say where it came from."""

    port: str                  # the port the packet leaves from (the agent injects it there)
    packet: Packet
    origin: str | None = None  # carried: the interior port the device emitted it on
    path: tuple[str, ...] = ()  # carried: its walk from ``origin`` to ``port``


# -- flow-state kinds (FlowStateWrite.kind): connection tracking and the NAT bindings -------------------------
CONNTRACK = "conntrack"
FWD_SNAT, REV_SNAT = "fwd_snat", "rev_snat"
FWD_DNAT, REV_DNAT = "fwd_dnat", "rev_dnat"
FWD_STICK_DNAT = "fwd_stick_dnat"
NAT_KINDS = (FWD_SNAT, REV_SNAT, FWD_DNAT, REV_DNAT, FWD_STICK_DNAT)


class StateKey(NamedTuple):
    """The key of a flow-state entry (DESIGN §1.5): the 5-tuple under which a packet finds it (ICMP echo: the id
    as both ports) and the device whose simulation reads it (conntrack: the ingress device; NAT: the device
    that translates).  A tuple: a key decoded from the wire (a plain tuple) is equal to it and finds the same
    entry; wrap a decoded key as ``StateKey(*key)`` to read its fields."""

    src: int
    dst: int
    proto: int
    sport: int
    dport: int
    device: str


_tuple_new = tuple.__new__


def state_key(five: tuple, device: str) -> StateKey:
    """StateKey(*five, device), without the NamedTuple constructor's overhead (it is on the flow-setup path)."""
    return _tuple_new(StateKey, (*five, device))


# -- effects ------------------------------------------------------------------------------------------------
class MacTableWrite(NamedTuple):
    """A MAC learned on a bridge port (the wire form, to the other workers and agents, is messages.MacLearned)."""

    bridge: str
    vlan: int
    mac: int
    port: str                  # port id


class ArpTableWrite(NamedTuple):
    """An ARP entry learned by a router (the wire form is messages.ArpLearned)."""

    router: str
    ip: int
    mac: int


class FlowStateWrite(NamedTuple):
    """A flow-state entry the simulation created (conntrack or NAT).  ``kind`` is CONNTRACK or one of
    NAT_KINDS; ``value`` is None for conntrack and an (ip, port) binding for NAT."""

    kind: str
    key: StateKey
    value: tuple | None


class FlowStateTouch(NamedTuple):
    """An existing flow-state entry was used: its idle timer restarts."""

    kind: str
    key: StateKey


# -- needs (parking) ----------------------------------------------------------------------------------------
class NeedFragment(NamedTuple):
    kind: str                  # "port", "bridge", "router", "chain", "load_balancer", "port_group", "host"
    name: str


class NeedArp(NamedTuple):
    router: str
    port: str                  # router port id the ARP request leaves from
    ip: int


class NeedLease(NamedTuple):
    """A SNAT port block (64 ports) for (device, ip) inside [port_start, port_end] is needed."""

    device: str
    ip: int
    port_start: int = 1
    port_end: int = 65535


# The waiting room's key of each need: what answers it.  Several packets wait on one ARP entry (whichever port
# asked), on one (device, ip) lease (whatever port range), on one fragment.  The first item is the need's kind.
def arp_need_key(router: str, ip: int) -> tuple:
    return ("arp", router, ip)


def lease_need_key(device: str, ip: int) -> tuple:
    return ("lease", device, ip)


def fragment_need_key(kind: str, name: str) -> tuple:
    return ("fragment", kind, name)


def need_key(need: NeedFragment | NeedArp | NeedLease) -> tuple:
    t = type(need)
    if t is NeedFragment:
        return fragment_need_key(need.kind, need.name)
    if t is NeedArp:
        return arp_need_key(need.router, need.ip)
    if t is NeedLease:
        return lease_need_key(need.device, need.ip)
    raise TypeError(f"not a need: {need!r}")


class Waiting(NamedTuple):
    """A generated packet whose own walk (from ``port``, where a device emitted it) is parked: ``result`` is that
    walk's PARKED result (its need, and what it generated and changed so far, e.g. the ARP request).  The shell
    parks it like an upcall and carries it again from ``port`` when the need is met."""

    port: str
    packet: Packet
    result: SimResult


class SimResult(NamedTuple):
    result: str
    path: tuple[str, ...] = ()
    outputs: tuple[Output, ...] = ()
    generated: tuple[Generated, ...] = ()
    effects: tuple = ()
    drop_reason: str | None = None
    expiry: str = EXPIRY_NORMAL
    needs: NeedFragment | NeedArp | NeedLease | None = None
    tags: frozenset[str] = frozenset()
    fields_read: frozenset[str] = frozenset()
    prefixes_read: tuple[tuple[str, int], ...] = ()   # address fields read only up to a prefix (field, length)
    interested_hosts: frozenset[str] = frozenset()
    waiting: tuple[Waiting, ...] = ()        # generated packets whose onward walk parked (see Waiting)
    exact: bool = False                      # a flow for it must match the whole key: the walk generated packets
                                             # (even ones dropped on their way), which depend on the whole packet

    @property
    def flow_state(self) -> tuple[FlowStateWrite, ...]:
        return tuple(e for e in self.effects if type(e) is FlowStateWrite)
