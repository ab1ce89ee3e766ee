"""The simulation entry point: ``simulate(packet, ingress port, topology, state, now) -> SimResult``.

A pure function: it reads the topology view and the agent state, never a clock, a socket or a file, and
returns a value (workers.simulation.result) describing everything that should happen.  The engine's workers,
the trace CLI and the tests all call this one function.

The walk: the packet enters a port → the port's device processes it (bridge or router) and names the ports
it leaves by → an interior port hands the packet to its peer port's device → an exterior port is an output.
A device-hop limit stops loops.

Generated packets take the same walk.  A device that emits a packet (ARP request or reply, ICMP error, echo
reply, TCP reset) names the port it leaves by.  On an exterior port it leaves the agent there.  On an interior
port it enters the peer device and is simulated from there (``simulate_generated``), in the same call, against
the state as the generating walk left it (its effects, not applied yet, read through a PendingState): the ARP
reply a router answers through a bridge reaches the asking router, an ICMP error crosses back the routers
that translated the packet it reports.  The result's ``generated`` lists where they leave the agent, its
``effects`` include what their walks changed, and a generated packet whose own walk parks is handed back in
``waiting`` (the shell parks it and carries it again).  Workers call ``simulate_generated`` too, for the
packets they generate outside a simulation (ARP retries and refreshes).

Flow state: a parked packet keeps none (it is simulated again from scratch).  A dropped packet keeps what it
created only when the drop generated a packet about it (an ICMP error, a reset): that error is translated back
through those bindings by its own walk, and the entries stay in the agent state like any others.
"""

from __future__ import annotations

from packet.packet import Packet
from topology.model import Port
from workers.simulation import bridge, conntrack, router
from workers.simulation.context import Consumed, Ctx, Stop
from workers.simulation.result import (
    CONSUMED,
    DROP,
    EXPIRY_NORMAL,
    EXPIRY_TEMPORARY,
    FORWARD,
    PARKED,
    FlowStateWrite,
    Generated,
    NeedFragment,
    Output,
    SimResult,
    Waiting,
)
from workers.simulation.state import PendingState

MAX_GENERATED_DEPTH = 4          # a generated packet's walk may generate packets, and so on, this deep


def simulate(pkt: Packet, in_port: str, topo, state, now: float, local_host: str | None = None,
             hosts: bool = True) -> SimResult:
    """Simulate ``pkt`` arriving at exterior port ``in_port``.  ``local_host`` is the agent's host (defaults
    to the host the ingress port is bound to); outputs on other hosts carry the egress port's tunnel key.
    ``hosts=False``: the caller does not replicate flow state to other hosts, and ``interested_hosts`` is left
    empty (it is not worked out)."""
    return _simulate(pkt, in_port, topo, state, now, local_host, 0, hosts)


def simulate_seen(pkt: Packet, in_port: str, topo, state, now: float, local_host: str | None = None,
                  hosts: bool = True) -> tuple[SimResult, Ctx]:
    """``simulate()``, and the walk's context beside its result: what it read, and how (the walk memo,
    workers.memo, keeps a walk only when it read the 5-tuple through the ct state alone)."""
    seen: list[Ctx] = []
    res = _simulate(pkt, in_port, topo, state, now, local_host, 0, hosts, seen)
    return res, seen[0]


def simulate_generated(pkt: Packet, port_id: str, topo, state, now: float,
                       local_host: str | None = None) -> SimResult:
    """A packet the agent generated, leaving by ``port_id`` (the port a device emitted it on).

    Exterior port: it leaves there (a FORWARD result whose ``generated`` is the packet itself).  Interior port:
    it enters the peer port's device and is simulated from there; every packet that walk outputs leaves the
    agent as a generated packet (``generated``: those outputs, then what the walk itself generated), and
    ``effects`` are what it changed.  A PARKED result means the packet itself waits for ``needs``."""
    return _carry(pkt, port_id, topo, state, now, local_host, 0)


def _simulate(pkt: Packet, in_port: str, topo, state, now: float, local_host: str | None,
              depth: int, hosts: bool = True, seen: list | None = None) -> SimResult:
    ctx = Ctx(topo, state, now, local_host, in_port, pkt)
    if seen is not None:
        seen.append(ctx)
    egress: list[tuple[str, Port, Packet]] = []
    try:
        port = ctx.port(in_port)
        if ctx.local_host is None:
            ctx.local_host = port.host
        _enter(ctx, port, pkt, egress)
        outputs = _outputs(ctx, egress)
        if ctx.ct is not None:                         # conntrack was read: its return keys (else a no-op)
            conntrack.finish(ctx, [(dev, p) for dev, _, p in egress])
        if not outputs:
            raise Stop("no_egress_port")
        interested = _interested(ctx, in_port, egress) if hosts and _writes_state(ctx.effects) else frozenset()
    except Consumed:
        # answered by the agent itself: no connection goes through (a NAT rule may have run on the way)
        ctx.effects = [e for e in ctx.effects if type(e) is not FlowStateWrite]
        res = _result(ctx, CONSUMED)
    except Stop as s:
        # flow state is created only by a packet that goes through (a parked packet will be simulated again
        # from scratch, a dropped one has no connection) — or by one dropped with an error generated about
        # it, which is translated back through that state
        if s.needs is not None or not ctx.generated:
            ctx.effects = [e for e in ctx.effects if type(e) is not FlowStateWrite]
        kind = PARKED if s.needs is not None else DROP
        res = _result(ctx, kind, drop_reason=None if s.needs is not None else s.reason,
                      expiry=s.expiry if s.needs is None else EXPIRY_TEMPORARY, needs=s.needs)
    else:
        res = _forward_result(ctx, tuple(outputs), interested)
    return _carry_generated(ctx, res, depth) if res.generated else res


