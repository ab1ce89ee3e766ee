"""Turn a simulation result into datapath actions (pure).

``flow_actions`` lists, for each output, the field rewrites from the ingress packet to that output's packet
(cumulative, in order) followed by an output to a local port or a tunnel toward the port's host with the
port's tunnel key.  A drop is ``(("drop",),)``.  Nothing here touches a socket.
"""

from __future__ import annotations

from operator import itemgetter

from packet.packet import (
    FRAG_NONE,
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    TCP_FLAGS,
    Packet,
)
from workers.simulation.result import Output

# The fields a simulation rewrites, in the order actions set them: a subset of what the datapath can rewrite in
# place (packet.rewrite.REWRITABLE | REWRITABLE_IPV6; tests/unit/test_worker_parts.py checks the inclusion).
# The IPv6 ones come last: an IPv4 packet has them None in and out, so they never make an action for it.
REWRITABLE = ("eth_src", "eth_dst", "vlan", "ip_src", "ip_dst", "ttl", "tos", "tp_src", "tp_dst", "icmp_id",
              "inner_ip_src", "inner_ip_dst", "inner_tp_src", "inner_tp_dst", "inner_icmp_id",
              "ipv6_src", "ipv6_dst", "hop_limit", "tclass", "flow_label", "inner_ipv6_src", "inner_ipv6_dst")
DROP_ACTIONS = (("drop",),)
_rewritable = itemgetter(*(Packet._fields.index(f) for f in REWRITABLE))


def output_actions(ingress: Packet, outputs: tuple[Output, ...], tunnel_ip_of) -> tuple:
    """``tunnel_ip_of(host) -> int`` gives the tunnel endpoint of another host."""
    actions = []
    cur = _rewritable(ingress)
    for o in outputs:
        new = _rewritable(o.packet)
        if new != cur:                                  # else: nothing rewritten (a bridge): no field loop
            actions.extend([("set", f, v) for f, v, old in zip(REWRITABLE, new, cur, strict=True)
                            if v != old])
        cur = new
        if o.tunnel_key is None:
            actions.append(("output", o.port))
        else:
            actions.append(("tunnel", tunnel_ip_of(o.host), o.tunnel_key))
    return tuple(actions) if actions else DROP_ACTIONS


# -- the reply a connection's first packet draws (set up ahead: workers/worker.py _reply_ahead) ----------------
REPLY_TTL = 64          # the TTL / hop limit of the expected reply: Linux's default (ip_default_ttl); a reply sent
                        # with another misses the flow set up for it (where the key holds it) and is upcalled
_SYN = TCP_FLAGS["syn"]
_OPENING = TCP_FLAGS["syn"] | TCP_FLAGS["ack"] | TCP_FLAGS["rst"] | TCP_FLAGS["fin"]


def draws_reply(pkt: Packet) -> bool:
    """Whether ``pkt`` draws a reply near certainly: a TCP SYN (without ACK, RST or FIN) or an ICMP / ICMPv6 echo
    request, not a fragment."""
    if pkt.frag != FRAG_NONE:
        return False
    proto = pkt.proto
    if proto == PROTO_TCP:
        return (pkt.tcp_flags or 0) & _OPENING == _SYN
    if proto == PROTO_ICMP:
        return pkt.icmp_type == ICMP_ECHO_REQUEST and pkt.icmp_code == 0
    return proto == PROTO_ICMPV6 and pkt.icmpv6_type == ICMPV6_ECHO_REQUEST and pkt.icmpv6_code == 0


def expected_reply(out: Packet) -> Packet:
    """The reply to ``out``, a packet of ``draws_reply`` as it leaves its egress port, as its receiver sends it
    back: MACs, addresses and ports swapped; a SYN-ACK (TOS / traffic class 0, as Linux sends one) or an echo
    reply (same id; the TOS reflected, as Linux does); TTL / hop limit REPLY_TTL.  Only the flow key's fields
    matter (packet/flowkey.py): the rest are the reply's plausible values."""
    v6 = out.ipv6_src is not None
    if out.proto == PROTO_TCP:
        rep = out._replace(tp_src=out.tp_dst, tp_dst=out.tp_src, tcp_flags=_SYN | TCP_FLAGS["ack"],
                           tcp_ack=((out.tcp_seq or 0) + 1) & 0xFFFFFFFF, tcp_seq=0, tos=None if v6 else 0,
                           tclass=0 if v6 else None)
    elif v6:
        rep = out._replace(icmpv6_type=ICMPV6_ECHO_REPLY)
    else:
        rep = out._replace(icmp_type=ICMP_ECHO_REPLY)
    rep = rep._replace(eth_src=out.eth_dst, eth_dst=out.eth_src, payload=b"")
    if v6:
        return rep._replace(ipv6_src=out.ipv6_dst, ipv6_dst=out.ipv6_src, hop_limit=REPLY_TTL, flow_label=0)
    return rep._replace(ip_src=out.ip_dst, ip_dst=out.ip_src, ttl=REPLY_TTL, ip_id=0)
