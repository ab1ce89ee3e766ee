"""Turn a simulation result into datapath actions (pure).

``flow_actions`` lists, for each output, the field rewrites from the ingress packet to that output's packet
(cumulative, in order) followed by an output to a local port or a tunnel toward the port's host with the
port's tunnel key.  A drop is ``(("drop",),)``.  Nothing here touches a socket.
"""

from __future__ import annotations

from operator import itemgetter

from packet.packet import Packet
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
