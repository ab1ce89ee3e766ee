"""The real datapath: the flow cache on Linux interfaces (AF_PACKET) and a VXLAN tunnel.

Owns: the flow cache (engine.datapath.flowcache), one AfPacketPort per exterior port bound on this host, the
tunnel endpoint (optional), the map tunnel key → local port, and the datapath counters.  Same interface as
MemoryDatapath (``receive``, ``output``, ``cache``, ``counters``, ``take_outputs``) plus the I/O shell the
datapath process polls: ``fds()`` and ``poll_ready(fd, now)``.

- A frame read on a port is parsed into a flow key; a hit executes the cached actions right here, a miss is
  returned to the caller (who hands it to the dispatcher as an upcall).  Malformed frames are counted by
  reason and dropped.
- Action "output" → the port's AfPacketPort.send; "tunnel" → VxlanTunnel.send(host ip, key, frame).
- A frame from the tunnel is never simulated: VNI == a local port's tunnel key → output on that port
  (``datapath_tunnel_rx``), an unknown VNI → dropped (``datapath_tunnel_unknown_key``), VNI 0xFFFFFF → the
  payload goes to ``on_state(src_ip, payload)`` (flow-state replication; authenticating it is the callback's
  business).  With ``accept_from`` (a set of tunnel addresses, kept up to date by the caller), a data frame
  from any other source is dropped (``datapath_tunnel_refused_source``).
- ``keep_outputs`` additionally keeps a bounded copy of every output (tests, the "outputs" query).

Port ids are whatever the caller uses in flow keys and actions (the engine uses port names).
"""

from __future__ import annotations

from collections.abc import Callable

from engine.datapath.afpacket import RING_SLOTS, AfPacketPort, shed_key
from engine.datapath.memory import MemoryDatapath
from engine.datapath.tunnel import VxlanTunnel
from packet.codec import ParseError, parse
from packet.flowkey import flow_key
from topology.model import TUNNEL_KEY_FLOW_STATE

_TUNNEL = object()


