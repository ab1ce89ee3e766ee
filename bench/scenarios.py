"""Benchmark scenarios: a topology (bench/topologies/<name>.yaml) and the flows a synthetic source sends into it.

Owns, per scenario, the mapping flow index → (ingress port, Packet of a new TCP connection's SYN), distinct for
every index below ``capacity``, and the MAC → ingress port table used to replay recorded traffic (--pcap).

- ``l2``: one bridge, 8 VMs (10.1.0.11-18); flows between every ordered VM pair, many source ports.
- ``l3``: bridge left (10.1.0.0/24) → router → bridge right (10.2.0.0/24); flows both ways.
- ``full``: tenant bridge (filter) → router (chains, SNAT 198.51.100.100:1024-65535, LB VIP
  198.51.100.10:80) → uplink.  Nine flows in ten are tenant VMs opening connections to 203.0.113.1-239 (16
  destination ports) through SNAT; one in ten is an internet client (203.0.113.x) connecting to the VIP.

Every address is a tenant 10.x or in 198.51.100.0/24 / 203.0.113.0/24 (never 192.0.2.0/24); every MAC and
next hop is a static entry, so no steady-state packet parks on ARP or learns a MAC.

IPv6 variants (``shardnet bench --scenario NAME --ipv6``, ``get(NAME, ipv6=True)``, named ``NAME-v6``): the same
topology and the same flow pattern with IPv6 SYNs (addresses from 2001:db8::/32, never fd00::/64):

- ``l2-v6``: the l2 bridge, VMs 2001:db8:1::11-18 (a bridge forwards IPv6 at L2: no router needed).
- ``l3-v6``: l3 with dual-stack router ports (bench/topologies/l3v6.yaml), left VMs 2001:db8:1::11-14, right
  2001:db8:2::11-14, static neighbor entries on the router.

full has no IPv6 variant yet (it needs SNAT, which IPv6 does not have, and an IPv6 LB VIP).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packet.addr import ip2int, ip6_2int
from packet.packet import ETH_TYPE_IPV6, PROTO_TCP, TCP_FLAGS, Packet

TOPOLOGY_DIR = Path(__file__).resolve().parent / "topologies"
HOST = "bench"
SYN = TCP_FLAGS["syn"]
SPORTS = 60_000                      # source ports 1024..61023


class ScenarioError(ValueError):
    pass


def _mac(group: int, i: int) -> int:
    return 0x020000000000 | (group << 16) | i


def syn(eth_src: int, eth_dst: int, ip_src: int, ip_dst: int, sport: int, dport: int) -> Packet:
    return Packet(eth_src=eth_src, eth_dst=eth_dst, ip_src=ip_src, ip_dst=ip_dst, proto=PROTO_TCP, ttl=64, tos=0,
                  ip_id=sport & 0xFFFF, ip_df=True, tp_src=sport, tp_dst=dport, tcp_flags=SYN,
                  tcp_seq=(sport * 2654435761) & 0xFFFFFFFF, tcp_ack=0, tcp_window=64240)


def syn6(eth_src: int, eth_dst: int, ip_src: int, ip_dst: int, sport: int, dport: int) -> Packet:
    """The IPv6 SYN of a new connection (addresses as 128-bit ints)."""
    return Packet(eth_src=eth_src, eth_dst=eth_dst, eth_type=ETH_TYPE_IPV6, ipv6_src=ip_src, ipv6_dst=ip_dst,
                  hop_limit=64, tclass=0, flow_label=sport & 0xFFFFF, proto=PROTO_TCP, tp_src=sport, tp_dst=dport,
                  tcp_flags=SYN, tcp_seq=(sport * 2654435761) & 0xFFFFFFFF, tcp_ack=0, tcp_window=64240)


@dataclass(frozen=True)
class Scenario:
    name: str
    topology: Path
    flow: Callable[[int], tuple[str, Packet]]    # index → (ingress port, packet); distinct below capacity
    capacity: int
    mac_ports: dict[int, str]                     # source MAC → ingress port (pcap replay)
    description: str

    def flows(self, start: int, n: int) -> list[tuple[str, Packet]]:
        if start < 0 or start + n > self.capacity:
            raise ScenarioError(f"scenario {self.name}: at most {self.capacity} distinct flows")
        return [self.flow(i) for i in range(start, start + n)]


# -- l2 -----------------------------------------------------------------------------------------------------
_L2_VMS = 8
_L2_PAIRS = _L2_VMS * (_L2_VMS - 1)
_L2_DPORTS = (80, 443, 8080, 5432)


def _l2_flow(i: int) -> tuple[str, Packet]:
    pair, q = i % _L2_PAIRS, i // _L2_PAIRS
    a = pair % _L2_VMS
    b = (a + 1 + pair // _L2_VMS) % _L2_VMS
    sport, dport = 1024 + q % SPORTS, _L2_DPORTS[(q // SPORTS) % len(_L2_DPORTS)]
    base = ip2int("10.1.0.11")
    return f"br0.vm{a + 1}", syn(_mac(1, a + 1), _mac(1, b + 1), base + a, base + b, sport, dport)


_L2_BASE6 = ip6_2int("2001:db8:1::11")


def _l2_flow6(i: int) -> tuple[str, Packet]:
    """_l2_flow's pattern in IPv6: the same ports, MACs and 5-tuple count."""
    port, p = _l2_flow(i)
    a, b = p.ip_src - ip2int("10.1.0.11"), p.ip_dst - ip2int("10.1.0.11")
    return port, syn6(p.eth_src, p.eth_dst, _L2_BASE6 + a, _L2_BASE6 + b, p.tp_src, p.tp_dst)


_LEFT6, _RIGHT6 = ip6_2int("2001:db8:1::11"), ip6_2int("2001:db8:2::11")


