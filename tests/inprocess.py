"""Workers and the datapath wired together in one process (as Faucet drives a Valve against a fake table).

``Wire`` builds N ``Worker``s and one ``DatapathProcess`` (in-memory datapath) and passes every message between
them through the real codec: the datapath's links to the workers are lists of encoded frames, the workers'
outboxes go to ``DatapathProcess.handle``, and what they send the supervisor is served here by the real store
parts (StoreMirror fragments, StoreNatAllocator leases) over an in-process store.  No sockets, no processes,
no clock: ``now`` is passed in, so parking deadlines and expiry are exact.

Used by tests/unit/test_worker_inprocess.py and the handler property tests (tests/fuzz/test_handlers_fuzz.py).
"""

from __future__ import annotations

import dataclasses
import itertools

from backchannel import messages as m
from backchannel.codec import DecodeError, Decoder, decode_many, encode, encode_many
from engine.dpproc import DatapathConfig, DatapathProcess
from packet.codec import build, parse
from packet.spec import parse_spec
from topology.loader import loads_topology
from topology.mirror import StoreMirror
from topology.store.leases import StoreNatAllocator
from topology.store.topo import write_topology
from topology.store.uri import open_store
from workers.worker import Worker, WorkerConfig

TOPO = """
version: 1
hosts:
  host-a: {tunnel_ip: 127.0.0.11}
  host-b: {tunnel_ip: 127.0.0.12}
bridges:
  tenant:
    ports:
      vm1: {host: host-a, interface: tap-vm1}
      vm2: {host: host-a, interface: tap-vm2}
      vm3: {host: host-b, interface: tap-vm3}
      vm4: {}
      up: {peer: r1.tenant}
    inbound_filter: fw
    mac_table:
      "02:00:00:00:00:01": vm1
      "02:00:00:00:00:02": vm2
      "02:00:00:00:00:03": vm3
routers:
  r1:
    ports:
      tenant: {address: 10.0.0.1/24, mac: "02:0a:00:00:00:01"}
      uplink: {address: 198.51.100.2/24, mac: "02:0a:00:00:00:02", host: host-a, interface: up0}
    routes:
      - {dst: 0.0.0.0/0, gateway: 198.51.100.1, port: uplink}
    arp_table:
      198.51.100.1: "02:0b:00:00:00:01"
      10.0.0.2: "02:00:00:00:00:01"
      10.0.0.3: "02:00:00:00:00:02"
    inbound_filter: r1-in
    outbound_filter: r1-out
chains:
  fw:
    - {match: {ct: forward, in_port: [tenant.vm1, tenant.up]}, action: accept}
    - {match: {ct: return}, action: accept}
    - {action: drop}
  r1-in:
    - {action: rev_snat}
  r1-out:
    - {match: {src: 10.0.0.0/24, dst: "!10.0.0.0/24"}, action: snat,
       targets: [{ip: 198.51.100.100, port: 5000-65535}]}
"""

VM1, VM2 = "eth_src=02:00:00:00:00:01", "eth_src=02:00:00:00:00:02"
_names = itertools.count()


def frame(spec: str) -> bytes:
    return build(parse_spec(spec))


def vm1_to_vm2(sport: int, flags: str = "syn") -> bytes:
    return frame(f"{VM1},eth_dst=02:00:00:00:00:02,ip_src=10.0.0.2,ip_dst=10.0.0.3,proto=tcp,tp_src={sport},"
                 f"tp_dst=80,tcp_flags={flags}")


def vm2_to_vm1(sport: int) -> bytes:
    return frame(f"{VM2},eth_dst=02:00:00:00:00:01,ip_src=10.0.0.3,ip_dst=10.0.0.2,proto=tcp,tp_src=80,"
                 f"tp_dst={sport},tcp_flags=syn|ack")


def to_internet(sport: int) -> bytes:
    return frame(f"{VM1},eth_dst=02:0a:00:00:00:01,ip_src=10.0.0.2,ip_dst=203.0.113.5,proto=tcp,"
                 f"tp_src={sport},tp_dst=443")


def from_internet(ip: str, port: int) -> bytes:
    return frame(f"eth_src=02:0b:00:00:00:01,eth_dst=02:0a:00:00:00:02,ip_src=203.0.113.5,ip_dst={ip},"
                 f"proto=tcp,tp_src=443,tp_dst={port},tcp_flags=syn|ack")