class RealDatapath(MemoryDatapath):
    """MemoryDatapath's flow handling (receive, output, kept outputs) on real interfaces and a tunnel."""

    ring_slots = RING_SLOTS                # each port's rx ring (afpacket.py); 0: a recvmsg per frame
    max_seen = 65_536                      # address/port headers (afpacket.shed_key) remembered per port for shedding

    def __init__(self, ports: dict, tunnel: VxlanTunnel | None = None, key_to_port: dict | None = None,
                 max_flows: int = 200_000, keep_outputs: bool = False,
                 on_state: Callable[[int, bytes], None] | None = None, batch: int = 64,
                 accept_from: set[int] | None = None):
        self.ports: dict = {}
        super().__init__(max_flows, keep_outputs, key_to_port)
        self.counters.update({"datapath_tunnel_state_rx": 0, "datapath_output_no_port": 0,
                              "datapath_no_tunnel": 0, "datapath_tunnel_refused_source": 0})
        self.accept_from = accept_from
        self.tunnel = tunnel
        self.on_state = on_state
        self.batch = batch
        self._seen: dict = {}                  # port id → shed keys (addresses + ports) of recent hits
        self._by_fd: dict[int, object] = {}
        self._closed_port_counters: dict[str, int] = {}
        if tunnel is not None:
            self._by_fd[tunnel.fileno()] = _TUNNEL
        try:
            for pid, ifname in ports.items():
                self.add_port(pid, ifname)
        except OSError:
            self.close()
            raise

    # --- ports -------------------------------------------------------------------------------------------

    def add_port(self, port_id, ifname: str, tunnel_key: int | None = None) -> int:
        """Bind ``port_id`` to interface ``ifname`` (AfPacketError if it cannot be opened); returns the fd to
        poll.  ``tunnel_key``, when given, maps that VNI to this port."""
        if port_id in self.ports:
            self.remove_port(port_id)
        p = AfPacketPort(ifname, ring_slots=self.ring_slots)
        self.ports[port_id] = p
        self._by_fd[p.fileno()] = port_id
        if tunnel_key is not None:
            self.key_to_port[tunnel_key] = port_id
        return p.fileno()

    def remove_port(self, port_id) -> bool:
        """Unbind a port: its socket is closed and its tunnel keys forgotten.  Flows that output to it stay
        (their outputs count ``datapath_output_no_port``) until the workers delete them."""
        p = self.ports.pop(port_id, None)
        if p is None:
            return False
        self._by_fd.pop(p.fileno(), None)
        self._seen.pop(port_id, None)
        for k, v in p.counters.items():
            self._closed_port_counters[k] = self._closed_port_counters.get(k, 0) + v
        p.close()
        for k in [k for k, v in self.key_to_port.items() if v == port_id]:
            del self.key_to_port[k]
        return True

    def fds(self) -> list[int]:
        return list(self._by_fd)

    # --- the MemoryDatapath interface -------------------------------------------------------------------

    def _emit(self, kind: str, target, tkey, frame: bytes) -> None:
        if kind == "output":
            p = self.ports.get(target)
            if p is None:
                self.counters["datapath_output_no_port"] += 1
                return
            self.counters["datapath_tx"] += 1
            p.send(frame)
            if self.keep_outputs:
                self._keep(self.outputs, target, frame)
        else:
            if self.tunnel is None:
                self.counters["datapath_no_tunnel"] += 1
                return
            self.counters["datapath_tunnel_tx"] += 1
            self.tunnel.send(target, tkey, frame)
            if self.keep_outputs:
                self._keep(self.tunnels, (target, tkey), frame)

    # --- the I/O shell ------------------------------------------------------------------------------------

    def poll_ready(self, fd: int, now: float, shed: bool = False) -> list[tuple]:
        """Drain up to ``batch`` reads from a readable fd.  Returns the misses as (port_id, frame, packet,
        key); hits, tunnel frames and flow-state messages are handled inside.

        ``shed`` (the caller's dispatcher has no room for an upcall: every worker's queue is full): the port
        drops an IPv4 or IPv6 frame whose addresses and ports (afpacket.shed_key) were not seen in a hit on this
        port lately
        before it is copied out or parsed (AfPacketPort.recv_batch, ``afpacket_rx_shed``) — its miss would be
        refused anyway, and the parse is most of a frame's cost.  The remembered headers only decide what is
        worth parsing, never an action: a frame that passes takes the full path (parse, flow key, lookup); 1 in
        afpacket.SHED_SAMPLE unknown frames passes too, so a cached flow not remembered yet is found again."""
        pid = self._by_fd.get(fd)
        if pid is None:
            return []
        if pid is _TUNNEL:
            self._drain_tunnel()
            return []
        seen = self._seen.get(pid)
        if seen is None:
            seen = self._seen[pid] = set()
        port = self.ports[pid]
        shed0 = port.counters["afpacket_rx_shed"]
        frames = port.recv_batch(self.batch, seen if shed else None)
        misses = []
        c = self.counters
        c["datapath_rx"] += len(frames) + port.counters["afpacket_rx_shed"] - shed0   # every frame read
        lookup, execute = self.cache.lookup, self.cache.execute
        for frame in frames:
            try:
                pkt = parse(frame)
            except ParseError as e:
                name = f"datapath_malformed_{e.reason}"
                c[name] = c.get(name, 0) + 1
                continue
            key = flow_key(pkt, pid)
            flow = lookup(key, now)
            if flow is None:
                misses.append((pid, frame, pkt, key))
            else:
                sk = shed_key(frame)
                if sk is not None:
                    if len(seen) >= self.max_seen:
                        seen.clear()
                    seen.add(sk)
                execute(flow.compiled, frame, pkt)
        return misses

    def _drain_tunnel(self) -> None:
        c = self.counters
        for src, vni, inner in self.tunnel.recv_batch(self.batch):
            if vni == TUNNEL_KEY_FLOW_STATE:
                c["datapath_tunnel_state_rx"] += 1
                if self.on_state is not None:
                    self.on_state(src, inner)
                continue
            if self.accept_from is not None and src not in self.accept_from:
                c["datapath_tunnel_refused_source"] += 1
                continue
            self.receive_tunnel(vni, inner)

    def receive_tunnel(self, vni: int, frame: bytes) -> None:
        """A frame from another host: the tunnel key is the egress port's; output it there, no simulation."""
        pid = self.key_to_port.get(vni)
        if pid is None or pid not in self.ports:
            self.counters["datapath_tunnel_unknown_key"] += 1
            return
        self.counters["datapath_tunnel_rx"] += 1
        self._emit("output", pid, None, frame)

    @property
    def key_to_port(self) -> dict:
        """Tunnel key → local port id (MemoryDatapath's ``tunnel_ports``)."""
        return self.tunnel_ports

    def refresh_counters(self) -> dict:
        """Fold the ports' (afpacket_*) and the tunnel's (tunnel_*) counters into ``counters``; returns it."""
        total = dict(self._closed_port_counters)
        for p in self.ports.values():
            for k, v in p.counters.items():
                total[k] = total.get(k, 0) + v
        if self.tunnel is not None:
            total.update(self.tunnel.counters)
        self.counters.update(total)
        return self.counters

    def close(self) -> None:
        """Close the ports' sockets.  The tunnel belongs to the caller (it was passed in): close it there."""
        for pid in list(self.ports):
            self.remove_port(pid)
        self._by_fd.clear()
