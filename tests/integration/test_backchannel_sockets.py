"""Real processes talking over the backchannel in a RuntimeDir: a worker process (spawned) serves upcalls,
relayed broadcasts and supervisor commands, all arriving on its one PULL inbox; a third process throws raw
garbage at that inbox, which is rejected and counted while good messages keep flowing.  This process plays
the datapath and the supervisor (a PULL inbox each, a PUSH each to the worker).  Also the ZMQ round-trip
floor of bench/floors.py."""

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
    FlowPut,
    InvalidateTags,
    Ping,
    Pong,
    Ready,
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
    """A minimal worker loop on its one inbox: upcalls → FlowPut (flow id = the upcall's seq), InvalidateTags →
    FlowDelete of the flows carrying those tags (to the datapath); commands → replies (to the supervisor)."""
    ctx = zmq.Context()
    dec = Decoder()
    inbox = sockets.pull_bind(ctx, rt, sockets.worker_role(index))
    datapath = sockets.push_connect(ctx, rt, sockets.DATAPATH)
    supervisor = sockets.push_connect(ctx, rt, sockets.SUPERVISOR)
    flows_by_tag: dict[str, list[int]] = {}
    sockets.send_msg(supervisor, Ready(index, os.getpid()), flags=0)  # hello
    deadline = time.monotonic() + 120
    running = True
    while running and time.monotonic() < deadline:
        if not inbox.poll(500):
            continue
        for m in sockets.recv_msgs(inbox, dec):
            if isinstance(m, UpcallBatch):
                puts = [FlowPut(u.seq, (), (("output", "out"),), ("t",), 1.0, 0.0) for u in m.upcalls]
                for put in puts:
                    for tag in put.tags:
                        flows_by_tag.setdefault(tag, []).append(put.seq)
                sockets.send_many(datapath, puts, counters=dec.counters)
            elif isinstance(m, InvalidateTags):
                stale = sorted({f for t in m.tags for f in flows_by_tag.pop(t, ())})
                sockets.send_msg(datapath, FlowDelete(tuple(stale)))
            elif isinstance(m, StatsRequest):
                sockets.send_msg(supervisor, StatsReply(m.req_id, index, dict(dec.counters)), flags=0)
            elif isinstance(m, Ping):
                sockets.send_msg(supervisor, Pong(m.t_ns, m.seq), flags=0)
            elif isinstance(m, Shutdown):
                running = False
    for s in (inbox, datapath, supervisor):
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


def _recv_until(sock, dec, want: int) -> list:
    got: list = []
    deadline = time.monotonic() + WAIT_S
    while len(got) < want and time.monotonic() < deadline:
        if sock.poll(100):
            got += sockets.recv_msgs(sock, dec)
    return got


def _batch(start: int, n: int) -> UpcallBatch:
    return UpcallBatch(tuple(Upcall(i, "tenant.vm1", bytes([i % 256]) * 60) for i in range(start, start + n)))


def test_two_processes_and_a_garbage_sender(world):
    rt, ctx, procs = world
    dec = Decoder()
    installs = sockets.pull_bind(ctx, rt, sockets.DATAPATH)
    answers = sockets.pull_bind(ctx, rt, sockets.SUPERVISOR)
    worker = SPAWN.Process(target=_worker_main, args=(rt, 0))
    procs.append(worker)
    worker.start()
    assert _recv_until(answers, dec, 1) == [Ready(0, worker.pid)]
    push = sockets.push_connect(ctx, rt, sockets.worker_role(0))  # the datapath's (upcalls, relays)
    control = sockets.push_connect(ctx, rt, sockets.worker_role(0))  # the supervisor's (commands)

    # good traffic flows: every upcall answered by its seq
    first = _batch(0, 8)
    assert sockets.send_msg(push, first)
    got = _recv_until(installs, dec, 8)
    assert [m.seq for m in got] == [u.seq for u in first.upcalls]
    assert got == [FlowPut(u.seq, (), (("output", "out"),), ("t",), 1.0, 0.0) for u in first.upcalls]
    assert all(type(m) is FlowPut for m in got)

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

    # a broadcast (relayed into the worker's inbox, as the datapath relays a Fanout) reaches the worker,
    # which deletes its flows by id: the seqs of the upcalls that made them
    assert sockets.send_msg(push, InvalidateTags(("r1", "t"), 99))
    flow_ids = tuple(u.seq for u in first.upcalls + second.upcalls)
    assert _recv_until(installs, dec, 1) == [FlowDelete(flow_ids)]

    # the worker counted every reject by reason
    counters: dict = {}
    deadline = time.monotonic() + WAIT_S
    req = 0
    while time.monotonic() < deadline:
        req += 1
        assert sockets.send_msg(control, StatsRequest(req))
        replies = _recv_until(answers, dec, 1)
        assert replies and isinstance(replies[0], StatsReply) and replies[0].req_id == req
        counters = replies[0].counters
        if sum(counters[f"backchannel_rejected_{r}"] for r in EXPECTED_REJECTS) >= len(GARBAGE):
            break
    assert {r: counters[f"backchannel_rejected_{r}"] for r in EXPECTED_REJECTS} == EXPECTED_REJECTS
    assert counters["backchannel_decoded"] >= 2 + 1 + 1  # two batches, one broadcast, the stats requests
    assert dec.rejected == 0  # nothing bad came back to us

    assert sockets.send_msg(control, Ping(7, 3))
    assert _recv_until(answers, dec, 1) == [Pong(7, 3)]
    assert sockets.send_msg(control, Shutdown())
    worker.join(WAIT_S)
    assert worker.exitcode == 0
    for s in (installs, answers, push, control):
        s.close()
    path = rt.path
    rt.close()
    assert not os.path.exists(path)  # no socket files left behind


def test_a_stalled_worker_process_makes_sends_fail_fast(world):
    """The peer is a live process that has bound its PULL but never reads (it is stopped with SIGSTOP)."""
    rt, ctx, procs = world
    dec = Decoder()
    answers = sockets.pull_bind(ctx, rt, sockets.SUPERVISOR)
    worker = SPAWN.Process(target=_worker_main, args=(rt, 1))
    procs.append(worker)
    worker.start()
    assert _recv_until(answers, dec, 1) == [Ready(1, worker.pid)]
    control = sockets.push_connect(ctx, rt, sockets.worker_role(1))  # the supervisor's: its own pipe
    os.kill(worker.pid, 19)  # SIGSTOP: alive, connected, not reading
    try:
        push = sockets.push_connect(ctx, rt, sockets.worker_role(1), hwm=16)
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
    assert sockets.send_msg(control, Shutdown())
    worker.join(WAIT_S)
    assert worker.exitcode == 0
    control.close()
    answers.close()


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
