"""Floors: what the machine costs before shardnet does any work (the ``floor`` key of ``shardnet bench``).

Owns ``measure_zmq_rtt``: a bare ZeroMQ round trip (DEALER → ROUTER echo → DEALER over ipc, sockets made by
backchannel.sockets with the same options as the pipeline's) between two processes pinned to two cpus.
Every flow setup pays at least one such wake-up pair, so setup latency is read against it.

Both ends are child processes (spawn), so the caller's own cpu affinity is never changed.  A cpu that does not
exist or is not allowed is skipped (``pinned`` says which end was pinned).  Map onto the bench JSON as
``{"zmq_rtt_us_p50": r["p50_us"], "zmq_rtt_us_p99": r["p99_us"]}``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import numpy as np
import zmq

from backchannel.codec import decode, encode
from backchannel.messages import Ping, Pong
from backchannel.sockets import RuntimeDir, make_socket

FLOOR_HWM = 64                 # the probes are one message at a time

_ROLE = "floor-rtt"
_IO_TIMEOUT_MS = 10_000  # a peer that died must not hang the other end forever
_PAYLOAD = b"\x00" * 8


def _pin(cpu: int | None) -> bool:
    if cpu is None:
        return False
    try:
        if cpu not in os.sched_getaffinity(0):
            return False
        os.sched_setaffinity(0, {cpu})
        return True
    except OSError:
        return False


def _echo_server(rt: RuntimeDir, cpu: int | None, total: int, use_codec: bool, conn) -> None:
    pinned = _pin(cpu)
    ctx = zmq.Context(1)
    sock = make_socket(ctx, zmq.ROUTER, FLOOR_HWM)
    sock.setsockopt(zmq.RCVTIMEO, _IO_TIMEOUT_MS)
    try:
        sock.bind(rt.endpoint(_ROLE))
        conn.send(pinned)
        for _ in range(total):
            ident, data = sock.recv_multipart()
            if use_codec:
                ping = decode(data)
                data = encode(Pong(ping.t_ns, ping.seq))
            sock.send_multipart([ident, data])
    except zmq.Again:
        pass
    finally:
        sock.close()
        ctx.term()


def _client(rt: RuntimeDir, cpu: int | None, n: int, warmup: int, use_codec: bool, conn,
            spacing_s: float = 0.0) -> None:
    pinned = _pin(cpu)
    ctx = zmq.Context(1)
    sock = make_socket(ctx, zmq.DEALER, FLOOR_HWM)
    sock.setsockopt(zmq.RCVTIMEO, _IO_TIMEOUT_MS)
    samples = np.empty(n, dtype=np.int64)
    clock = time.perf_counter_ns
    try:
        sock.connect(rt.endpoint(_ROLE))
        for i in range(warmup + n):
            t0 = clock()
            sock.send(encode(Ping(t0, i)) if use_codec else _PAYLOAD)
            data = sock.recv()
            if use_codec:
                decode(data)
            if i >= warmup:
                samples[i - warmup] = clock() - t0
            if spacing_s > 0:
                time.sleep(spacing_s)
        conn.send((pinned, samples.tobytes()))
    except zmq.Again:
        conn.send((pinned, None))
    finally:
        sock.close()
        ctx.term()


def measure_zmq_rtt(n: int = 2000, cpus: tuple[int, int] | None = (0, 1), warmup: int = 200,
                    use_codec: bool = False, timeout_s: float = 60.0, spacing_s: float = 0.0) -> dict:
    """Round-trip time of ``n`` request/replies between two pinned processes over ipc.

    Returns ``{"n", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "min_us", "mean_us", "cpus",
    "pinned", "transport", "codec"}``.  ``use_codec`` sends Ping/Pong through backchannel.codec instead of
    8 raw bytes.  ``spacing_s`` sleeps that long between probes (the floor at the spacing of a traffic probe:
    idle cpus wake up slower than busy ones).  Raises RuntimeError if a side fails or times out."""
    if n < 1:
        raise ValueError("n must be >= 1")
    server_cpu, client_cpu = cpus if cpus is not None else (None, None)
    mpc = mp.get_context("spawn")
    with RuntimeDir() as rt:
        s_recv, s_send = mpc.Pipe(duplex=False)
        c_recv, c_send = mpc.Pipe(duplex=False)
        server = mpc.Process(target=_echo_server, args=(rt, server_cpu, warmup + n, use_codec, s_send),
                             daemon=True)
        client = mpc.Process(target=_client, args=(rt, client_cpu, n, warmup, use_codec, c_send, spacing_s),
                             daemon=True)
        try:
            server.start()
            if not s_recv.poll(timeout_s):
                raise RuntimeError("zmq rtt floor: echo server did not start")
            server_pinned = s_recv.recv()
            client.start()
            if not c_recv.poll(timeout_s + (n + warmup) * spacing_s):
                raise RuntimeError("zmq rtt floor: client did not finish")
            client_pinned, raw = c_recv.recv()
        finally:
            for proc in (client, server):
                if proc.pid is None:  # never started
                    continue
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
    if raw is None:
        raise RuntimeError("zmq rtt floor: the round trip timed out")
    us = np.frombuffer(raw, dtype=np.int64) / 1000.0
    p50, p90, p99, p999 = np.percentile(us, [50, 90, 99, 99.9])
    return {
        "n": int(n), "p50_us": float(p50), "p90_us": float(p90), "p99_us": float(p99),
        "p999_us": float(p999), "max_us": float(us.max()), "min_us": float(us.min()),
        "mean_us": float(us.mean()), "cpus": list(cpus) if cpus is not None else None,
        "pinned": [bool(server_pinned), bool(client_pinned)], "transport": "ipc", "codec": use_codec,
        "spacing_s": spacing_s,
    }


if __name__ == "__main__":  # python -m bench.floors
    import json

    print(json.dumps(measure_zmq_rtt(), indent=1))
    print(json.dumps(measure_zmq_rtt(use_codec=True), indent=1))
