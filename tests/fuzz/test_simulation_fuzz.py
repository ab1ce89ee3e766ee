"""Fuzzing the simulation: for any topology and any packet, ``simulate()`` returns, and what it returns is sound.

Each example draws a topology (tests/fuzz/topology_strategies.py: bridges, routers, chains, NAT, an L4 load
balancer, port groups), loads it through the file loader, seeds the agent state with hostile entries (MACs
learned on ports of other devices, ARP entries, conntrack and NAT entries on random tuples), then simulates a
sequence of packets aimed at the topology (valid, cut short, odd flags, VLAN, ARP, ICMP errors carrying the
header of a connection) at its exterior ports, applying each result's effects as the worker does (and granting
a NAT block when one is needed), so later packets meet the state earlier ones made.  For every packet:

- ``simulate()`` does not raise, and its result is one of the four documented kinds, consistent with itself
  (forward has outputs; drop has a reason; parked has a need; flow state is written only by a forward);
- simulating it again against the same state gives the same result;
- what a worker would send for it passes the datapath's decode (its FlowPut, its generated packets), and
  every output is a rewrite the datapath can make of the ingress frame.

Examples: the hypothesis profile (tests/conftest.py): bounded in ``make test``, many more in ``make fuzz``.
"""

from __future__ import annotations

from hypothesis import event, given, note
from hypothesis import strategies as st

from backchannel import codec
from backchannel import messages as m
from packet.codec import build
from packet.rewrite import rewrite
from tests.fuzz.topology_strategies import aimed_packets, topologies
from topology.loader import topology_from_dict
from topology.nat_leases import BLOCK_SIZE
from workers.plan import output_actions
from workers.simulation import generate
from workers.simulation.conntrack import five_tuple, reverse
from workers.simulation.result import (
    CONNTRACK,
    CONSUMED,
    DROP,
    FORWARD,
    NAT_KINDS,
    PARKED,
    ArpTableWrite,
    FlowStateWrite,
    MacTableWrite,
    NeedLease,
    state_key,
)
from workers.simulation.simulate import simulate
from workers.simulation.state import LocalState

KINDS = (FORWARD, DROP, CONSUMED, PARKED)


@st.composite
def hostile_state(draw, topo) -> list:
    """Effects that seed the state with entries no simulation of this topology would make."""
    ports = sorted(topo.all_ports())
    devices = sorted({*topo.bridges, *topo.routers, "nowhere"})
    ips = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0x0A000002, 0x0A10000A, 0xC6336402]))
    l4 = st.one_of(st.integers(0, 65535), st.sampled_from([0, 80, 5000]))
    key = st.tuples(ips, ips, st.sampled_from([1, 6, 17, 47]), l4, l4, st.sampled_from(devices))
    effects = st.one_of(
        st.builds(MacTableWrite, st.sampled_from(sorted(topo.bridges)), st.sampled_from([0, 10, 20]),
                  st.integers(0, 2**48 - 1), st.sampled_from([*ports, "b0.nope", "r0", ""])),
        st.builds(ArpTableWrite, st.sampled_from(devices), ips, st.integers(0, 2**48 - 1)),
        st.builds(FlowStateWrite, st.just(CONNTRACK), key, st.none()),
        st.builds(FlowStateWrite, st.sampled_from(NAT_KINDS), key, st.none() | st.tuples(ips, l4)),
    )
    return draw(st.lists(effects, max_size=8))


def _reply(p):
    """The answer of the destination of ``p`` (addresses and ports swapped; an echo request gets its reply)."""
    icmp = {"icmp_type": 0} if p.icmp_type == 8 else {}
    return p._replace(eth_src=p.eth_dst, eth_dst=p.eth_src, ip_src=p.ip_dst, ip_dst=p.ip_src, tp_src=p.tp_dst,
                      tp_dst=p.tp_src, ttl=64, **icmp,
                      tcp_flags=0x12 if p.tcp_flags is not None else None)


@st.composite
def own_state(draw, topo, t: tuple) -> list:
    """Entries about the connection of a packet with 5-tuple ``t`` (either direction, any device, any kind),
    with bindings that may be nonsense."""
    devices = sorted({*topo.bridges, *topo.routers})
    out = []
    for _ in range(draw(st.integers(1, 4))):
        five = draw(st.sampled_from([t, reverse(t), (*t[:3], 0, t[4])]))
        kind = draw(st.sampled_from([CONNTRACK, *NAT_KINDS]))
        value = None if kind == CONNTRACK else draw(st.none() | st.tuples(
            st.sampled_from([0, t[0], t[1], 0xFFFFFFFF]), st.sampled_from([0, t[3], t[4], 65535])))
        out.append(FlowStateWrite(kind, state_key(five, draw(st.sampled_from(devices))), value))
    return out


