"""The trace shell: simulate packets in order against one agent's in-memory state and explain each decision.

This is the one trace entry point: ``shardnet trace`` (engine/cli.py) and the scenario tests both drive a
TraceSession.  It owns a LocalState, an in-process NAT allocator and a simulated clock.  Between packets it
applies each result's effects, so a reply sees the state its request created.  A NAT lease the simulation asks
for is granted here at once and the packet simulated again from scratch — what a worker does when the lease
arrives.  So is a packet parked on an ARP entry that its own simulation learned (the request it generated was
answered inside the agent, by a router behind a bridge), as a worker resumes it when the entry is learned.  A
generated packet whose onward walk parked (``waiting``) is carried again the same way when its lease or ARP
entry comes at once; otherwise it is reported as waiting.  ``advance`` moves the clock and reports expired
flow state and the flow tags to invalidate.
"""

from __future__ import annotations

import json

from packet.addr import ip_port_text, ip_text
from packet.flowkey import flow_key, match_dict, slot_mask
from packet.spec import SpecError, packet_to_dict, parse_spec
from topology.nat_leases import MemoryNatAllocator
from workers import tags
from workers.megaflow import flow_match
from workers.simulation.result import (
    CONNTRACK,
    DROP,
    FORWARD,
    PARKED,
    ArpTableWrite,
    FlowStateWrite,
    NeedArp,
    NeedLease,
    SimResult,
    Waiting,
)
from workers.simulation.simulate import simulate, simulate_generated
from workers.simulation.state import LocalState

MAX_RESIMULATIONS = 4


class TraceSession:
    def __init__(self, topology, host: str | None = None, now: float = 0.0, state: LocalState | None = None,
                 allocator: MemoryNatAllocator | None = None, seed: int = 0):
        self.topology = topology
        self.host = host
        self.now = now
        self.state = state or LocalState()
        self.allocator = allocator or MemoryNatAllocator(seed=seed)
        self.owner = f"trace:{host or '-'}"

    def run(self, port: str, packet) -> SimResult:
        """Simulate one packet (a Packet or a spec string) arriving at ``port``; apply its effects."""
        pkt = parse_spec(packet) if isinstance(packet, str) else packet

        def walk():
            return simulate(pkt, port, self.topology, self.state, self.now, self.host)

        res = self._until_settled(walk(), walk)
        self.state.apply(res.effects, self.now)
        return self._carry_waiting(res) if res.waiting else res

    def _until_settled(self, res: SimResult, again) -> SimResult:
        """Walk again (``again()``) while what the result parked on is granted here at once (a NAT lease) or was
        learned by the walk itself (an ARP entry: its effects are applied first)."""
        for _ in range(MAX_RESIMULATIONS):
            need = res.needs
            if isinstance(need, NeedLease) and self._lease(need):
                pass
            elif isinstance(need, NeedArp) and _learns(res, need):
                self.state.apply(res.effects, self.now)
            else:
                break
            res = again()
        return res

    def _carry_waiting(self, res: SimResult) -> SimResult:
        """Generated packets whose onward walk parked: carried again if that settles them here; else reported
        as waiting, with what their walk generated (the ARP request that leaves the agent)."""
        generated, effects, waiting = list(res.generated), list(res.effects), []
        todo = list(res.waiting)
        for _ in range(4 * MAX_RESIMULATIONS):
            if not todo:
                break
            w = todo.pop(0)

            def again(w=w):
                return simulate_generated(w.packet, w.port, self.topology, self.state, self.now, self.host)

            sub = self._until_settled(w.result, again)
            self.state.apply(sub.effects, self.now)
            effects.extend(sub.effects)
            generated.extend(sub.generated)
            if sub.result == PARKED:
                waiting.append(Waiting(w.port, w.packet, sub))
            else:
                todo.extend(sub.waiting)
        waiting.extend(todo)
        return res._replace(generated=tuple(generated), effects=tuple(effects), waiting=tuple(waiting))

    def _lease(self, need: NeedLease) -> bool:
        block = self.allocator.lease(self.owner, need.device, need.ip, need.port_start, need.port_end)
        if block is None:
            return False
        self.state.add_nat_block(need.device, need.ip, block)
        return True

    def advance(self, seconds: float) -> dict:
        self.now += seconds
        gone = self.state.expire(self.now)
        return {
            "now": self.now,
            "expired": [_state_json(e.kind, e.key, e.value) for e in gone],
            "invalidate": sorted({tags.flow_state(e.kind, e.key) for e in gone}),
        }

    def run_line(self, line: str) -> dict:
        """One line of the --stdin protocol: 'PORT SPEC' or 'advance SECONDS'.  Errors become {"error"}."""
        parts = line.split()
        if not parts:
            return {"error": "empty line"}
        if parts[0] == "advance":
            try:
                return self.advance(float(parts[1]))
            except (IndexError, ValueError):
                return {"error": f"advance needs a number of seconds: {line.strip()!r}"}
        if len(parts) != 2:
            return {"error": f"expected 'PORT SPEC' or 'advance SECONDS': {line.strip()!r}"}
        port, spec = parts
        if self.topology.port(port) is None:
            return {"error": f"unknown port: {port!r}"}
        try:
            pkt = parse_spec(spec)
            return result_json(self.run(port, pkt), pkt, port)
        except SpecError as e:
            return {"error": str(e)}


