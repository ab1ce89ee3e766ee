"""Real processes talking over the backchannel in a RuntimeDir: a worker process (spawned) serves upcalls,
broadcasts and control; a third process throws raw garbage at the worker's PULL socket, which is rejected
and counted while good messages keep flowing.  Also the ZMQ round-trip floor of bench/floors.py."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import msgpack
import pytest
import zmq

from backchannel import sockets
from backchannel.codec import Decoder
from backchannel.messages import (
    FlowDelete,
    FlowInstall,
    InvalidateTags,
    Ping,
    Pong,
    Shutdown,
    StatsReply,
    StatsRequest,
    Upcall,
    UpcallBatch,
)
from bench.floors import measure_zmq_rtt

SPAWN = mp.get_context("spawn")
WAIT_S = 20.0  # a bound on waiting for a peer, not a timing assertion


def _worker_main(rt: sockets.RuntimeDir, index: int) -> None:
    """A minimal worker loop: upcalls → installs, InvalidateTags → FlowDelete, control → replies."""
    ctx = zmq.Context()
    dec = Decoder()
    upcalls = sockets.upcall_pull(ctx, rt, index)
    installs = sockets.install_push(ctx, rt)
    bcast = sockets.bcast_sub(ctx, rt, ["shell"])
    control = sockets.control_dealer(ctx, rt, sockets.worker_role(index))
    poller = zmq.Poller()
    for s in (upcalls, bcast, control):
        poller.register(s, zmq.POLLIN)
    sockets.send_msg(control, Pong(0, index), flags=0)  # hello
    deadline = time.monotonic() + 120
    running = True
    while running and time.monotonic() < deadline:
        ready = dict(poller.poll(500))
        if upcalls in ready:
            for m in sockets.recv_msgs(upcalls, dec):
                if isinstance(m, UpcallBatch):
                    sockets.send_many(installs, [
                        FlowInstall(u.seq, u.port, (u.seq,), (("output", "out"),), ("t",), 1.0, 0.0,
                                    u.t_emit_ns, u.frame) for u in m.upcalls
                    ], counters=dec.counters)
        if bcast in ready:
            for m in sockets.recv_msgs(bcast, dec):
                if isinstance(m, InvalidateTags):
                    sockets.send_msg(installs, FlowDelete(tuple((t,) for t in m.tags)))
        if control in ready:
            for m in sockets.recv_msgs(control, dec):
                if isinstance(m, StatsRequest):
                    sockets.send_msg(control, StatsReply(m.req_id, index, dict(dec.counters)), flags=0)
                elif isinstance(m, Ping):
                    sockets.send_msg(control, Pong(m.t_ns, m.seq), flags=0)
                elif isinstance(m, Shutdown):
                    running = False
    for s in (upcalls, installs, bcast, control):
        s.close()
    ctx.term()


GARBAGE = [b"\xc1", b"", msgpack.packb((999, 1)), msgpack.packb({"a": 1}), msgpack.packb((2, 1, 2)),
           msgpack.packb((2, (5,))), msgpack.packb((32, 2**64 - 1, 1)), [b"two", b"parts"]]
EXPECTED_REJECTS = {"malformed": 2, "unknown_tag": 1, "not_array": 1, "arity": 1, "field_type": 1,
                    "int_range": 1, "multipart": 1, "not_bytes": 0}


def _garbage_main(endpoint: str) -> None:
    """A third party that is not shardnet: a raw PUSH socket, default linger so everything is delivered."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.connect(endpoint)
    for g in GARBAGE:
        s.send_multipart(g) if isinstance(g, list) else s.send(g)
    s.close()
    ctx.term()


@pytest.fixture
def world():
    rt = sockets.RuntimeDir()
    ctx = zmq.Context()
    procs: list = []
    yield rt, ctx, procs
    for p in procs:
        if p.pid is not None:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    ctx.destroy(linger=0)
    rt.close()


def _recv_until(sock, dec, want: int, routed: bool = False) -> list:
    got: list = []
    deadline = time.monotonic() + WAIT_S
    while len(got) < want and time.monotonic() < deadline:
        if sock.poll(100):
            got += sockets.recv_routed(sock, dec) if routed else sockets.recv_msgs(sock, dec)
    return got


def _batch(start: int, n: int) -> UpcallBatch:
    return UpcallBatch(tuple(Upcall(i, "tenant.vm1", bytes([i % 256]) * 60, time.monotonic_ns())
                             for i in range(start, start + n)))


