"""backchannel.sockets.EpollPoller against real ZMQ sockets and fds: it reports a ZMQ socket readable exactly when
a message waits (also one left unread from an earlier turn, whose ZMQ_FD will not fire again), a plain fd when
it has data, and a wait ends when a message comes in during it."""

from __future__ import annotations

import os
import threading
import time

import zmq

from backchannel.sockets import EpollPoller, RuntimeDir, pull_bind, push_connect


def test_zmq_and_fd_readiness_like_zmq_poller():
    ctx = zmq.Context()
    rt = RuntimeDir()
    r, w = os.pipe()
    try:
        inbox = pull_bind(ctx, rt, "poller-test")
        out = push_connect(ctx, rt, "poller-test")
        p = EpollPoller()
        p.register(inbox, zmq.POLLIN)
        p.register(r, zmq.POLLIN)
        assert p.poll(0) == []
        out.send(b"a")
        out.send(b"b")
        deadline = time.monotonic() + 5
        got = []
        while not got and time.monotonic() < deadline:
            got = p.poll(100)
        assert got == [(inbox, zmq.POLLIN)]
        assert inbox.recv(zmq.NOBLOCK) == b"a"
        # "b" is still queued: its arrival signalled the fd already, yet the next poll must see it at once
        assert p.poll(1000) == [(inbox, zmq.POLLIN)]
        assert inbox.recv(zmq.NOBLOCK) == b"b"
        assert p.poll(0) == []
        os.write(w, b"x")
        assert p.poll(0) == [(r, zmq.POLLIN)]
        os.read(r, 1)
        assert p.poll(0) == []
        # a message sent while poll waits ends the wait
        threading.Timer(0.2, lambda: out.send(b"c")).start()
        assert p.poll(10_000) == [(inbox, zmq.POLLIN)]
        p.unregister(r)
        os.write(w, b"y")
        assert inbox.recv(zmq.NOBLOCK) == b"c" and p.poll(0) == []     # an unregistered fd is not reported
        p.close()
    finally:
        os.close(r)
        os.close(w)
        for s in (inbox, out):
            s.close(0)
        ctx.term()
        rt.close()
