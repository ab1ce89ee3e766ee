"""The per-simulation context: what one simulation has read, decided and wants done so far.

A Ctx lives for exactly one call of ``simulate`` and is never shared.  Device functions append to it; the
entry point turns it into the immutable SimResult.  Early exits (a missing fragment, a drop, a hop limit)
are exceptions caught only by the entry point.
"""

from __future__ import annotations

from packet.packet import Packet
from workers import tags
from workers.simulation.result import EXPIRY_NORMAL, Generated, NeedArp, NeedFragment, NeedLease
from workers.simulation.state import AgentState

MAX_DEVICE_HOPS = 32
# What a flow-state key, the flow hash and an ICMP-error test read of a packet: conntrack, NAT and load
# balancing record all of it (the whole 5-tuple, an echo's id, an error's carried header), so a megaflow made
# from a stateful decision matches one connection.
# IPv6: its addresses, ICMPv6 type and an error's carried addresses are in it too (the shared slots are the same).
FIVE_TUPLE_FIELDS = ("eth_type", "ip_src", "ip_dst", "proto", "tp_src", "tp_dst", "icmp_type", "icmp_id",
                     "inner_ip_src", "inner_ip_dst", "inner_proto", "inner_tp_src", "inner_tp_dst", "inner_icmp_id",
                     "ipv6_src", "ipv6_dst", "icmpv6_type", "inner_ipv6_src", "inner_ipv6_dst")


class Stop(Exception):  # noqa: N818 - control flow, not an error
    """Ends the simulation early with a drop (or parking when ``needs`` is set)."""

    def __init__(self, reason: str, expiry: str = EXPIRY_NORMAL,
                 needs: NeedFragment | NeedArp | NeedLease | None = None):
        super().__init__(reason)
        self.reason = reason
        self.expiry = expiry
        self.needs = needs


class Consumed(Exception):  # noqa: N818
    """The agent answered the packet itself (ARP reply, echo reply); the replies are in ctx.generated."""


class Ctx:
    __slots__ = ("topo", "state", "now", "local_host", "path", "tags", "effects", "fields", "prefixes", "generated",
                 "hops", "ingress_port", "ingress_packet", "ct", "_flow_hash", "_five", "opaque")

    def __init__(self, topo, state: AgentState, now: float, local_host: str | None,
                 ingress_port: str, ingress_packet: Packet):
        self.topo = topo
        self.state = state
        self.now = now
        self.local_host = local_host
        self.ingress_port = ingress_port
        self.ingress_packet = ingress_packet
        self.path: list[str] = []
        self.tags: set[str] = set()
        self.effects: list = []
        self.fields: set[str] = set()       # packet fields read whole (the 5-tuple's: see _five)
        self.prefixes: dict[str, int] = {}  # address fields read only up to a prefix: field → its length
        self.generated: list[Generated] = []
        self.hops = 0
        self.ct: str | None = None          # conntrack state once read (conntrack.ct_state)
        self._flow_hash: int | None = None
        self._five = False                  # the whole 5-tuple was read: FIVE_TUPLE_FIELDS join the fields read
                                            # (conntrack.ct_state sets it alone: the ct state is forward/return)
        self.opaque = False                 # ... by something else than the ct state (NAT, LB, the flow hash): the
                                            # walk depends on it beyond forward/return (workers.memo)

    # -- topology reads: a missing object parks the packet -------------------------------------------------
    def need(self, kind: str, name: str):
        getter = getattr(self.topo, kind)
        obj = getter(name)
        if obj is None:
            raise Stop("fragment_missing", needs=NeedFragment(kind, name))
        return obj

    def device_kind(self, name: str) -> str:
        kind = self.topo.device_kind(name)
        if kind is None:
            raise Stop("fragment_missing", needs=NeedFragment("device", name))
        return kind

    def groups_of_port(self, port_id: str) -> tuple[str, ...]:
        groups = self.topo.groups_of_port(port_id)
        if groups is None:
            raise Stop("fragment_missing", needs=NeedFragment("port_groups", "*"))
        return groups

    def port(self, port_id: str):
        p = self.topo.port(port_id)                 # need("port", ...) without its dispatch: the hottest read
        if p is None:
            raise Stop("fragment_missing", needs=NeedFragment("port", port_id))
        self.tags.add(tags.port(port_id))
        return p

    def chain(self, name: str):
        """need("chain", name) and its tag."""
        c = self.topo.chain(name)
        if c is None:
            raise Stop("fragment_missing", needs=NeedFragment("chain", name))
        self.tags.add(tags.chain(name))
        return c

    def hop(self, element: str) -> None:
        self.hops += 1
        if self.hops > MAX_DEVICE_HOPS:
            raise Stop("hop_limit")
        self.path.append(element)

    def read(self, *fields: str) -> None:
        """The decision read these packet fields whole (a megaflow matches them)."""
        self.fields.update(fields)

    def read_prefix(self, field: str, length: int) -> None:
        """The decision read only the first ``length`` bits of address ``field`` (prefix tracking; 32 bits for an
        IPv4 field, 128 for an IPv6 one)."""
        if length > self.prefixes.get(field, -1):
            self.prefixes[field] = length

    def read_five(self) -> None:
        """The decision depends on the whole 5-tuple (NAT and LB state, the flow hash)."""
        self._five = True
        self.opaque = True

    def fields_read(self) -> frozenset[str]:
        """Every packet field the walk read whole."""
        return frozenset(self.fields.union(FIVE_TUPLE_FIELDS)) if self._five else frozenset(self.fields)

    def emit(self, port_id: str, pkt: Packet) -> None:
        self.generated.append(Generated(port_id, pkt))

    def flow_hash(self) -> int:
        """A stable (unsalted) hash of the ingress 5-tuple, for ECMP and pool choices.  An IPv6 packet's
        addresses are folded to 32 bits (an IPv4 packet hashes as it always did)."""
        if self._flow_hash is None:
            self.read_five()
            p = self.ingress_packet
            h = 0x811C9DC5
            src, dst = p.ip_src, p.ip_dst
            if p.ipv6_src is not None:
                src, dst = _fold(p.ipv6_src), _fold(p.ipv6_dst)
            for v in (src, dst, p.proto, p.tp_src, p.tp_dst, p.icmp_id):
                h = ((h ^ (v if v is not None else 0xFFFF)) * 0x01000193) & 0xFFFFFFFF
            self._flow_hash = h
        return self._flow_hash


def _fold(v: int | None) -> int | None:
    """A 128-bit address folded to 32 bits (the FNV step above keeps only the low 32 bits of what it mixes)."""
    return None if v is None else (v ^ v >> 32 ^ v >> 64 ^ v >> 96) & 0xFFFFFFFF