def _carry(pkt: Packet, port_id: str, topo, state, now: float, local_host: str | None,
           depth: int) -> SimResult:
    port = topo.port(port_id)
    if port is None:
        return SimResult(PARKED, path=(port_id,), expiry=EXPIRY_TEMPORARY, needs=NeedFragment("port", port_id))
    if port.peer is None:
        return SimResult(FORWARD, path=(port_id,), generated=(Generated(port_id, pkt),))
    if depth >= MAX_GENERATED_DEPTH:
        return SimResult(DROP, path=(port_id,), drop_reason="generated_depth")
    res = _simulate(pkt, port.peer, topo, state, now, local_host, depth + 1)
    path = (port_id, *res.path)
    leaving = tuple(Generated(o.port, o.packet, port_id, path) for o in res.outputs)
    return res._replace(path=path, outputs=(), generated=leaving + res.generated)


def _carry_generated(ctx: Ctx, res: SimResult, depth: int) -> SimResult:
    """Carry on every packet the walk generated on an interior port (see the module comment).  Each onward
    walk sees the effects of the walk and of the onward walks before it; its own tags and fields read are not
    the flow's.  A parked onward walk is handed back whole (``waiting``): its effects and generated packets are
    the shell's to apply when it parks the packet."""
    topo = ctx.topo
    if all((p := topo.port(g.port)) is not None and p.peer is None for g in res.generated):
        return res
    effects = list(res.effects)
    generated: list[Generated] = []
    waiting: list[Waiting] = []
    for g in res.generated:
        p = topo.port(g.port)
        if p is not None and p.peer is None:
            generated.append(g)
            continue
        view = PendingState(ctx.state, effects) if effects else ctx.state
        sub = _carry(g.packet, g.port, topo, view, ctx.now, ctx.local_host, depth)
        if sub.result == PARKED:
            waiting.append(Waiting(g.port, g.packet, sub))
            continue
        effects.extend(sub.effects)
        generated.extend(sub.generated)
        waiting.extend(sub.waiting)
    out = res._replace(generated=tuple(generated), effects=tuple(effects), waiting=tuple(waiting))
    if res.result == DROP and not generated and not waiting:
        # the error generated about the dropped packet went nowhere (dropped on its way): no state is kept for it
        out = out._replace(effects=tuple(e for e in out.effects if type(e) is not FlowStateWrite))
    return out


def _writes_state(effects) -> bool:
    for e in effects:
        if type(e) is FlowStateWrite:
            return True
    return False


def _result(ctx: Ctx, kind: str, **kw) -> SimResult:
    return SimResult(kind, path=tuple(ctx.path), generated=tuple(ctx.generated), effects=tuple(ctx.effects),
                     tags=frozenset(ctx.tags), fields_read=ctx.fields_read(),
                     prefixes_read=tuple(ctx.prefixes.items()) if ctx.prefixes else (),
                     exact=bool(ctx.generated), **kw)


_tuple_new = tuple.__new__


def _forward_result(ctx: Ctx, outputs: tuple, interested: frozenset) -> SimResult:
    """``_result(ctx, FORWARD, outputs=..., interested_hosts=...)`` built by position (the setup path's result;
    the NamedTuple constructor with keywords costs more than the rest of this function)."""
    return _tuple_new(SimResult, (FORWARD, tuple(ctx.path), outputs, tuple(ctx.generated), tuple(ctx.effects),
                                  None, EXPIRY_NORMAL, None, frozenset(ctx.tags), ctx.fields_read(),
                                  tuple(ctx.prefixes.items()) if ctx.prefixes else (), interested, (),
                                  bool(ctx.generated)))


def _enter(ctx: Ctx, port: Port, pkt: Packet, egress: list) -> None:
    ctx.hop(port.id)
    kind = ctx.topo.device_kind(port.device)
    if kind is None:
        kind = ctx.device_kind(port.device)              # parks on the device fragment
    if kind == "bridge":
        dev = ctx.topo.bridge(port.device)
        if dev is None:
            dev = ctx.need("bridge", port.device)
        ctx.path.append(dev.name)
        outs = bridge.process(ctx, dev, port, pkt)
    elif kind == "router":
        dev = ctx.topo.router(port.device)
        if dev is None:
            dev = ctx.need("router", port.device)
        ctx.path.append(dev.name)
        outs = router.process(ctx, dev, port, pkt)
    else:
        raise Stop("unknown_device_kind")
    for out_port, out_pkt in outs:
        ctx.path.append(out_port.id)
        if out_port.peer is None:
            egress.append((port.device, out_port, out_pkt))
        else:
            _enter(ctx, ctx.port(out_port.peer), out_pkt, egress)


def _outputs(ctx: Ctx, egress) -> list[Output]:
    out = []
    for _, port, pkt in egress:
        if port.host is None:                         # exterior port not bound to any host yet: still shown
            out.append(Output(port.id, None, None, pkt, False))
            continue
        key = port.tunnel_key if port.host != ctx.local_host else None
        out.append(Output(port.id, port.host, key, pkt))
    return out


def _interested(ctx: Ctx, in_port: str, egress) -> frozenset[str]:
    """Hosts that may see the return flow: those of the ingress and egress ports and of every port in
    their stateful port groups."""
    hosts: set[str] = set()
    pids = {in_port}
    for _, p, _ in egress:
        pids.add(p.id)
    for pid in pids:
        port = ctx.port(pid)
        if port.host:
            hosts.add(port.host)
        groups = ctx.groups_of_port(pid)
        if not groups:
            continue
        for gname in groups:
            group = ctx.need("port_group", gname)
            if group.stateful:
                for member in group.ports:
                    mp = ctx.port(member)
                    if mp.host:
                        hosts.add(mp.host)
    return frozenset(hosts)
