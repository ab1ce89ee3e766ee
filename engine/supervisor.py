"""The embedding API: one agent — its store session, its process pool — started, asked and stopped.

    with Agent(workers=2, topology="topo.yaml") as agent:      # or Agent(AgentConfig.from_toml(path))
        agent.inject("tenant.vm1", [frame, ...])
        agent.stats()                                         # per worker and datapath counters

Owns the agent's parts and their order of start and stop: the store session, the private runtime directory
(0700) with the ipc sockets, and the pieces that do the work:

  engine/session.py      the store, the topology mirror, the NAT allocator, the replicated tables, the keys
  engine/pool.py         the datapath and worker processes (spawn, readiness, restart, stop)
  engine/service.py      the service thread: every socket, the commands and their answers
  engine/storeshell.py   what the workers ask of the store, and the store's changes relayed to them
  engine/persistence.py  flow-state snapshot and restore (real datapath)
  engine/portmap.py      which ports are bound here (pure functions of the mirror)
  engine/metrics.py      the Prometheus endpoint (``metrics``: started last, stopped first)
  engine/ctl.py          the control socket of ``shardnet ctl``
  engine/logs.py         this process's logging (left to an embedding program that configured its own)

Every public method is safe from any thread: it hands a command to the service thread (``_call``, which
wakes it) and waits on a future.  With ``datapath="real"`` the saved flow state is restored into every worker
before the port map is sent, so no packet is simulated on a bound port without its state.  Shutdown leaves no
process, socket file or directory behind; so does a ``kill -9`` of this process (the pool's lifeline).

A restarted child (engine/pool.py restarts every dead one) gets back, once it says Ready (``_child_restarted``,
on the service thread, nothing awaited): the datapath its keys, live hosts, port map and log level, and every
worker is told (DatapathRestarted) to re-install its flows into it; a worker the SNAT blocks leased under its
name, the entries of the last snapshot that hash to it, and its peers' copies of its flow state (StateRecall).
"""

from __future__ import annotations

import logging
import os
import time

from backchannel import messages as m
from backchannel.sockets import RuntimeDir
from engine import logs, portmap
from engine.config import AgentConfig
from engine.ctl import ControlServer, pointer_path
from engine.persistence import Persistence
from engine.pool import ProcessPool, datapath_config
from engine.service import Service, ServiceNotRunning
from engine.session import SessionError, StoreSession
from topology.loader import load_topology
from topology.store.topo import read_tunnel_keys, write_topology
from workers.logs import set_level

DP = m.DATAPATH_INDEX
FLOW_PAGE = 5000                                       # flows per DumpFlowTable page (the datapath's most)
log = logging.getLogger(__name__)
QUERIES = {                                            # Agent.query's names → their command (req_id, arg)
    "stats": lambda req, _: m.StatsRequest(req),
    "flows": lambda req, _: m.DumpFlows(req),
    "outputs": lambda req, port: m.TakeOutputs(req, port),
    "latencies": lambda req, _: m.TakeLatencies(req),
    "state_entries": lambda req, _: m.DumpState(req),
    "purge": lambda req, worker: m.PurgeWorker(req, int(worker)),
}


class AgentError(RuntimeError):
    pass


