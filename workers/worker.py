"""A simulation worker's logic: everything one worker owns and does, without the process and its sockets.

A Worker owns, sharing them with nobody: its flow table (what it installed, tags, expiry), its flow-state
shard (the conntrack/NAT entries it created, plus replicas pushed to it), its ARP broker, its waiting room of
parked simulations and its partial topology cache.  ``handle(msg, now)`` takes one inbox message and
``housekeeping(now)`` does the timed work; everything either wants sent goes, in order, to two outboxes
(``out_dp`` to the datapath, ``out_sup`` to the supervisor).  Nothing here touches a socket or reads the
clock: the process loop (workers.loop) owns both, and the in-process tests drive a Worker directly.

Every Upcall is answered by exactly one FlowPut (install and execute) or Execute (execute only: consumed,
malformed, refused), by its ``seq`` alone: the datapath kept the frame, the packet and the key.  The flow table
names flows by that seq (their flow id in the datapath).

Its tables are capped (workers.simulation.state.LocalState: flow state, learned MACs, ARP entries; the flow
table; the waiting room): a new connection that finds the flow-state table full of this worker's own entries is
dropped (``flow_state_full``), a MAC or ARP entry a cap refused is not learned (and a refused MAC is not sent to
the supervisor), and every refusal is counted in ``stats``.

Packets the agent generates (ARP, ICMP errors and echo replies) come out of a simulation already carried to
where they leave the agent — one a device emits on an interior port has entered the peer device and been
simulated from there — and each goes out as a PacketOut.  One whose onward walk parked (the result's
``waiting``) waits in the waiting room like an upcall, as the item (port id, packet), and is carried again from
that port when its need is met (``emit_generated``: the same walk, simulate_generated); so are the ARP broker's
retries and refreshes.

SNAT port blocks (64 ports) come from the store through the supervisor, a round trip.  The first block of a
(device, ip) is asked for by the simulation that found no port (it parks until the block comes); after that the
worker leases ahead (``_lease_ahead``): when the free ports of its blocks fall below a low watermark it asks for
the next block, at most ``snat_lease_ahead`` blocks ahead, so that at a steady rate no new connection parks.
Blocks with no binding go back after a grace period (``_release_idle_blocks``); the per-(device, ip) tables of
the lease-ahead are bounded by the topology's SNAT targets.

Flow state a simulation created is relayed to the worker its packets hash to through the datapath *before*
the install (same outbox, so in order): the datapath forwards it ahead of any later upcall, so no return flow
is simulated without its state.  With real interfaces, state also goes to the other interested hosts first.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from dataclasses import dataclass

from backchannel import messages as m
from backchannel.codec import encode, encode_many
from packet.codec import ParseError, build, parse
from packet.flowkey import flow_key, tuple_hash
from topology.nat_leases import BLOCK_SIZE
from workers import tags
from workers.arp import ArpBroker
from workers.flowtable import FlowTable
from workers.logs import set_level
from workers.megaflow import flow_match
from workers.memo import WalkMemo
from workers.parking import ParkingLot
from workers.plan import DROP_ACTIONS, draws_reply, expected_reply, output_actions
from workers.simulation import generate
from workers.simulation.result import (
    CONSUMED,
    DROP,
    EXPIRY_TEMPORARY,
    FORWARD,
    FWD_STICK_DNAT,
    PARKED,
    ArpTableWrite,
    FlowStateTouch,
    FlowStateWrite,
    MacTableWrite,
    NeedArp,
    NeedFragment,
    NeedLease,
    StateKey,
    arp_need_key,
    fragment_need_key,
    lease_need_key,
    need_key,
)
from workers.simulation.simulate import simulate, simulate_generated
from workers.simulation.state import (
    DEFAULT_MAX_ARPS_PER_ROUTER,
    DEFAULT_MAX_FLOW_STATE,
    DEFAULT_MAX_MACS_PER_BRIDGE,
    DEFAULT_MAX_MACS_PER_PORT,
    LocalState,
)
from workers.topocache import TopologyCache
from workers.trace import result_json
from workers.warm import KEEP_WARM_FOR_S, SparseGate

AHEAD_IDLE_S = 10.0                                 # a flow set up ahead of its reply idles out (OVS's max-idle)
STATE_CHUNK = 500                                   # flow-state entries per message to another host
RECOVER_S = 1.0                                     # a restarted worker waits at most this long for its state
STATE_CHUNKS_PER_TURN = 8                           # of a state transfer, per loop turn (the loop goes on between)
STATE_PAGE_BYTES = 1 << 20                          # a DumpStatePage answer stays about this small (cap: 4 MiB)
MAX_OPEN_DUMPS = 4                                  # paged dumps in progress; a fifth forgets the oldest
SWEEP_PER_TURN = 8192                               # a loop turn's budget of the flow-state pass (sweep_state):
                                                    # 8192 visits, or 256 tags made (~1.5 ms either way)
DUMP_IDLE_S = 30.0                                  # a paged dump not continued for this long is forgotten
STORE_NEEDS = ("lease", "fragment")                 # what a parked simulation waits for from the store
LEASE_AHEAD_RETRY_S = 1.0                           # after a failed lease, no lease-ahead on its (device, ip) for
LEASE_AHEAD_EXHAUSTED_S = 10.0                      # ... this long after the range was exhausted
RATE_WINDOW_S = 0.1                                 # the SNAT binding rate is measured over windows this long


@dataclass
class WorkerConfig:
    index: int
    n_workers: int
    runtime_dir: str
    host: str | None = None
    cpu: int | None = None
    park_timeout_s: float = 5.0
    max_parked: int = 10_000
    max_flows: int = 100_000
    flow_idle_s: float = 60.0
    flow_hard_s: float = 0.0
    drop_flow_s: float = 5.0               # lifetime of "temporary" drop flows
    flow_state_idle_s: float = 60.0
    arp_retry_s: float = 1.0
    arp_timeout_s: float = 5.0
    batch: int = 64
    pinned_ports: bool = False             # the dispatcher pins some ports to workers (port_workers)
    replicate_hosts: bool = False          # send created flow state to the other interested hosts (real mode)
    max_flow_state: int = DEFAULT_MAX_FLOW_STATE           # flow-state entries, replicas included
    max_macs_per_bridge: int = DEFAULT_MAX_MACS_PER_BRIDGE
    max_macs_per_port: int = DEFAULT_MAX_MACS_PER_PORT
    max_arps_per_router: int = DEFAULT_MAX_ARPS_PER_ROUTER
    restarted: bool = False                # started in place of a dead one: recovers its state first (Recover)
    megaflows: bool = True                 # install flows matching what the decision read (False: exact match)
    replies_ahead: bool = True             # set up the flow of a SYN's / echo request's reply with the first packet
    walk_memo: bool = True                 # answer a connection through a walk already made from its template
    keep_warm_ms: int = 0                  # idle this long: run the setup path once on the last upcall (0: off)
    poll_spin_us: int = 0                  # busy-poll this long after work before blocking (0: off)
    snat_lease_ahead: int = 4              # SNAT blocks leased ahead per (device, ip): unused or asked for (0: off)
    snat_low_ports: int = 32               # ... leased when the free ports of the held blocks fall below this


def _all_bound(outputs) -> bool:
    for o in outputs:
        if not o.bound:
            return False
    return True


class Worker:
    """The worker's logic; what it sends waits in ``out_dp`` / ``out_sup`` for the loop to send."""

    def __init__(self, cfg: WorkerConfig):
        self.cfg = cfg
        self.i = cfg.index
        self.topo = TopologyCache()
        self.state = LocalState(flow_state_idle_s=cfg.flow_state_idle_s, max_flow_state=cfg.max_flow_state,
                                max_macs_per_bridge=cfg.max_macs_per_bridge, max_macs_per_port=cfg.max_macs_per_port,
                                max_arps_per_router=cfg.max_arps_per_router)
        # SNAT prefers ports whose reply hashes to this worker (the reply's state is then local)
        n, i = cfg.n_workers, cfg.index
        self.state.prefer_snat_port = lambda t: tuple_hash(t[2], t[0], t[3], t[1], t[4]) % n == i
        self.flows = FlowTable(cfg.max_flows, cfg.flow_hard_s)
        self.memo = WalkMemo(self.topo, self.state, cfg.host, cfg.replicate_hosts) if cfg.walk_memo else None
        self.parking = ParkingLot(cfg.park_timeout_s, cfg.max_parked)
        self.arp = ArpBroker(cfg.arp_retry_s, cfg.arp_timeout_s, seed=cfg.index)
        self.others = tuple(j for j in range(cfg.n_workers) if j != cfg.index)
        self.out_dp: list = []
        self.out_sup: list = []
        # flow state for the other workers, gathered over one inbound message (an UpcallBatch: one Fanout per
        # worker, not one per setup) and sent from the outbox slot of the first entry's, ahead of every install
        # that wrote one (_relay_state, seal)
        self._relay: dict[int, list] = {}
        self._relay_at = -1
        self._warm_up: m.Upcall | None = None           # keep_warm's upcall: the last one that parsed
        self.warm_until = 0.0                           # ... and until when it runs (KEEP_WARM_FOR_S after it)
        self._warm_gate = SparseGate()
        self._ahead_gate = SparseGate()                 # replies are set up ahead only while setups are sparse
        self._ahead_id = -1 - cfg.index                 # ids of the flows set up ahead: below 0, apart per worker
        self.c = Counter()
        self.drops = Counter()
        self.running = True
        self._next_slow = 0.0
        self._sweep: list | None = None                # the pass over the flow state under way: [entries, next]
        self._next_blocks = 0.0
        self._idle_since: dict[tuple[str, int, int], float] = {}
        self.leases_out: dict[tuple, int] = {}          # lease requests in flight per (device, ip)
        # lease-ahead (_lease_ahead), per lease key: the port range its NAT target asks for (from the first
        # NeedLease), when its requests in flight left, [window start, bindings in it, bindings/s, last binding],
        # no lease-ahead before (after a failure); and the lease round trip (seconds, averaged)
        self._lease_range: dict[tuple, tuple[int, int]] = {}
        self._lease_sent: dict[tuple, deque] = {}
        self._lease_rate: dict[tuple, list] = {}
        self._lease_hold_off: dict[tuple, float] = {}
        self.lease_rtt = 0.0
        self.dp_epoch = 0                               # the datapath's incarnation (seq >> EPOCH_SHIFT)
        # a restarted worker holds its upcalls until its flow state is back: the peers whose answer it awaits
        # (None: not recovering), whether the supervisor's Recover came, the deadline, the upcalls held
        self._recover: set[int] | None = set() if cfg.restarted else None
        self._recover_told = False
        self._recover_until: float | None = None
        self._recover_held: list = []
        self.store_ok = True                            # the store session is connected (StoreStatus)
        self._dumps: dict[int, list] = {}               # paged dump cursor → [entries, position, last asked]
        self._next_dump = 1
        self._transfers: list[list] = []                # state transfers under way: [entries, position, host]

    # -- outboxes: everything a batch produces leaves in one frame per destination, in order -------------------
    def _dp(self, msg) -> None:
        self.out_dp.append(msg)

    def _sup(self, msg) -> None:
        self.out_sup.append(msg)

    # -- upcalls ----------------------------------------------------------------------------------------------
    def upcall(self, up: m.Upcall, now: float) -> None:
        self.c["upcalls"] += 1
        if up.seq >> m.EPOCH_SHIFT > self.dp_epoch:    # a restarted datapath's (before its DatapathRestarted)
            self.dp_epoch = up.seq >> m.EPOCH_SHIFT
        if self._recover is not None:                  # restarted: its state is not back yet
            if len(self._recover_held) < self.cfg.max_parked:
                self._recover_held.append(up)
                return
            self._drop("recovering_overflow")
            self._answer(up.seq, DROP_ACTIONS, (), now, install=False)
            return
        try:
            pkt = parse(up.frame)
        except ParseError as e:
            self._drop(f"malformed_{e.reason}")
            self._answer(up.seq, DROP_ACTIONS, (), now, install=False)
            return
        self._warm_up = up
        self.warm_until = now + KEEP_WARM_FOR_S
        self._simulate(up, pkt, now)

    def keep_warm(self, now: float) -> None:
        """Run the setup path once more on the last upcall that parsed, and change nothing (keep_warm_ms):
        parse, ``simulate()`` (pure: what ``trace`` runs on the live state), the actions, the match and the
        answer's encode; nothing is applied, sent or installed.  A setup after an idle gap then finds its code
        and data in the caches (bench/RESULTS.md, "Keeping the setup path warm").  Only for KEEP_WARM_FOR_S
        after the last upcall (a worker with no new flows for that long sleeps as before), and not while
        upcalls come often (SparseGate: they keep it warm themselves, and the CPU is theirs)."""
        up = self._warm_up
        if up is None or now > self.warm_until or self._warm_gate.busy(now, self.c["upcalls"]):
            return
        pkt = parse(up.frame)
        res = simulate(pkt, up.port, self.topo, self.state, now, self.cfg.host, self.cfg.replicate_hosts)
        if res.result == FORWARD and res.outputs:
            actions = output_actions(pkt, res.outputs, self._tunnel_ip)
            encode_many([m.FlowPut(up.seq, flow_match(res) if self.cfg.megaflows else (), actions,
                                   tuple(res.tags), self.cfg.flow_idle_s, self.cfg.flow_hard_s)])
        self.c["warm_runs"] += 1

    def _simulate(self, up: m.Upcall, pkt, now: float) -> None:
        self.c["simulations"] += 1
        if self.memo is not None:
            res = self.memo.simulate(pkt, up.port, now)
        else:
            res = simulate(pkt, up.port, self.topo, self.state, now, self.cfg.host, self.cfg.replicate_hosts)
        if res.result == PARKED:
            self._park((up, pkt), res, now)
            return
        outputs = res.outputs
        if res.result == FORWARD and not _all_bound(outputs):
            outputs = tuple(o for o in outputs if o.bound)      # ports no host binds yet: dropped, counted
            self.c["unbound_outputs"] += len(res.outputs) - len(outputs)
            if not outputs:                                    # as a drop: no state, nothing learned
                self._drop("no_bound_egress_port")
                self._answer(up.seq, DROP_ACTIONS, res.tags, now)
                return
        if res.effects and not self._room_for_state(res.effects):
            # the flow-state table is full of this worker's own connections: the new one is dropped
            self._drop("flow_state_full")
            self._answer(up.seq, DROP_ACTIONS, res.tags, now, temporary=True, origin=up)
            return
        self._apply(res.effects, now, res.interested_hosts)
        self._emit(res, now)
        if res.result == CONSUMED:
            self.c["consumed"] += 1
            self._answer(up.seq, (), res.tags, now, install=False)
        elif res.result == FORWARD:
            self._answer(up.seq, output_actions(pkt, outputs, self._tunnel_ip), res.tags, now, origin=up,
                         match=flow_match(res) if self.cfg.megaflows else ())
            if (len(outputs) == 1 and self.cfg.replies_ahead and draws_reply(pkt)
                    and not self._ahead_gate.busy(now, self.c["upcalls"])):
                self._reply_ahead(outputs[0], now)
        else:
            self._drop(res.drop_reason or "unknown")
            self._answer(up.seq, DROP_ACTIONS, res.tags, now, temporary=res.expiry == EXPIRY_TEMPORARY,
                         origin=up, match=flow_match(res) if self.cfg.megaflows else ())

    def _answer(self, seq: int, actions, tags, now: float, temporary: bool = False, install: bool = True,
                origin: m.Upcall | None = None, match: tuple = ()) -> None:
        """The one answer to upcall ``seq``: FlowPut (installed as flow ``seq``, matching ``match``) or Execute.
        ``origin`` (the upcall: its port and frame give the datapath's flow key) and ``match`` are kept with the
        flow, to re-install it in a restarted datapath; the key itself is made only then (``reinstall``), not on
        every setup, and a frame is one uncollected bytes object where a key is a tuple of some 40 slots.  An
        upcall of an earlier datapath incarnation is not answered: that datapath is gone, and so is its
        packet."""
        if seq >> m.EPOCH_SHIFT < self.dp_epoch:
            self.c["upcalls_of_dead_datapath"] += 1
            return
        if not install:
            self._dp(m.Execute(seq, actions))
            self.c["executes"] += 1
            return
        tags = tuple(tags)
        if temporary:
            idle = hard = self.cfg.drop_flow_s
        else:
            idle, hard = self.cfg.flow_idle_s, self.cfg.flow_hard_s
        self._record(seq, tags, now, None if origin is None else (origin, actions, idle, hard, match))
        self._dp(m.FlowPut(seq, match, actions, tags, idle, hard))
        self.c["installs"] += 1

    def _record(self, fid: int, flow_tags: tuple, now: float, spec) -> None:
        """Enter flow ``fid`` in this worker's table (``spec`` re-installs it after a datapath restart); the
        flows evicted to make room are deleted in the datapath, ahead of the install."""
        evicted = self.flows.add(fid, flow_tags, now, spec)
        if evicted:
            self._dp(m.FlowDelete(tuple(evicted)))

    def _reply_ahead(self, out, now: float) -> None:
        """Set up, with a connection's first packet, the flow of the reply it draws (a SYN's SYN-ACK, an echo
        request's reply) when that reply comes back in through a port of this host: the reply is then no upcall
        (a TCP connect through the agent is one setup, not two).  The reply's packet is the one its receiver
        sends (plan.expected_reply), simulated by the one ``simulate()`` with the state the first packet just
        wrote; the flow is installed only if that walk forwards and changes nothing (no state written, no MAC
        or ARP entry learned, nothing generated or parked): then it is what a fresh simulation of that reply
        decides, and its match and tags are the walk's, so a reply that differs in a field the walk read, or a
        change to what it read, takes the usual upcall.  It idles out after AHEAD_IDLE_S if no reply comes.  Only
        while this worker's setups are sparse (workers/warm.py SparseGate): under load a setup's CPU counts
        more than its latency, and a SYN that draws no reply would cost two walks."""
        if out.tunnel_key is not None:                 # the reply comes back to the other host
            return
        reply = expected_reply(out.packet)
        if self.memo is not None:
            res = self.memo.simulate(reply, out.port, now)
        else:
            res = simulate(reply, out.port, self.topo, self.state, now, self.cfg.host, self.cfg.replicate_hosts)
        self.c["reply_simulations"] += 1
        if (res.result != FORWARD or res.generated or res.waiting or not res.outputs
                or not _all_bound(res.outputs) or any(type(e) is not FlowStateTouch for e in res.effects)):
            self.c["replies_not_ahead"] += 1
            return
        key = flow_key(reply, out.port)
        actions = output_actions(reply, res.outputs, self._tunnel_ip)
        match = flow_match(res) if self.cfg.megaflows else ()
        fid = self._ahead_id
        self._ahead_id -= self.cfg.n_workers
        flow_tags = tuple(res.tags)
        idle, hard = min(self.cfg.flow_idle_s, AHEAD_IDLE_S) or AHEAD_IDLE_S, self.cfg.flow_hard_s
        self._record(fid, flow_tags, now, (key, actions, idle, hard, match))
        self._dp(m.FlowAhead(fid, self.i, key, match, actions, flow_tags, idle, hard))
        self.c["replies_ahead"] += 1

    def _drop(self, reason: str) -> None:
        self.drops[reason] += 1

    def _tunnel_ip(self, host: str) -> int:
        h = self.topo.host(host)
        return h.tunnel_ip if h is not None else 0

    # -- parking --------------------------------------------------------------------------------------------
    # A parked item is (Upcall, packet), simulated again from its ingress port, or (port id, packet): a packet
    # the agent generated whose walk from that port parked, carried again (emit_generated).
    def _park(self, item, res, now: float) -> None:
        """Park ``item`` on the result's need and ask for what it needs.  The parked walk's effects are applied
        (the ARP entry a request answered inside the agent taught resumes the item at once)."""
        need = res.needs
        new = self.parking.park(need, item, now)
        if new is None:
            self._drop("parked_overflow")
            if type(item[0]) is not str:
                self._answer(item[0].seq, DROP_ACTIONS, (), now, install=False)
            return
        if type(need) is NeedArp:
            # the router's request goes out once per (router, ip), as the simulation carried it (out of the
            # bridge ports it flooded to, or answered inside the agent); the broker retries it from the router
            port = self.topo.port(need.port)
            req = generate.neighbor_request(port, need.ip) if port is not None else None
            if req is None or self.arp.request(need.router, need.ip, need.port, req, now):
                self._emit(res, now)
        elif type(need) is NeedLease:
            # one block (64 ports) per request: ask for as many as the waiting packets need (a block leased
            # ahead and still in flight counts: these packets wait for it)
            self.c["parked_lease"] += 1
            key = need_key(need)
            if self.parking.waiting_on(key) > BLOCK_SIZE * self.leases_out.get(key, 0):
                self._request_lease(need, now)
        elif new and type(need) is NeedFragment:
            if not self.topo.is_absent(need.kind, need.name):
                self.c["fragment_requests"] += 1
                self.c["offbox_reads"] += 1
                self._sup(m.FragmentRequest(self.i, need.kind, need.name))
            # else: the supervisor said it does not exist and will push it if it appears: wait (deadline)
        self._apply(res.effects, now)

    def _request_lease(self, need: NeedLease, now: float, ahead: bool = False) -> None:
        key = need_key(need)
        self.leases_out[key] = self.leases_out.get(key, 0) + 1
        self._lease_range[key] = (need.port_start, need.port_end)
        sent = self._lease_sent.get(key)
        if sent is None:
            sent = self._lease_sent[key] = deque()
        sent.append(now)
        self.c["lease_requests"] += 1
        if ahead:
            self.c["lease_ahead_requests"] += 1
        self._sup(m.LeaseRequest(self.i, need.device, need.ip, need.port_start, need.port_end))

    def _lease_answered(self, key: tuple, now: float) -> None:
        """A LeaseGranted or LeaseFailed for ``key`` came: one request fewer in flight, its round trip noted."""
        self.leases_out[key] = max(0, self.leases_out.get(key, 0) - 1)
        sent = self._lease_sent.get(key)
        if sent:                                       # else: pushed unasked (a restarted worker's blocks)
            rtt = max(0.0, now - sent.popleft())
            self.lease_rtt = rtt if not self.lease_rtt else 0.8 * self.lease_rtt + 0.2 * rtt
            us = int(rtt * 1e6)
            self.c["lease_rtt_us_sum"] += us
            self.c["lease_rtt_count"] += 1
            if us > self.c["lease_rtt_us_max"]:
                self.c["lease_rtt_us_max"] = us

    def _lease_ahead(self, now: float) -> None:
        """Lease the next SNAT block of a (device, ip) before a simulation runs dry, so that at a steady rate no
        new connection parks on a lease (only the first block of a (device, ip) is leased by a park, which
        names the port range).  For each (device, ip) that got new bindings since the last look: the free
        ports are those of its held blocks (inside the range) not bound toward the remote end that got the
        most of them (a port serves one connection per remote end: many clients of one server use up ports,
        connections spread over many servers share them).  When those plus the blocks in flight fall below the
        low watermark — ``snat_low_ports``, or the bindings two lease round trips take at the recent rate,
        whichever is more — one more block is asked for; the blocks ahead (held with no binding, or in flight)
        never exceed ``snat_lease_ahead``.  Not while the store is down, nor for a while after a lease of that
        (device, ip) failed or found the range exhausted: a park still asks, as without lease-ahead."""
        new, self.state.snat_new = self.state.snat_new, {}
        ahead = self.cfg.snat_lease_ahead
        for (device, ip), (n, most) in new.items():
            key = lease_need_key(device, ip)
            rate = self._binding_rate(key, n, now)
            rng = self._lease_range.get(key)
            if not ahead or rng is None:
                continue
            if not self.store_ok or now < self._lease_hold_off.get(key, 0.0):
                self.c["lease_ahead_held_off"] += 1
                continue
            free = self.state.snat_capacity(device, ip, rng[0], rng[1]) - most
            empty = self.state.empty_nat_blocks(device, ip)
            out = self.leases_out.get(key, 0)
            low = min(max(self.cfg.snat_low_ports, int(rate * self.lease_rtt * 2) + 1), ahead * BLOCK_SIZE)
            while free + BLOCK_SIZE * out < low and empty + out < ahead:
                self._request_lease(NeedLease(device, ip, rng[0], rng[1]), now, ahead=True)
                out += 1

    def _binding_rate(self, key: tuple, n: int, now: float) -> float:
        """Count ``n`` new bindings of ``key``; its recent rate (bindings/s, averaged over RATE_WINDOW_S windows)."""
        r = self._lease_rate.get(key)
        if r is None:
            r = self._lease_rate[key] = [now, 0, 0.0, now]
        r[1] += n
        r[3] = now
        dt = now - r[0]
        if dt >= RATE_WINDOW_S:
            r[2] = r[1] / dt if not r[2] else 0.5 * r[2] + 0.5 * r[1] / dt
            r[0], r[1] = now, 0
        return r[2]

    def _resume(self, key: tuple, now: float, limit: int | None = None) -> None:
        for first, pkt in self.parking.satisfy(key, limit):
            if type(first) is str:
                self.emit_generated(first, pkt, now)
            else:
                self._simulate(first, pkt, now)

    def _fail(self, key: tuple, reason: str, now: float) -> None:
        for item in self.parking.satisfy(key):
            self._give_up(item, reason, now)

    def _give_up(self, item, reason: str, now: float) -> None:
        first = item[0]
        if type(first) is str:
            self._drop(f"generated_{reason}")
        else:
            self._drop(reason)
            self._answer(first.seq, DROP_ACTIONS, (), now, temporary=True, origin=first)

    # -- effects and replication ----------------------------------------------------------------------------
    def _room_for_state(self, effects) -> bool:
        """Whether the flow state ``effects`` create fits under the cap (evicting replicas if need be)."""
        st = self.state
        if len(st.flow_state) + len(effects) <= st.max_flow_state:       # far from the cap: fits (cheap)
            return True
        n = st.new_entries(effects)
        if not n:
            return True
        evicted = st.make_room(n)
        if evicted is None:
            return False
        if evicted:
            self._invalidate([tags.flow_state(e.kind, e.key) for e in evicted])
        return True

    def _apply(self, effects, now: float, hosts=frozenset()) -> None:
        if not effects:
            return
        refused = self.state.apply(effects, now)
        relay, written = [], []
        for e in effects:
            t = type(e)
            if refused and e in refused:
                if t is MacTableWrite:                 # not learned (a cap): flooded to; a move forgot the MAC
                    self._invalidate([tags.mac(e.bridge, e.vlan, e.mac)])
                elif t is ArpTableWrite:
                    self._arp_refused(e, now, relay)
                continue
            if t is FlowStateWrite:
                written.append(m.FlowStateEntry(e.kind, e.key, e.value, now + self.cfg.flow_state_idle_s))
            elif t is MacTableWrite:
                msg = m.MacLearned(e.bridge, e.vlan, e.mac, e.port, self.i)
                relay.append(msg)
                self._sup(msg)           # into the agents' replicated MAC table
                self._invalidate([tags.mac(e.bridge, e.vlan, e.mac)])
            elif t is ArpTableWrite:
                msg = m.ArpLearned(e.router, e.ip, e.mac, self.i)
                relay.append(msg)
                self._sup(msg)
                self._arp_learned(e.router, e.ip, now)
        if written:
            self.c["state_written"] += len(written)
            self._invalidate([tags.flow_state(w.kind, w.key) for w in written])
            if self.others:
                self._relay_state(written)
            remote = tuple(sorted(h for h in hosts if h != self.cfg.host)) if self.cfg.replicate_hosts else ()
            if remote:                                 # other hosts: before the install, on the same socket
                self.c["state_sent_hosts"] += 1
                self._dp(m.StateToHosts(remote, encode(m.FlowStateBatch(tuple(written), self.i))))
        if relay and self.others:
            for msg in relay:
                self.c["tables_relayed"] += 1
                self._dp(m.Fanout(self.others, encode(msg)))

    def _relay_state(self, written) -> None:
        """Queue ``written`` for the other workers that may simulate a packet needing it: the worker each
        key's packets hash to (a reply's tuple hashes to the worker that will see the reply).  Sticky LB
        entries serve any connection of a client, and pinned ports bypass the hash: those go to every worker.
        The first entry queued takes a slot in the outbox, which ``seal`` fills: the state leaves before the
        install of every packet that wrote it, on the same socket, so it reaches the other worker first."""
        relay, n, me = self._relay, self.cfg.n_workers, self.i
        everyone = self.cfg.pinned_ports
        for e in written:
            if everyone or e.kind == FWD_STICK_DNAT:
                targets = self.others
            else:
                src, dst, proto, sport, dport, _device = e.key          # a StateKey's order (no record made)
                j = tuple_hash(proto, src, sport, dst, dport) % n
                if j == me:
                    continue
                targets = (j,)
            for j in targets:
                entries = relay.get(j)
                if entries is None:
                    relay[j] = [e]
                else:
                    entries.append(e)
        if relay and self._relay_at < 0:
            self._relay_at = len(self.out_dp)
            self.out_dp.append(None)

    def seal(self) -> None:
        """Turn the flow state gathered by ``_relay_state`` into one Fanout per worker (chunks of STATE_CHUNK
        entries), in the outbox slot it holds."""
        at = self._relay_at
        if at < 0:
            return
        relay, self._relay, self._relay_at = self._relay, {}, -1
        msgs = [m.Fanout((j,), encode(m.FlowStateBatch(tuple(entries[i:i + STATE_CHUNK]), self.i)))
                for j, entries in sorted(relay.items()) for i in range(0, len(entries), STATE_CHUNK)]
        self.c["state_relayed"] += len(msgs)
        self.out_dp[at:at + 1] = msgs

    def _invalidate(self, tags) -> None:
        if self.memo is not None:
            self.memo.invalidate(tags)
        keys = self.flows.invalidate(tags)
        if keys:
            self._dp(m.FlowDelete(tuple(keys)))

    def _arp_refused(self, e: ArpTableWrite, now: float, relay: list) -> None:
        """The router's ARP table is full.  An answer this worker waits for is learned anyway (evicting the
        router's oldest entry); any other is not learned here, but still relayed and sent to the supervisor:
        the answer to another worker's or agent's request lands where the reply is simulated, maybe here."""
        wanted = (e.router, e.ip) in self.arp.pending
        if wanted:
            _learned, evicted = self.state.learn_arp(e.router, e.ip, e.mac, now, force=True)
            if evicted is not None:
                self._invalidate([tags.arp(e.router, evicted)])
        msg = m.ArpLearned(e.router, e.ip, e.mac, self.i)
        relay.append(msg)
        self._sup(msg)
        if wanted:
            self._arp_learned(e.router, e.ip, now)

    def _arp_learned(self, router: str, ip: int, now: float) -> None:
        self._invalidate([tags.arp(router, ip)])
        self.arp.resolved(router, ip)
        self._resume(arp_need_key(router, ip), now)

    def emit_generated(self, port_id: str, pkt, now: float) -> None:
        """Send a packet the agent generated outside a simulation (an ARP retry or refresh, a parked generated
        packet carried again), leaving by ``port_id``: the same walk a simulation gives the packets it generates
        (simulate_generated) — out of an exterior port; into the peer device from an interior one, its outputs
        sent as generated packets."""
        res = simulate_generated(pkt, port_id, self.topo, self.state, now, self.cfg.host)
        if res.result == PARKED:
            self._park((port_id, pkt), res, now)
            return
        if res.result == DROP:
            self._drop(f"generated_{res.drop_reason}")
        self._apply(res.effects, now)
        self._emit(res, now)

    def _emit(self, res, now: float) -> None:
        """The generated packets of a result: out where they leave the agent; those whose walk parked wait."""
        for g in res.generated:
            self._send_generated(g.port, g.packet)
        for w in res.waiting:
            self._park((w.port, w.packet), w.result, now)

    def _send_generated(self, port_id: str, pkt) -> None:
        self.c["generated"] += 1
        port = self.topo.port(port_id)
        if port is None:
            self._drop("generated_unknown_port")
            return
        frame = build(pkt)
        if port.host is None or port.host == self.cfg.host or self.cfg.host is None:
            self._dp(m.PacketOut((("output", port.id),), frame))
        else:
            self._dp(m.PacketOut((("tunnel", self._tunnel_ip(port.host), port.tunnel_key),), frame))

    # -- inbox ----------------------------------------------------------------------------------------------
    def handle(self, msg, now: float) -> None:
        try:
            self._handle(msg, now)
        finally:                                       # also when a message raised (the loop's guard counts
            if self._relay_at >= 0:                    # it): what was applied is relayed, no slot stays empty
                self.seal()

    def _handle(self, msg, now: float) -> None:
        t = type(msg)
        if t is m.UpcallBatch:
            for up in msg.upcalls:
                self.upcall(up, now)
            if self.state.snat_new:
                self._lease_ahead(now)
        elif t is m.FlowStateBatch:
            self.c["state_received"] += len(msg.entries)
            written, evicted = self.state.add_replicas([(e.kind, e.key, e.value) for e in msg.entries], now)
            self._invalidate([tags.flow_state(kind, key) for kind, key in written]
                             + [tags.flow_state(e.kind, e.key) for e in evicted])
        elif t is m.MacLearned:
            # a MAC known here behind the same port is a refresh (a restarted peer re-learning it): the flows
            # that read it stay; a new MAC (flooded to until now) or a move invalidates them
            old = self.state.macs.get((msg.bridge, msg.vlan, msg.mac))
            learned = self.state.learn_mac(msg.bridge, msg.vlan, msg.mac, msg.port, now)   # a cap may refuse it
            if learned and old is not None and old[0] == msg.port:
                self.c["macs_refreshed"] += 1
            else:
                self._invalidate([tags.mac(msg.bridge, msg.vlan, msg.mac)])
        elif t is m.ArpLearned:
            wanted = (msg.router, msg.ip) in self.arp.pending      # this worker asked: learned even when full
            old = self.state.arps.get((msg.router, msg.ip))
            if not wanted and old is not None and old[0] == msg.mac:   # known: a refresh, its flows stay
                self.state.learn_arp(msg.router, msg.ip, msg.mac, now)
                self.c["arps_refreshed"] += 1
                return
            learned, evicted = self.state.learn_arp(msg.router, msg.ip, msg.mac, now, force=wanted)
            if evicted is not None:
                self._invalidate([tags.arp(msg.router, evicted)])
            if learned:
                self._arp_learned(msg.router, msg.ip, now)
        elif t is m.Fragment:
            if self.memo is not None:                  # what a walk did not find may be there now
                self.memo.clear()
            taken = [self.topo.add(kind, name, data) for kind, name, data in msg.records]
            self.c["fragments"] += 1
            if msg.records and msg.records[0][2] is not None and taken[0]:
                self._resume(fragment_need_key(msg.request_kind, msg.request_name), now)
            else:
                # absent for now: the packets stay parked until it appears (pushed) or their deadline
                self.topo.add(msg.request_kind, msg.request_name, None)
        elif t is m.LeaseFailed:                       # the store did not answer: the waiting packets drop
            key = lease_need_key(msg.device, msg.ip)
            self._lease_answered(key, now)
            self.c["leases_failed"] += 1
            self._lease_hold_off[key] = now + LEASE_AHEAD_RETRY_S
            self._fail(key, f"lease_{msg.reason}", now)
        elif t is m.StoreStatus:
            self.store_ok = msg.state == "connected"
        elif t is m.DumpStatePage:
            self._sup(m.Answer(msg.req_id, self.i, self.state_page(msg.cursor, msg.limit, now)))
        elif t is m.LeaseGranted:
            key = lease_need_key(msg.device, msg.ip)
            self._lease_answered(key, now)
            if msg.block >= 0:
                self.c["leases_granted"] += 1
                self.state.add_nat_block(msg.device, msg.ip, msg.block)
                self._resume(key, now, BLOCK_SIZE)   # a block serves at most 64 of the waiting packets
                if self.state.snat_new:
                    self._lease_ahead(now)
            else:
                self.c["leases_exhausted"] += 1
                self._lease_hold_off[key] = now + LEASE_AHEAD_EXHAUSTED_S
                self._fail(key, "nat_exhausted", now)
        elif t is m.TopologyChanged:
            self.topo.forget(msg.kind, msg.name)
            self._invalidate([tags.device(msg.kind, msg.name)])
        elif t is m.TableEntryRemoved:
            if msg.kind == "mac":
                self.state.forget_mac(msg.device, msg.vlan, msg.entry)
                self._invalidate([tags.mac(msg.device, msg.vlan, msg.entry)])
            else:
                self.state.forget_arp(msg.device, msg.entry)
                self._invalidate([tags.arp(msg.device, msg.entry)])
        elif t is m.StateRequest:
            # a port moved to another host: it takes over our flow state (all of it: a superset, bounded), sent
            # a few chunks per loop turn (send_transfers) so that upcalls go on meanwhile
            self.c["state_requests"] += 1
            self._transfers.append([list(self.state.flow_state.values()), 0, msg.requester])
        elif t is m.InvalidateTags:
            self._invalidate(msg.tags)
        elif t is m.DatapathRestarted:
            self.reinstall(msg.epoch)
        elif t is m.StateRecall:
            self.recall_state(msg.requester)
        elif t is m.Recover:
            if self._recover is not None:
                self._recover = set(msg.peers) - {self.i}
                self._recover_told = True
                self._recovered(now)
        elif t is m.RecallDone:
            if self._recover is not None:
                self._recover.discard(msg.origin)
                self._recovered(now)
        elif t is m.FlowRemoved:
            self.flows.removed(msg.flows)
        elif t is m.StatsRequest:
            self._sup(m.StatsReply(msg.req_id, self.i, self.stats()))
        elif t is m.DumpState:
            if msg.req_id:
                n = len(self.state.flow_state)
                body = self.state_entries() if n <= m.DUMP_STATE_MAX else {
                    "error": f"{n} entries: more than one answer holds (DumpStatePage pages them)", "total": n}
                self._sup(m.Answer(msg.req_id, self.i, body))
        elif t is m.TraceRequest:
            self._sup(m.Answer(msg.req_id, self.i, self.trace(msg.port, msg.frame, now)))
        elif t is m.DumpTable:
            self._sup(m.Answer(msg.req_id, self.i, self.table(msg.kind, msg.device, now)))
        elif t is m.SetLogLevel:
            try:
                body = set_level(msg.level)
            except ValueError as e:
                body = {"error": str(e)}
            self._sup(m.Answer(msg.req_id, self.i, body))
        elif t is m.Shutdown:
            self.running = False
        else:
            self.c["unexpected_messages"] += 1

    def reinstall(self, epoch: int) -> None:
        """The datapath restarted (incarnation ``epoch``): its flow cache is empty and the upcalls in flight to
        this worker are gone with it.  Every flow of this worker's table is installed again, under its id."""
        self.dp_epoch = max(self.dp_epoch, epoch)
        self.c["datapath_restarts_seen"] += 1
        specs, tags_of = self.flows.specs, self.flows.flows
        for fid, (origin, actions, idle, hard, match) in specs.items():
            if type(origin) is tuple:                  # a flow set up ahead (_reply_ahead): its key
                key = origin
            else:                                      # the frame parsed when it came: it parses again
                key = flow_key(parse(origin.frame), origin.port)
            self._dp(m.Reinstall(fid, self.i, key, match, actions, tags_of[fid][0], idle, hard))
        self.c["flows_reinstalled"] += len(specs)

    def recall_state(self, requester: int) -> None:
        """Worker ``requester`` was restarted: the flow-state entries held here whose packets hash to it (what it
        had relayed here, and what it would have been sent) go back to it, through the datapath."""
        n = self.cfg.n_workers
        if not 0 <= requester < n or requester == self.i:
            self.c["state_recalls_refused"] += 1
            return
        entries = []                                   # what _relay_state would have sent it
        everyone = self.cfg.pinned_ports
        for e in self.state.flow_state.values():
            k = StateKey(*e.key)
            if everyone or e.kind == FWD_STICK_DNAT or tuple_hash(k.proto, k.src, k.sport, k.dst, k.dport) % n == \
                    requester:
                entries.append(m.FlowStateEntry(e.kind, e.key, e.value, e.last_used + e.idle_s))
        self.c["state_recalled"] += len(entries)
        for i in range(0, len(entries), STATE_CHUNK):
            self._dp(m.Fanout((requester,), encode(m.FlowStateBatch(tuple(entries[i:i + STATE_CHUNK]), self.i))))
        # and the MACs and ARP entries learned here: it would flood to them (and ARP) until it learned them again,
        # and learning them later invalidates every flow that flooded meanwhile
        learned = [m.MacLearned(b, vlan, mac, port, self.i) for (b, vlan, mac), (port, _t) in self.state.macs.items()]
        learned += [m.ArpLearned(r, ip, mac, self.i) for (r, ip), (mac, _t) in self.state.arps.items()]
        self.c["tables_recalled"] += len(learned)
        for i in range(0, len(learned), STATE_CHUNK):
            self._dp(m.Fanout((requester,), encode_many(learned[i:i + STATE_CHUNK])))
        self._dp(m.Fanout((requester,), encode(m.RecallDone(self.i))))

    def _recovered(self, now: float, timed_out: bool = False) -> None:
        """A restarted worker's state is back (every peer answered after the supervisor's Recover), or it waited
        long enough: the upcalls held meanwhile are simulated, in order."""
        if self._recover is None or not (timed_out or (self._recover_told and not self._recover)):
            return
        held, self._recover_held = self._recover_held, []
        self._recover = None
        self.c["recovery_timeouts" if timed_out else "recoveries"] += 1
        self.c["recovery_held_upcalls"] += len(held)
        for up in held:
            self.upcall(up, now)

    def trace(self, port: str, frame: bytes, now: float) -> dict:
        """The live trace: ``frame`` simulated against this worker's state, effects not applied, nothing
        answered, learned or installed.  A missing topology fragment is requested (the cache fills as it would
        for a packet), so tracing again shortly gives the full path."""
        try:
            pkt = parse(frame)
        except ParseError as e:
            return {"error": f"malformed frame: {e.reason}"}
        res = simulate(pkt, port, self.topo, self.state, now, self.cfg.host)
        if res.result == PARKED and type(res.needs) is NeedFragment and not self.topo.is_absent(
                res.needs.kind, res.needs.name):
            self._sup(m.FragmentRequest(self.i, res.needs.kind, res.needs.name))
        out = result_json(res, pkt, port) if self.cfg.megaflows else result_json(res)
        out["worker"] = self.i
        return out

    def table(self, kind: str, device: str, now: float) -> list:
        """This worker's view of a MAC table (a bridge) or an ARP table (a router)."""
        if kind == "mac":
            return [[vlan, mac, port, round(now - t, 3)] for (b, vlan, mac), (port, t) in self.state.macs.items()
                    if b == device]
        return [[ip, mac, round(now - t, 3)] for (r, ip), (mac, t) in self.state.arps.items() if r == device]

    def state_entries(self) -> list:
        """The flow-state shard as the agent's snapshot file stores it (restored at start)."""
        return [[e.kind, e.key, e.value, e.last_used + e.idle_s] for e in self.state.flow_state.values()]

    def state_page(self, cursor: int, limit: int, now: float) -> dict:
        """One page of a paged dump of the flow-state shard (DumpStatePage): cursor 0 starts one."""
        if cursor == 0:
            while len(self._dumps) >= MAX_OPEN_DUMPS:
                del self._dumps[next(iter(self._dumps))]
                self.c["state_dumps_forgotten"] += 1
            cursor, self._next_dump = self._next_dump, self._next_dump + 1
            self._dumps[cursor] = [list(self.state.flow_state.values()), 0, now]
            self.c["state_dumps"] += 1
        dump = self._dumps.get(cursor)
        if dump is None:
            return {"error": f"unknown or expired dump cursor {cursor}"}
        entries, pos = dump[0], dump[1]
        fs, out, size, end = self.state.flow_state, [], 0, len(entries)
        limit = min(limit, m.MAX_STATE_PAGE)
        while pos < end and len(out) < limit and size < STATE_PAGE_BYTES:
            e = entries[pos]
            pos += 1
            if fs.get((e.kind, e.key)) is not e:       # expired or evicted since the dump started
                continue
            out.append([e.kind, e.key, e.value, e.last_used + e.idle_s])
            size += 64 + len(e.key[5])
        if pos >= end:
            del self._dumps[cursor]
            cursor = 0
        else:
            dump[1], dump[2] = pos, now
        return {"entries": out, "cursor": cursor, "total": end}

    @property
    def background(self) -> bool:
        """Work is left for the next loop turn (a state transfer, a pass over the flow state): the loop should
        not sleep."""
        return bool(self._transfers) or self._sweep is not None

    def send_transfers(self) -> None:
        """A few chunks of each state transfer under way (StateRequest), to the requesting host."""
        fs = self.state.flow_state
        for tr in list(self._transfers):
            entries, pos, host = tr
            for _ in range(STATE_CHUNKS_PER_TURN):
                chunk = []
                while pos < len(entries) and len(chunk) < STATE_CHUNK:
                    e = entries[pos]
                    pos += 1
                    if fs.get((e.kind, e.key)) is e:
                        chunk.append(m.FlowStateEntry(e.kind, e.key, e.value, e.last_used + e.idle_s))
                if chunk:
                    self._dp(m.StateToHosts((host,), encode(m.FlowStateBatch(tuple(chunk), self.i))))
                if pos >= len(entries):
                    break
            tr[1] = pos
            if pos >= len(entries):
                self._transfers.remove(tr)

    def stats(self) -> dict:
        out = {f"worker_{k}": v for k, v in self.c.items()}
        out.update({f"worker_drops_{k}": v for k, v in self.drops.items()})
        out.update(self.flows.counters)
        out.update(self.parking.counters)
        out.update(self.arp.counters)
        out.update(self.topo.counters)
        out.update(self.state.counters)
        if self.memo is not None:
            out.update({f"worker_{k}": v for k, v in self.memo.c.items()})
            out["worker_memo_templates"] = self.memo.size
        out["worker_flows"] = len(self.flows)
        out["worker_parked_now"] = self.parking.size
        out["worker_leases_out"] = sum(self.leases_out.values())
        out["worker_nat_blocks"] = sum(len(b) for b in self.state.blocks.values())
        out["worker_lease_rtt_us"] = int(self.lease_rtt * 1e6)
        out["worker_recovering"] = int(self._recover is not None)
        out["worker_state_entries"] = len(self.state.flow_state)
        out["worker_state_replicas"] = len(self.state.replicas)
        out["worker_macs"] = len(self.state.macs)
        out["worker_arps"] = len(self.state.arps)
        out["worker_index"] = self.i
        out["worker_cpu"] = -1 if self.cfg.cpu is None else self.cfg.cpu
        out["worker_pid"] = os.getpid()
        return out

    # -- housekeeping ---------------------------------------------------------------------------------------
    def sweep_state(self, now: float) -> None:
        """Go on with the pass over the flow-state shard (``LocalState.sweep``): flow state used by an installed
        flow is alive (its idle time counts from the last flow using it), idle state is removed and the flows
        tagged with it invalidated.  ``SWEEP_PER_TURN`` per loop turn (visits; a tag made costs more), and the
        loop does not sleep while a pass is under way (``background``): a large shard costs many short pauses
        instead of one long one (500k entries took ~80 ms in one walk)."""
        sw = self._sweep
        entries, pos = sw
        expired, sw[1] = self.state.sweep(entries, pos, SWEEP_PER_TURN, now, self.flows.by_tag, _state_tag)
        if sw[1] >= len(entries):
            self._sweep = None
        if expired:
            self.c["state_expired"] += len(expired)
            self._invalidate([tags.flow_state(e.kind, e.key) for e in expired])

    def housekeeping(self, now: float) -> None:
        try:
            self._housekeeping(now)
        finally:
            if self._relay_at >= 0:
                self.seal()

    def _housekeeping(self, now: float) -> None:
        if self._sweep is not None:
            self.sweep_state(now)
        if self._recover is not None:
            if self._recover_until is None:
                self._recover_until = now + RECOVER_S
            elif now >= self._recover_until:
                self._recovered(now, timed_out=True)
        for (kind, *_), items in self.parking.expire(now):
            # waited for the store while it was down: say so (store_down_lease, store_down_fragment)
            reason = f"parked_timeout_{kind}" if self.store_ok or kind not in STORE_NEEDS else f"store_down_{kind}"
            for item in items:
                self._give_up(item, reason, now)
        if self._transfers and len(self.out_dp) < 256:  # not while the datapath's queue holds us back
            self.send_transfers()
        resend, failed = self.arp.tick(now)
        for port, pkt in resend:
            self.emit_generated(port, pkt, now)
        for router, ip in failed:
            self._fail(arp_need_key(router, ip), "arp_timeout", now)
        if now < self._next_slow:
            return
        self._next_slow = now + 1.0
        for cursor in [c for c, d in self._dumps.items() if now - d[2] > DUMP_IDLE_S]:
            del self._dumps[cursor]
            self.c["state_dumps_forgotten"] += 1
        gone = self.flows.expire(now)
        if gone:
            self._dp(m.FlowDelete(tuple(gone)))
        if self._sweep is None:                        # a new pass over the flow-state shard, once a second
            self._sweep = [list(self.state.flow_state.values()), 0]
            self.c["state_sweeps"] += 1
            self.sweep_state(now)                      # a small shard: done in this turn
        if self.state.expire_tables(now) and self.memo is not None:
            self.memo.clear()
        if now >= self._next_blocks:
            self._next_blocks = now + 10.0
            self._release_idle_blocks(now)
        self._refresh_arp(now)

    def _release_idle_blocks(self, now: float) -> None:
        """SNAT blocks with no binding left go back to the allocator (after a grace period).  A (device, ip)
        that made a binding within the grace period keeps its newest idle blocks up to its lease-ahead
        (``snat_lease_ahead``, at most ``snat_low_ports`` worth): released, they would be leased again at once;
        once it makes none for that long, they go too."""
        listed = self.state.idle_nat_blocks()             # per (device, ip), oldest block first
        idle = set(listed)
        for blk in list(self._idle_since):
            if blk not in idle:
                del self._idle_since[blk]
        keep: set = set()
        spare = min(self.cfg.snat_lease_ahead, -(-self.cfg.snat_low_ports // BLOCK_SIZE))
        if spare:
            kept: Counter = Counter()
            for blk in reversed(listed):
                r = self._lease_rate.get(lease_need_key(blk[0], blk[1]))
                if r is not None and now - r[3] < self.cfg.flow_state_idle_s and kept[blk[:2]] < spare:
                    kept[blk[:2]] += 1
                    keep.add(blk)
        for blk in listed:
            since = self._idle_since.setdefault(blk, now)
            if blk in keep:
                continue
            if now - since >= self.cfg.flow_state_idle_s:
                device, ip, block = blk
                self.state.remove_nat_block(device, ip, block)
                del self._idle_since[blk]
                self.c["nat_blocks_released"] += 1
                self._sup(m.LeaseRelease(self.i, device, ip, block))

    def _refresh_arp(self, now: float) -> None:
        """Stale neighbor entries (ARP or IPv6) still used by installed flows are asked for again before they
        expire, from the router port on their subnet (IPv6: or the port of a route whose gateway they are, a
        link-local gateway)."""
        for router_name, ip in self.state.stale_arps(now):
            if tags.arp(router_name, ip) not in self.flows.by_tag:
                continue
            router = self.topo.router(router_name)
            port = _neighbor_port(router, ip) if router else None
            pkt = generate.neighbor_request(port, ip) if port is not None else None
            if pkt is None:
                continue
            if self.arp.refresh(router_name, ip, port.id, pkt, now):
                self.emit_generated(port.id, pkt, now)


def _state_tag(e) -> str:
    return tags.flow_state(e.kind, e.key)


def _neighbor_port(router, ip: int):
    """The port of ``router`` a neighbor ``ip`` is reached on (None: none)."""
    if ip <= 0xFFFFFFFF:
        return next((p for p in router.ports.values() if p.address is not None and p.prefix_len
                     and (ip ^ p.address) >> (32 - p.prefix_len) == 0), None)
    for p in router.ports.values():
        if any((ip ^ a) >> (128 - plen) == 0 for a, plen in p.addresses6) or ip == p.link_local6:
            return p
    for r in router.routes:
        if r.v6 and r.gateway == ip and r.port in router.ports:
            return router.ports[r.port]
    return None