def test_two_processes_and_a_garbage_sender(world):
    rt, ctx, procs = world
    dec = Decoder()
    installs = sockets.install_pull(ctx, rt)
    router = sockets.control_router(ctx, rt)
    pub = sockets.bcast_pub(ctx, rt, "shell")
    worker = SPAWN.Process(target=_worker_main, args=(rt, 0))
    procs.append(worker)
    worker.start()
    assert _recv_until(router, dec, 1, routed=True) == [(b"worker-0", Pong(0, 0))]
    assert sockets.wait_subscribers(pub, 1, timeout_ms=int(WAIT_S * 1000)) == 1
    push = sockets.upcall_push(ctx, rt, 0)

    # good traffic flows
    first = _batch(0, 8)
    assert sockets.send_msg(push, first)
    got = _recv_until(installs, dec, 8)
    want = [(u.seq, u.frame, u.t_emit_ns) for u in first.upcalls]
    assert [(m.seq, m.frame, m.t_emit_ns) for m in got] == want
    assert all(type(m) is FlowInstall for m in got)

    # a third process throws garbage into the same PULL socket
    garbage = SPAWN.Process(target=_garbage_main, args=(rt.endpoint(sockets.worker_role(0)),))
    procs.append(garbage)
    garbage.start()
    garbage.join(WAIT_S)
    assert garbage.exitcode == 0

    # ... and good traffic still flows
    second = _batch(100, 8)
    assert sockets.send_msg(push, second)
    assert [m.seq for m in _recv_until(installs, dec, 8)] == [u.seq for u in second.upcalls]

    # broadcast reaches the worker
    assert sockets.send_msg(pub, InvalidateTags(("r1", "tenant"), 99))
    assert _recv_until(installs, dec, 1) == [FlowDelete((("r1",), ("tenant",)))]

    # the worker counted every reject by reason
    counters: dict = {}
    deadline = time.monotonic() + WAIT_S
    req = 0
    while time.monotonic() < deadline:
        req += 1
        assert sockets.send_to(router, b"worker-0", StatsRequest(req))
        replies = [m for _, m in _recv_until(router, dec, 1, routed=True)]
        assert replies and isinstance(replies[0], StatsReply) and replies[0].req_id == req
        counters = replies[0].counters
        if sum(counters[f"backchannel_rejected_{r}"] for r in EXPECTED_REJECTS) >= len(GARBAGE):
            break
    assert {r: counters[f"backchannel_rejected_{r}"] for r in EXPECTED_REJECTS} == EXPECTED_REJECTS
    assert counters["backchannel_decoded"] >= 2 + 1 + 1  # two batches, one broadcast, the stats requests
    assert dec.rejected == 0  # nothing bad came back to us

    assert sockets.send_to(router, b"worker-0", Ping(7, 3))
    assert [m for _, m in _recv_until(router, dec, 1, routed=True)] == [Pong(7, 3)]
    assert sockets.send_to(router, b"worker-0", Shutdown())
    worker.join(WAIT_S)
    assert worker.exitcode == 0
    for s in (installs, router, pub, push):
        s.close()
    path = rt.path
    rt.close()
    assert not os.path.exists(path)  # no socket files left behind


def test_a_stalled_worker_process_makes_sends_fail_fast(world):
    """The peer is a live process that has bound its PULL but never reads (it is stopped with SIGSTOP)."""
    rt, ctx, procs = world
    dec = Decoder()
    router = sockets.control_router(ctx, rt)
    worker = SPAWN.Process(target=_worker_main, args=(rt, 1))
    procs.append(worker)
    worker.start()
    assert _recv_until(router, dec, 1, routed=True) == [(b"worker-1", Pong(0, 1))]
    os.kill(worker.pid, 19)  # SIGSTOP: alive, connected, not reading
    try:
        push = sockets.upcall_push(ctx, rt, 1, hwm=16)
        counters: dict = {}
        batch = _batch(0, 64)  # ~5 KiB a frame
        sent = 0
        while sockets.send_msg(push, batch, counters=counters):
            sent += 1
            assert sent < 2000, "a stalled peer never made the send report a full queue"
        assert counters == {"backchannel_send_full": 1}
        push.close()
    finally:
        os.kill(worker.pid, 18)  # SIGCONT
    assert sockets.send_to(router, b"worker-1", Shutdown())
    worker.join(WAIT_S)
    assert worker.exitcode == 0
    router.close()


def test_zmq_rtt_floor_between_two_pinned_processes():
    r = measure_zmq_rtt(n=300, cpus=(0, 1), warmup=50)
    assert r["n"] == 300 and r["transport"] == "ipc"
    assert 0 < r["min_us"] <= r["p50_us"] <= r["p90_us"] <= r["p99_us"] <= r["p999_us"] <= r["max_us"]
    allowed = os.sched_getaffinity(0)
    assert r["pinned"] == [0 in allowed, 1 in allowed]


def test_zmq_rtt_floor_skips_an_absent_cpu_and_can_use_the_codec():
    r = measure_zmq_rtt(n=50, cpus=(0, 4095), warmup=5, use_codec=True)
    assert r["pinned"] == [0 in os.sched_getaffinity(0), False] and r["codec"] is True
    assert r["p50_us"] > 0
    r = measure_zmq_rtt(n=20, cpus=None, warmup=0)
    assert r["pinned"] == [False, False]
