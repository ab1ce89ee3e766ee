"""Synthetic traffic for `shardnet run --demo`: a bounded mix of new and repeated flows over the demo topology.

Pure frame generation (no I/O): the run command injects what this yields.  Flows: VMs to the internet through
SNAT, VM to VM across the bridge (one VM lives on another host: tunnel outputs), clients to the load-balanced
VIP, and pings to the router.
"""

from __future__ import annotations

import random

from packet.codec import build
from packet.spec import parse_spec

GW = "02:0a:00:00:00:01"
UPLINK = "02:0a:00:00:00:02"
NEXT_HOP = "02:0b:00:00:00:01"
VMS = {"tenant.vm1": ("02:00:00:00:00:01", "10.0.0.2"), "tenant.vm3": ("02:00:00:00:00:03", "10.0.0.4")}


def flow(rng: random.Random, n: int) -> tuple[str, bytes]:
    """The n-th demo flow's first frame and its ingress port."""
    kind = n % 4
    port = "tenant.vm1" if n % 2 else "tenant.vm3"
    mac, ip = VMS[port]
    sport = 1024 + (n // 4) % 60000
    if kind == 0:
        spec = f"eth_src={mac},eth_dst={GW},ip_src={ip},ip_dst=203.0.113.{1 + n % 100},proto=tcp," \
               f"tp_src={sport},tp_dst=443"
    elif kind == 1:
        spec = f"eth_src={mac},eth_dst=02:00:00:00:00:02,ip_src={ip},ip_dst=10.0.0.3,proto=udp," \
               f"tp_src={sport},tp_dst=53"
    elif kind == 2:
        port = "r1.uplink"
        spec = f"eth_src={NEXT_HOP},eth_dst={UPLINK},ip_src=203.0.113.{1 + n % 120},ip_dst=198.51.100.10," \
               f"proto=tcp,tp_src={sport},tp_dst=80"
    else:
        spec = f"eth_src={mac},eth_dst={GW},ip_src={ip},ip_dst=10.0.0.1,proto=icmp,icmp_type=8," \
               f"icmp_id={n % 65536},icmp_seq=1"
    return port, build(parse_spec(spec, rng))


def warmup_frames() -> list[tuple[str, bytes]]:
    """Each VM announces itself (the bridge learns where it is; the router gleans its address)."""
    out = []
    for port, (mac, ip) in {**VMS, "tenant.vm2": ("02:00:00:00:00:02", "10.0.0.3")}.items():
        out.append((port, build(parse_spec(f"eth_src={mac},arp_op=1,arp_spa={ip},arp_tpa=10.0.0.1"))))
    return out
