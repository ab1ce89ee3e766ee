"""The datapath process: the flow cache, the ports, and the dispatcher in one process, pinned to a core.

Owns: the datapath (engine.datapath: flow cache + ports), the dispatcher (engine.dispatcher), the setup-latency
samples (kept only once a TakeLatencies drained them — a bench — so that an agent nobody measures holds
none; drained by each TakeLatencies) and histogram (``LATENCY_BUCKETS_US``, never drained, in the stats), and the
sockets

    inbox      PULL datapath      FlowPut / Execute / PacketOut / FlowDelete, fan-out relays, injected frames,
                                  commands
    workers    PUSH worker-<i>    upcall batches, relayed messages, FlowRemoved notices
    supervisor PUSH               Ready, answers to commands

It makes no decision of its own.  A frame is parsed once, here, into a packet and a flow key; a miss goes to a
worker as Upcall(seq, port, frame) and the dispatcher keeps (frame, packet, key) under ``seq``.  The worker
answers by seq: FlowPut installs the flow under the kept key and executes the kept packet (and those held back
meanwhile) with the compiled actions; Execute executes it without installing (and upcalls the held-back ones
again, from their kept packets); PacketOut emits a generated packet.  A Fanout relays a worker's message to
other workers on the same sockets as their upcalls, so it reaches them before any later upcall.  Setup latency
is measured from the upcall being queued to its answer arriving here (CLOCK_MONOTONIC).

The links to the workers and the supervisor are anything with ``send(bytes, flags)`` (ZMQ PUSH sockets in
the process; lists in the in-process tests).

Two datapaths (``mode``): "memory" (MemoryDatapath: synthetic ports fed by Inject) and "real" (RealDatapath:
AF_PACKET sockets on the interfaces of the exterior ports bound to this host, and a VXLAN endpoint on the
host's tunnel address).  In real mode the port and tunnel fds are polled next to the inbox; each readable fd
is drained (one batch) into dispatcher upcalls, and the dispatcher is flushed after each burst.  The port map
comes from the supervisor (SetPortMap: ports, tunnel keys, hosts' tunnel addresses) at start and after each
topology change; ports are added/removed as it changes.  Flow state: StateToHosts sends an encoded
FlowStateBatch (or StateRequest) to other hosts on the reserved VNI, sealed by engine/datapath/stateauth.py
(HMAC with the deployment key from SetStateAuth, a fresh sequence number).  What arrives on that VNI is opened
there (authentic, fresh, from a known host at its own address), decoded, and only a FlowStateBatch (relayed to
every local worker) or a StateRequest (to the supervisor, which checks the port moved) is taken; everything
else is refused and counted by reason (``datapath_state_refused_<reason>``).  Frames on data VNIs are taken
only from known hosts' addresses, and only for ports bound here.

The loop (``datapath_main``) runs every inbox message, every fd poll and the housekeeping under the loop guard
(backchannel/guard.py, ``self.guard``): what one of them raises is counted as ``datapath_handler_errors_<Type>``
(``_poll`` for a port or tunnel fd, ``_housekeeping``), logged rate-limited, and the loop goes on.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import signal
import time
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from time import monotonic_ns

import zmq

from backchannel import messages as m
from backchannel.codec import DecodeError, Decoder, encode
from backchannel.guard import Guard
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
from backchannel.spin import spin_poll
from engine.datapath.flowcache import compile_actions
from engine.datapath.memory import MemoryDatapath
from engine.datapath.stateauth import Refused, StateAuth
from engine.dispatcher import Dispatcher
from engine.logs import Every
from packet.codec import ParseError, parse
from packet.flowkey import flow_key, masked_key
from topology.model import TUNNEL_KEY_FLOW_STATE
from workers.logs import set_level
from workers.warm import KEEP_WARM_FOR_S, SparseGate

DP = m.DATAPATH_INDEX
MAX_LATENCY_SAMPLES = 2_000_000
MAX_FLOW_PAGE = 5000                                   # flows per DumpFlowTable answer (messages are ≤ 4 MiB)
QUARANTINE_AFTER = 2                                   # worker deaths a flow key was in flight at
QUARANTINE_S = 600                                     # how long its packets are dropped then
MAX_SUSPECTS = 4096                                    # flow keys remembered from workers' deaths
MAX_FLOW_PAGE_BYTES = 1 << 20                          # and about this many bytes at most


def _actions_of(compiled) -> list:
    """The actions of a compiled flow, as the worker sent them (sets before each output)."""
    out = []
    for fields, kind, target, tkey in compiled:
        out.extend(["set", k, v] for k, v in fields.items())
        out.append(["output", target] if kind == "output" else ["tunnel", target, tkey])
    return out or [["drop"]]
# setup-latency histogram: fixed upper bounds (µs) of the buckets, one count per bucket plus one past the last
LATENCY_BUCKETS_US = (50, 100, 200, 300, 500, 750, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
                      250_000, 500_000, 1_000_000, 5_000_000)
_LATENCY_BOUNDS_NS = tuple(b * 1000 for b in LATENCY_BUCKETS_US)
log = logging.getLogger(__name__)


@dataclass
class DatapathConfig:
    runtime_dir: str
    n_workers: int
    cpu: int | None = None
    max_flows: int = 200_000
    max_inflight: int = 4096
    port_rate: float = 200_000.0
    port_burst: float = 20_000.0
    max_held: int = 16                     # frames held back per flow while its first packet is simulated
    max_held_total: int = 16_384           # ... and in all
    batch: int = 64
    keep_outputs: bool = True
    port_workers: dict | None = None
    tunnel_ports: dict | None = None       # tunnel key → local port id (egress by key)
    reclaim_s: float = 15.0                # an upcall unanswered this long no longer counts as in flight
    mode: str = "memory"                   # "memory" or "real"
    ports: dict | None = None              # real: port id → interface name (more come with SetPortMap)
    tunnel_ip: int | None = None           # real: this host's tunnel address (no tunnel when None)
    tunnel_port: int = 4789
    hosts: dict | None = None              # real: host name → tunnel address (state goes to / comes from them)
    epoch: int = 0                         # this incarnation (the supervisor counts restarts): in every seq
    poll_spin_us: int = 0                  # busy-poll this long after work before blocking (0: off)
    keep_warm_ms: int = 0                  # idle this long: run the setup path once on the last upcall (0: off)


class DatapathProcess:
    def __init__(self, cfg: DatapathConfig, to_workers: list, to_sup):
        self.cfg = cfg
        self.to_workers = to_workers
        self.to_sup = to_sup
        self.tunnel = None
        self.auth: StateAuth | None = None
        self.state_decoder = Decoder()
        self.hosts: dict[str, int] = {}
        self.known_ips: set[int] = set()               # data frames are taken from these tunnel addresses
        self.live: set[str] | None = None              # hosts live in the registry (None: not told yet)
        self.fds_changed = False
        self._refusals_logged = Every()                # one line per reason per interval, with the count
        if cfg.mode == "real":
            from engine.datapath.real import RealDatapath
            from engine.datapath.tunnel import VxlanTunnel

            if cfg.tunnel_ip:
                self.tunnel = VxlanTunnel(cfg.tunnel_ip, cfg.tunnel_port)
            self.dp = RealDatapath({}, self.tunnel, None, cfg.max_flows, cfg.keep_outputs,
                                   on_state=self._on_state, batch=cfg.batch, accept_from=self.known_ips)
        else:
            self.dp = MemoryDatapath(cfg.max_flows, cfg.keep_outputs, cfg.tunnel_ports)
        self.disp = Dispatcher(cfg.n_workers, self._send_batch, max_inflight=cfg.max_inflight,
                               port_rate=cfg.port_rate, port_burst=cfg.port_burst, max_held=cfg.max_held,
                               max_held_total=cfg.max_held_total, batch=cfg.batch, port_workers=cfg.port_workers)
        self.disp.seq = cfg.epoch << m.EPOCH_SHIFT     # seqs (flow ids) never repeat an earlier incarnation's
        self.latencies = array("q")
        self.keep_latencies = False                    # set by the first TakeLatencies: a reader exists
        self.latency_buckets = [0] * (len(_LATENCY_BOUNDS_NS) + 1)   # never drained: the histogram's counts
        self.latency_sum_ns = 0
        self.counters = self.dp.counters
        self.counters.update(self.disp.counters)
        self.counters.update({"datapath_relayed": 0, "datapath_relay_full": 0, "datapath_unexpected": 0,
                              "datapath_state_tx": 0, "datapath_state_no_host": 0, "datapath_state_accepted": 0,
                              "datapath_state_refused": 0, "datapath_port_errors": 0, "datapath_late_answers": 0,
                              "datapath_packet_outs": 0})
        if cfg.mode == "real":
            self.set_ports(cfg.ports or {}, cfg.tunnel_ports or {}, cfg.hosts or {})
            self.fds_changed = True                    # the tunnel's fd, even with no port yet
        self.guard = Guard("datapath", self.counters)
        self.running = True
        self._warm_up = None                           # keep_warm's: the last upcall, the last FlowPut,
        self.warm_until = 0.0                          # and until when it runs (KEEP_WARM_FOR_S after it)
        self._warm_gate = SparseGate()
        self._warm_put = None
        self._warm_decoder = Decoder({})
        self.counters["datapath_warm_runs"] = 0
        self._next_expiry = 0.0
        self._handlers = {
            m.FlowPut: self.flow_put, m.Execute: self.execute, m.PacketOut: self.packet_out,
            m.FlowDelete: self._flow_delete, m.Inject: self._inject, m.TunnelFrames: self._tunnel_frames,
            m.Fanout: self._fanout, m.StateToHosts: self._state_to_hosts, m.StatsRequest: self._stats,
            m.DumpFlows: self._dump_flows, m.TakeOutputs: self._take_outputs,
            m.TakeLatencies: self._take_latencies, m.SetPortMap: self._set_port_map,
            m.PurgeWorker: self._purge_worker, m.SetStateAuth: self._set_state_auth, m.Shutdown: self._shutdown,
            m.SetLiveHosts: self._set_live_hosts, m.DumpFlowTable: self._dump_flow_table,
            m.DelFlows: self._del_flows, m.SetLogLevel: self._log_level, m.Reinstall: self._reinstall,
            m.FlowAhead: self._flow_ahead,
        }
        self._suspects: dict[tuple, int] = {}          # flow key → deaths of its worker while it was in flight

    def _send_batch(self, w: int, batch) -> bool:
        return send_msg(self.to_workers[w], batch)

    def _sync_counters(self) -> None:
        self.counters.update(self.disp.counters)

    # -- real mode: ports, fds, flow state ---------------------------------------------------------------
    def set_ports(self, ports: dict, keys: dict, hosts: dict) -> dict:
        """The port map from the supervisor: ports {id: ifname} (real datapath: opened, those no longer
        listed or moved to another interface closed), keys {tunnel key: id}, hosts {name: tunnel ip}."""
        self.hosts = {str(k): int(v) for k, v in hosts.items() if v}
        self._accept_from()
        if self.auth is not None:
            self.auth.hosts = self.hosts
        errors = []
        if self.cfg.mode == "real":
            want = {str(k): str(v) for k, v in ports.items()}
            have = {pid: p.ifname for pid, p in self.dp.ports.items()}
            for pid, ifname in have.items():
                if want.get(pid) != ifname:
                    self.dp.remove_port(pid)
                    self.fds_changed = True
                    log.info("port %s unbound (interface %s)", pid, ifname)
            for pid, ifname in want.items():
                if pid not in self.dp.ports:
                    try:
                        self.dp.add_port(pid, ifname)
                        self.fds_changed = True
                        log.info("port %s bound to interface %s", pid, ifname)
                    except OSError as e:
                        self.counters["datapath_port_errors"] += 1
                        errors.append(f"{pid}: {e}")
                        log.warning("port %s: cannot bind interface %s: %s", pid, ifname, e)
        self.dp.tunnel_ports.clear()
        self.dp.tunnel_ports.update({int(k): str(v) for k, v in keys.items()})
        return {"ports": sorted(getattr(self.dp, "ports", ())), "errors": errors}

    def _refuse_state(self, reason: str) -> None:
        self.counters["datapath_state_refused"] += 1
        name = f"datapath_state_refused_{reason}"
        self.counters[name] = self.counters.get(name, 0) + 1
        if self._refusals_logged.due(reason, time.monotonic()):
            log.warning("refused flow-state datagrams: %s (%s: %d so far)", reason, name, self.counters[name])

    def _accept_from(self) -> None:
        """Data frames: from the topology's hosts that are live (all of them until the registry was heard)."""
        self.known_ips.clear()                         # the same set object: RealDatapath checks it too
        self.known_ips.update(ip for h, ip in self.hosts.items() if self.live is None or h in self.live)
        if self.tunnel is not None:
            self.known_ips.discard(self.tunnel.local_ip)

    def _set_live_hosts(self, msg: m.SetLiveHosts, now: float) -> None:
        self.live = set(msg.hosts)
        self._accept_from()
        self._reply(msg.req_id, sorted(self.live))

    def _on_state(self, src_ip: int, data: bytes) -> None:
        """A datagram on the flow-state VNI: authenticated, fresh, one of the two messages that belong there."""
        if self.auth is None:
            self._refuse_state("no_key")
            return
        try:
            _sender, payload = self.auth.open(src_ip, self._state_header, data)
        except Refused as e:
            self._refuse_state(e.reason)
            return
        try:
            msgs = self.state_decoder.decode_many(payload) if payload else []
        except DecodeError:                            # counted by the decoder too, by reason
            msgs = []
        if len(msgs) != 1:
            self._refuse_state("decode")
            return
        msg = msgs[0]
        if type(msg) is m.FlowStateBatch:
            self.counters["datapath_state_accepted"] += 1
            self._relay(range(len(self.to_workers)), payload)
        elif type(msg) is m.StateRequest:
            self.counters["datapath_state_requests"] = self.counters.get("datapath_state_requests", 0) + 1
            send_msg(self.to_sup, msg)
        else:
            self._refuse_state("type")

    @property
    def _state_header(self) -> bytes:
        return self.tunnel.header(TUNNEL_KEY_FLOW_STATE)

    def _relay(self, targets, payload: bytes) -> None:
        for w in targets:
            if 0 <= w < len(self.to_workers):
                try:
                    self.to_workers[w].send(payload, zmq.NOBLOCK)
                    self.counters["datapath_relayed"] += 1
                except zmq.Again:
                    self.counters["datapath_relay_full"] += 1

    def _state_to_hosts(self, msg: m.StateToHosts, now: float) -> None:
        for h in msg.hosts:
            ip = self.hosts.get(h)
            if ip is None or self.tunnel is None:
                self.counters["datapath_state_no_host"] += 1
                continue
            if self.auth is None:
                self.counters["datapath_state_no_key"] = self.counters.get("datapath_state_no_key", 0) + 1
                continue
            if self.tunnel.send_state(ip, self.auth.seal(self._state_header, msg.payload)):
                self.counters["datapath_state_tx"] += 1

    def poll_fd(self, fd: int, now: float) -> None:
        misses = self.dp.poll_ready(fd, now, self.disp.saturated())
        for pid, frame, pkt, key in misses:
            self.disp.upcall(pid, frame, pkt, key, now)
        if misses:
            self._warm_up = misses[-1]
            self.warm_until = now + KEEP_WARM_FOR_S

    def keep_warm(self) -> None:
        """Run this process's part of a setup once more on the last upcall's frame and answer, and change
        nothing (keep_warm_ms): parse, flow key, the masked lookup, the upcall's encode, the answer's decode and
        its actions' compile.  A setup after an idle gap then finds its code and data in the caches (on this
        machine one runs ~1.6x slower after 5 ms idle than 1 ms after the last run: bench/RESULTS.md).  Only
        for KEEP_WARM_FOR_S after the last miss read off a port, and not while misses come often (SparseGate)."""
        up, put = self._warm_up, self._warm_put
        now = time.monotonic()
        if up is None or now > self.warm_until or self._warm_gate.busy(now, self.counters["datapath_misses"]):
            return
        port, frame = up[0], up[1]
        key = flow_key(parse(frame), port)
        for sub in self.dp.cache.subtables:
            sub.flows.get(sub.project(key))
        encode(m.UpcallBatch((m.Upcall(0, port, frame),)))
        if put is not None:
            compile_actions(self._warm_decoder.decode(encode(put)).actions)
        self.counters["datapath_warm_runs"] += 1

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

    # -- the inbox -----------------------------------------------------------------------------------------
    def handle(self, msg, now: float) -> None:
        if type(msg) is m.FlowPut:                     # most of what arrives: no dispatch by type
            self.flow_put(msg, now)
            return
        h = self._handlers.get(type(msg))
        if h is None:
            self.counters["datapath_unexpected"] += 1
        else:
            h(msg, now)

    def _answered(self, seq: int):
        rec, held = self.disp.answered(seq)
        if rec is None:
            self.counters["datapath_late_answers"] += 1
            return rec, held
        ns = monotonic_ns() - rec.sent_ns              # record_latency, inline (once per setup)
        self.latency_buckets[bisect_left(_LATENCY_BOUNDS_NS, ns)] += 1
        self.latency_sum_ns += ns
        if self.keep_latencies and len(self.latencies) < MAX_LATENCY_SAMPLES:
            self.latencies.append(ns)
        return rec, held

    def record_latency(self, ns: int) -> None:
        """One setup-latency sample: its histogram bucket (kept) and the sample (until TakeLatencies)."""
        self.latency_buckets[bisect_left(_LATENCY_BOUNDS_NS, ns)] += 1
        self.latency_sum_ns += ns
        if self.keep_latencies and len(self.latencies) < MAX_LATENCY_SAMPLES:
            self.latencies.append(ns)

    def flow_put(self, msg: m.FlowPut, now: float) -> None:
        """Install the flow of upcall ``seq`` under the key kept for it; execute its packet and the packets
        held back meanwhile with the compiled actions."""
        rec, held = self._answered(msg.seq)
        if rec is None:
            return
        self._warm_put = msg
        cache = self.dp.cache
        flow = cache.install(rec.key, msg.actions, rec.worker, msg.idle_s, msg.hard_s, now, msg.tags, msg.seq,
                             msg.match)
        if flow is None:                               # bad actions or match (counted): nothing to execute with
            return
        execute, compiled = cache.execute, flow.compiled
        execute(compiled, rec.frame, rec.packet)
        for _port, frame, pkt in held:
            execute(compiled, frame, pkt)
        # the flows this install replaced or evicted are told their workers by the housekeeping after this
        # burst: one FlowRemoved per worker per burst, not one per install (a full table evicts at each)

    def execute(self, msg: m.Execute, now: float) -> None:
        """Execute upcall ``seq``'s packet without installing; the packets held back for its flow were not
        answered by this (a consumed ARP request answers only itself): they are upcalled again."""
        rec, held = self._answered(msg.seq)
        if rec is None:
            return
        try:
            compiled = compile_actions(msg.actions)
        except (ValueError, TypeError, IndexError):
            self.counters["datapath_bad_actions"] += 1
            compiled = ()
        if compiled:
            self.dp.cache.execute(compiled, rec.frame, rec.packet)
        for port, frame, pkt in held:
            self.disp.upcall(port, frame, pkt, rec.key, now)

    def packet_out(self, msg: m.PacketOut, now: float) -> None:
        """A packet the agent generated: parsed only when an action rewrites it."""
        self.counters["datapath_packet_outs"] += 1
        try:
            compiled = compile_actions(msg.actions)
            pkt = parse(msg.frame) if any(fields for fields, *_ in compiled) else None
            self.dp.cache.execute(compiled, msg.frame, pkt)
        except (ParseError, ValueError, TypeError, IndexError):
            self.counters["datapath_bad_actions"] += 1

    def _flow_delete(self, msg: m.FlowDelete, now: float) -> None:
        self.dp.cache.delete_ids(msg.flows)

    def _removed(self, removed) -> None:
        """Tell each worker which of its flows left the cache without its word."""
        by_worker: dict[tuple[int, str], list[int]] = {}
        for f, reason in removed:
            by_worker.setdefault((f.worker, reason), []).append(f.id)
        for (w, reason), ids in by_worker.items():
            if 0 <= w < len(self.to_workers):
                send_msg(self.to_workers[w], m.FlowRemoved(tuple(ids), reason))

    def _inject(self, msg: m.Inject, now: float) -> None:
        port, receive, upcall = msg.port, self.dp.receive, self.disp.upcall
        for frame in msg.frames:                       # ``receive``, inline
            miss = receive(port, frame, now)
            if miss is not None:
                upcall(port, frame, miss[0], miss[1], now)

    def _tunnel_frames(self, msg: m.TunnelFrames, now: float) -> None:
        for frame in msg.frames:
            self.dp.receive_tunnel(msg.vni, frame)

    def _fanout(self, msg: m.Fanout, now: float) -> None:
        self._relay(msg.targets, msg.payload)

    def _shutdown(self, msg, now: float) -> None:
        self.running = False

    # -- commands ------------------------------------------------------------------------------------------
    def _reply(self, req_id: int, body) -> None:
        if req_id:
            send_msg(self.to_sup, m.Answer(req_id, DP, body))

    def stats(self) -> dict:
        self._sync_counters()
        if self.cfg.mode == "real":
            self.dp.refresh_counters()
        out = dict(self.counters)
        out["datapath_flows"] = len(self.dp.cache.flows)
        out["datapath_inflight"] = len(self.disp.inflight_by_seq)
        for w, n in enumerate(self.disp.inflight):
            out[f"dispatcher_inflight_{w}"] = n
        out["datapath_pid"] = os.getpid()
        out.update(self.latency_histogram())
        return out

    def latency_histogram(self) -> dict[str, int]:
        """The setup-latency histogram since start, Prometheus style: cumulative counts per upper bound
        (``datapath_setup_latency_le_<µs>``, the last one ``_le_inf``), the count and the sum (µs)."""
        out, total = {}, 0
        for bound, n in zip((*LATENCY_BUCKETS_US, "inf"), self.latency_buckets, strict=True):
            total += n
            out[f"datapath_setup_latency_le_{bound}"] = total
        out["datapath_setup_latency_count"] = total
        out["datapath_setup_latency_sum_us"] = self.latency_sum_ns // 1000
        return out

    def _stats(self, msg: m.StatsRequest, now: float) -> None:
        send_msg(self.to_sup, m.StatsReply(msg.req_id, DP, self.stats()))

    def _dump_flows(self, msg: m.DumpFlows, now: float) -> None:
        self._reply(msg.req_id, [[list(f.key), f.worker, f.hits, list(f.tags), f.id]
                                 for f in self.dp.cache.flows.values()])

    def _dump_flow_table(self, msg: m.DumpFlowTable, now: float) -> None:
        # a page is found without copying the table (a large one is paged through many times), and stops at
        # about MAX_FLOW_PAGE_BYTES (flows with many tags): the reader advances by the rows it got
        flows, start = self.dp.cache.flows, max(0, msg.offset)
        if msg.worker < 0:
            total, sel = len(flows), flows.values()
        else:
            total = sum(1 for f in flows.values() if f.worker == msg.worker)
            sel = (f for f in flows.values() if f.worker == msg.worker)
        rows, size, start = [], 0, min(start, total)     # an offset past the end: an empty page
        for f in itertools.islice(sel, start, start + max(0, min(msg.limit, MAX_FLOW_PAGE))):
            rows.append({
                "id": f.id, "key": list(masked_key(f.key, f.mask)), "mask": list(f.mask), "worker": f.worker,
                "actions": _actions_of(f.compiled),
                "tags": list(f.tags), "hits": f.hits, "age_s": round(now - f.installed_at, 3),
                "idle_left_s": round(f.idle_s - (now - f.last_used), 3) if f.idle_s else None})
            size += 160 + sum(len(t) + 2 for t in f.tags) + 24 * len(rows[-1]["actions"])
            if size >= MAX_FLOW_PAGE_BYTES:
                break
        self._reply(msg.req_id, {"total": total, "flows": rows})

    def _del_flows(self, msg: m.DelFlows, now: float) -> None:
        gone = [self.dp.cache.flows[k] for k in map(self.dp.cache.by_id.get, msg.flows) if k is not None]
        n = self.dp.cache.delete_ids(msg.flows)
        self._removed([(f, "deleted") for f in gone])
        self._reply(msg.req_id, n)

    def _log_level(self, msg: m.SetLogLevel, now: float) -> None:
        try:
            self._reply(msg.req_id, set_level(msg.level))
        except ValueError as e:
            self._reply(msg.req_id, {"error": str(e)})

    def _take_outputs(self, msg: m.TakeOutputs, now: float) -> None:
        self._reply(msg.req_id, self.dp.take_outputs(msg.port))

    def _take_latencies(self, msg: m.TakeLatencies, now: float) -> None:
        out = self.latencies.tolist()
        self.latencies = array("q")
        self.keep_latencies = True
        self._reply(msg.req_id, out)

    def _set_port_map(self, msg: m.SetPortMap, now: float) -> None:
        self._reply(msg.req_id, self.set_ports(dict(msg.ports), dict(msg.keys), dict(msg.hosts)))

    def _set_state_auth(self, msg: m.SetStateAuth, now: float) -> None:
        try:
            self.auth = StateAuth(msg.host, tuple(msg.keys), self.hosts)
        except ValueError as e:
            self.counters["datapath_state_bad_keys"] = self.counters.get("datapath_state_bad_keys", 0) + 1
            self._reply(msg.req_id, {"error": str(e)})
            return
        self._reply(msg.req_id, {"keys": len(msg.keys)})

    def _reinstall(self, msg: m.Reinstall, now: float) -> None:
        """A worker's flow, installed again after this datapath (re)started; a key installed already is a newer
        flow (an upcall answered meanwhile) and stays."""
        self._install_given(msg, now, "datapath_reinstalled", "datapath_reinstall_skipped")

    def _flow_ahead(self, msg: m.FlowAhead, now: float) -> None:
        """A worker's flow for a reply that has not come yet; a key installed already (the reply came first,
        was upcalled and answered) stays."""
        self._install_given(msg, now, "datapath_flows_ahead", "datapath_flows_ahead_skipped")

    def _install_given(self, msg, now: float, done: str, skipped: str) -> None:
        """Install a flow whose key the worker gives (Reinstall, FlowAhead), not one of an upcall."""
        c = self.counters
        if not 0 <= msg.worker < self.cfg.n_workers:
            c["datapath_bad_worker"] = c.get("datapath_bad_worker", 0) + 1
            return
        if msg.key in self.dp.cache.flows:             # the worker forgets the id (it would never expire)
            c[skipped] = c.get(skipped, 0) + 1
            send_msg(self.to_workers[msg.worker], m.FlowRemoved((msg.flow_id,), "replaced"))
            return
        if self.dp.cache.install(msg.key, msg.actions, msg.worker, msg.idle_s, msg.hard_s, now, msg.tags,
                                 msg.flow_id, msg.match) is not None:
            c[done] = c.get(done, 0) + 1
        else:                                          # bad actions or match (counted): the worker forgets it
            send_msg(self.to_workers[msg.worker], m.FlowRemoved((msg.flow_id,), "refused"))
        if self.dp.cache.removed:
            self._removed(self.dp.cache.take_removed())

    def _note_suspects(self, w: int, now: float) -> None:
        """Worker ``w`` died: the flow keys of its unanswered upcalls are suspects; a key in flight at two
        deaths is quarantined (its packets are dropped, counted, not replayed into a crash loop)."""
        for rec in list(self.disp.inflight_by_seq.values()):
            if rec.worker != w:
                continue
            n = self._suspects.pop(rec.key, 0) + 1
            if n >= QUARANTINE_AFTER:
                if self.disp.quarantine(rec.key, now + QUARANTINE_S):
                    log.error("flow key %s was in flight to worker %d at %d of its deaths: quarantined for %d s "
                              "(its packets are dropped: dispatcher_quarantined)", rec.key, w, n, QUARANTINE_S)
            else:
                self._suspects[rec.key] = n            # the newest last: the oldest are forgotten first
        while len(self._suspects) > MAX_SUSPECTS:
            del self._suspects[next(iter(self._suspects))]

    def _purge_worker(self, msg: m.PurgeWorker, now: float) -> None:
        w = msg.worker
        if not 0 <= w < self.cfg.n_workers:            # not one of ours: nothing to purge
            self.counters["datapath_bad_worker"] = self.counters.get("datapath_bad_worker", 0) + 1
            self._reply(msg.req_id, {"flows_purged": 0, "upcalls_lost": 0})
            return
        self._note_suspects(w, now)
        self._reply(msg.req_id, {"flows_purged": self.dp.cache.purge_worker(w),
                                 "upcalls_lost": self.disp.forget_worker(w)})

    # -- housekeeping --------------------------------------------------------------------------------------
    def housekeeping(self, now: float) -> None:
        self.disp.flush()
        if self.dp.cache.removed:                      # replaced / evicted by this burst's installs
            self._removed(self.dp.cache.take_removed())
        if now < self._next_expiry:
            return
        self._next_expiry = now + 0.5
        self.disp.reclaim(now, self.cfg.reclaim_s)
        self._removed([(f, "idle") for f in self.dp.cache.expire(now)])


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
    guard = proc.guard
    poller = zmq.Poller()
    poller.register(inbox, zmq.POLLIN)
    polled: set[int] = set()
    send_msg(to_sup, m.Ready(DP, os.getpid()))
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)
    spin_s, events = cfg.poll_spin_us / 1e6, []       # busy-poll after work (backchannel/spin.py; 0: off)
    warm_ms = min(20, cfg.keep_warm_ms) if cfg.keep_warm_ms > 0 else 0
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
            warming = warm_ms and time.monotonic() < proc.warm_until
            wait_ms = warm_ms if warming else 20
            events = spin_poll(poller, wait_ms, spin_s) if spin_s and events else poller.poll(wait_ms)
            if events:
                now = time.monotonic()
                for sock, _ in events:
                    if sock is inbox:
                        guard.run(proc.handle, recv_msgs(inbox, decoder, 256), now)
                    elif sock in polled:
                        guard.call("_poll", proc.poll_fd, sock, now)
            elif warming:                              # idle for keep_warm_ms, soon after a miss
                guard.call("keep_warm", proc.keep_warm)
            guard.call("_housekeeping", proc.housekeeping, time.monotonic())
    finally:
        proc.close()
        for s in (inbox, to_sup, *to_workers):
            s.close(0)
        ctx.term()