class Link:
    """One direction of a backchannel pipe: what ``send`` got, as encoded frames (a PUSH socket's stand-in)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, data: bytes, flags: int = 0) -> None:
        self.frames.append(bytes(data))

    def take(self, decoder: Decoder | None = None) -> list:
        """The messages sent so far.  With ``decoder`` a frame the receiver refuses is counted and skipped (as
        backchannel.sockets.recv_msgs does); without one it raises."""
        frames, self.frames = self.frames, []
        if decoder is None:
            return [msg for f in frames for msg in decode_many(f)]
        out = []
        for f in frames:
            try:
                out.extend(decoder.decode_many(f))
            except DecodeError:
                pass
        return out


class Wire:
    def __init__(self, n_workers: int = 2, host: str = "host-a", port_workers: dict | None = None,
                 topo: str = TOPO, megaflows: bool = True, replies_ahead: bool = True):
        self.store = open_store(f"memory://inproc-{next(_names)}")
        write_topology(self.store, loads_topology(topo))
        self.mirror = StoreMirror(self.store, lambda kind, name: None)
        assert self.mirror.wait_ready(5)
        self.leases = StoreNatAllocator(self.store, host)
        self.to_workers = [Link() for _ in range(n_workers)]
        self.to_sup = Link()
        self.dp_config = DatapathConfig(runtime_dir="", n_workers=n_workers, port_workers=port_workers)
        self.dp = DatapathProcess(self.dp_config, self.to_workers, self.to_sup)
        self.worker_config = lambda i: WorkerConfig(index=i, n_workers=n_workers, runtime_dir="", host=host,
                                                    pinned_ports=bool(port_workers), megaflows=megaflows,
                                                    replies_ahead=replies_ahead)
        self.workers = [Worker(self.worker_config(i)) for i in range(n_workers)]
        self.decoders = [Decoder(w.c) for w in self.workers]       # what each worker's loop counts its rejects in
        self.seen: list[list] = [[] for _ in range(n_workers)]    # every message each worker received
        self.to_dp: list = []                                       # every message the workers sent the datapath
        self.to_supervisor: list = []
        self.now = 100.0

    def close(self) -> None:
        self.leases.close()
        self.mirror.close()
        self.store.close()

    # -- driving ----------------------------------------------------------------------------------------------
    def inject(self, port: str, *frames: bytes) -> None:
        self.dp.handle(m.Inject(port, frames), self.now)
        self.pump()

    def pump(self, rounds: int = 50) -> None:
        """Deliver messages until nobody has anything to say."""
        for _ in range(rounds):
            self.dp.housekeeping(self.now)               # flushes the dispatcher's batches
            busy = False
            for i, (w, link) in enumerate(zip(self.workers, self.to_workers, strict=True)):
                for msg in link.take(self.decoders[i]):
                    busy = True
                    self.seen[i].append(msg)
                    w.handle(msg, self.now)
            for w in self.workers:
                out_dp, w.out_dp = w.out_dp, []
                out_sup, w.out_sup = w.out_sup, []
                if out_dp:                               # across the codec, as the loop sends them
                    busy = True
                    for msg in decode_many(encode_many(out_dp)):
                        self.to_dp.append(msg)
                        self.dp.handle(msg, self.now)
                if out_sup:
                    busy = True
                    for msg in decode_many(encode_many(out_sup)):
                        self.serve(msg)
            for msg in self.to_sup.take():
                self.to_supervisor.append(msg)
            if not busy:
                return
        raise AssertionError("the messages never settled")

    def serve(self, msg) -> None:
        """What the supervisor's service loop does for a worker's request."""
        self.to_supervisor.append(msg)
        t = type(msg)
        if t is m.FragmentRequest:
            self.to_workers[msg.worker].send(encode(m.Fragment(msg.kind, msg.name,
                                                               self.mirror.fragment(msg.kind, msg.name))))
        elif t is m.LeaseRequest:
            block = self.leases.lease(f"w{msg.worker}", msg.device, msg.ip, msg.port_start, msg.port_end)
            self.to_workers[msg.worker].send(encode(m.LeaseGranted(msg.device, msg.ip,
                                                                   -1 if block is None else block)))

    # -- process faults: what the supervisor does when a child died (engine/supervisor.py _child_restarted) --
    def restart_worker(self, i: int, early: tuple = ()) -> Worker:
        """Worker ``i`` died (its unread inbox with it) and a new one took its place: the datapath forgets the
        dead one; the new one gets the SNAT blocks leased under its name and its peers' copies of its state.
        ``early``: (port, frame) pairs that reach the datapath before any of that (their upcalls come first)."""
        self.dp.handle(m.PurgeWorker(0, i), self.now)
        self.to_workers[i].frames.clear()
        w = self.workers[i] = Worker(dataclasses.replace(self.worker_config(i), restarted=True))
        self.decoders[i] = Decoder(w.c)
        for port, f in early:
            self.dp.handle(m.Inject(port, (f,)), self.now)
        self.dp.housekeeping(self.now)
        for device, ip, block in self.leases.held_by(f"w{i}"):
            self.to_workers[i].send(encode(m.LeaseGranted(device, ip, block)))
        peers = tuple(j for j in range(len(self.workers)) if j != i)
        self.to_workers[i].send(encode(m.Recover(peers)))
        for j in peers:
            self.to_workers[j].send(encode(m.StateRecall(i)))
        self.pump()
        return w

    def restart_datapath(self) -> DatapathProcess:
        """The datapath died (its flows and unanswered upcalls with it) and its next incarnation is up: every
        worker hears DatapathRestarted (after what the dead one had sent them)."""
        self.dp_config = dataclasses.replace(self.dp_config, epoch=self.dp_config.epoch + 1)
        self.dp = DatapathProcess(self.dp_config, self.to_workers, self.to_sup)
        for link in self.to_workers:
            link.send(encode(m.DatapathRestarted(self.dp_config.epoch)))
        self.pump()
        return self.dp

    def tick(self, seconds: float) -> None:
        self.now += seconds
        for w in self.workers:
            w.housekeeping(self.now)
        self.pump()

    # -- looking ----------------------------------------------------------------------------------------------
    def outputs(self, port: str) -> list:
        return [parse(f) for f in self.dp.dp.take_outputs(port).get(port, [])]

    def answers(self, t: type) -> list:
        return [msg for msg in self.to_dp if type(msg) is t]

    def sent_to_workers(self, t: type) -> list:
        return [msg for seen in self.seen for msg in seen if type(msg) is t]
