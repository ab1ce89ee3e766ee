"""The megaflow invariant: every packet a megaflow matches is simulated to the actions the megaflow carries.

That is what makes wildcarding safe (OVS's correctness argument for megaflows): the datapath executes a flow's
actions for any packet whose key agrees with the flow on the fields its mask keeps, so those actions must be
what a fresh ``simulate()`` decides for each such packet.  Each example draws a topology (the simulation fuzz's
generator, tests/fuzz/topology_strategies.py, plus routes of every prefix length and chains with CIDR matches),
warms the agent state with packets whose effects are applied as a worker applies them (MACs learned, conntrack
and NAT entries, NAT blocks granted), then simulates a first packet and computes its flow as the worker does
(workers.megaflow.flow_match, workers.plan.output_actions).  It then draws many packets the megaflow matches —
the kept fields copied, the kept bits of a prefix copied, everything else drawn afresh, the frame built and
parsed back as the datapath would see it — and checks, against the same state, that simulating each gives the
same kind (forward or drop) and the same outputs: the ports, and the packet the flow's actions make of it
equal to the packet the simulation sends there.

IPv6: the drawn topologies may carry IPv6 addresses, routes and neighbor entries (topology_strategies),
and ``routed6_topologies`` routes IPv6 by prefixes of every length (0..128) where prefix tracking on ipv6_dst
decides.

The flows a worker sets up ahead for the reply of a SYN or an echo request (workers/worker.py
``_reply_ahead``) are checked the same way (``check_replies_ahead``): the first packet is simulated on the
host of its ingress port and its effects applied; the reply its receiver sends (workers.plan.expected_reply)
is simulated from the egress port; where the worker would install that walk's flow, every packet its megaflow
matches must be simulated to its actions.

``test_the_check_catches_a_forgotten_field`` shows the check has teeth: with the bridge's eth_src or the
router's prefix (IPv4 or IPv6) recorded too short, it finds a counterexample.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st

from packet.codec import ParseError, build, parse
from packet.flowkey import ADDR_BITS, KEY_SLOTS, flow_key, projector, slot_mask
from packet.packet import Packet
from tests.fuzz.topology_strategies import NEAR6, add_ipv6, aimed_packets, flow_packets, topologies
from topology.loader import topology_from_dict
from topology.nat_leases import BLOCK_SIZE
from workers.megaflow import flow_match
from workers.plan import DROP_ACTIONS, REWRITABLE, draws_reply, expected_reply, output_actions
from workers.simulation.result import (
    DROP,
    FORWARD,
    PARKED,
    ArpTableWrite,
    FlowStateTouch,
    FlowStateWrite,
    MacTableWrite,
    NeedLease,
)
from workers.simulation.simulate import simulate
from workers.simulation.state import LocalState

NOW = 1000.0
TUNNEL_IP = 0x7F000001


@st.composite
def megaflow_topologies(draw) -> dict:
    """The fuzz's topologies, with more routes of every prefix length (nested, adjacent, /32) and chains whose
    rules test CIDRs of many lengths."""
    topo = draw(topologies())
    for r in topo.get("routers", {}).values():
        ports = sorted(r["ports"])
        for _ in range(draw(st.integers(0, 6))):
            # around the addresses packets are aimed at (hosts of the subnets, the outside), nested and siblings
            base = draw(st.sampled_from([0xCB007105, 0xCB007150, 0x0A000002, 0x0A000009, 0x0A100002, 0xC6336401]))
            length = draw(st.integers(1, 32))
            base ^= draw(st.sampled_from([0, 0, 1 << (32 - length)]))           # the sibling prefix
            net = base & ((0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF)
            dst = f"{net >> 24}.{(net >> 16) & 255}.{(net >> 8) & 255}.{net & 255}/{length}"
            kind = draw(st.sampled_from(["normal", "gateway", "gateway", "blackhole", "reject"]))
            if kind == "gateway":                   # through a next hop whose MAC is known: forwarded
                pname = draw(st.sampled_from(ports))
                addr = r["ports"][pname].get("address")
                if isinstance(addr, list):                 # with IPv6 addresses: the IPv4 one comes first
                    addr = addr[0] if "." in addr[0] else None
                if addr is None or not addr.endswith("/24"):
                    continue
                ip = addr.split("/")[0].split(".")
                gw = ".".join([*ip[:3], str(int(ip[3]) + draw(st.integers(1, 3)))])
                r.setdefault("arp_table", {})[gw] = f"02:5e:ff:00:00:{int(ip[3]) + 16:02x}"
                route = {"dst": dst, "port": pname, "gateway": gw}
            elif kind == "normal":
                route = {"dst": dst, "port": draw(st.sampled_from(ports))}
            else:
                route = {"dst": dst, "type": kind}
            r["routes"].append(route)
    chains = topo.get("chains", {})
    for name in list(chains):
        for _ in range(draw(st.integers(0, 2))):
            length = draw(st.integers(0, 32))
            f = draw(st.sampled_from(["src", "dst"]))
            base = draw(st.sampled_from(["10.0.0.0", "10.16.0.0", "203.0.113.0", "198.51.100.0"]))
            rule = {"match": {f: f"{base}/{length}" if length < 32 else base},
                    "action": draw(st.sampled_from(["accept", "drop", "reject", "continue"]))}
            chains[name].insert(draw(st.integers(0, len(chains[name]))), rule)
    return topo


NEAR = (0xCB007105, 0xCB007150, 0xCB0071F0, 0xC6336505, 0x0A000005)    # where routed packets go


@st.composite
def routed_topologies(draw) -> dict:
    """A bridge of two VMs and a router to the outside with routes of every prefix length around the addresses
    ``routed_packets`` aim at (nested, siblings, host routes; through one of two gateways, blackhole, reject),
    and maybe filters whose rules test CIDRs of every length: where prefix tracking decides."""
    routes = []
    for _ in range(draw(st.integers(1, 8))):
        length = draw(st.integers(0, 32))
        base = draw(st.sampled_from(NEAR))
        if length:
            base ^= draw(st.sampled_from([0, 1 << (32 - length)]))
        net = base & ((0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF)
        dst = f"{net >> 24}.{(net >> 16) & 255}.{(net >> 8) & 255}.{net & 255}/{length}"
        kind = draw(st.sampled_from(["198.51.100.1", "198.51.100.3", "blackhole", "reject"]))
        routes.append({"dst": dst, "type": kind} if kind in ("blackhole", "reject")
                      else {"dst": dst, "port": "uplink", "gateway": kind})
    router = {"ports": {"b0": {"address": "10.0.0.1/24", "mac": "02:0a:00:00:00:01", "peer": "b0.up"},
                        "uplink": {"address": "198.51.100.2/24", "mac": "02:0a:00:00:00:02", "host": "h",
                                   "interface": "up0"}},
              "routes": routes, "arp_table": {"198.51.100.1": "02:0b:00:00:00:01", "198.51.100.3": "02:0b:00:00:00:03",
                                              "10.0.0.2": "02:00:00:00:00:01", "10.0.0.3": "02:00:00:00:00:02"}}
    chains = {}
    for name in ("in", "out"):
        if draw(st.booleans()):
            rules = []
            for _ in range(draw(st.integers(1, 4))):
                length = draw(st.integers(0, 32))
                base = draw(st.sampled_from(NEAR))
                addr = f"{base >> 24}.{(base >> 16) & 255}.{(base >> 8) & 255}.{base & 255}"
                field = draw(st.sampled_from(["src", "dst"]))
                neg = draw(st.sampled_from(["", "", "!"]))
                rules.append({"match": {field: f"{neg}{addr}/{length}"},
                              "action": draw(st.sampled_from(["accept", "drop", "continue"]))})
            chains[name] = rules
            router[f"{name}bound_filter"] = name
    topo = {"version": 1, "hosts": {"h": {"tunnel_ip": "127.0.0.11"}},
            "bridges": {"b0": {"ports": {"vm1": {"host": "h", "interface": "t1"},
                                         "vm2": {"host": "h", "interface": "t2"}, "up": {"peer": "r0.b0"}},
                               "mac_table": {"02:00:00:00:00:01": "vm1", "02:00:00:00:00:02": "vm2"}}},
            "routers": {"r0": router}}
    if chains:
        topo["chains"] = chains
    return topo


@st.composite
def routed_packets(draw, topo) -> Packet:
    """From a VM to the router (or the other VM), toward an address near the routes, any protocol."""
    near = draw(st.sampled_from(NEAR)) ^ draw(st.integers(0, 0xFFFFFFFF)) >> draw(st.integers(0, 32))
    src = draw(st.sampled_from([0x0A000002, 0x0A000003, *NEAR]))
    src ^= draw(st.integers(0, 0xFFFF)) >> draw(st.integers(0, 16))
    proto = draw(st.sampled_from([6, 17, 1]))
    kw = dict(eth_src=draw(st.sampled_from([0x020000000001, 0x020000000002, 0x020000000009])),
              eth_dst=draw(st.sampled_from([0x020A00000001, 0x020A00000001, 0x020000000002])),
              ip_src=src, ip_dst=near, proto=proto, ttl=draw(st.sampled_from([64, 64, 2, 1])), tos=0,
              ip_id=draw(st.integers(0, 0xFFFF)))
    if proto == 1:
        kw.update(icmp_type=8, icmp_code=0, icmp_id=draw(st.integers(0, 0xFFFF)), icmp_seq=1)
    else:
        kw.update(tp_src=draw(st.integers(0, 0xFFFF)), tp_dst=draw(st.sampled_from([53, 80, 443])))
        if proto == 6:
            kw.update(tcp_flags=0x02, tcp_seq=1, tcp_ack=0, tcp_window=1024)
    return Packet(**kw)


_GW6 = (0x20010DB8_00FF << 80 | 1, 0x20010DB8_00FF << 80 | 3)


@st.composite
def routed6_topologies(draw) -> dict:
    """routed_topologies in IPv6: a bridge of two VMs (2001:db8:1::/64) and a router to the outside
    (2001:db8:ff::/64) with IPv6 routes of every prefix length (0..128) around the addresses ``routed6_packets``
    aim at — nested, siblings, host routes, through one of two gateways, blackhole, reject, some source-routed —
    (written in the file's keys by tests/fuzz/topology_strategies.add_ipv6)."""
    routes = []
    for _ in range(draw(st.integers(1, 8))):
        length = draw(st.integers(0, 128))
        base = draw(st.sampled_from(NEAR6))
        if length:
            base ^= draw(st.sampled_from([0, 1 << (128 - length)]))
        net = base & (((1 << 128) - 1) ^ ((1 << (128 - length)) - 1) if length else 0)
        kind = draw(st.sampled_from([*_GW6, "blackhole", "reject"]))
        route = {"dst": net, "dst_len": length}
        route.update({"type": kind} if kind in ("blackhole", "reject") else {"port": "uplink", "gateway": kind})
        if draw(st.integers(0, 3)) == 0:
            slen = draw(st.integers(1, 128))
            route["src"] = draw(st.sampled_from(NEAR6)) & (((1 << 128) - 1) ^ ((1 << (128 - slen)) - 1))
            route["src_len"] = slen
        routes.append(route)
    topo = {"version": 1, "hosts": {"h": {"tunnel_ip": "127.0.0.11"}},
            "bridges": {"b0": {"ports": {"vm1": {"host": "h", "interface": "t1"},
                                         "vm2": {"host": "h", "interface": "t2"}, "up": {"peer": "r0.b0"}},
                               "mac_table": {"02:00:00:00:00:01": "vm1", "02:00:00:00:00:02": "vm2"}}},
            "routers": {"r0": {"ports": {"b0": {"mac": "02:0a:00:00:00:01", "peer": "b0.up"},
                                         "uplink": {"mac": "02:0a:00:00:00:02", "host": "h", "interface": "up0"}}}}}
    add_ipv6(topo["routers"], {"r0": {"ports": {"b0": [(0x20010DB8_0001 << 80 | 1, 64)],
                                                "uplink": [(0x20010DB8_00FF << 80 | 2, 64)]},
                                      "routes": routes,
                                      "nd": {_GW6[0]: 0x020B00000001, _GW6[1]: 0x020B00000003,
                                             0x20010DB8_0001 << 80 | 2: 0x020000000001,
                                             0x20010DB8_0001 << 80 | 3: 0x020000000002}}})
    return topo


@st.composite
def routed6_packets(draw, topo) -> Packet:
    """From a VM to the router (or the other VM), toward an IPv6 address near the routes: TCP, UDP, echo."""
    near = draw(st.sampled_from(NEAR6)) ^ draw(st.integers(0, (1 << 128) - 1)) >> draw(st.integers(0, 128))
    src = draw(st.sampled_from([0x20010DB8_0001 << 80 | 2, 0x20010DB8_0001 << 80 | 3, *NEAR6]))
    src ^= draw(st.integers(0, 0xFFFF)) >> draw(st.integers(0, 16))
    proto = draw(st.sampled_from([6, 17, 58]))
    kw = dict(eth_src=draw(st.sampled_from([0x020000000001, 0x020000000002, 0x020000000009])),
              eth_dst=draw(st.sampled_from([0x020A00000001, 0x020A00000001, 0x020000000002])),
              eth_type=0x86DD, ipv6_src=src, ipv6_dst=near, proto=proto,
              hop_limit=draw(st.sampled_from([64, 64, 2, 1])), tclass=0, flow_label=draw(st.integers(0, 0xFFFFF)))
    if proto == 58:
        kw.update(icmpv6_type=128, icmpv6_code=0, icmp_id=draw(st.integers(0, 0xFFFF)), icmp_seq=1)
    else:
        kw.update(tp_src=draw(st.integers(0, 0xFFFF)), tp_dst=draw(st.sampled_from([53, 80, 443])))
        if proto == 6:
            kw.update(tcp_flags=0x02, tcp_seq=1, tcp_ack=0, tcp_window=1024)
    return Packet(**kw)


def _settle(pkt: Packet, port: str, topo, state: LocalState, host: str | None = None):
    """Simulate as a worker does (on ``host``): a needed NAT block is granted and the packet simulated again."""
    for attempt in range(3):
        res = simulate(pkt, port, topo, state, NOW, host)
        if type(res.needs) is NeedLease:
            state.add_nat_block(res.needs.device, res.needs.ip,
                                res.needs.port_start - res.needs.port_start % BLOCK_SIZE + BLOCK_SIZE * attempt)
            continue
        return res
    return res


def _bound(res):
    return tuple(o for o in res.outputs if o.bound)


def _emitted(actions, pkt: Packet) -> tuple:
    """What the datapath emits executing ``actions`` on ``pkt``: (target, rewritable fields) per output."""
    out, cur = [], {}
    for a in actions:
        if a[0] == "set":
            cur[a[1]] = a[2]
        elif a[0] in ("output", "tunnel"):
            p = pkt._replace(**cur)
            out.append((a[1:], tuple(getattr(p, f) for f in REWRITABLE)))
    return tuple(out)


def _decided(res, pkt: Packet) -> tuple:
    """What the simulation sends for ``pkt``: (target, rewritable fields) per bound output; () for a drop."""
    if res.result != FORWARD:
        return ()
    actions = output_actions(pkt, _bound(res), lambda host: TUNNEL_IP)
    return _emitted(actions, pkt) if actions != DROP_ACTIONS else ()


def _news(res, state: LocalState) -> list:
    """The effects of ``res`` that would change the state (a MAC learned or moved, flow state or an ARP entry
    not there yet): a packet the datapath answers from a flow never makes them, so a megaflow must not match a
    packet that needs them (a new source MAC must still come up and be learned)."""
    out = []
    for e in res.effects:
        t = type(e)
        if t is MacTableWrite and state.mac_lookup(e.bridge, e.vlan, e.mac) != e.port:
            out.append(e)
        elif t is ArpTableWrite and state.arp_lookup(e.router, e.ip, NOW) != e.mac:
            out.append(e)
        elif t is FlowStateWrite and state.flow_state_get(e.kind, e.key, NOW) != e.value:
            out.append(e)
    return out


def _matching(first: Packet, mask: tuple, fresh: Packet, flips: list[int]) -> Packet:
    """A packet the megaflow of ``first`` matches: the kept slots from ``first`` (a partial slot: its kept bits
    from ``first``, the others from ``fresh``, then ``flips`` XORed into the free bits), the rest from
    ``fresh``."""
    kw = {}
    for i, name in enumerate(KEY_SLOTS[1:], start=1):
        m = mask[i]
        if m == -1:
            kw[name] = getattr(first, name)
        elif m:
            a, b = getattr(first, name), getattr(fresh, name)
            if a is None:
                kw[name] = None
            else:
                width = (1 << ADDR_BITS.get(name, 32)) - 1
                b = (b if b is not None else a) ^ flips[i % len(flips)]
                kw[name] = (a & m) | (b & ~m & width)
    return fresh._replace(**kw)


def _warmed(topo_dict: dict, data, aimed):
    """The drawn topology, an agent state warmed by a few packets whose effects are applied as a worker applies
    them (MACs learned, conntrack and NAT entries, NAT blocks granted), and an exterior port."""
    note(f"topology: {topo_dict}")
    topo = topology_from_dict(topo_dict)
    ports = sorted(pid for pid, p in topo.all_ports().items() if p.peer is None)
    state = LocalState()
    for _ in range(data.draw(st.integers(0, 6), label="warm-up packets")):
        res = _settle(data.draw(aimed(topo), label="warm"), data.draw(st.sampled_from(ports)), topo, state)
        if res.result != PARKED:
            state.apply(res.effects, NOW)
    return topo, state, data.draw(st.sampled_from(ports), label="port")


def check_megaflows(topo_dict: dict, data, record=flow_match, aimed=aimed_packets) -> None:
    topo, state, port = _warmed(topo_dict, data, aimed)
    try:
        first = parse(build(data.draw(aimed(topo), label="first packet")))
    except (ParseError, ValueError):
        return
    res = _settle(first, port, topo, state)
    if res.result not in (FORWARD, DROP):
        event(f"first packet {res.result}: not installed")
        return
    if res.result == FORWARD and not _bound(res):
        event("no bound output: a drop flow, exact")      # the worker installs it exact
        return
    state.apply(res.effects, NOW)                      # the worker applies them, then installs the flow
    same = _settle(first, port, topo, state)
    if same.result != res.result or _decided(same, first) != _decided(res, first) or _news(same, state):
        # its own effects changed its decision or undo each other (a frame from a MAC to itself taught the
        # bridge where that MAC is; an error it generated moved its source MAC): stale for the very same key,
        # exact match or not — not the megaflow's business
        event("the first packet's effects change its own decision")
        return
    _check_matching(first, port, res, record(res), topo, state, data, aimed)


def _check_matching(first: Packet, port: str, res, match: tuple, topo, state: LocalState, data, aimed,
                    host: str | None = None) -> None:
    """Packets the megaflow (``match``) of ``first``'s flow matches are simulated to that flow's actions."""
    if not match:
        event("exact match")
        return
    mask = slot_mask(match)
    assert mask is not None, match
    project = projector(mask)
    want_key = project(flow_key(first, port))
    actions = output_actions(first, _bound(res), lambda host: TUNNEL_IP) if res.result == FORWARD else DROP_ACTIONS
    wildcarded = sum(1 for m in mask if m != -1)
    event(f"megaflow: {res.result} {res.drop_reason or ''}, {wildcarded} of {len(mask)} slots wildcarded or masked")
    for name, m in match:
        if m != -1:
            event(f"prefix on {name}")
    checked = 0
    for _ in range(data.draw(st.integers(5, 20), label="packets in the megaflow")):
        fresh = data.draw(aimed(topo), label="fresh")
        flips = data.draw(st.lists(st.integers(0, (1 << 128) - 1), min_size=1, max_size=4), label="flips")
        cand = _matching(first, mask, fresh, flips)
        try:
            cand = parse(build(cand))                  # the packet as the datapath sees it
        except (ParseError, ValueError):
            continue
        if project(flow_key(cand, port)) != want_key:  # building changed a kept field: not in the megaflow
            continue
        checked += 1
        again = _settle(cand, port, topo, state, host)
        note(f"first {first} -> {res.result} {actions}\nmatch {match}\nother {cand} -> {again.result} "
             f"{again.drop_reason} {again.outputs}")
        kind = res.result
        kind2 = DROP if again.result == FORWARD and not _bound(again) else again.result
        assert kind2 == kind, "a packet the megaflow matches is simulated to another kind of decision"
        assert _decided(again, cand) == _emitted(actions, cand), "the megaflow's actions are not the simulation's"
        assert not _news(again, state), "a packet the megaflow matches would have taught the agent something"
    event(f"checked {min(checked, 5)}+ packets" if checked >= 5 else f"checked {checked} packets")


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(megaflow_topologies(), st.data())
def test_every_packet_a_megaflow_matches_is_simulated_to_its_actions(topo_dict, data):
    check_megaflows(topo_dict, data)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(routed_topologies(), st.data())
def test_every_packet_a_routed_megaflow_matches_is_simulated_to_its_actions(topo_dict, data):
    check_megaflows(topo_dict, data, aimed=routed_packets)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(routed6_topologies(), st.data())
def test_every_packet_an_ipv6_routed_megaflow_matches_is_simulated_to_its_actions(topo_dict, data):
    check_megaflows(topo_dict, data, aimed=routed6_packets)


# -- the check has teeth: the same property, with a forgotten field, finds a counterexample -------------------
def _without(field: str):
    def record(res):
        return tuple(p for p in flow_match(res) if p[0] != field)
    return record


def _shorter_prefix(res, field: str = "ip_dst", bits: int = 32):
    """The router's destination prefix recorded 4 bits too short (a whole address read left as it is)."""
    out = []
    for name, m in flow_match(res):
        if name == field and m != -1:
            m = (m << 4) & ((1 << bits) - 1)
            if not m:
                continue
        out.append((name, m))
    return tuple(out)


def _shorter_prefix6(res):
    return _shorter_prefix(res, "ipv6_dst", 128)


@pytest.mark.parametrize(("record", "topologies", "aimed"), [
    (_without("eth_src"), megaflow_topologies, aimed_packets),
    (_without("eth_dst"), megaflow_topologies, aimed_packets),
    (_shorter_prefix, routed_topologies, routed_packets),
    (_shorter_prefix6, routed6_topologies, routed6_packets),
], ids=["bridge forgets eth_src", "bridge forgets eth_dst", "router prefix too short", "IPv6 prefix too short"])
def test_the_check_catches_a_forgotten_field(record, topologies, aimed):
    @settings(max_examples=3000, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(topologies(), st.data())
    def broken(topo_dict, data):
        check_megaflows(topo_dict, data, record, aimed)

    with pytest.raises(AssertionError):
        broken()


def check_replies_ahead(topo_dict: dict, data, aimed=aimed_packets, firsts=flow_packets) -> None:
    """The flow a worker sets up ahead for the reply of a SYN or an echo request (workers/worker.py
    ``_reply_ahead``) keeps the invariant: every packet it matches, the reply its receiver sends among them, is
    simulated to its actions, against the state the first packet left."""
    topo, state, port = _warmed(topo_dict, data, aimed)
    drawn = data.draw(firsts(topo), label="first packet")       # a connection's packet
    if drawn.proto in (6, 17) and data.draw(st.integers(0, 3), label="a SYN"):     # most: a SYN
        drawn = drawn._replace(proto=6, tcp_flags=0x02, tcp_seq=1, tcp_ack=0, tcp_window=1024)
    try:
        first = parse(build(drawn))
    except (ParseError, ValueError):
        return
    if not draws_reply(first):
        event("draws no reply")
        return
    host = topo.all_ports()[port].host                # the agent of the host the first packet comes in at
    res = _settle(first, port, topo, state, host)
    outs = _bound(res) if res.result == FORWARD else ()
    if len(outs) != 1 or outs[0].tunnel_key is not None:
        event(f"first packet: {res.result} {res.drop_reason or ''}" if not outs else
              "first packet: through a tunnel" if len(outs) == 1 else "first packet: flooded")
        return
    state.apply(res.effects, NOW)
    try:
        reply = parse(build(expected_reply(outs[0].packet)))   # as the receiver's frame reaches the datapath
    except (ParseError, ValueError):
        event("the expected reply does not build")
        return
    back = simulate(reply, outs[0].port, topo, state, NOW, host)
    if back.effects and all(type(e) in (MacTableWrite, ArpTableWrite, FlowStateTouch) for e in back.effects):
        state.apply(back.effects, NOW)                # an earlier connection's reply taught the agent that
        back = simulate(reply, outs[0].port, topo, state, NOW, host)
        event("an earlier reply taught the agent")
    if (back.result != FORWARD or back.generated or back.waiting or not _bound(back)
            or len(_bound(back)) != len(back.outputs)
            or any(type(e) is not FlowStateTouch for e in back.effects)):
        event("reply not set up ahead")              # the worker installs nothing for it
        return
    event("reply set up ahead")
    _check_matching(reply, outs[0].port, back, flow_match(back), topo, state, data, aimed, host)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
          max_examples=300)
@given(megaflow_topologies(), st.data())
def test_every_packet_a_flow_set_up_ahead_matches_is_simulated_to_its_actions(topo_dict, data):
    check_replies_ahead(topo_dict, data)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
          max_examples=300)
@given(routed_topologies(), st.data())
def test_every_packet_a_routed_flow_set_up_ahead_matches_is_simulated_to_its_actions(topo_dict, data):
    check_replies_ahead(topo_dict, data, aimed=routed_packets, firsts=routed_packets)
