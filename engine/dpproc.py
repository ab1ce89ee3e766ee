"""The datapath process: the flow cache, the ports, and the dispatcher in one process, pinned to a core.

Owns: the datapath (engine.datapath: flow cache + ports), the dispatcher (engine.dispatcher), the setup-latency
samples, and the sockets

    inbox      PULL datapath      installs, packet-outs, deletes, fan-out relays, injected frames, queries
    workers    PUSH worker-<i>    upcall batches, relayed messages, FlowRemoved notices
    supervisor PUSH               query answers

It makes no decision of its own: a miss goes to a worker; a worker's answer installs a flow and executes the
packet (and the packets held back meanwhile); a Fanout relays a worker's message to other workers on the same
sockets as their upcalls, so it reaches them before any later upcall.  Setup latency is measured from the
upcall leaving (t_emit_ns, CLOCK_MONOTONIC, shared by all processes) to the install arriving here.

Two datapaths (``mode``): "memory" (MemoryDatapath: synthetic ports fed by Inject) and "real" (RealDatapath:
AF_PACKET sockets on the interfaces of the exterior ports bound to this host, and a VXLAN endpoint on the
host's tunnel address).  In real mode the port and tunnel fds are polled next to the inbox; each readable fd
is drained (one batch) into dispatcher upcalls, and the dispatcher is flushed after each burst.  The port map
comes from the supervisor (Query "ports": ports, tunnel keys, hosts' tunnel addresses) at start and after each
topology change; ports are added/removed as it changes.  Flow state: StateToHosts sends an encoded
FlowStateBatch to other hosts on the reserved VNI; state arriving on that VNI is accepted only from a known
host's address (else counted ``datapath_state_refused``) and relayed raw to every local worker.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from array import array
from dataclasses import dataclass

import zmq

from backchannel import messages as m
from backchannel.codec import Decoder
from backchannel.sockets import RuntimeDir, pull_bind, push_connect, recv_msgs, send_msg, worker_role
from engine.datapath.flowcache import compile_actions
from engine.datapath.memory import MemoryDatapath
from engine.dispatcher import Dispatcher
from packet.codec import ParseError, parse

DATAPATH = "datapath"
SUPERVISOR = "supervisor"
MAX_LATENCY_SAMPLES = 2_000_000


@dataclass
class DatapathConfig:
    runtime_dir: str
    n_workers: int
    cpu: int | None = None
    max_flows: int = 200_000
    max_inflight: int = 4096
    port_rate: float = 200_000.0
    port_burst: float = 20_000.0
    batch: int = 64
    keep_outputs: bool = True
    port_workers: dict | None = None
    tunnel_ports: dict | None = None       # tunnel key → local port id (egress by key)
    reclaim_s: float = 15.0                # an upcall unanswered this long no longer counts as in flight
    mode: str = "memory"                   # "memory" or "real"
    ports: dict | None = None              # real: port id → interface name (more come with Query "ports")
    tunnel_ip: int | None = None           # real: this host's tunnel address (no tunnel when None)
    tunnel_port: int = 4789
    hosts: dict | None = None              # real: host name → tunnel address (state goes to / comes from them)


class DatapathProcess:
    def __init__(self, cfg: DatapathConfig, to_workers: list, to_sup):
        self.cfg = cfg
        self.to_workers = to_workers
        self.to_sup = to_sup
        self.tunnel = None
        self.hosts: dict[str, int] = {}
        self.known_ips: set[int] = set()
        self.fds_changed = False
        if cfg.mode == "real":
            from engine.datapath.real import RealDatapath
            from engine.datapath.tunnel import VxlanTunnel

            if cfg.tunnel_ip:
                self.tunnel = VxlanTunnel(cfg.tunnel_ip, cfg.tunnel_port)
            self.dp = RealDatapath({}, self.tunnel, None, cfg.max_flows, cfg.keep_outputs,
                                   on_state=self._on_state, batch=cfg.batch)
        else:
            self.dp = MemoryDatapath(cfg.max_flows, cfg.keep_outputs, cfg.tunnel_ports)
        self.disp = Dispatcher(cfg.n_workers, self._send_batch, max_inflight=cfg.max_inflight,
                               port_rate=cfg.port_rate, port_burst=cfg.port_burst, batch=cfg.batch,
                               port_workers=cfg.port_workers)
        self.latencies = array("q")
        self.counters = self.dp.counters
        self.counters.update(self.disp.counters)
        self.counters.update({"datapath_relayed": 0, "datapath_relay_full": 0, "datapath_unexpected": 0,
                              "datapath_state_tx": 0, "datapath_state_no_host": 0, "datapath_state_accepted": 0,
                              "datapath_state_refused": 0, "datapath_port_errors": 0})
        if cfg.mode == "real":
            self.set_ports({"ports": cfg.ports or {}, "keys": cfg.tunnel_ports or {}, "hosts": cfg.hosts or {}})
            self.fds_changed = True                    # the tunnel's fd, even with no port yet
        self.running = True
        self._next_expiry = 0.0

    def _send_batch(self, w: int, batch) -> bool:
        return send_msg(self.to_workers[w], batch)

    def _sync_counters(self) -> None:
        self.counters.update(self.disp.counters)

    # -- real mode: ports, fds, flow state ---------------------------------------------------------------
    def set_ports(self, arg: dict) -> dict:
        """The port map from the supervisor: {"ports": {id: ifname}, "keys": {key: id}, "hosts": {name: ip}}.
        Ports no longer listed (or moved to another interface) are closed, new ones opened."""
        self.hosts = {str(k): int(v) for k, v in (arg.get("hosts") or {}).items() if v}
        self.known_ips = set(self.hosts.values())
        if self.tunnel is not None:
            self.known_ips.discard(self.tunnel.local_ip)
        want = {str(k): str(v) for k, v in (arg.get("ports") or {}).items()}
        have = {pid: p.ifname for pid, p in self.dp.ports.items()}
        errors = []
        for pid, ifname in have.items():
            if want.get(pid) != ifname:
                self.dp.remove_port(pid)
                self.fds_changed = True
        for pid, ifname in want.items():
            if pid not in self.dp.ports:
                try:
                    self.dp.add_port(pid, ifname)
                    self.fds_changed = True
                except OSError as e:
                    self.counters["datapath_port_errors"] += 1
                    errors.append(f"{pid}: {e}")
        self.dp.key_to_port.clear()
        self.dp.key_to_port.update({int(k): str(v) for k, v in (arg.get("keys") or {}).items()})
        return {"ports": sorted(self.dp.ports), "errors": errors}

    def _on_state(self, src_ip: int, payload: bytes) -> None:
        if src_ip not in self.known_ips:
            self.counters["datapath_state_refused"] += 1
            return
        self.counters["datapath_state_accepted"] += 1
        for sock in self.to_workers:
            try:
                sock.send(payload, zmq.NOBLOCK)
                self.counters["datapath_relayed"] += 1
            except zmq.Again:
                self.counters["datapath_relay_full"] += 1

    def _state_to_hosts(self, msg: m.StateToHosts) -> None:
        for h in msg.hosts:
            ip = self.hosts.get(h)
            if ip is None or self.tunnel is None:
                self.counters["datapath_state_no_host"] += 1
                continue
            if self.tunnel.send_state(ip, msg.payload):
                self.counters["datapath_state_tx"] += 1

    def poll_fd(self, fd: int, now: float) -> None:
        for pid, frame, pkt, key in self.dp.poll_ready(fd, now):
            self.disp.upcall(pid, frame, pkt, key, now)

    def close(self) -> None:
        if self.cfg.mode == "real":
            self.dp.close()
        if self.tunnel is not None:
            self.tunnel.close()

    def receive(self, port: str, frame: bytes, now: float) -> None:
        miss = self.dp.receive(port, frame, now)
        if miss is not None:
            pkt, key = miss
            self.disp.upcall(port, frame, pkt, key, now)

    def handle(self, msg, now: float) -> None:
        t = type(msg)
        if t is m.FlowInstall:
            self.install(msg, now)
        elif t is m.Inject:
            if msg.port.startswith("tunnel:"):           # frames from another host's tunnel (in-memory)
                vni = int(msg.port[7:])
                for frame in msg.frames:
                    self.dp.receive_tunnel(vni, frame)
            else:
                for frame in msg.frames:
                    self.receive(msg.port, frame, now)
        elif t is m.Fanout:
            for w in msg.targets:
                if 0 <= w < len(self.to_workers):
                    try:
                        self.to_workers[w].send(msg.payload, zmq.NOBLOCK)
                        self.counters["datapath_relayed"] += 1
                    except zmq.Again:
                        self.counters["datapath_relay_full"] += 1
        elif t is m.StateToHosts:
            self._state_to_hosts(msg)
        elif t is m.PacketOut:
            self.dp.output(msg.port, msg.frame)
        elif t is m.FlowDelete:
            self.dp.cache.delete(msg.keys)
        elif t is m.Query:
            self._sync_counters()
            send_msg(self.to_sup, m.Answer(msg.req_id, -1, self.answer(msg.what, msg.arg)))
        elif t is m.Shutdown:
            self.running = False
        else:
            self.counters["datapath_unexpected"] += 1

    def install(self, msg: m.FlowInstall, now: float) -> None:
        if not msg.key:                                # a packet the agent generated: execute only
            self._execute(msg.actions, msg.frame)
            return
        worker, held = self.disp.answered(msg.seq)
        if msg.t_emit_ns and len(self.latencies) < MAX_LATENCY_SAMPLES:
            self.latencies.append(time.monotonic_ns() - msg.t_emit_ns)
        if msg.hard_s >= 0:
            flow = self.dp.cache.install(msg.key, msg.actions, worker, msg.idle_s, msg.hard_s, now, msg.tags)
            compiled = flow.compiled if flow is not None else None
        else:
            compiled = None
        if msg.frame is not None:
            self._execute(msg.actions, msg.frame, compiled)
        for port, frame, pkt in held:
            if compiled is not None:
                self.dp.cache.execute(compiled, frame, pkt)
            else:                                      # nothing installed (consumed): simulate each again
                self.receive(port, frame, now)

    def _execute(self, actions, frame: bytes | None, compiled=None) -> None:
        if frame is None:
            return
        try:
            compiled = compiled if compiled is not None else compile_actions(actions)
            self.dp.cache.execute(compiled, frame, parse(frame))
        except (ParseError, ValueError, TypeError, IndexError):
            self.counters["datapath_bad_actions"] += 1

    def answer(self, what: str, arg):
        if what == "stats":
            if self.cfg.mode == "real":
                self.dp.refresh_counters()
            out = dict(self.counters)
            out["datapath_flows"] = len(self.dp.cache.flows)
            out["datapath_pid"] = os.getpid()
            return out
        if what == "flows":
            return [[list(f.key), f.worker, f.hits, list(f.tags)] for f in self.dp.cache.flows.values()]
        if what == "outputs":
            return self.dp.take_outputs(arg)
        if what == "latencies":
            out = self.latencies.tolist()
            self.latencies = array("q")
            return out
        if what == "ports" and self.cfg.mode == "real":
            return self.set_ports(arg or {})
        if what == "tunnel_ports" and self.cfg.mode == "memory":
            self.dp.tunnel_ports = {int(k): v for k, v in arg.items()}
            return len(self.dp.tunnel_ports)
        if what == "purge":
            w = int(arg)
            return {"flows_purged": self.dp.cache.purge_worker(w), "upcalls_lost": self.disp.forget_worker(w)}
        return {"error": f"unknown query {what!r}"}

    def housekeeping(self, now: float) -> None:
        self.disp.flush()
        if now < self._next_expiry:
            return
        self._next_expiry = now + 0.5
        self.disp.reclaim(now, self.cfg.reclaim_s)
        by_worker: dict[int, list] = {}
        for f in self.dp.cache.expire(now):
            by_worker.setdefault(f.worker, []).append(f.key)
        for w, keys in by_worker.items():
            if 0 <= w < len(self.to_workers):
                send_msg(self.to_workers[w], m.FlowRemoved(tuple(keys), "idle"))


def datapath_main(cfg: DatapathConfig) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if cfg.cpu is not None:
        try:
            os.sched_setaffinity(0, {cfg.cpu})
        except OSError:
            pass
    rt = RuntimeDir.attach(cfg.runtime_dir)
    ctx = zmq.Context()
    inbox = pull_bind(ctx, rt, DATAPATH)
    to_workers = [push_connect(ctx, rt, worker_role(i)) for i in range(cfg.n_workers)]
    to_sup = push_connect(ctx, rt, SUPERVISOR)
    proc = DatapathProcess(cfg, to_workers, to_sup)
    decoder = Decoder(proc.counters)
    poller = zmq.Poller()
    poller.register(inbox, zmq.POLLIN)
    polled: set[int] = set()
    send_msg(to_sup, m.Answer(0, -1, {"ready": os.getpid()}))
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)
    try:
        while proc.running:
            if proc.fds_changed:                       # ports came or went: poll their sockets
                proc.fds_changed = False
                fds = set(proc.dp.fds())
                for fd in polled - fds:
                    poller.unregister(fd)
                for fd in fds - polled:
                    poller.register(fd, zmq.POLLIN)
                polled = fds
            events = poller.poll(20)
            if events:
                now = time.monotonic()
                for sock, _ in events:
                    if sock is inbox:
                        for msg in recv_msgs(inbox, decoder, 256):
                            proc.handle(msg, now)
                    elif sock in polled:
                        proc.poll_fd(sock, now)
            proc.housekeeping(time.monotonic())
    finally:
        proc.close()
        for s in (inbox, to_sup, *to_workers):
            s.close(0)
        ctx.term()
