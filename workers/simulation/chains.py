"""Rule chains: match evaluation and the chain walk (jump / return / continue, loop detection).

Pure: ``run_chain`` returns a verdict and the (possibly NAT-rewritten) packet; NAT rules call into
workers.simulation.nat, connection tracking into workers.simulation.conntrack.  The end of a chain is accept.
"""

from __future__ import annotations

from packet.packet import PROTO_TCP, PROTO_UDP, Packet
from topology.model import Chain, Condition, Rule
from workers import tags
from workers.simulation import conntrack, nat
from workers.simulation.context import Ctx, Stop

ACCEPT = "accept"
DROP = "drop"
REJECT = "reject"
MAX_JUMP_DEPTH = 16


def _ports(pkt: Packet):
    if pkt.proto in (PROTO_TCP, PROTO_UDP):
        return pkt.tp_src, pkt.tp_dst
    return None, None


def _test(ctx: Ctx, c: Condition, pkt: Packet, in_port: str | None, out_port: str | None) -> bool:
    """The field test of one condition, before negation.  An absent field fails the test whatever the
    negation (a non-IP packet never matches an IP condition)."""
    f = c.field
    v = c.value
    if f == "in_port":
        return in_port in v
    if f == "out_port":
        return out_port in v
    if f == "port_group":
        g = ctx.need("port_group", v)
        ctx.tags.add(tags.port_group(v))
        return in_port in g.ports or out_port in g.ports
    if f == "ct":
        ctx.read_five()
        return conntrack.ct_state(ctx) == v
    if f == "src" or f == "dst":
        net, length = v
        ctx.read_prefix(_FIELD_READS[f], length)       # the test reads the prefix's bits, nothing more
        ip = pkt.ip_src if f == "src" else pkt.ip_dst
        if ip is None:
            return False
        return (ip & ((0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0)) == net
    ctx.read(_FIELD_READS[f])
    if f == "src_port" or f == "dst_port":
        ctx.read("proto")                              # which protocols have ports
        sp, dp = _ports(pkt)
        port = sp if f == "src_port" else dp
        return port is not None and v[0] <= port <= v[1]
    actual = getattr(pkt, _FIELD_READS[f])
    return actual is not None and actual == v


_FIELD_READS = {
    "eth_src": "eth_src", "eth_dst": "eth_dst", "ethertype": "eth_type", "src": "ip_src", "dst": "ip_dst",
    "proto": "proto", "src_port": "tp_src", "dst_port": "tp_dst", "tos": "tos", "vlan": "vlan",
}


def matches(ctx: Ctx, rule: Rule, pkt: Packet, in_port: str | None, out_port: str | None) -> bool:
    m = rule.match
    result = True
    for c in m.conditions:
        if _test(ctx, c, pkt, in_port, out_port) == c.negate:
            result = False
            break
    return result != m.invert


def run_chain(ctx: Ctx, name: str, pkt: Packet, device: str, in_port: str | None,
              out_port: str | None) -> tuple[str, Packet]:
    """Walk chain ``name``.  Returns (accept | drop | reject, packet after NAT rewrites)."""
    stack: list[tuple[Chain, int]] = []
    chain = _load(ctx, name)
    on_stack = {name}
    i = 0
    while True:
        if i >= len(chain.rules):
            if not stack:
                return ACCEPT, pkt
            on_stack.discard(chain.name)
            chain, i = stack.pop()
            continue
        rule = chain.rules[i]
        i += 1
        if not matches(ctx, rule, pkt, in_port, out_port):
            continue
        a = rule.action
        if a == "continue":
            continue
        if a == "accept":
            return ACCEPT, pkt
        if a == "drop":
            return DROP, pkt
        if a == "reject":
            return REJECT, pkt
        if a == "return":
            if not stack:
                return ACCEPT, pkt
            on_stack.discard(chain.name)
            chain, i = stack.pop()
            continue
        if a == "jump":
            if rule.chain in on_stack or len(stack) >= MAX_JUMP_DEPTH:
                raise Stop("chain_loop")
            stack.append((chain, i))
            chain = _load(ctx, rule.chain)
            on_stack.add(rule.chain)
            i = 0
            continue
        # NAT actions: a rewrite that applies ends the chain with accept (as MidoNet's NAT rules do);
        # rev_* with no matching state falls through to the next rule.
        new = nat.apply_rule(ctx, rule, pkt, device)
        if new is not None:
            return ACCEPT, new


def _load(ctx: Ctx, name: str) -> Chain:
    chain = ctx.need("chain", name)
    ctx.tags.add(tags.chain(name))
    return chain
