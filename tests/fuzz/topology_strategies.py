"""Hypothesis strategies for whole topologies (the file format of CONTRACTS §1, as the dict that
``topology.loader.topology_from_dict`` reads) and for packets aimed at them.

``topologies()`` draws a valid topology by construction: hosts; bridges with exterior ports (bound to a host or
not), VLAN access ports, static MAC entries and bridge-to-bridge links; routers linked to bridges, to each
other and to uplinks, with addresses, static ARP entries and routes (normal with or without a gateway,
blackhole, reject; ECMP by equal weights); chains of rules over every match field with every action (jumps only
forward, so no static loop; SNAT/DNAT static and dynamic; reverse NAT); filters on bridges and routers; an L4
load balancer with sticky and plain VIPs; port groups, stateful or not.

``aimed_packets(topo)`` draws packets whose addresses, MACs, ports and VLANs come from that topology (router
MACs and addresses, hosts in the subnets, VIPs, NAT addresses, static MACs, broadcast) mixed with random ones,
of every kind tests/fuzz/packet_strategies.py builds (TCP with any flags, UDP, ICMP echo, ICMP errors, ARP
requests and replies, VLAN tags, fragments, other protocols), packets of connections through the topology
(``flow_packets``: to a router's MAC, from a subnet, to another, the outside, a VIP, a NAT address), and
frames cut short (whatever of them still parses).  The test adds the replies and the ICMP errors carrying the
header of a connection.

IPv6 (issue 15): ``topologies()`` may give the routers IPv6 addresses (beside the IPv4 ones), IPv6 routes of
every kind and static neighbor entries (``ipv6_additions``, in the file's keys); ``aimed_packets`` then also
draws IPv6 packets aimed at those addresses (``flow_packets6``) and IPv6 packets of every kind
(tests/fuzz/packet6_strategies.py) aimed at them.
"""

from __future__ import annotations

from hypothesis import strategies as st

from packet.addr import cidr6_str, int2ip6, int2mac
from packet.codec import ParseError, build, parse
from packet.packet import ETH_TYPE_IPV6, Packet
from tests.fuzz.packet6_strategies import packets6
from tests.fuzz.packet_strategies import packets

MATCH_FIELDS = ("in_port", "out_port", "port_group", "eth_src", "eth_dst", "ethertype", "src", "dst", "proto",
                "src_port", "dst_port", "ct", "tos", "vlan")
PLAIN_ACTIONS = ("accept", "drop", "reject", "continue", "return", "rev_snat", "rev_dnat")
VLANS = (10, 20)