def _check_sound(res, pkt) -> None:
    assert res.result in KINDS, res.result
    writes = [e for e in res.effects if type(e) is FlowStateWrite]
    if res.result == FORWARD:
        assert res.outputs and res.needs is None
    else:
        # no state without a connection going through — except a drop with a packet generated about it (an ICMP
        # error), whose state is kept so that the error is translated back (issue 16, item 5)
        assert not res.outputs and (not writes or (res.result == DROP and (res.generated or res.waiting)))
    if res.result == DROP:
        assert isinstance(res.drop_reason, str) and res.drop_reason and res.needs is None
    if res.result == PARKED:
        assert res.needs is not None
    for g in res.generated:
        build(g.packet)                               # the worker builds what it emits
    for w in writes:                                  # what it relays to the other workers and hosts decodes
        codec.validate(m.FlowStateBatch((m.FlowStateEntry(w.kind, w.key, w.value, 60.0),), 0))


def _check_worker_answer(res, pkt) -> None:
    """The FlowPut a worker would send passes the datapath's decode; each output is a rewrite it can do."""
    actions = output_actions(pkt, res.outputs, lambda host: 0x7F000001)
    codec.validate(m.FlowPut(1, (), actions, tuple(sorted(res.tags)), 60.0, 0.0))
    try:
        frame = build(pkt)
    except ValueError:          # not a frame that can exist: the datapath only ever upcalls parse(frame)
        return
    for o in res.outputs:
        assert rewrite(frame, pkt, o.packet) == build(o.packet)


@given(topologies(), st.data())
def test_simulate_never_raises_returns_a_documented_kind_and_is_deterministic(topo_dict, data):
    note(f"topology: {topo_dict}")
    topo = topology_from_dict(topo_dict)
    ports = sorted(pid for pid, p in topo.all_ports().items() if p.peer is None)
    state = LocalState()
    now = 1000.0
    state.apply(data.draw(hostile_state(topo), label="hostile state"), now)
    replies: list = []                                                   # (port, packet) answering a forward
    for _ in range(data.draw(st.integers(1, 10), label="packets")):
        if replies and data.draw(st.booleans(), label="a reply"):
            port, pkt = replies.pop(data.draw(st.integers(0, len(replies) - 1)))
        else:
            port = data.draw(st.sampled_from(ports), label="port")
            pkt = data.draw(aimed_packets(topo), label="packet")
        t = five_tuple(pkt)
        if t is not None and data.draw(st.integers(0, 3), label="state about this very connection") == 0:
            state.apply(data.draw(own_state(topo, t), label="its state"), now)
        for _attempt in range(3):
            res = simulate(pkt, port, topo, state, now)
            _check_sound(res, pkt)
            assert simulate(pkt, port, topo, state, now) == res          # the same state, the same decision
            if type(res.needs) is NeedLease:                             # the worker leases a block, then again
                state.add_nat_block(res.needs.device, res.needs.ip,
                                    res.needs.port_start - res.needs.port_start % BLOCK_SIZE + BLOCK_SIZE * _attempt)
                continue
            break
        event(f"{res.result}: " + {FORWARD: "ok", DROP: res.drop_reason, CONSUMED: "answered by the agent",
                                   PARKED: type(res.needs).__name__}[res.result])
        if any(type(e) is FlowStateWrite and e.kind != CONNTRACK for e in res.effects):
            event("NAT state written")
        if res.result == FORWARD:
            _check_worker_answer(res, pkt)
            replies += [(o.port, _reply(o.packet)) for o in res.outputs if o.packet.ip_src is not None]
            replies += [(o.port, generate.icmp_error(o.packet, 3, data.draw(st.sampled_from([1, 3, 4]), label="code"),
                                                     o.packet.eth_dst, o.packet.ip_dst))
                        for o in res.outputs[:1] if o.packet.ip_src is not None and not o.packet.is_icmp_error]
        state.apply(res.effects, now)
        now += data.draw(st.sampled_from([0.0, 1.0, 61.0]), label="time passes")
        state.expire(now)