def _l3_flow6(i: int) -> tuple[str, Packet]:
    """_l3_flow's pattern in IPv6 (bench/topologies/l3v6.yaml)."""
    port, p = _l3_flow(i)
    left = p.ip_src >> 8 == ip2int("10.1.0.0") >> 8
    a, b = p.ip_src & 0xFF, p.ip_dst & 0xFF
    src, dst = (_LEFT6, _RIGHT6) if left else (_RIGHT6, _LEFT6)
    return port, syn6(p.eth_src, p.eth_dst, src + a - 11, dst + b - 11, p.tp_src, p.tp_dst)


# -- l3 -----------------------------------------------------------------------------------------------------
_L3_VMS = 4
_L3_PAIRS = 2 * _L3_VMS * _L3_VMS
_R_LEFT, _R_RIGHT = 0x020A00000101, 0x020A00000201


def _l3_flow(i: int) -> tuple[str, Packet]:
    pair, q = i % _L3_PAIRS, i // _L3_PAIRS
    side, rest = divmod(pair, _L3_VMS * _L3_VMS)
    a, b = divmod(rest, _L3_VMS)
    sport, dport = 1024 + q % SPORTS, _L2_DPORTS[(q // SPORTS) % len(_L2_DPORTS)]
    left, right = ip2int("10.1.0.11"), ip2int("10.2.0.11")
    if side == 0:
        return f"left.vm{a + 1}", syn(_mac(1, a + 1), _R_LEFT, left + a, right + b, sport, dport)
    return f"right.vm{a + 1}", syn(_mac(2, a + 1), _R_RIGHT, right + a, left + b, sport, dport)


# -- full ---------------------------------------------------------------------------------------------------
_FULL_VMS = 8
_INTERNET_HOSTS = 239                     # 203.0.113.1-239 (203.0.113.240/28 is a blackhole route)
_FULL_DPORTS = (80, 443, 22, 25, 53, 110, 143, 993, 995, 3306, 5432, 6379, 8000, 8080, 8443, 9000)
_R_TENANT, _R_UPLINK, _GATEWAY = 0x020A00000001, 0x020A00000002, 0x020B00000001
_VIP, _VIP_PORT = ip2int("198.51.100.10"), 80


def _full_flow(i: int) -> tuple[str, Packet]:
    q, r = divmod(i, 10)
    internet = ip2int("203.0.113.1")
    if r == 9:                            # an internet client to the VIP
        client, sport = q % _INTERNET_HOSTS, 1024 + (q // _INTERNET_HOSTS) % SPORTS
        return "r1.uplink", syn(_GATEWAY, _R_UPLINK, internet + client, _VIP, sport, _VIP_PORT)
    j = q * 9 + r                         # a tenant VM to the internet through SNAT
    vm, k = j % _FULL_VMS, j // _FULL_VMS
    dst, k = k % _INTERNET_HOSTS, k // _INTERNET_HOSTS
    dport, sport = _FULL_DPORTS[k % len(_FULL_DPORTS)], 1024 + (k // len(_FULL_DPORTS)) % SPORTS
    return f"tenant.vm{vm + 1}", syn(_mac(1, vm + 1), _R_TENANT, ip2int("10.0.0.11") + vm, internet + dst,
                                     sport, dport)


SCENARIOS: dict[str, Scenario] = {
    "l2": Scenario("l2", TOPOLOGY_DIR / "l2.yaml", _l2_flow, _L2_PAIRS * SPORTS * len(_L2_DPORTS),
                   {_mac(1, i): f"br0.vm{i}" for i in range(1, _L2_VMS + 1)},
                   "one bridge, flows between its exterior ports"),
    "l3": Scenario("l3", TOPOLOGY_DIR / "l3.yaml", _l3_flow, _L3_PAIRS * SPORTS * len(_L2_DPORTS),
                   {**{_mac(1, i): f"left.vm{i}" for i in range(1, _L3_VMS + 1)},
                    **{_mac(2, i): f"right.vm{i}" for i in range(1, _L3_VMS + 1)}},
                   "bridge → router → bridge"),
    "full": Scenario("full", TOPOLOGY_DIR / "full.yaml", _full_flow,
                     10 * min(_INTERNET_HOSTS * SPORTS, _FULL_VMS * _INTERNET_HOSTS * len(_FULL_DPORTS) * SPORTS
                              // 9),
                     {**{_mac(1, i): f"tenant.vm{i}" for i in range(1, _FULL_VMS + 1)}, _GATEWAY: "r1.uplink"},
                     "bridge → router (chains, SNAT, VIP) → uplink"),
}


_L2 = SCENARIOS["l2"]
SCENARIOS["l2-v6"] = Scenario("l2-v6", _L2.topology, _l2_flow6, _L2.capacity, _L2.mac_ports,
                              "one bridge, IPv6 flows between its exterior ports")
_L3 = SCENARIOS["l3"]
SCENARIOS["l3-v6"] = Scenario("l3-v6", TOPOLOGY_DIR / "l3v6.yaml", _l3_flow6, _L3.capacity, _L3.mac_ports,
                              "bridge → router → bridge, IPv6 flows")
IPV6_VARIANTS = {"l2": "l2-v6", "l3": "l3-v6"}


def get(name: str, ipv6: bool = False) -> Scenario:
    """The scenario ``name`` (its IPv6 variant with ``ipv6``)."""
    if ipv6 and not name.endswith("-v6"):
        if name not in IPV6_VARIANTS:
            raise ScenarioError(f"scenario {name!r} has no IPv6 variant yet (IPv6: {', '.join(IPV6_VARIANTS)})")
        name = IPV6_VARIANTS[name]
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ScenarioError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})") from None
