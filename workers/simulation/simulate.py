"""The simulation entry point: ``simulate(packet, ingress port, topology, state, now) -> SimResult``.

A pure function: it reads the topology view and the agent state, never a clock, a socket or a file, and
returns a value (workers.simulation.result) describing everything that should happen.  The engine's workers,
the trace CLI and the tests all call this one function.

The walk: the packet enters a port → the port's device processes it (bridge or router) and names the ports
it leaves by → an interior port hands the packet to its peer port's device → an exterior port is an output.
A device-hop limit stops loops.
"""

from __future__ import annotations

from packet.packet import Packet
from topology.model import Port
from workers.simulation import bridge, conntrack, router
from workers.simulation.context import Consumed, Ctx, Stop
from workers.simulation.result import (
    CONSUMED,
    DROP,
    EXPIRY_TEMPORARY,
    FORWARD,
    PARKED,
    FlowStateWrite,
    Output,
    SimResult,
)


def simulate(pkt: Packet, in_port: str, topo, state, now: float, local_host: str | None = None) -> SimResult:
    """Simulate ``pkt`` arriving at exterior port ``in_port``.  ``local_host`` is the agent's host (defaults
    to the host the ingress port is bound to); outputs on other hosts carry the egress port's tunnel key."""
    ctx = Ctx(topo, state, now, local_host, in_port, pkt)
    egress: list[tuple[str, Port, Packet]] = []
    try:
        port = ctx.port(in_port)
        if ctx.local_host is None:
            ctx.local_host = port.host
        _enter(ctx, port, pkt, egress)
        outputs = _outputs(ctx, egress)
        conntrack.finish(ctx, [(dev, p) for dev, _, p in egress])
        if not outputs:
            raise Stop("no_bound_egress_port")
        interested = _interested(ctx, in_port, egress) if any(
            type(e) is FlowStateWrite for e in ctx.effects) else frozenset()
    except Consumed:
        # answered by the agent itself: no connection goes through (a NAT rule may have run on the way)
        ctx.effects = [e for e in ctx.effects if type(e) is not FlowStateWrite]
        return _result(ctx, CONSUMED)
    except Stop as s:
        # flow state is created only by a packet that goes through: a parked packet will be simulated again
        # from scratch, a dropped one has no connection
        ctx.effects = [e for e in ctx.effects if type(e) is not FlowStateWrite]
        kind = PARKED if s.needs is not None else DROP
        return _result(ctx, kind, drop_reason=None if s.needs is not None else s.reason,
                       expiry=s.expiry if s.needs is None else EXPIRY_TEMPORARY, needs=s.needs)
    return _result(ctx, FORWARD, outputs=tuple(outputs), interested_hosts=interested)


def _result(ctx: Ctx, kind: str, **kw) -> SimResult:
    return SimResult(kind, path=tuple(ctx.path), generated=tuple(ctx.generated), effects=tuple(ctx.effects),
                     tags=frozenset(ctx.tags), fields_read=frozenset(ctx.fields), **kw)


def _enter(ctx: Ctx, port: Port, pkt: Packet, egress: list) -> None:
    ctx.hop(port.id)
    kind = ctx.device_kind(port.device)
    if kind == "bridge":
        dev = ctx.need("bridge", port.device)
        ctx.path.append(dev.name)
        outs = bridge.process(ctx, dev, port, pkt)
    elif kind == "router":
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
        if port.host is None:
            continue                                  # exterior port not bound to any host yet
        key = port.tunnel_key if port.host != ctx.local_host else None
        out.append(Output(port.id, port.host, key, pkt))
    return out


def _interested(ctx: Ctx, in_port: str, egress) -> frozenset[str]:
    """Hosts that may see the return flow: those of the ingress and egress ports and of every port in
    their stateful port groups."""
    hosts: set[str] = set()
    for pid in {in_port, *(p.id for _, p, _ in egress)}:
        port = ctx.port(pid)
        if port.host:
            hosts.add(port.host)
        for gname in ctx.groups_of_port(pid):
            group = ctx.need("port_group", gname)
            if group.stateful:
                for member in group.ports:
                    mp = ctx.port(member)
                    if mp.host:
                        hosts.add(mp.host)
    return frozenset(hosts)
