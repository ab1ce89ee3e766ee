"""The supervisor and embedding API: start, watch and stop one agent's process pool.

    with Agent(workers=2, topology="topo.yaml") as agent:      # or Agent(AgentConfig.from_toml(path))
        agent.inject("tenant.vm1", [frame, ...])
        agent.stats()                                         # per worker and datapath counters

Owns: the private runtime directory (0700) with the ipc sockets, the datapath process and the N worker
processes (spawned, pinned, restarted when they die, stopped on exit), the store session, the topology mirror
(topology.mirror) that serves fragments to workers and reports changes, and the NAT block allocator.

All socket use happens on one service thread (``_run``): it serves fragment and lease requests, relays
topology changes as TopologyChanged, collects query answers, and checks the children's health every 0.2 s.
Public methods hand work to it through a queue and wait on a future.  Shutdown leaves no process, socket file
or directory behind.

With ``datapath="real"`` the datapath process binds the interfaces of the exterior ports bound to cfg.host and
a VXLAN endpoint on the host's tunnel address.  The port map (``_port_map``: ports, tunnel keys, other hosts'
tunnel addresses) is sent after the flow state saved by the previous run was restored into every worker, and
again after each topology change.  Every ``state_snapshot_s`` the workers' flow state is written to
``cfg.state_path()`` (atomically: temp file + rename), and once more at stop.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict

import zmq

from backchannel import messages as m
from backchannel.codec import Decoder, encode
from backchannel.sockets import (
    DATAPATH,
    SUPERVISOR,
    RuntimeDir,
    pull_bind,
    push_connect,
    recv_msgs,
    send_msg,
    worker_role,
)
from engine.config import AgentConfig
from engine.dpproc import DatapathConfig
from engine.statefile import StateFileError, read_state, write_state
from engine.tables import SharedTables
from topology.loader import load_topology
from topology.mirror import StoreMirror
from topology.store.topo import read_tunnel_keys, write_topology
from topology.store.uri import open_store
from workers.loop import WorkerConfig

DP = -1
SETTLE_S = 0.05        # quiet time after a topology change before pushing objects workers wait for


class AgentError(RuntimeError):
    pass


class Agent:
    def __init__(self, config: AgentConfig | None = None, **kwargs):
        self.cfg = config or AgentConfig(**kwargs)
        self.procs: dict[int, subprocess.Popen] = {}
        self.pids: dict[int, int] = {}
        self.counters = {"supervisor_worker_restarts": 0, "supervisor_fragment_requests": 0,
                         "supervisor_lease_requests": 0, "supervisor_topology_changes": 0}
        self._cmds: queue.Queue = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._changes: queue.Queue = queue.Queue()
        self._pending: dict[int, tuple[set, dict, Future]] = {}
        self._awaited: dict[tuple[str, str], set[int]] = {}
        self._req = itertools.count(1)
        self._ready: dict[int, threading.Event] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.rt: RuntimeDir | None = None
        self.store = None
        self.mirror: StoreMirror | None = None
        self.allocator = None
        self.tables: SharedTables | None = None
        self._bound: dict[str, str] = {}
        self.restored = 0
        self._next_snapshot: float | None = None
        self._snapshot_busy = 0.0

    # -- lifecycle ------------------------------------------------------------------------------------------
    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> Agent:
        cfg = self.cfg
        try:
            self.store = open_store(cfg.store)
            if cfg.topology:
                topo = load_topology(cfg.topology, tunnel_keys=read_tunnel_keys(self.store))
                write_topology(self.store, topo)
            self.mirror = StoreMirror(self.store, self._on_change)
            if not self.mirror.wait_ready(cfg.start_timeout_s):
                raise AgentError("the topology store did not answer")
            self.allocator = self._make_allocator()
            self.tables = SharedTables(self.store, self.cfg.host or "agent", self._relay)
            for kind in ("bridge", "router"):
                for name in [n for (k, n) in list(self.mirror.objects) if k == kind]:
                    self.tables.watch_device(kind, name)
            host = self.mirror.get("host", self.cfg.host) if self.cfg.host else None
            if host is not None:
                self.tables.register(host.tunnel_ip)
            self.rt = RuntimeDir(cfg.runtime_base)
            self._zctx = zmq.Context()
            self._inbox = pull_bind(self._zctx, self.rt, SUPERVISOR)
            self._to: dict[int, zmq.Socket] = {DP: push_connect(self._zctx, self.rt, DATAPATH)}
            for i in range(cfg.workers):
                self._to[i] = push_connect(self._zctx, self.rt, worker_role(i))
            for i in (DP, *range(cfg.workers)):
                self._spawn(i)
            self._thread = threading.Thread(target=self._run, name="shardnet-supervisor", daemon=True)
            self._thread.start()
            deadline = time.monotonic() + cfg.start_timeout_s
            for i, ev in self._ready.items():
                if not ev.wait(max(0.0, deadline - time.monotonic())):
                    raise AgentError(f"{'datapath' if i == DP else f'worker {i}'} did not start")
            if cfg.datapath == "real":
                self._bound = self._bindings()
                self.restored = self._restore_state()
                answer = self.query([DP], "ports", self._port_map())[DP]
                if answer.get("errors"):
                    raise AgentError("cannot bind ports: " + "; ".join(answer["errors"]))
                self._next_snapshot = time.monotonic() + cfg.state_snapshot_s
        except BaseException:
            self.stop()
            raise
        return self

    def _make_allocator(self):
        """SNAT blocks are leased in the store (ephemeral nodes), so agents sharing a store — ZooKeeper, or
        one in-process memory backend — never hold the same block."""
        from topology.store.leases import StoreNatAllocator

        return StoreNatAllocator(self.store, self.cfg.host or "agent")

    def _spawn(self, i: int) -> None:
        cfg = self.cfg
        self._ready[i] = threading.Event()
        if i == DP:
            real = cfg.datapath == "real"
            pcfg = DatapathConfig(self.rt.path, cfg.workers, cfg.datapath_cpu, max(cfg.max_flows * 2, 1024),
                                  cfg.max_inflight, cfg.port_rate, cfg.port_burst, cfg.batch,
                                  cfg.keep_outputs and not real, cfg.port_workers, self._tunnel_ports())
            if real:                                   # ports come with Query "ports", after the state restore
                pcfg.mode, pcfg.tunnel_port = "real", cfg.tunnel_port
                host = self.mirror.get("host", cfg.host) if cfg.host else None
                pcfg.tunnel_ip = host.tunnel_ip if host is not None else None
                pcfg.hosts = self._port_map()["hosts"]
            role, raw = "datapath", asdict(pcfg)
        else:
            cpu = cfg.cpus[i % len(cfg.cpus)] if cfg.cpus else None
            wcfg = WorkerConfig(i, cfg.workers, self.rt.path, cfg.host, cpu, cfg.park_timeout_s, cfg.max_parked,
                                cfg.max_flows, cfg.flow_idle_s, cfg.flow_hard_s, 5.0, cfg.flow_state_idle_s,
                                cfg.arp_retry_s, cfg.arp_timeout_s, cfg.batch, bool(cfg.port_workers),
                                cfg.datapath == "real")
            role, raw = "worker", asdict(wcfg)
        p = subprocess.Popen([sys.executable, "-m", "engine.procmain", role, json.dumps(raw)],
                             stdin=subprocess.DEVNULL)
        self.procs[i] = p
        self.pids[i] = p.pid

    def _bindings(self) -> dict[str, str]:
        """Port id → host of every bound exterior port."""
        out = {}
        for (kind, _), dev in list(self.mirror.objects.items()):
            if kind in ("bridge", "router"):
                for p in dev.ports.values():
                    if p.peer is None and p.host:
                        out[p.id] = p.host
        return out

    def _fetch_moved_state(self) -> None:
        """A port now bound here that was bound to another host: ask that host's workers for their flow state
        (it arrives, like replicated state, on the reserved tunnel key and is imported by our workers)."""
        now = self._bindings()
        before, self._bound = self._bound, now
        for pid, host in now.items():
            old = before.get(pid)
            if host == self.cfg.host and old is not None and old != self.cfg.host:
                self.counters["supervisor_state_fetches"] = self.counters.get("supervisor_state_fetches", 0) + 1
                send_msg(self._to[DP], m.StateToHosts((old,), encode(m.StateRequest(self.cfg.host, pid))))

    def _tunnel_ports(self) -> dict[int, str]:
        """Tunnel key → port id of the exterior ports bound to this host."""
        return self._port_map()["keys"]

    def _port_map(self) -> dict:
        """For the real datapath: the interfaces of the exterior ports bound to this host, tunnel key → port
        id, and host name → tunnel address of every host."""
        ports, keys, hosts = {}, {}, {}
        for (kind, name), obj in list(self.mirror.objects.items()):
            if kind == "host":
                hosts[name] = obj.tunnel_ip
            elif kind in ("bridge", "router"):
                for p in obj.ports.values():
                    if p.peer is None and p.host is not None and p.host == self.cfg.host:
                        if p.interface:
                            ports[p.id] = p.interface
                        if p.tunnel_key:
                            keys[p.tunnel_key] = p.id
        return {"ports": ports, "keys": keys, "hosts": hosts}

    # -- flow-state persistence (real datapath) --------------------------------------------------------------
    def _restore_state(self) -> int:
        """Send the flow state saved by the previous run to every worker (before any port is bound)."""
        try:
            msg = read_state(self.cfg.state_path())
        except StateFileError:
            self.counters["supervisor_state_file_bad"] = self.counters.get("supervisor_state_file_bad", 0) + 1
            return 0
        if msg is None:
            return 0
        msg = self._reclaim_snat_blocks(msg)
        for i in range(self.cfg.workers):
            self._call("send", (i, msg))
        return len(msg.entries)

    def _reclaim_snat_blocks(self, msg: m.FlowStateBatch) -> m.FlowStateBatch:
        """Restored SNAT bindings use ports of blocks leased by the previous run: lease those exact blocks
        again and hand them to the workers; the bindings of a block another agent took meanwhile are dropped
        (a lost connection, never a duplicate binding)."""
        def block_of(e) -> tuple | None:
            if e.kind == "rev_snat":
                return (e.key[5], e.key[1], e.key[4] - e.key[4] % 64)
            if e.kind == "fwd_snat" and e.value:
                return (e.key[5], e.value[0], e.value[1] - e.value[1] % 64)
            return None

        blocks = {b for b in map(block_of, msg.entries) if b is not None}
        lost = set()
        for n, (device, ip, block) in enumerate(sorted(blocks)):
            w = n % self.cfg.workers
            if self.allocator.claim(f"{self.cfg.host or 'agent'}/worker-{w}", device, ip, block):
                self._call("send", (w, m.LeaseGranted(device, ip, block)))
            else:
                lost.add((device, ip, block))
        if lost:
            self.counters["supervisor_restored_snat_lost"] = len(lost)
            msg = m.FlowStateBatch(tuple(e for e in msg.entries if block_of(e) not in lost), msg.origin)
        return msg

    def _snapshot(self, then: Future | None = None) -> None:
        """Ask every worker for its flow state; the answers are written to the state file (service thread),
        then ``then`` is completed.  One at a time (an unanswered one is given up after 5 s)."""
        now = time.monotonic()
        if then is None and self._snapshot_busy and now - self._snapshot_busy < 5.0:
            return
        self._snapshot_busy = now
        req = next(self._req)
        fut: Future = Future()
        fut.add_done_callback(self._write_state)
        if then is not None:
            fut.add_done_callback(lambda _f: then.set_result(True))
        self._pending[req] = (set(range(self.cfg.workers)), {}, fut)
        for i in range(self.cfg.workers):
            send_msg(self._to[i], m.DumpState(req))

    def _write_state(self, fut: Future) -> None:
        self._snapshot_busy = 0.0
        entries = []
        for body in fut.result().values():
            if isinstance(body, (list, tuple)):
                entries.extend(m.FlowStateEntry(k, tuple(key), v, float(exp)) for k, key, v, exp in body)
        try:
            write_state(self.cfg.state_path(), entries)
            self.counters["supervisor_state_snapshots"] = self.counters.get("supervisor_state_snapshots", 0) + 1
        except OSError:
            self.counters["supervisor_state_file_errors"] = self.counters.get("supervisor_state_file_errors", 0) + 1

    def save_state(self, timeout: float = 5.0) -> None:
        """Write the flow-state snapshot now (real datapath)."""
        fut = self._call("snapshot", None, wait=False)
        fut.result(timeout)

    def inject_tunnel(self, tunnel_key: int, frames) -> None:
        """Frames arriving from another host's tunnel with ``tunnel_key`` (in-memory datapath)."""
        self._call("send", (DP, m.TunnelFrames(tunnel_key, tuple(frames))))

    def stop(self) -> None:
        if self._stopping:
            return
        if self._next_snapshot is not None and self._thread is not None and self._thread.is_alive():
            try:
                self.save_state()
            except Exception:                          # noqa: BLE001 - best effort; the periodic one stands
                pass
        self._stopping = True
        if self._thread is not None and self._thread.is_alive():
            self._cmds.put(("shutdown", None, None))
            self._thread.join(10)
        for p in self.procs.values():
            for signal_it in (None, p.terminate, p.kill):
                if signal_it is not None:
                    signal_it()
                try:
                    p.wait(5 if signal_it is None else 2)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if getattr(self, "_zctx", None) is not None:
            for s in [self._inbox, *self._to.values()]:
                s.close(0)
            self._zctx.term()
            self._zctx = None
        if self.rt is not None:
            self.rt.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.tables is not None:
            self.tables.close()
        if self.mirror is not None:
            self.mirror.close()
        if self.store is not None:
            self.store.close()

    # -- public API (any thread) ------------------------------------------------------------------------------
    def inject(self, port: str, frames) -> None:
        """Frames arriving on a synthetic port of the in-memory datapath."""
        self._call("send", (DP, m.Inject(port, tuple(frames))))

    def query(self, targets, what: str, arg=None, timeout: float = 10.0) -> dict:
        """Ask processes (indices; -1 is the datapath) a question; returns {index: answer}."""
        fut = self._call("query", (tuple(targets), what, arg), wait=False)
        return fut.result(timeout)

    def stats(self, timeout: float = 10.0) -> dict:
        answers = self.query([DP, *range(self.cfg.workers)], "stats", timeout=timeout)
        return {"datapath": answers.get(DP, {}), "workers": [answers.get(i, {}) for i in range(self.cfg.workers)],
                "supervisor": {**self.counters, **(self.mirror.counters if self.mirror else {}),
                               **(self.tables.stats() if self.tables else {})}}

    def flows(self) -> list:
        return self.query([DP], "flows")[DP]

    def outputs(self, port: str | None = None) -> dict[str, list[bytes]]:
        return self.query([DP], "outputs", port)[DP]

    def latencies_ns(self) -> list[int]:
        return self.query([DP], "latencies")[DP]

    def health(self) -> dict:
        return {"alive": {i: p.poll() is None for i, p in self.procs.items()}, "pids": dict(self.pids),
                "restarts": self.counters["supervisor_worker_restarts"]}

    def apply_topology(self, topology) -> dict:
        """Write a topology (file path or Topology) into the store, as a diff; workers hear of each change."""
        if isinstance(topology, str):
            topology = load_topology(topology, tunnel_keys=read_tunnel_keys(self.store))
        return write_topology(self.store, topology)

    def _call(self, what: str, arg, wait: bool = True):
        if self._thread is None or not self._thread.is_alive():
            raise AgentError("agent is not running")
        fut: Future = Future()
        self._cmds.put((what, arg, fut))
        self._wake()
        return fut.result(10) if wait else fut

    # -- service thread -------------------------------------------------------------------------------------
    def _wake(self) -> None:
        """Wake the service thread now (it otherwise sleeps in poll until a socket has input)."""
        try:
            os.write(self._wake_w, b"!")
        except (BlockingIOError, OSError):
            pass                                       # the pipe is full: a wake-up is pending anyway

    def _on_change(self, kind: str, name: str) -> None:
        self._changes.put(("topology", kind, name))
        self._wake()

    def _relay(self, msg) -> None:
        self._changes.put(("relay", msg))
        self._wake()

    def _run(self) -> None:
        decoder = Decoder()
        poller = zmq.Poller()
        poller.register(self._inbox, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        next_check = 0.0
        changed_at = None
        while True:
            for sock, _ in poller.poll(200 if changed_at is None else 10):
                if sock == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                else:
                    for msg in recv_msgs(self._inbox, decoder, 256):
                        self._handle(msg)
            while True:
                try:
                    item = self._changes.get_nowait()
                except queue.Empty:
                    break
                if item[0] == "relay":                # learned by another agent, or removed
                    for i in range(self.cfg.workers):
                        send_msg(self._to[i], item[1])
                    continue
                _, kind, name = item
                self.counters["supervisor_topology_changes"] += 1
                if kind in ("bridge", "router") and self.mirror.get(kind, name) is not None:
                    self.tables.watch_device(kind, name)
                if self.cfg.datapath == "real":
                    if kind in ("bridge", "router", "host"):
                        send_msg(self._to[DP], _command(0, "ports", self._port_map()))
                        self._fetch_moved_state()
                elif kind in ("bridge", "router") and self.mirror.get(kind, name) is not None:
                    send_msg(self._to[DP], _command(0, "ports", {"keys": self._tunnel_ports()}))
                for i in range(self.cfg.workers):
                    send_msg(self._to[i], m.TopologyChanged(kind, name))
                changed_at = time.monotonic()
            while True:
                try:
                    what, arg, fut = self._cmds.get_nowait()
                except queue.Empty:
                    break
                if what == "shutdown":
                    for s in self._to.values():
                        send_msg(s, m.Shutdown())
                    return
                self._command(what, arg, fut)
            now = time.monotonic()
            if changed_at is not None and now - changed_at >= SETTLE_S:
                # the records of one edit arrive one by one: push awaited objects once the edit settled
                changed_at = None
                self._push_awaited()
            if self._next_snapshot is not None and now >= self._next_snapshot and self.cfg.state_snapshot_s > 0:
                self._next_snapshot = now + self.cfg.state_snapshot_s
                self._snapshot()
            if now >= next_check:
                next_check = now + 0.2
                self._check_children()
                self.tables.tick()

    def _push_awaited(self) -> None:
        """Objects workers asked for that did not exist: send those that exist now."""
        for (kind, name), workers in list(self._awaited.items()):
            records = self.mirror.fragment(kind, name)
            if records[0][2] is None:
                continue
            del self._awaited[(kind, name)]
            for w in workers:
                send_msg(self._to[w], m.Fragment(kind, name, records))

    def _command(self, what: str, arg, fut: Future) -> None:
        if what == "send":
            target, msg = arg
            ok = send_msg(self._to[target], msg)
            fut.set_result(ok)
        elif what == "snapshot":
            self._snapshot(then=fut)
        elif what == "query":
            targets, q, qarg = arg
            req = next(self._req)
            self._pending[req] = (set(targets), {}, fut)
            for t in targets:
                send_msg(self._to[t], _command(req, q, qarg))

    def _handle(self, msg) -> None:
        t = type(msg)
        if t is m.FragmentRequest:
            self.counters["supervisor_fragment_requests"] += 1
            records = self.mirror.fragment(msg.kind, msg.name)
            if records[0][2] is None:                  # not there (yet): push it when it appears
                self._awaited.setdefault((msg.kind, msg.name), set()).add(msg.worker)
            if 0 <= msg.worker < self.cfg.workers:
                send_msg(self._to[msg.worker], m.Fragment(msg.kind, msg.name, records))
        elif t is m.LeaseRequest:
            self.counters["supervisor_lease_requests"] += 1
            owner = f"{self.cfg.host or 'agent'}/worker-{msg.worker}"
            block = self.allocator.lease(owner, msg.device, msg.ip, msg.port_start, msg.port_end)
            if 0 <= msg.worker < self.cfg.workers:
                send_msg(self._to[msg.worker], m.LeaseGranted(msg.device, msg.ip, -1 if block is None else block))
        elif t is m.MacLearned or t is m.ArpLearned:
            self.tables.learned(msg)
        elif t is m.LeaseRelease:
            self.allocator.release(f"{self.cfg.host or 'agent'}/worker-{msg.worker}", msg.device, msg.ip, msg.block)
        elif t is m.Ready:
            ev = self._ready.get(msg.sender)
            if ev is not None:
                ev.set()
        elif t is m.Answer or t is m.StatsReply:
            body = msg.body if t is m.Answer else msg.counters
            pending = self._pending.get(msg.req_id)
            if pending is None:
                return
            targets, answers, fut = pending
            answers[msg.sender if t is m.Answer else msg.worker] = body
            if targets <= answers.keys():
                del self._pending[msg.req_id]
                fut.set_result(answers)

    def _check_children(self) -> None:
        if self._stopping or not self.cfg.restart_workers:
            return
        for i, p in list(self.procs.items()):
            if i == DP or p.poll() is None:
                continue
            # a dead worker: purge its flows from the datapath and start a new one in its place
            send_msg(self._to[DP], m.PurgeWorker(0, i))
            self.counters["supervisor_worker_restarts"] += 1
            self._spawn(i)


def _pairs(d) -> tuple:
    return tuple((k, v) for k, v in (d or {}).items())


def _command(req: int, what: str, arg):
    """The command message for a query name (the embedding API's ``query``)."""
    if what == "stats":
        return m.StatsRequest(req)
    if what == "flows":
        return m.DumpFlows(req)
    if what == "outputs":
        return m.TakeOutputs(req, arg)
    if what == "latencies":
        return m.TakeLatencies(req)
    if what == "ports":
        arg = arg or {}
        return m.SetPortMap(req, _pairs(arg.get("ports")), _pairs(arg.get("keys")), _pairs(arg.get("hosts")))
    if what == "purge":
        return m.PurgeWorker(req, int(arg))
    if what == "state_entries":
        return m.DumpState(req)
    raise ValueError(f"unknown query {what!r}")
