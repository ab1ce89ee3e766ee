"""NAT: forward and reverse SNAT/DNAT, static (floating-IP) rewrites, and SNAT port choice.

Flow-state keys (DESIGN §1.5): kind + 5-tuple + id of the device that did the NAT → (ip, port) binding.  A
forward NAT writes its forward key (the original tuple → the translated address) and its reverse key (the
reply's tuple → the original address).  ICMP echo uses the ICMP id as the port; an ICMP error is translated
through the header it carries, and that header (ports included) is reverse-translated too.

SNAT ports come from blocks of 64 ports the agent holds per (device, ip) (``state.nat_blocks``).  A binding is
unique per destination (ip, port): one port may serve several destinations.  When no held block has a free
port the simulation ends with NeedLease and the shell leases a block and simulates again.

Randomness is derived from the flow hash, so the simulation stays a pure function of its inputs.
"""

from __future__ import annotations

from packet.packet import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Packet
from topology.model import NatTarget, Rule
from topology.nat_leases import BLOCK_SIZE
from workers import tags
from workers.simulation.conntrack import five_tuple, inner_five_tuple, is_error, reverse
from workers.simulation.context import Ctx, Stop
from workers.simulation.result import (
    FWD_DNAT,
    FWD_SNAT,
    REV_DNAT,
    REV_SNAT,
    FlowStateTouch,
    FlowStateWrite,
    NeedLease,
    StateKey,
    state_key,
)
from workers.simulation.state import MISSING

# ports looked at past the first free one for a free port the state prefers (its reply hashes to this worker):
# preferences come in runs of a few ports (the low bits of a port move the flow hash's low bit in groups), so a
# few more find one when there is one, and a block whose preferred ports are all bound costs 8 lookups, not 64
PREFER_LOOKAHEAD = 8


def _has_ports(pkt: Packet) -> bool:
    p = pkt.proto
    return p in (PROTO_TCP, PROTO_UDP) or (p in (PROTO_ICMP, PROTO_ICMPV6) and pkt.icmp_id is not None
                                           and not is_error(pkt))


def _v6(pkt: Packet) -> bool:
    return pkt.ip_src is None and pkt.ipv6_src is not None


# The address fields of each family: (src, dst, inner src, inner dst).
_F4 = ("ip_src", "ip_dst", "inner_ip_src", "inner_ip_dst")
_F6 = ("ipv6_src", "ipv6_dst", "inner_ipv6_src", "inner_ipv6_dst")


def _fields(pkt: Packet, ip: int) -> tuple[str, str, str, str]:
    """The address fields ``ip`` is written to.  A binding wider than the packet's family (an IPv6 address
    for an IPv4 packet: flow state from a peer is not trusted) drops the packet (``bad_nat_binding``)."""
    if _v6(pkt):
        return _F6
    if ip > 0xFFFFFFFF:
        raise Stop("bad_nat_binding")
    return _F4


# -- rewrites (either family: an IPv6 packet's ipv6_* fields; the load balancer translates IPv6) -------------
def set_src(pkt: Packet, ip: int, port: int | None) -> Packet:
    src, _dst, _isrc, idst = _fields(pkt, ip)
    if is_error(pkt):
        # the carried header travelled the other way: its destination is our source
        kw = {src: ip}
        if getattr(pkt, idst) == getattr(pkt, src):
            kw[idst] = ip
        return pkt._replace(**kw)
    if port is None or not _has_ports(pkt):
        return pkt._replace(**{src: ip})
    if pkt.proto in (PROTO_ICMP, PROTO_ICMPV6):
        return pkt._replace(**{src: ip, "icmp_id": port})
    return pkt._replace(**{src: ip, "tp_src": port})


def set_dst(pkt: Packet, ip: int, port: int | None) -> Packet:
    _src, dst, isrc, _idst = _fields(pkt, ip)
    if is_error(pkt):
        kw = {dst: ip}
        if getattr(pkt, isrc) == getattr(pkt, dst):
            kw[isrc] = ip
        return pkt._replace(**kw)
    if port is None or not _has_ports(pkt) or pkt.proto in (PROTO_ICMP, PROTO_ICMPV6):
        return pkt._replace(**{dst: ip})
    return pkt._replace(**{dst: ip, "tp_dst": port})


