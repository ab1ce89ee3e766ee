"""L4 load balancing on a router: VIP → backend DNAT, sticky source IP, and the reverse translation.

A packet to a VIP (address + port) is DNATed to a pool member chosen by weight among admin-up members with
weight > 0; the choice is derived from the flow hash (or from the source IP when the VIP is sticky), so the
simulation stays pure.  A connection keeps its backend while that member is still valid.  Sticky VIPs keep
a per-client entry whose key has client port 0.  A VIP match skips the router's inbound chain.  Replies from
a backend are reverse-DNATed to the VIP.  A packet to the VIP address with another protocol is dropped.

IPv6: an IPv6 VIP (``Vip.v6``) is met by IPv6 packets only (its address is tested against ``ipv6_dst``), an
IPv4 one by IPv4 packets only; a VIP's backends are the pool members of its family.  The translation, the
sticky-source entries and the reply's reverse translation are the same, in the ipv6_* fields, and their state
keys hold the 128-bit addresses (replicated like any flow state).  No NAT46/64: an IPv4 VIP never sends to an
IPv6 member.
"""

from __future__ import annotations

from packet.packet import Packet
from topology.model import Member, Router, Vip
from workers import tags
from workers.simulation import nat
from workers.simulation.conntrack import five_tuple, is_error, reverse
from workers.simulation.context import Ctx, Stop
from workers.simulation.result import FWD_DNAT, FWD_STICK_DNAT, REV_DNAT, StateKey, state_key


def process_inbound(ctx: Ctx, router: Router, pkt: Packet) -> tuple[Packet, bool]:
    """Returns (packet, vip_matched)."""
    lbal = ctx.need("load_balancer", router.load_balancer)
    ctx.tags.add(tags.load_balancer(lbal.name))
    v6 = pkt.ip_dst is None and pkt.ipv6_dst is not None
    ctx.read("eth_type", "ipv6_dst" if v6 else "ip_dst")
    dst = pkt.ipv6_dst if v6 else pkt.ip_dst
    for vip in lbal.vips:
        if dst is None or vip.v6 != v6 or dst != vip.address:
            continue
        ctx.read("proto", "tp_dst")
        if pkt.proto != vip.proto:
            raise Stop("vip_proto_mismatch")
        if pkt.tp_dst != vip.port:
            continue
        ctx.read("icmpv6_type" if v6 else "icmp_type")
        if is_error(pkt):
            return pkt, False
        return _to_backend(ctx, router, lbal.pools[vip.pool].members, vip, pkt), True
    new = nat.reverse_dnat(ctx, pkt, router.name)
    return (new if new is not None else pkt), False


def _valid(members: tuple[Member, ...], v6: bool) -> list[Member]:
    return [m for m in members if m.admin_up and m.weight > 0 and m.v6 == v6]


def _fold(ip: int) -> int:
    """An address folded to 32 bits (an IPv6 source's sticky choice depends on all of it)."""
    h = 0
    while ip:
        h ^= ip & 0xFFFFFFFF
        ip >>= 32
    return h


def _choose(valid: list[Member], h: int) -> Member:
    total = sum(m.weight for m in valid)
    x = (h * 2654435761 & 0xFFFFFFFF) % total
    for m in valid:
        x -= m.weight
        if x < 0:
            return m
    return valid[-1]


def _to_backend(ctx: Ctx, router: Router, members: tuple[Member, ...], vip: Vip, pkt: Packet) -> Packet:
    valid = _valid(members, vip.v6)
    if not valid:
        raise Stop("no_backend")
    ctx.read("ipv6_src" if vip.v6 else "ip_src", "tp_src")
    dev = router.name
    t = five_tuple(pkt)
    fkey = state_key(t, dev)
    ok = {(m.address, m.port) for m in valid}
    backend = nat.lookup(ctx, FWD_DNAT, fkey)
    if backend is not None and tuple(backend) in ok:
        nat.touch(ctx, FWD_DNAT, fkey)
        return nat.set_dst(pkt, backend[0], backend[1])
    if vip.sticky_source_ip:
        skey = StateKey(t[0], t[1], t[2], 0, t[4], dev)        # any source port: one entry per client
        backend = nat.lookup(ctx, FWD_STICK_DNAT, skey)
        if backend is None or tuple(backend) not in ok:
            m = _choose(valid, _fold(t[0]))
            backend = (m.address, m.port)
            nat.write(ctx, FWD_STICK_DNAT, skey, backend)
        else:
            nat.touch(ctx, FWD_STICK_DNAT, skey)
    else:
        m = _choose(valid, ctx.flow_hash())
        backend = (m.address, m.port)
    new = nat.set_dst(pkt, backend[0], backend[1])
    nat.write(ctx, FWD_DNAT, fkey, backend)
    nat.write(ctx, REV_DNAT, state_key(reverse(five_tuple(new)), dev), (vip.address, vip.port))
    return new