class Agent:
    def __init__(self, config: AgentConfig | None = None, **kwargs):
        self.cfg = config or AgentConfig(**kwargs)
        self.counters: dict[str, int] = {}             # supervisor_<event>, shared by the parts below
        self.pool = ProcessPool(self.cfg, self.counters)
        self.service = Service(self.cfg, self.counters)
        self.rt: RuntimeDir | None = None
        self.session = StoreSession(self.cfg, self.counters)
        self.persistence: Persistence | None = None
        self.restored = 0
        self.ctl: ControlServer | None = None
        self.metrics = None                            # engine.metrics.MetricsServer, with cfg.metrics
        self._own_logging = False                      # start() set up this process's logging
        self._stopping = False
        self._state_keys: tuple[bytes, ...] | None = None   # the flow-state tunnel's keys (a restarted datapath)
        self.service.on_restarted = self._child_restarted

    # the store session's parts, by their old names (tests and embedding programs read them)
    store = property(lambda self: self.session.store)
    mirror = property(lambda self: self.session.mirror)
    allocator = property(lambda self: self.session.allocator)
    tables = property(lambda self: self.session.tables)
    store_state = property(lambda self: self.session.state, doc="connected | suspended | lost")

    @property
    def procs(self) -> dict:
        return self.pool.procs

    @property
    def pids(self) -> dict[int, int]:
        return self.pool.pids

    # -- lifecycle ------------------------------------------------------------------------------------------
    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> Agent:
        cfg = self.cfg
        self._own_logging = logs.setup("supervisor", cfg.log_level, cfg.log_file, repeat_s=cfg.log_repeat_s,
                                       force=False)
        try:
            self.session.open(self.service.on_change, self.service.relay)
            self.rt = RuntimeDir(cfg.runtime_base)
            self.persistence = Persistence(cfg, self.counters, self.allocator)
            self.service.open(self.rt, mirror=self.mirror, tables=self.tables, allocator=self.allocator,
                              pool=self.pool, persistence=self.persistence)
            pm = portmap.port_map(self.mirror.objects, cfg.host)
            host = self.session.host()
            ctl_path = cfg.ctl or os.path.join(self.rt.path, "ctl.sock")
            cleanup = [self.rt.path, ctl_path]         # what the children remove if this process dies
            if pointer_path(cfg):
                cleanup.append([pointer_path(cfg), ctl_path + "\n"])
            self.pool.start(datapath_config(cfg, self.rt.path, pm, host.tunnel_ip if host else None), self.rt.path,
                            cleanup=cleanup)
            self.service.start()
            late = self.pool.wait_ready(cfg.start_timeout_s)
            if late is not None:
                raise AgentError(f"{late} did not start")
            if cfg.datapath == "real":
                self._bind_ports()
            self.ctl = ControlServer(self, ctl_path, pointer_path(cfg)).start()
            if cfg.metrics is not None:
                self._serve_metrics()
        except SessionError as e:
            log.error("agent did not start: %s", e)
            self.stop()
            raise AgentError(str(e)) from None
        except BaseException as e:
            log.error("agent did not start: %s", e)
            self.stop()
            raise
        log.info("agent up: host %s, %d workers, store %s, datapath %s, pids %s", cfg.host, cfg.workers,
                 cfg.store, cfg.datapath, self.pids)
        return self

    def _serve_metrics(self) -> None:
        from engine.metrics import MetricsServer

        try:
            self.metrics = MetricsServer(self, self.cfg.metrics_address()).start()
        except OSError as e:
            raise AgentError(f"metrics: cannot listen on {self.cfg.metrics}: {e}") from None
        log.info("metrics on %s", self.metrics.url)

    def _bind_ports(self) -> None:
        """Real datapath: the flow-state tunnel's keys, then restore the saved flow state, then bind the
        ports, then snapshot periodically."""
        keys = self.session.flow_state_keys()
        answer = self._query([DP], lambda req: m.SetStateAuth(req, self.cfg.host or "agent", keys))[DP]
        if "error" in answer:
            raise AgentError(f"flow-state keys: {answer['error']}")
        self._state_keys = keys
        self._call("send", (DP, self.session.live_hosts()))
        self.service.shell.note_bindings()
        self.restored = self.persistence.restore(lambda i, msg: self._call("send", (i, msg)))
        pm = portmap.port_map(self.mirror.objects, self.cfg.host)
        answer = self._query([DP], lambda req: portmap.set_port_map(req, pm))[DP]
        if answer.get("errors"):
            raise AgentError("cannot bind ports: " + "; ".join(answer["errors"]))
        self.persistence.schedule(time.monotonic())

    def _child_restarted(self, i: int) -> None:
        """Child ``i`` was restarted and is up (service thread: sends, awaits nothing)."""
        send = self.service.send_now
        workers = range(self.cfg.workers)
        if i == DP:
            if self.cfg.datapath == "real" and self._state_keys is not None:
                send(DP, m.SetStateAuth(0, self.cfg.host or "agent", self._state_keys))
                send(DP, self.session.live_hosts())
            send(DP, portmap.set_port_map(0, portmap.port_map(self.mirror.objects, self.cfg.host)))
            if self.service.dp_log_level is not None:
                send(DP, m.SetLogLevel(0, self.service.dp_log_level))
            for w in workers:
                send(w, m.DatapathRestarted(self.pool.epoch))
            log.info("datapath restarted (incarnation %d): port map re-sent, workers re-install their flows",
                     self.pool.epoch)
            return
        blocks = self.allocator.held_by(self.cfg.lease_owner(i))
        for device, ip, block in blocks:               # its SNAT blocks: still leased under its name
            send(i, m.LeaseGranted(device, ip, block))
        restored = 0
        if self.persistence is not None and self.persistence.next_snapshot is not None:
            restored = self.persistence.restore_worker(i, set(blocks), send)
        peers = tuple(w for w in workers if w != i)
        send(i, m.Recover(peers))                      # it simulates once its peers answered (or a deadline)
        for w in peers:
            send(w, m.StateRecall(i))
        self.counters["supervisor_worker_state_restored"] = (
            self.counters.get("supervisor_worker_state_restored", 0) + restored)
        log.info("worker %d restarted: %d SNAT blocks re-adopted, %d entries from the snapshot, peers asked for "
                 "its flow state", i, len(blocks), restored)

    def stop(self) -> None:
        if self._stopping:
            return
        if self.metrics is not None:
            self.metrics.stop()
        if self.persistence is not None and self.persistence.next_snapshot is not None and self.service.alive:
            try:
                self.save_state()
            except Exception:                          # noqa: BLE001 - best effort; the periodic one stands
                pass
        self._stopping = True
        if self.ctl is not None:
            self.ctl.stop()
        self.pool.stopping = True
        self.service.shutdown()
        self.pool.stop()
        self.service.close()
        if self.rt is not None:
            self.rt.close()
        self.session.close()
        if self.pool.pids:
            log.info("agent down: host %s", self.cfg.host)
        if self._own_logging:                          # the agent's logging lasts as long as the agent
            logs.remove()

    # -- public API (any thread) ------------------------------------------------------------------------------
    def inject(self, port: str, frames) -> None:
        """Frames arriving on a synthetic port of the in-memory datapath."""
        self._call("send", (DP, m.Inject(port, tuple(frames))))

    def inject_tunnel(self, tunnel_key: int, frames) -> None:
        """Frames arriving from another host's tunnel with ``tunnel_key`` (in-memory datapath)."""
        self._call("send", (DP, m.TunnelFrames(tunnel_key, tuple(frames))))

    def query(self, targets, what: str, arg=None, timeout: float = 10.0) -> dict:
        """Send a command by name (QUERIES) to processes (indices; -1 is the datapath); {index: answer}."""
        if what not in QUERIES:
            raise AgentError(f"unknown query {what!r} (known: {', '.join(QUERIES)})")
        return self._query(targets, lambda req: QUERIES[what](req, arg), timeout)

    def stats(self, timeout: float = 10.0) -> dict:
        answers = self._query([DP, *range(self.cfg.workers)], m.StatsRequest, timeout)
        return {"datapath": answers.get(DP, {}), "workers": [answers.get(i, {}) for i in range(self.cfg.workers)],
                "supervisor": {**self.counters, **self.session.stats()}}

    def flows(self) -> list:
        """The datapath's flows: [(key, worker, hits, tags, flow id), ...], page by page (DumpFlowTable: one
        answer of every flow would outgrow the 4 MiB message cap)."""
        out, offset = [], 0
        while True:
            page = self._query([DP], lambda req, at=offset: m.DumpFlowTable(req, -1, at, FLOW_PAGE))[DP]
            out.extend((tuple(f["key"]), f["worker"], f["hits"], tuple(f["tags"]), f["id"]) for f in page["flows"])
            offset += len(page["flows"])               # a page may be short (bounded in bytes)
            if offset >= page["total"] or not page["flows"]:
                return out

    def outputs(self, port: str | None = None) -> dict[str, list[bytes]]:
        """In-memory datapath: the frames output since the last call, {port: [frame, ...]} (``port``: one)."""
        return self._query([DP], lambda req: m.TakeOutputs(req, port))[DP]

    def latencies_ns(self) -> list[int]:
        """The setup-latency samples (ns) since the last call."""
        return self._query([DP], m.TakeLatencies)[DP]

    def health(self) -> dict:
        return self.pool.health()

    def children(self) -> dict[int, dict]:
        """Per child process (-1: the datapath): pid, alive, CPU seconds, restarts, last exit."""
        return self.pool.children()

    def command(self, targets, make_msg, timeout: float = 10.0) -> dict:
        """Send the command message ``make_msg(req_id)`` (backchannel.messages) to processes (indices; -1 is
        the datapath) and wait for their answers: {index: answer body}."""
        return self._query(targets, make_msg, timeout)

    def set_log_level(self, level: str) -> dict:
        """This (the supervisor's) process's log level."""
        return set_level(level)

    @property
    def ctl_path(self) -> str | None:
        """Where the control socket listens (``shardnet ctl --ctl PATH``)."""
        return self.ctl.path if self.ctl is not None else None

    def apply_topology(self, topology) -> dict:
        """Write a topology (file path or Topology) into the store, as a diff; workers hear of each change."""
        if isinstance(topology, str):
            topology = load_topology(topology, tunnel_keys=read_tunnel_keys(self.store))
        return write_topology(self.store, topology)

    def save_state(self, timeout: float = 5.0) -> None:
        """Write the flow-state snapshot now (real datapath)."""
        self._call("snapshot", None, wait=False).result(timeout)

    def _query(self, targets, make_msg, timeout: float = 10.0) -> dict:
        """Send the command ``make_msg(req_id)`` to ``targets`` (indices; -1 is the datapath) and wait for
        their answers: {index: answer body}."""
        return self._call("ask", (tuple(targets), make_msg, timeout), wait=False).result(timeout)

    def _call(self, what: str, arg, wait: bool = True):
        try:
            return self.service.call(what, arg, wait)
        except ServiceNotRunning:
            raise AgentError("agent is not running") from None