def _set_inner_src(pkt: Packet, ip: int, port: int) -> Packet:
    _src, dst, isrc, _idst = _fields(pkt, ip)
    kw = {isrc: ip}
    if pkt.inner_proto in (PROTO_ICMP, PROTO_ICMPV6):
        kw["inner_icmp_id"] = port
    elif pkt.inner_proto in (PROTO_TCP, PROTO_UDP):
        kw["inner_tp_src"] = port
    if getattr(pkt, dst) == getattr(pkt, isrc):
        kw[dst] = ip
    return pkt._replace(**kw)


def _set_inner_dst(pkt: Packet, ip: int, port: int) -> Packet:
    src, _dst, _isrc, idst = _fields(pkt, ip)
    kw = {idst: ip}
    if pkt.inner_proto in (PROTO_TCP, PROTO_UDP):
        kw["inner_tp_dst"] = port
    if getattr(pkt, src) == getattr(pkt, idst):
        kw[src] = ip
    return pkt._replace(**kw)


# -- state helpers -----------------------------------------------------------------------------------------
def lookup(ctx: Ctx, kind: str, key: StateKey):
    ctx.read_five()
    v = ctx.state.flow_state_get(kind, key, ctx.now)
    ctx.tags.add(tags.flow_state(kind, key))
    return None if v is MISSING else v


def write(ctx: Ctx, kind: str, key: StateKey, value: tuple) -> None:
    ctx.effects.append(FlowStateWrite(kind, key, value))


def touch(ctx: Ctx, kind: str, key: StateKey) -> None:
    ctx.effects.append(FlowStateTouch(kind, key))


