"""The in-memory datapath: synthetic ports for tests and benchmarks.

Owns the flow cache (engine.datapath.flowcache) and, per synthetic port, a bounded queue of the frames output
there; tunnel outputs are queued per (host ip, tunnel key).  Frames arrive with ``receive`` (the Inject
message); a miss is handed to the dispatcher as an upcall.  A malformed frame is dropped and counted by reason.
"""

from __future__ import annotations

from collections import deque

from engine.datapath.flowcache import FlowCache
from packet.codec import ParseError, parse
from packet.flowkey import flow_key

OUTPUT_QUEUE = 65_536


class MemoryDatapath:
    def __init__(self, max_flows: int = 200_000, keep_outputs: bool = True,
                 tunnel_ports: dict[int, str] | None = None):
        self.cache = FlowCache(self._emit, max_flows)
        self.tunnel_ports = {int(k): v for k, v in (tunnel_ports or {}).items()}
        self.keep_outputs = keep_outputs
        self.outputs: dict[str, deque] = {}
        self.tunnels: dict[tuple[int, int], deque] = {}
        self.counters = self.cache.counters
        self.counters.update({"datapath_rx": 0, "datapath_tx": 0, "datapath_tunnel_tx": 0, "datapath_tunnel_rx": 0,
                              "datapath_tunnel_unknown_key": 0})

    def _emit(self, kind: str, target, tkey, frame: bytes) -> None:
        if kind == "output":
            self.counters["datapath_tx"] += 1
            if self.keep_outputs:
                self._keep(self.outputs, target, frame)
        else:
            self.counters["datapath_tunnel_tx"] += 1
            if self.keep_outputs:
                self._keep(self.tunnels, (target, tkey), frame)

    @staticmethod
    def _keep(queues: dict, name, frame: bytes) -> None:
        q = queues.get(name)
        if q is None:
            q = queues[name] = deque(maxlen=OUTPUT_QUEUE)
        q.append(frame)

    def output(self, port: str, frame: bytes) -> None:
        self._emit("output", port, None, frame)

    def receive_tunnel(self, vni: int, frame: bytes) -> None:
        """A frame from another host: the tunnel key is the egress port's; output it there, no simulation."""
        port = self.tunnel_ports.get(vni)
        if port is None:
            self.counters["datapath_tunnel_unknown_key"] += 1
            return
        self.counters["datapath_tunnel_rx"] += 1
        self.output(port, frame)

    def receive(self, port: str, frame: bytes, now: float):
        """A frame arrived on ``port``.  Returns None when handled (hit or malformed), else (packet, key) of
        the miss for the dispatcher."""
        self.counters["datapath_rx"] += 1
        try:
            pkt = parse(frame)
        except ParseError as e:
            name = f"datapath_malformed_{e.reason}"
            self.counters[name] = self.counters.get(name, 0) + 1
            return None
        key = flow_key(pkt, port)
        flow = self.cache.lookup(key, now)
        if flow is not None:
            self.cache.execute(flow.compiled, frame, pkt)
            return None
        return pkt, key

    def take_outputs(self, port: str | None) -> dict[str, list[bytes]]:
        """Drain the output queues (all ports when ``port`` is None); tunnel queues appear as
        'tunnel:<ip>:<key>'."""
        out = {}
        for name, q in list(self.outputs.items()):
            if port is None or name == port:
                out[name] = list(q)
                q.clear()
        if port is None:
            for (ip, key), q in self.tunnels.items():
                out[f"tunnel:{ip}:{key}"] = list(q)
                q.clear()
        return out
