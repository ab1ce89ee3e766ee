"""Per-upcall cost of Worker.handle on the ct (or l2) pipeline: UpcallBatch of 64 new UDP 5-tuples, encoded+decoded
as over the wire, FlowPut encoded as flush() would."""

import cProfile
import gc
import os
import pstats
import sys
import time

sys.path.insert(0, os.environ.get("TREE", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
from backchannel import messages as m  # noqa: E402  (the tree to measure is chosen above)
from backchannel.codec import Decoder, encode, encode_many  # noqa: E402
from bench.wirerig import SENDER_MAC, SINK_MAC, mac_int  # noqa: E402
from bench.wiretopo import HOST, ingress_port, topology_yaml  # noqa: E402
from packet.codec import build as pbuild  # noqa: E402
from packet.packet import PROTO_UDP, Packet  # noqa: E402
from topology.loader import load_topology  # noqa: E402
from topology.store import topo as st  # noqa: E402
from workers.worker import Worker, WorkerConfig  # noqa: E402

pipeline = sys.argv[1] if len(sys.argv) > 1 else "ct"
text = topology_yaml(pipeline, "eth-s", "eth-k")
topo = load_topology(text.encode())


def mkworker(n=2, i=0):
    w = Worker(WorkerConfig(index=i, n_workers=n, runtime_dir="", host=HOST))
    for kind, (attr, _) in st.KINDS.items():
        for obj in getattr(topo, attr).values():
            w.topo.add(kind, obj.name, st.encode(obj))
    w.topo.groups = {}
    return w


port = ingress_port(pipeline)


def frames(start, n):
    out = []
    for i in range(start, start + n):
        p = Packet(
            eth_src=mac_int(SENDER_MAC),
            eth_dst=mac_int(SINK_MAC),
            ip_src=0xC6336401,
            ip_dst=0xC6336402,
            proto=PROTO_UDP,
            ttl=64,
            tos=0,
            ip_id=i & 0xFFFF,
            ip_df=True,
            tp_src=1024 + i % 60000,
            tp_dst=5000 + i // 60000,
            payload=b"x" * 18,
        )
        out.append(pbuild(p))
    return out


def run(w, n_batches, start=0, B=64):
    dec = Decoder({})
    wire = []
    for b in range(n_batches):
        fr = frames(start + b * B, B)
        ups = tuple(m.Upcall(start + b * B + j + 1, port, f) for j, f in enumerate(fr))
        wire.append(encode(m.UpcallBatch(ups)))
    now = 1000.0
    t0 = time.perf_counter()
    for data in wire:
        for msg in dec.decode_many(data):
            w.handle(msg, now)
        out = w.out_dp
        encode_many(out)
        out.clear()
        w.out_sup.clear()
        w.housekeeping(now)
        now += 0.003
    return (time.perf_counter() - t0) / (n_batches * B) * 1e6


w = mkworker()
gc.collect()
gc.freeze()
gc.set_threshold(50_000, 20, 50)
run(w, 20, 0)  # warm: learns MACs
res = [run(w, 100, 10_000 + k * 10_000) for k in range(int(sys.argv[2]) if len(sys.argv) > 2 else 5)]
res.sort()
print(
    pipeline,
    os.environ.get("TREE", "main"),
    "median us per upcall",
    round(res[len(res) // 2], 1),
    "min",
    round(res[0], 1),
)
if "--prof" in sys.argv:
    pr = cProfile.Profile()
    pr.enable()
    run(w, 200, 200_000)
    pr.disable()
    pstats.Stats(pr).sort_stats(sys.argv[4] if len(sys.argv) > 4 else "tottime").print_stats(45)
if "--callers" in sys.argv:
    pr = cProfile.Profile()
    pr.enable()
    run(w, 100, 400_000)
    pr.disable()
    pstats.Stats(pr).print_callers("update")