def _pick(ctx: Ctx, targets: tuple[NatTarget, ...], salt: int) -> tuple[NatTarget, int]:
    h = (ctx.flow_hash() ^ salt) * 2654435761 & 0xFFFFFFFF
    t = targets[h % len(targets)]
    n_ips = t.ip_end - t.ip_start + 1
    return t, t.ip_start + (h // len(targets)) % n_ips


# -- rule actions ------------------------------------------------------------------------------------------
def apply_rule(ctx: Ctx, rule: Rule, pkt: Packet, device: str) -> Packet | None:
    """Apply a NAT rule that matched.  Returns the rewritten packet, or None when a reverse rule finds no
    state (the chain goes on).  No NAT66: an IPv6 packet meeting a forward snat/dnat rule goes on untranslated
    (the rule does not apply to it, so a dual-stack router's IPv4 SNAT lets its IPv6 traffic be routed as it
    is; the loader refuses IPv6 NAT targets); rev_snat/rev_dnat find the IPv6 state the load balancer wrote."""
    ctx.read_five()
    a = rule.action
    if a == "rev_snat":
        return reverse_snat(ctx, pkt, device)
    if a == "rev_dnat":
        return reverse_dnat(ctx, pkt, device)
    if pkt.ip_src is None:
        return None
    if a == "dnat":
        return forward_dnat(ctx, rule.targets, pkt, device)
    return forward_snat(ctx, rule.targets, pkt, device)


def forward_dnat(ctx: Ctx, targets: tuple[NatTarget, ...], pkt: Packet, device: str) -> Packet:
    target, ip = _pick(ctx, targets, 0x0D)
    if not target.dynamic or pkt.is_icmp_error:
        return set_dst(pkt, ip, None)                   # static NAT: stateless
    t = five_tuple(pkt)
    fkey = state_key(t, device)
    bound = lookup(ctx, FWD_DNAT, fkey)
    if bound is None:
        h = ctx.flow_hash()
        port = target.port_start + h % (target.port_end - target.port_start + 1)
        bound = (ip, port if pkt.proto != PROTO_ICMP else t[4])
        new = set_dst(pkt, *bound)
        write(ctx, FWD_DNAT, fkey, bound)
        write(ctx, REV_DNAT, state_key(reverse(five_tuple(new)), device), (t[1], t[4]))
        return new
    touch(ctx, FWD_DNAT, fkey)
    return set_dst(pkt, bound[0], bound[1])


def forward_snat(ctx: Ctx, targets: tuple[NatTarget, ...], pkt: Packet, device: str) -> Packet:
    target, ip = _pick(ctx, targets, 0x05)
    if not target.dynamic or pkt.is_icmp_error:
        return set_src(pkt, ip, None)
    t = five_tuple(pkt)
    fkey = state_key(t, device)
    bound = lookup(ctx, FWD_SNAT, fkey)
    if bound is not None:
        touch(ctx, FWD_SNAT, fkey)
        touch(ctx, REV_SNAT, StateKey(t[1], bound[0], t[2], t[4], bound[1], device))
        return set_src(pkt, bound[0], bound[1])
    port = choose_snat_port(ctx, device, ip, target, t) if _has_ports(pkt) else 0
    new = set_src(pkt, ip, port)
    write(ctx, FWD_SNAT, fkey, (ip, port))
    write(ctx, REV_SNAT, state_key(reverse(five_tuple(new)), device), (t[0], t[3]))
    return new


def choose_snat_port(ctx: Ctx, device: str, ip: int, target: NatTarget, t: tuple) -> int:
    """A port in a held block, inside the target's range, whose binding toward this destination is free.

    Blocks are tried newest first (a block just leased is the likeliest to have room), so the usual cost is a
    few lookups however many blocks are held.  In a block holding the port bound last toward this remote end,
    the search starts right after it (the state's ``snat_next``: RFC 6056's per-destination increment), so
    connections to one busy remote end take the ports in turn instead of probing a filling block from random
    starts over and over.  Ports the state prefers (e.g. whose reply hashes to this worker) are taken first,
    looking at most ``PREFER_LOOKAHEAD`` ports past the first free one; then that one is taken."""
    lo, hi = target.port_start, target.port_end
    ctx.tags.add(tags.nat_block(device, ip))
    prefer = getattr(ctx.state, "prefer_snat_port", None)
    taken = ctx.state.flow_state_get
    now = ctx.now
    h = ctx.flow_hash()
    dst, proto, dport = t[1], t[2], t[4]
    dry = getattr(ctx.state, "snat_dry", None)        # LocalState's port counts: no walk when none is free
    if dry is not None and dry(device, ip, dst, proto, dport, lo, hi):
        raise Stop("nat_lease_needed", needs=NeedLease(device, ip, lo, hi))
    nxt = getattr(ctx.state, "snat_next", None)
    cursor = nxt.get((device, ip, dst, proto, dport)) if nxt else None
    for b in reversed(ctx.state.nat_blocks(device, ip)):
        first, last = max(b, lo), min(b + BLOCK_SIZE - 1, hi)
        if first > last:
            continue
        n = last - first + 1
        start = cursor - first + 1 if cursor is not None and first <= cursor <= last else h
        fallback, stop = None, n
        for i in range(n):
            if i == stop:
                break
            port = first + (start + i) % n
            reply = (dst, ip, proto, dport, port)        # the reply's 5-tuple if this port is chosen
            if taken(REV_SNAT, state_key(reply, device), now) is not MISSING:
                continue
            if prefer is None or prefer(reply):
                return port
            if fallback is None:
                fallback, stop = port, i + 1 + PREFER_LOOKAHEAD
        if fallback is not None:
            return fallback
    raise Stop("nat_lease_needed", needs=NeedLease(device, ip, lo, hi))


def reverse_snat(ctx: Ctx, pkt: Packet, device: str) -> Packet | None:
    if is_error(pkt):
        inner = inner_five_tuple(pkt)
        if inner is None:
            return None
        orig = lookup(ctx, REV_SNAT, state_key(reverse(inner), device))
        return None if orig is None else _set_inner_src(pkt, orig[0], orig[1])
    t = five_tuple(pkt)
    if t is None:
        return None
    key = state_key(t, device)
    orig = lookup(ctx, REV_SNAT, key)
    if orig is None:
        return None
    touch(ctx, REV_SNAT, key)
    if pkt.proto == PROTO_ICMP:
        return set_dst(pkt, orig[0], None)._replace(icmp_id=orig[1])
    return set_dst(pkt, orig[0], orig[1] if _has_ports(pkt) else None)


def reverse_dnat(ctx: Ctx, pkt: Packet, device: str) -> Packet | None:
    if is_error(pkt):
        inner = inner_five_tuple(pkt)
        if inner is None:
            return None
        vip = lookup(ctx, REV_DNAT, state_key(reverse(inner), device))
        return None if vip is None else _set_inner_dst(pkt, vip[0], vip[1])
    t = five_tuple(pkt)
    if t is None:
        return None
    key = state_key(t, device)
    vip = lookup(ctx, REV_DNAT, key)
    if vip is None:
        return None
    touch(ctx, REV_DNAT, key)
    if pkt.proto in (PROTO_ICMP, PROTO_ICMPV6):
        return set_src(pkt, vip[0], None)
    return set_src(pkt, vip[0], vip[1] if _has_ports(pkt) else None)
