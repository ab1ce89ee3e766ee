"""The simulation worker process: the only I/O in workers/.

The process pins itself to its core, binds its inbox and connects to the datapath and the supervisor:

    inbox    PULL worker-<i>   upcalls, relayed state, fragments, leases, invalidations, queries, shutdown
    datapath PUSH             installs (every upcall answered once), packet-outs, deletes, fan-out relays
    supervisor PUSH           fragment and lease requests, learned table entries, query answers

The loop: take a batch from the inbox → the Worker (workers.worker) handles each message → housekeeping
(expire parked simulations, ARP retries, flow and flow-state expiry) → flush the outboxes.  When a peer's
queue is full the loop stops reading its inbox until the peer drains (back-pressure, nothing lost).
"""

from __future__ import annotations

import gc
import os
import signal
import time

import zmq

from backchannel import messages as m
from backchannel.codec import Decoder
from backchannel.sockets import RuntimeDir, pull_bind, push_connect, recv_msgs, send_msg, worker_role
from workers.worker import Worker, WorkerConfig

SUPERVISOR = "supervisor"
DATAPATH = "datapath"
__all__ = ["WorkerConfig", "Worker", "worker_main"]


def _pin(cpu: int | None) -> None:
    if cpu is None:
        return
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        pass


def worker_main(cfg: WorkerConfig) -> None:
    """Process entry point."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # the supervisor stops us with Shutdown / SIGTERM
    _pin(cfg.cpu)
    rt = RuntimeDir.attach(cfg.runtime_dir)
    ctx = zmq.Context()
    inbox = pull_bind(ctx, rt, worker_role(cfg.index))
    to_dp = push_connect(ctx, rt, DATAPATH)
    to_sup = push_connect(ctx, rt, SUPERVISOR)
    w = Worker(cfg, to_dp, to_sup)
    decoder = Decoder(w.c)
    poller = zmq.Poller()
    poller.register(inbox, zmq.POLLIN)
    blocked = zmq.Poller()
    blocked.register(to_dp, zmq.POLLOUT)
    blocked.register(to_sup, zmq.POLLOUT)
    send_msg(to_sup, m.Answer(0, cfg.index, {"ready": os.getpid()}))
    gc.collect()
    gc.freeze()                                    # start-up objects never need scanning again
    gc.set_threshold(50_000, 20, 50)               # fewer collections: flow state is many small tuples
    try:
        while w.running:
            if w.out_dp or w.out_sup:                  # a peer was full: drain before reading more
                blocked.poll(20)
                w.flush()
                w.housekeeping(time.monotonic())
                continue
            deadline = w.parking.next_deadline()
            wait_ms = 100
            if deadline is not None:
                wait_ms = max(0, min(wait_ms, int((deadline - time.monotonic()) * 1000) + 1))
            if poller.poll(wait_ms):
                msgs = recv_msgs(inbox, decoder, cfg.batch)
                now = time.monotonic()
                for msg in msgs:
                    w.handle(msg, now)
            w.housekeeping(time.monotonic())
            w.flush()
    finally:
        for s in (inbox, to_dp, to_sup):
            s.close(0)
        ctx.term()

