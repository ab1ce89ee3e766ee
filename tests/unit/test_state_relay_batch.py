"""Flow state for the other workers leaves once per inbound message, not once per setup: an UpcallBatch of new
connections through conntrack yields one Fanout per worker that will see replies, in the outbox ahead of every
install whose state it carries; the worker it reaches then passes the replies as ``ct: return``."""

from __future__ import annotations

from backchannel import messages as m
from backchannel.codec import decode, decode_many, encode_many
from bench.wirerig import SENDER_MAC, SINK_MAC, mac_int
from bench.wiretopo import HOST, ingress_port, topology_yaml
from packet.addr import ip2int
from packet.codec import build
from packet.flowkey import tuple_hash
from packet.packet import PROTO_UDP, Packet
from topology.loader import load_topology
from topology.store import topo as store_topo
from workers.worker import Worker, WorkerConfig

SENDER, SINK = ip2int("198.51.100.1"), ip2int("198.51.100.2")


def _worker(index: int, n: int) -> Worker:
    topo = load_topology(topology_yaml("ct", "eth-s", "eth-k").encode())
    w = Worker(WorkerConfig(index=index, n_workers=n, runtime_dir="", host=HOST))
    for kind, (attr, _) in store_topo.KINDS.items():
        for obj in getattr(topo, attr).values():
            assert w.topo.add(kind, obj.name, store_topo.encode(obj))
    w.topo.groups = {}
    return w


def _frame(src_mac, dst_mac, src, dst, sport, dport) -> bytes:
    return build(Packet(eth_src=mac_int(src_mac), eth_dst=mac_int(dst_mac), ip_src=src, ip_dst=dst,
                        proto=PROTO_UDP, ttl=64, tos=0, ip_id=1, tp_src=sport, tp_dst=dport, payload=b"x" * 8))


def _batch(port: str, seq0: int, frames) -> m.UpcallBatch:
    return m.UpcallBatch(tuple(m.Upcall(seq0 + i, port, f) for i, f in enumerate(frames)))


def test_one_fanout_per_batch_ahead_of_the_installs_it_serves():
    w0 = _worker(0, 2)
    port = ingress_port("ct")
    sports = list(range(20000, 20064))
    w0.handle(_batch(port, 1, [_frame(SENDER_MAC, SINK_MAC, SENDER, SINK, p, 5000) for p in sports]), 10.0)
    out = list(decode_many(encode_many(w0.out_dp)))          # what the loop sends: None never reaches the wire
    assert None not in w0.out_dp
    # (the first packet also learns the sender's MAC: a MacLearned Fanout of its own)
    fanouts = [i for i, x in enumerate(out) if type(x) is m.Fanout and type(decode(x.payload)) is m.FlowStateBatch]
    puts = [i for i, x in enumerate(out) if type(x) is m.FlowPut]
    assert len(puts) == len(sports) and len(fanouts) == 1, [type(x).__name__ for x in out]
    assert out[fanouts[0]].targets == (1,)
    assert fanouts[0] < min(puts)                             # the state leaves before the first install
    entries = decode(out[fanouts[0]].payload).entries
    # exactly the replies that hash to worker 1 (the others stay here: worker 0 sees those replies itself)
    want = {p for p in sports if tuple_hash(PROTO_UDP, SINK, 5000, SENDER, p) % 2 == 1}
    assert {e.key[4] for e in entries} == want and len(entries) == len(want)
    assert 0 < len(want) < len(sports)
    assert w0.c["state_relayed"] == 1


def test_the_relayed_state_lets_the_other_worker_pass_the_replies():
    w0, w1 = _worker(0, 2), _worker(1, 2)
    port = ingress_port("ct")
    sports = [p for p in range(30000, 30200) if tuple_hash(PROTO_UDP, SINK, 5000, SENDER, p) % 2 == 1][:16]
    w0.handle(_batch(port, 1, [_frame(SENDER_MAC, SINK_MAC, SENDER, SINK, p, 5000) for p in sports]), 10.0)
    for msg in decode_many(encode_many(w0.out_dp)):
        if type(msg) is m.Fanout:
            for inner in decode_many(msg.payload):
                w1.handle(inner, 10.0)
    assert w1.c["state_received"] == len(sports)
    w1.handle(_batch("tenant.sink", 1000, [_frame(SINK_MAC, SENDER_MAC, SINK, SENDER, 5000, p) for p in sports]),
              10.1)
    puts = [x for x in w1.out_dp if type(x) is m.FlowPut]
    assert len(puts) == len(sports)
    assert all(any(a[0] == "output" for a in p.actions) for p in puts), puts[:2]   # ct: return, not the drop


def test_one_worker_relays_nothing():
    w = _worker(0, 1)
    w.handle(_batch(ingress_port("ct"), 1, [_frame(SENDER_MAC, SINK_MAC, SENDER, SINK, p, 5000)
                                            for p in range(100, 110)]), 10.0)
    assert not [x for x in w.out_dp if type(x) is m.Fanout] and None not in w.out_dp
    assert w.c["state_relayed"] == 0


def test_a_message_that_raises_midway_still_relays_what_it_applied_and_leaves_no_empty_slot():
    w0 = _worker(0, 2)
    port = ingress_port("ct")
    sports = [p for p in range(40000, 40400) if tuple_hash(PROTO_UDP, SINK, 5000, SENDER, p) % 2 == 1][:4]
    real, seen = w0.upcall, []

    def upcall(up, now):                               # the third upcall of the batch raises (a bug, say)
        seen.append(up.seq)
        if len(seen) == 3:
            raise RuntimeError("boom")
        real(up, now)

    w0.upcall = upcall
    try:
        w0.handle(_batch(port, 1, [_frame(SENDER_MAC, SINK_MAC, SENDER, SINK, p, 5000) for p in sports]), 10.0)
    except RuntimeError:
        pass
    assert None not in w0.out_dp
    relayed = [decode(x.payload) for x in w0.out_dp
               if type(x) is m.Fanout and type(decode(x.payload)) is m.FlowStateBatch]
    assert [len(b.entries) for b in relayed] == [2]    # the two setups applied before it