def _mac(n: int) -> str:
    return ":".join(f"{b:02x}" for b in (0x02, 0x5e, (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF, 0x01))


@st.composite
def topologies(draw) -> dict:
    """The dict of a valid version-1 topology file."""
    n_hosts = draw(st.integers(1, 3))
    hosts = {f"h{i}": {"tunnel_ip": f"192.0.2.{i + 1}"} for i in range(n_hosts)}
    host = st.sampled_from(sorted(hosts))
    n_bridges = draw(st.integers(1, 3))
    n_routers = draw(st.integers(0, 2))
    n_chains = draw(st.integers(0, 3))
    chain_names = [f"c{i}" for i in range(n_chains)]
    bridges: dict = {}
    routers: dict = {}
    port_ids: list[str] = []
    mac_n = iter(range(1, 10_000))

    def exterior(dev: str, pname: str) -> dict:
        if draw(st.integers(0, 4)) == 0:
            return {}                                       # not bound to any host yet
        return {"host": draw(host), "interface": f"{dev}-{pname}"}

    for b in range(n_bridges):
        name = f"b{b}"
        ports = {f"p{i}": exterior(name, f"p{i}") for i in range(draw(st.integers(1, 4)))}
        body: dict = {"ports": ports}
        if b > 0 and draw(st.booleans()):                  # a bridge-to-bridge link (a tree: no loop)
            ports[f"to_b{b - 1}"] = {"peer": f"b{b - 1}.to_b{b}"}
            bridges[f"b{b - 1}"]["ports"][f"to_b{b}"] = {}
        exts = [p for p in ports if p.startswith("p")]
        if draw(st.booleans()):
            body["vlan_ports"] = {p: draw(st.sampled_from(VLANS)) for p in exts if draw(st.booleans())}
        if draw(st.booleans()):
            body["mac_table"] = {_mac(next(mac_n)): draw(st.sampled_from(exts)) for _ in range(draw(st.integers(1, 3)))}
        if chain_names and draw(st.booleans()):
            body["inbound_filter"] = draw(st.sampled_from(chain_names))
        if chain_names and draw(st.booleans()):
            body["outbound_filter"] = draw(st.sampled_from(chain_names))
        bridges[name] = body

    nat_ips: list[str] = []
    gateways: dict[str, str] = {}
    for r in range(n_routers):
        name = f"r{r}"
        ports: dict = {}
        routes: list = []
        arp: dict = {}
        for b in sorted(bridges):                           # links to bridges
            if draw(st.integers(0, 2)) == 0:
                continue
            pname = f"to_{b}"
            bi = int(b[1:])
            ports[pname] = {"address": f"10.{r * 16 + bi}.0.1/24", "mac": _mac(next(mac_n)), "peer": f"{b}.to_{name}"}
            bridges[b]["ports"][f"to_{name}"] = {}
            if draw(st.booleans()):
                arp[f"10.{r * 16 + bi}.0.{draw(st.integers(2, 9))}"] = _mac(next(mac_n))
        if r > 0 and draw(st.booleans()):                  # a router-to-router link
            ports[f"to_r{r - 1}"] = {"address": f"172.16.{r}.2/30", "mac": _mac(next(mac_n)),
                                     "peer": f"r{r - 1}.to_r{r}"}
            routers[f"r{r - 1}"]["ports"][f"to_r{r}"] = {"address": f"172.16.{r}.1/30", "mac": _mac(next(mac_n))}
            # each routes the other's subnets over the link (r's route may also loop back: the hop limit ends it)
            routes.append({"dst": f"10.{r * 16}.0.0/20", "port": f"to_r{r - 1}", "gateway": f"172.16.{r}.1"})
            routers[f"r{r - 1}"]["routes"].append({"dst": f"10.{r * 16}.0.0/20", "port": f"to_r{r}",
                                                   "gateway": f"172.16.{r}.2"})
        if draw(st.booleans()):                             # an uplink
            ports["up"] = {"address": f"198.51.{100 + r}.2/24", "mac": _mac(next(mac_n)), **exterior(name, "up")}
            gw = f"198.51.{100 + r}.1"
            routes.append({"dst": "0.0.0.0/0", "port": "up", "gateway": gw})
            if draw(st.booleans()):
                routes.append({"dst": "0.0.0.0/0", "port": "up", "gateway": f"198.51.{100 + r}.3"})   # ECMP
            if draw(st.booleans()):
                arp[gw] = _mac(next(mac_n))
            nat_ips.append(f"198.51.{100 + r}.2")
        if not ports:
            ports["lone"] = {"address": f"10.{200 + r}.0.1/24", "mac": _mac(next(mac_n)), **exterior(name, "lone")}
        for kind in draw(st.lists(st.sampled_from(["blackhole", "reject", "normal"]), max_size=2)):
            dst = f"{draw(st.integers(11, 99))}.0.0.0/{draw(st.sampled_from([8, 16, 24]))}"
            route = {"dst": dst, "type": kind} if kind != "normal" else {"dst": dst, "port": sorted(ports)[0]}
            if kind == "normal" and draw(st.booleans()):
                route["weight"] = draw(st.integers(0, 200))
            if draw(st.booleans()):
                route["src"] = f"10.{draw(st.integers(0, 40))}.0.0/16"
            routes.append(route)
        body = {"ports": ports, "routes": routes}
        if arp:
            body["arp_table"] = arp
        for key in ("inbound_filter", "outbound_filter"):
            if chain_names and draw(st.booleans()):
                body[key] = draw(st.sampled_from(chain_names))
        if "up" in ports and draw(st.booleans()):          # a gateway: SNAT out, floating IP and port forward in
            gateways[name] = ports["up"]["address"].split("/")[0]
            body["inbound_filter"], body["outbound_filter"] = f"{name}-in", f"{name}-out"
        routers[name] = body

    for dev, body in (*bridges.items(), *routers.items()):
        port_ids += [f"{dev}.{p}" for p in body["ports"]]

    groups = {}
    for g in range(draw(st.integers(0, 2))):
        groups[f"g{g}"] = {"ports": sorted(set(draw(st.lists(st.sampled_from(port_ids), min_size=1, max_size=4)))),
                           "stateful": draw(st.booleans())}

    lbs = {}
    if routers and draw(st.booleans()):
        r = draw(st.sampled_from(sorted(routers)))
        members = [{"address": f"10.{int(r[1:]) * 16}.0.{10 + i}", "port": draw(st.sampled_from([80, 8080])),
                    "weight": draw(st.integers(0, 3)), "admin_up": draw(st.booleans())}
                   for i in range(draw(st.integers(1, 3)))]
        vips = [{"address": "203.0.113.80", "port": 80, "proto": draw(st.sampled_from(["tcp", "udp"])),
                 "pool": "web", "sticky_source_ip": draw(st.booleans())}]
        if draw(st.booleans()):
            vips.append({"address": "203.0.113.80", "port": 443, "pool": "web"})
        lbs["lb"] = {"vips": vips, "pools": {"web": {"members": members}}}
        routers[r]["load_balancer"] = "lb"

    chains = {}
    for r, up_ip in gateways.items():
        inner = f"10.{int(r[1:]) * 16}.0.10"
        static = draw(st.sampled_from(["203.0.113.10", "203.0.113.20-203.0.113.23"]))
        chains[f"{r}-in"] = [
            {"action": "rev_snat"},
            {"match": {"dst": static.split("-")[0], "in_port": f"{r}.up"}, "action": "dnat",
             "targets": [{"ip": inner}]},
            {"match": {"dst": up_ip, "proto": "tcp", "dst_port": "8080"}, "action": "dnat",
             "targets": [{"ip": inner, "port": "80"}]},
        ]
        chains[f"{r}-out"] = [
            {"action": "rev_dnat"},
            {"match": {"src": inner, "out_port": f"{r}.up"}, "action": "snat", "targets": [{"ip": static}]},
            {"match": {"src": "10.0.0.0/8", "out_port": f"{r}.up"}, "action": "snat",
             "targets": [{"ip": up_ip, "port": draw(st.sampled_from(["5000-65535", "40000-40063"]))}]},
        ]
    if gateways and bridges and draw(st.booleans()):       # a stateful firewall on a bridge
        chains["fw"] = [{"match": {"ct": "return"}, "action": "accept"},
                        {"match": {"ct": "forward", "proto": draw(st.sampled_from(["tcp", "udp", "icmp"]))},
                         "action": "accept"},
                        {"action": draw(st.sampled_from(["drop", "reject"]))}]
        bridges[draw(st.sampled_from(sorted(bridges)))]["inbound_filter"] = "fw"
    for i, cname in enumerate(chain_names):
        chains[cname] = [draw(_rule(port_ids, sorted(groups), chain_names[i + 1:], nat_ips))
                         for _ in range(draw(st.integers(0, 5)))]

    topo: dict = {"version": 1, "hosts": hosts, "bridges": bridges}
    for key, value in (("routers", routers), ("chains", chains), ("load_balancers", lbs), ("port_groups", groups)):
        if value:
            topo[key] = value
    if routers and draw(st.booleans()):
        add_ipv6(routers, draw(ipv6_additions(routers)))
    return topo


# ---- IPv6 additions (see the module comment) ----------------------------------------------------------------
DB8 = 0x20010DB8 << 96


def _net6(n: int) -> int:
    """2001:db8:<n>::/48-ish subnet number → its /64 prefix 2001:db8:<n>::."""
    return DB8 | (n & 0xFFFF) << 80


@st.composite
def ipv6_additions(draw, routers: dict) -> dict:
    """For each router: IPv6 addresses on (some of) its ports — 2001:db8:<k>::1/64 mirroring the IPv4 subnet,
    the router-to-router links as /64s too — IPv6 routes (a default through the uplink's gateway, maybe ECMP,
    prefixes of every length near the packets' addresses, blackhole, reject, source-routed) and static neighbor
    entries for some gateways and hosts."""
    out: dict = {}
    for rname, body in sorted(routers.items()):
        r = int(rname[1:])
        addrs: dict = {}
        routes: list = []
        nd: dict = {}
        for pname, port in sorted(body["ports"].items()):
            if "address" not in port or not draw(st.integers(0, 3)):
                continue
            a, b, c, _d = (int(x) for x in port["address"].split("/")[0].split("."))
            if pname.startswith("to_r"):               # a router link: both ends on the link's /64
                net = _net6(0xF000 | min(r, int(pname[4:])))
            else:
                net = _net6(b << 8 | c if a == 10 else 0xFF00 | r)
            addrs[pname] = [(net | (2 if pname.startswith("to_r") and int(pname[4:]) < r else 1), 64)]
            if pname == "up":
                gw = net | 0xFFFF
                routes.append(dict(dst=0, dst_len=0, gateway=gw, port="up"))
                if draw(st.booleans()):
                    routes.append(dict(dst=0, dst_len=0, gateway=gw - 1, port="up"))      # ECMP
                if draw(st.booleans()):
                    nd[gw] = int(_mac(9000 + r).replace(":", ""), 16)
            elif draw(st.booleans()):
                nd[net | draw(st.integers(2, 9))] = int(_mac(9100 + r * 16 + len(nd)).replace(":", ""), 16)
        if not addrs:
            continue
        pnames = sorted(addrs)
        for _ in range(draw(st.integers(0, 5))):
            length = draw(st.integers(0, 128))
            base = draw(st.sampled_from(NEAR6)) ^ draw(st.sampled_from([0, 1 << (128 - length) if length else 0]))
            net = base & _mask6(length)
            kind = draw(st.sampled_from(["normal", "gateway", "blackhole", "reject"]))
            route = dict(dst=net, dst_len=length)
            if kind in ("blackhole", "reject"):
                route["type"] = kind
            else:
                pname = draw(st.sampled_from(pnames))
                route["port"] = pname
                if kind == "gateway":
                    gw = addrs[pname][0][0] ^ 0x3
                    route["gateway"] = gw
                    nd[gw] = int(_mac(9200 + r * 16 + len(nd)).replace(":", ""), 16)
            if draw(st.integers(0, 3)) == 0:
                slen = draw(st.integers(1, 128))
                route["src"], route["src_len"] = draw(st.sampled_from(NEAR6)) & _mask6(slen), slen
            if draw(st.booleans()):
                route["weight"] = draw(st.integers(0, 200))
            routes.append(route)
        out[rname] = {"ports": addrs, "routes": routes, "nd": nd}
    return out


def _mask6(length: int) -> int:
    return ((1 << 128) - 1) ^ ((1 << (128 - length)) - 1) if length else 0


# where IPv6 packets are aimed: hosts of the mirrored subnets, the outside, a router link
NEAR6 = (_net6(0) | 2, _net6(0) | 9, _net6(0x1000) | 2, _net6(0xFF00) | 0xFFFF, _net6(0xF000) | 1,
         0x20010DB8_AB00 << 80 | 5, 0x20010DB8_AB00 << 80 | 0x8000 << 48 | 5, 0x20010DB8_CD00 << 80 | 0x50)


def add_ipv6(routers: dict, additions: dict) -> None:
    """Write ``ipv6_additions`` (ints) into the routers of a topology dict, in the file's keys: a port's
    ``address`` becomes a list (its IPv4 address first), ``routes`` get the IPv6 ones, ``nd_table`` the
    neighbor entries."""
    for rname, add in additions.items():
        body = routers[rname]
        for pname, addrs in add["ports"].items():
            port = body["ports"][pname]
            port["address"] = [*([port["address"]] if "address" in port else []),
                               *(f"{int2ip6(a)}/{plen}" for a, plen in addrs)]
        for r in add["routes"]:
            route = {"dst": cidr6_str(r["dst"], r["dst_len"])}
            if "src" in r:
                route["src"] = cidr6_str(r["src"], r["src_len"])
            if "gateway" in r:
                route["gateway"] = int2ip6(r["gateway"])
            for key in ("port", "weight", "type"):
                if key in r:
                    route[key] = r[key]
            body.setdefault("routes", []).append(route)
        if add["nd"]:
            body["nd_table"] = {int2ip6(ip): int2mac(mac) for ip, mac in add["nd"].items()}


@st.composite
def _rule(draw, port_ids: list[str], groups: list[str], later_chains: list[str], nat_ips: list[str]) -> dict:
    actions = [*PLAIN_ACTIONS, "snat", "dnat", *(["jump"] if later_chains else [])]
    action = draw(st.sampled_from(actions))
    rule: dict = {"action": action}
    match = {}
    for f in draw(st.lists(st.sampled_from([f for f in MATCH_FIELDS if f != "port_group" or groups]), max_size=3,
                           unique=True)):
        neg = "!" if draw(st.integers(0, 4)) == 0 else ""
        if f in ("in_port", "out_port"):
            many = draw(st.lists(st.sampled_from(port_ids), min_size=1, max_size=3, unique=True))
            match[f] = [neg + p for p in many] if len(many) > 1 else neg + many[0]
            continue
        value = {
            "port_group": lambda: draw(st.sampled_from(groups)),
            "eth_src": lambda: _mac(draw(st.integers(1, 40))),
            "eth_dst": lambda: draw(st.sampled_from([_mac(draw(st.integers(1, 40))), "ff:ff:ff:ff:ff:ff"])),
            "ethertype": lambda: draw(st.sampled_from(["ipv4", "arp", "0x86dd", 2054])),
            "src": lambda: draw(st.sampled_from(["10.0.0.0/8", "10.0.0.10", "198.51.100.0/24", "0.0.0.0/0"])),
            "dst": lambda: draw(st.sampled_from(["10.16.0.0/16", "203.0.113.80", "198.51.100.2", "0.0.0.0/0"])),
            "proto": lambda: draw(st.sampled_from(["tcp", "udp", "icmp", 47])),
            "src_port": lambda: draw(st.sampled_from(["1024-65535", "80", "0..100"])),
            "dst_port": lambda: draw(st.sampled_from(["80", "443", "1-1023"])),
            "ct": lambda: draw(st.sampled_from(["forward", "return"])),
            "tos": lambda: draw(st.integers(0, 255)),
            "vlan": lambda: draw(st.sampled_from([0, *VLANS])),
        }[f]()
        match[f] = f"{neg}{value}" if neg else value
    if match:
        if draw(st.integers(0, 5)) == 0:
            match["invert"] = True
        rule["match"] = match
    if action == "jump":
        rule["chain"] = draw(st.sampled_from(later_chains))
    if action in ("snat", "dnat"):
        ips = nat_ips + ["203.0.113.10", "203.0.113.20-203.0.113.23", "10.0.0.10"]
        targets = []
        for _ in range(draw(st.integers(1, 2))):
            t = {"ip": draw(st.sampled_from(ips))}
            if draw(st.booleans()):
                t["port"] = draw(st.sampled_from(["5000-65535", "80", "1024-1100", "40000-40063"]))
            targets.append(t)
        rule["targets"] = targets
    return rule


# ---- packets aimed at a topology ----------------------------------------------------------------------------

def _values(topo) -> dict:
    """Addresses, MACs, ports and VLANs worth aiming at in a loaded Topology."""
    macs, ips, l4 = [0xFFFFFFFFFFFF], [0, 0xFFFFFFFF], [0, 80, 443, 5000, 8080, 40000, 65535]
    router_macs, inside = [], []
    for dev in (*topo.bridges.values(), *topo.routers.values()):
        for p in dev.ports.values():
            if p.mac is not None:
                macs.append(p.mac)
                router_macs.append(p.mac)
            if p.address is not None:
                ips += [p.address, p.address + 1, p.address + 9, (p.address | 0xFF)]
                inside += [p.address + 1, p.address + 9]
    for b in topo.bridges.values():
        macs += [mac for _, mac in b.mac_table]
    for r in topo.routers.values():
        ips += list(r.arp_table) + [x.gateway for x in r.routes if x.gateway is not None and not x.v6]
        macs += list(r.arp_table.values())
    for lb in topo.load_balancers.values():
        for v in lb.vips:
            ips.append(v.address)
            l4.append(v.port)
        ips += [m.address for pool in lb.pools.values() for m in pool.members]
    for c in topo.chains.values():
        for rule in c.rules:
            ips += [t.ip_start for t in rule.targets]
            l4 += [t.port_start for t in rule.targets if t.port_start]
    ips6, inside6 = [*NEAR6, 0, 0xFF02 << 112 | 1], []
    for r in topo.routers.values():
        for p in r.ports.values():
            for a, _plen in p.addresses6:
                ips6 += [a, a + 1, a + 9, a ^ 0xFFFF]
                inside6 += [a + 1, a + 8]
            if p.link_local6 is not None:
                ips6.append(p.link_local6)
        ips6 += list(r.nd_table) + [x.gateway for x in r.routes if x.v6 and x.gateway is not None]
        macs += list(r.nd_table.values())
    return {"macs": sorted(set(macs)), "ips": sorted(set(ips)), "l4": sorted(set(l4)),
            "vlans": [None, 0, *VLANS, 4095], "router_macs": sorted(set(router_macs)),
            "inside": sorted(set(inside)) or [0x0A000002], "ips6": sorted(set(ips6)),
            "inside6": sorted(set(inside6)) or [NEAR6[0]]}


_AIM6 = {"ipv6_src": "ips6", "ipv6_dst": "ips6", "nd_target": "ips6", "inner_ipv6_src": "ips6",
         "inner_ipv6_dst": "ips6", "nd_sll": "macs", "nd_tll": "macs"}
_AIM = {"eth_src": "macs", "eth_dst": "macs", "arp_sha": "macs", "arp_tha": "macs", "ip_src": "ips",
        "ip_dst": "ips", "arp_spa": "ips", "arp_tpa": "ips", "inner_ip_src": "ips", "inner_ip_dst": "ips",
        "tp_src": "l4", "tp_dst": "l4", "inner_tp_src": "l4", "inner_tp_dst": "l4", "vlan": "vlans"}


@st.composite
def flow_packets(draw, topo) -> Packet:
    """A packet of a connection through ``topo``: from a host of a subnet (or the outside) to a router's MAC,
    toward another subnet, the outside, a VIP or a NAT address."""
    vals = _values(topo)
    proto = draw(st.sampled_from([6, 17, 1]))
    src = draw(st.sampled_from(vals["inside"] + vals["ips"]))
    dst = draw(st.sampled_from(vals["ips"] + vals["inside"] + [0xCB007105, 0xCB007150]))
    kw = dict(eth_src=draw(st.sampled_from([0x020000000001, 0x020000000002, *vals["macs"]])),
              eth_dst=draw(st.sampled_from(vals["router_macs"] or vals["macs"])), ip_src=src, ip_dst=dst,
              proto=proto, ttl=draw(st.sampled_from([64, 2, 1])), tos=0, ip_id=draw(st.integers(0, 0xFFFF)))
    if proto == 1:
        kw.update(icmp_type=8, icmp_code=0, icmp_id=draw(st.sampled_from([1, 7, 65535])), icmp_seq=1)
    else:
        kw.update(tp_src=draw(st.sampled_from([40000, 40001, 1234, 0])), tp_dst=draw(st.sampled_from(vals["l4"])))
        if proto == 6:
            kw.update(tcp_flags=draw(st.sampled_from([0x02, 0x12, 0x10, 0x04, 0x11, 0x00, 0xFF])), tcp_seq=1,
                      tcp_ack=0, tcp_window=1024)
    return Packet(**kw)


@st.composite
def flow_packets6(draw, topo) -> Packet:
    """An IPv6 packet of a connection through ``topo``: from a host of a subnet (or the outside) to a router's
    MAC, toward another subnet, the outside or a router address; TCP, UDP or an echo request."""
    vals = _values(topo)
    proto = draw(st.sampled_from([6, 17, 58]))
    src = draw(st.sampled_from(vals["inside6"] + vals["ips6"]))
    src ^= draw(st.integers(0, 0xFFFF)) >> draw(st.integers(0, 16))
    dst = draw(st.sampled_from(vals["ips6"] + vals["inside6"]))
    dst ^= draw(st.integers(0, (1 << 128) - 1)) >> draw(st.integers(0, 128))
    kw = dict(eth_src=draw(st.sampled_from([0x020000000001, 0x020000000002, *vals["macs"]])),
              eth_dst=draw(st.sampled_from(vals["router_macs"] or vals["macs"])), eth_type=ETH_TYPE_IPV6,
              ipv6_src=src, ipv6_dst=dst, proto=proto, hop_limit=draw(st.sampled_from([64, 2, 1, 255])), tclass=0,
              flow_label=draw(st.integers(0, 0xFFFFF)))
    if proto == 58:
        kw.update(icmpv6_type=128, icmpv6_code=0, icmp_id=draw(st.sampled_from([1, 7, 65535])), icmp_seq=1)
    else:
        kw.update(tp_src=draw(st.sampled_from([40000, 40001, 1234, 0])), tp_dst=draw(st.sampled_from(vals["l4"])))
        if proto == 6:
            kw.update(tcp_flags=draw(st.sampled_from([0x02, 0x12, 0x10, 0x04])), tcp_seq=1, tcp_ack=0,
                      tcp_window=1024)
    return Packet(**kw)


@st.composite
def aimed_packets(draw, topo) -> Packet:
    """A packet of any kind, some of its fields aimed at ``topo``, or a packet of a connection through it; or
    a frame of one cut short, if it parses.  IPv6 ones too when the topology has IPv6 addresses."""
    vals = _values(topo)
    v6 = len(vals["ips6"]) > len(NEAR6) + 2 and draw(st.booleans())
    if draw(st.booleans()):
        return draw(flow_packets6(topo) if v6 else flow_packets(topo))
    pkt = draw(packets6() if v6 else packets())
    changes = {}
    for f, pool in (*_AIM.items(), *(_AIM6.items() if v6 else ())):
        if getattr(pkt, f) is None and f != "vlan":
            continue                                        # a field this kind of packet does not have
        if draw(st.integers(0, 2)):
            changes[f] = draw(st.sampled_from(vals[pool]))
    if changes.get("vlan") is not None and pkt.vlan is None:
        changes["vlan_pcp"] = 0
    pkt = pkt._replace(**changes)
    if pkt.ttl is not None and draw(st.integers(0, 5)) == 0:
        pkt = pkt._replace(ttl=draw(st.sampled_from([0, 1, 2])))
    if draw(st.integers(0, 5)) == 0:                      # cut short: the datapath simulates what still parses
        frame = build(pkt)
        try:
            return parse(frame[:draw(st.integers(0, len(frame)))])
        except ParseError:
            return pkt
    return pkt


def describe(topo_dict: dict) -> str:
    """A short text of a drawn topology (for failure messages)."""
    return ", ".join(f"{k}={sorted(v) if isinstance(v, dict) else v}" for k, v in topo_dict.items())

