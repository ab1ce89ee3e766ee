"""The simulation worker process: the only I/O in workers/.

The process pins itself to its core, binds its inbox and connects to the datapath and the supervisor:

    inbox    PULL worker-<i>   upcalls, relayed state, fragments, leases, invalidations, queries, shutdown
    datapath PUSH             installs (every upcall answered once), packet-outs, deletes, fan-out relays
    supervisor PUSH           fragment and lease requests, learned table entries, query answers

The loop: take a batch from the inbox → the Worker (workers.worker) handles each message → housekeeping
(expire parked simulations, ARP retries, flow and flow-state expiry) → flush the outboxes, one frame per
destination and chunk.  The loop reads the clock and passes ``now`` in.  When a peer's queue is full the loop
stops reading its inbox until the peer drains (back-pressure, nothing lost).  A message whose handling raises
is caught by the loop guard (backchannel/guard.py: counted as ``worker_handler_errors_<Type>``, logged,
rate-limited) and the loop goes on; so is housekeeping.
"""

from __future__ import annotations

import gc
import os
import signal
import time

import zmq

from backchannel import messages as m
from backchannel.codec import Decoder
from backchannel.guard import Guard
from backchannel.sockets import (
    DATAPATH,
    SUPERVISOR,
    RuntimeDir,
    pull_bind,
    push_connect,
    recv_msgs,
    send_many,
    send_msg,
    worker_role,
)
from backchannel.spin import spin_poll
from workers.worker import Worker, WorkerConfig

FLUSH_CHUNK = 256                                   # messages per outgoing frame
__all__ = ["worker_main", "flush"]


def _pin(cpu: int | None) -> None:
    if cpu is None:
        return
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        pass


def flush(w: Worker, to_dp, to_sup=None) -> bool:
    """Send what the worker's outboxes hold.  A full peer queue keeps the rest for later (every upcall must
    get its answer); returns False while something is left, and the loop stops reading its inbox until the
    peer drains: back-pressure instead of loss.  Without ``to_sup`` only the datapath's outbox is sent."""
    done = True
    for sock, box in ((to_dp, w.out_dp), (to_sup, w.out_sup)) if to_sup is not None else ((to_dp, w.out_dp),):
        sent = 0
        while sent < len(box):
            chunk = box[sent:sent + FLUSH_CHUNK]
            ok = send_msg(sock, chunk[0]) if len(chunk) == 1 else send_many(sock, chunk)
            if not ok:
                w.c["send_blocked"] += 1
                done = False
                break
            sent += len(chunk)
        del box[:sent]
    return done


def worker_main(cfg: WorkerConfig) -> None:
    """Process entry point."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # the supervisor stops us with Shutdown / SIGTERM
    _pin(cfg.cpu)
    rt = RuntimeDir.attach(cfg.runtime_dir)
    ctx = zmq.Context()
    inbox = pull_bind(ctx, rt, worker_role(cfg.index))
    to_dp = push_connect(ctx, rt, DATAPATH)
    to_sup = push_connect(ctx, rt, SUPERVISOR)
    w = Worker(cfg)
    decoder = Decoder(w.c)
    guard = Guard("worker", w.c, prefix="")          # Worker.stats() prefixes its counters with "worker_"
    poller = zmq.Poller()
    poller.register(inbox, zmq.POLLIN)
    blocked = zmq.Poller()
    blocked.register(to_dp, zmq.POLLOUT)
    blocked.register(to_sup, zmq.POLLOUT)
    send_msg(to_sup, m.Ready(cfg.index, os.getpid()))
    gc.collect()
    gc.freeze()                                    # start-up objects never need scanning again
    gc.set_threshold(50_000, 20, 50)               # fewer collections: flow state is many small tuples
    spin_s, busy = cfg.poll_spin_us / 1e6, False   # busy-poll after work (backchannel/spin.py; 0: off)
    warm_ms = min(100, cfg.keep_warm_ms)
    try:
        while w.running:
            if w.out_dp or w.out_sup:                  # a peer was full: drain before reading more
                blocked.poll(20)
                flush(w, to_dp, to_sup)
                guard.call("housekeeping", w.housekeeping, time.monotonic())
                continue
            deadline = w.parking.next_deadline()
            warming = warm_ms and not w.background and time.monotonic() < w.warm_until
            wait_ms = 0 if w.background else warm_ms if warming else 100      # a state transfer: no sleep
            if deadline is not None:
                wait_ms = max(0, min(wait_ms, int((deadline - time.monotonic()) * 1000) + 1))
            busy = bool(spin_poll(poller, wait_ms, spin_s) if spin_s and busy else poller.poll(wait_ms))
            if busy:
                msgs = recv_msgs(inbox, decoder, cfg.batch)
                guard.run(w.handle, msgs, time.monotonic())
                if w.out_dp:                          # the answers leave before the housekeeping runs (what
                    flush(w, to_dp)                   # goes to the supervisor waits for the end of the turn)
            elif warming:                              # idle (for keep_warm_ms at most), soon after an upcall
                guard.call("keep_warm", w.keep_warm, time.monotonic())
            guard.call("housekeeping", w.housekeeping, time.monotonic())
            flush(w, to_dp, to_sup)
    finally:
        for s in (inbox, to_dp, to_sup):
            s.close(0)
        ctx.term()

