"""The shardnet topologies of ``shardnet bench --datapath real``, one per pipeline, bound to the rig's root veth
ends on the bench's host, one agent.  The host's tunnel address is a loopback one (``tunnel_ip``, the caller
picks it and the tunnel port at random): the agent opens its VXLAN endpoint there and never uses it.

    l2    one bridge ``tenant`` with the ports ``sender`` and ``sink``
    ct    the same bridge with an inbound stateful filter: accept ARP, accept ct forward, accept ct return, drop
          (every IP packet goes through conntrack: each new 5-tuple creates a conntrack entry)
    l3    a router ``r1`` between the bridges ``left`` (sender) and ``right`` (sink)
    full  l3 with SNAT of 198.51.100.0/24 leaving on r1.right to the pool 203.0.113.2-9, ports 1024-65535
          (dynamic: stateful, port blocks leased from the store), and rev_snat on the way in
"""

from __future__ import annotations

from bench.wirerig import NAT_POOL, ROUTED_IP6, ROUTER_MAC_A, ROUTER_MAC_B

HOST = "bench-host"
PIPELINES = ("l2", "ct", "l3", "full")


def topology_yaml(pipeline: str, sender_if: str, sink_if: str, tunnel_ip: str = "127.0.0.1",
                  ipv6: bool = False) -> str:
    """``ipv6``: the l3 router's ports get their IPv6 prefixes too (bench.wirerig.ROUTED_IP6)."""
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r} (one of {', '.join(PIPELINES)})")
    sender = f"{{host: {HOST}, interface: {sender_if}}}"
    sink = f"{{host: {HOST}, interface: {sink_if}}}"
    if pipeline in ("l2", "ct"):
        text = f"""version: 1
hosts:
  {HOST}: {{tunnel_ip: {tunnel_ip}}}
bridges:
  tenant:
    ports:
      sender: {sender}
      sink: {sink}
"""
        if pipeline == "ct":
            text += """    inbound_filter: fw
chains:
  fw:
    - {match: {ethertype: arp}, action: accept}
    - {match: {ct: forward}, action: accept}
    - {match: {ct: return}, action: accept}
    - {action: drop}
"""
        return text
    left, right = "198.51.100.254/24", "203.0.113.254/24"
    if ipv6:
        left = f'[{left}, "{ROUTED_IP6["gw_a"]}/64"]'
        right = f'[{right}, "{ROUTED_IP6["gw_b"]}/64"]'
    text = f"""version: 1
hosts:
  {HOST}: {{tunnel_ip: {tunnel_ip}}}
bridges:
  left:
    ports:
      sender: {sender}
      up: {{peer: r1.left}}
  right:
    ports:
      sink: {sink}
      up: {{peer: r1.right}}
routers:
  r1:
    ports:
      left: {{address: {left}, mac: "{ROUTER_MAC_A}"}}
      right: {{address: {right}, mac: "{ROUTER_MAC_B}"}}
"""
    if pipeline == "full":
        text += f"""    inbound_filter: r1-in
    outbound_filter: r1-out
chains:
  r1-in:
    - {{action: rev_snat}}
  r1-out:
    - {{match: {{src: 198.51.100.0/24, out_port: r1.right}}, action: snat,
       targets: [{{ip: {NAT_POOL[0]}-{NAT_POOL[-1]}, port: 1024-65535}}]}}
"""
    return text


def ingress_port(pipeline: str) -> str:
    return "tenant.sender" if pipeline in ("l2", "ct") else "left.sender"