def _learns(res: SimResult, need: NeedArp) -> bool:
    return any(type(e) is ArpTableWrite and (e.router, e.ip) == (need.router, need.ip) for e in res.effects)


def _state_json(kind: str, key: tuple, value) -> dict:
    if kind == CONNTRACK:
        return {"type": "conntrack", "key": tags.key_str(key)}
    return {"type": "nat", "kind": kind, "key": tags.key_str(key), "binding": binding_str(value)}


def binding_str(value) -> str:
    """A NAT binding (ip, port) as "ip:port" (JSON output)."""
    return ip_port_text(value[0], value[1])


def result_json(res: SimResult, pkt=None, port: str | None = None) -> dict:
    """The JSON object of CONTRACTS §3 for one simulated packet.  Given the packet and its ingress port, a
    result a flow is installed for (forward, drop) also shows the flow's match as the agent installs it with
    megaflows on (``"megaflow"``: the fields it matches, ``ip_dst: "203.0.113.0/24"`` for a prefix)."""
    out = {
        "result": res.result,
        "path": list(res.path),
        "outputs": [{"port": o.port, "host": o.host, "tunnel_key": o.tunnel_key,
                     **({} if o.bound else {"bound": False}), "packet": packet_to_dict(o.packet)}
                    for o in res.outputs],
        "generated": [_generated_json(g) for g in res.generated],
        "flow_state": [_state_json(e.kind, e.key, e.value) for e in res.effects if type(e) is FlowStateWrite],
        "drop_reason": res.drop_reason,
    }
    if res.needs is not None:
        out["needs"] = _needs_json(res.needs)
    if res.waiting:
        out["waiting"] = [{"port": w.port, "packet": packet_to_dict(w.packet), "needs": _needs_json(w.result.needs)}
                          for w in res.waiting]
    if res.interested_hosts:
        out["interested_hosts"] = sorted(res.interested_hosts)
    if pkt is not None and port is not None and res.result in (FORWARD, DROP):
        out["megaflow"] = match_dict(flow_key(pkt, port), slot_mask(flow_match(res)))
    return out


def _generated_json(g) -> dict:
    """A generated packet where it leaves the agent; one carried on from an interior port also says where it was
    emitted (``from``) and its walk from there (``path``)."""
    out = {"port": g.port, "packet": packet_to_dict(g.packet)}
    if g.origin is not None:
        out["from"] = g.origin
        out["path"] = list(g.path)
    return out


def _needs_json(need) -> dict:
    return {"type": type(need).__name__, **{k: (ip_text(v) if k == "ip" else v) for k, v in need._asdict().items()}}


def dumps(obj: dict) -> str:
    return json.dumps(obj, separators=(", ", ": "))
