"""RuntimeDir, socket options, bounded queues and the counting send/receive helpers, on real ZMQ sockets
(both ends in this process; the cross-process tests are in tests/integration/test_backchannel_sockets.py)."""

from __future__ import annotations

import os
import pickle
import stat

import msgpack
import pytest
import zmq

from backchannel import codec, sockets
from backchannel.codec import Decoder
from backchannel.messages import FlowInstall, InvalidateTags, Ping, Pong, Shutdown, StatsRequest


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
def rt():
    r = sockets.RuntimeDir()
    yield r
    r.close()


def _recv_all(sock, dec, want, polls=50):
    got = []
    while len(got) < want and polls:
        if sock.poll(100):
            got += sockets.recv_msgs(sock, dec)
        polls -= 1
    return got


def test_runtime_dir_is_private_and_removed(ctx, tmp_path):
    rt = sockets.RuntimeDir(base=tmp_path)
    assert os.path.dirname(rt.path) == str(tmp_path)
    assert stat.S_IMODE(os.stat(rt.path).st_mode) == 0o700
    pull = sockets.install_pull(ctx, rt)
    assert os.listdir(rt.path) == ["datapath.ipc"]
    pull.close()
    with rt:
        pass
    assert rt.closed and not os.path.exists(rt.path)
    rt.close()  # idempotent


def test_runtime_dir_copies_never_remove_it():
    with sockets.RuntimeDir() as rt:
        for other in (sockets.RuntimeDir.attach(rt.path), pickle.loads(pickle.dumps(rt))):
            assert other.path == rt.path
            other.close()
            assert os.path.isdir(rt.path)
    assert rt.closed


def test_endpoint_names(rt):
    assert rt.endpoint("worker-0") == f"ipc://{rt.path}/worker-0.ipc"
    assert rt.endpoint(sockets.worker_role(3)).endswith("/worker-3.ipc")
    assert rt.endpoint(sockets.bcast_role("shell")).endswith("/bcast-shell.ipc")
    for bad in ("", "../x", "a/b", "-x", " x", None, "x" * 100):
        with pytest.raises(ValueError):
            rt.endpoint(bad)


def test_endpoint_path_too_long(tmp_path):
    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    with sockets.RuntimeDir(base=deep) as rt, pytest.raises(ValueError, match="too long"):
        rt.endpoint("dispatcher")


def test_socket_options(ctx, rt):
    s = sockets.install_pull(ctx, rt, hwm=17)
    assert (s.getsockopt(zmq.LINGER), s.getsockopt(zmq.SNDHWM), s.getsockopt(zmq.RCVHWM)) == (0, 17, 17)
    assert s.getsockopt(zmq.MAXMSGSIZE) == sockets.MAX_MSG_SIZE
    s.close()
    with pytest.raises(ValueError):
        sockets.make_socket(ctx, zmq.PUSH, 0)


def test_push_pull_round_trip_with_batches(ctx, rt):
    pull, push = sockets.upcall_pull(ctx, rt, 0), sockets.upcall_push(ctx, rt, 0)
    dec = Decoder()
    fi = FlowInstall(1, "p", (1,), (("drop",),), (), 0.0, 0.0, 5, None)
    assert sockets.send_msg(push, fi)
    assert sockets.send_many(push, [Ping(1, 1), Ping(2, 2)])
    assert _recv_all(pull, dec, 3) == [fi, Ping(1, 1), Ping(2, 2)]
    assert dec.counters["backchannel_decoded"] == 3
    push.close()
    pull.close()


def test_garbage_and_multipart_frames_are_counted_and_skipped(ctx, rt):
    pull = sockets.install_pull(ctx, rt)
    raw = ctx.socket(zmq.PUSH)
    raw.connect(rt.endpoint(sockets.DATAPATH))
    dec = Decoder()
    raw.send(b"\xc1garbage")
    raw.send_multipart([codec.encode(Ping(1, 1)), b"second part"])
    raw.send(msgpack.packb((999, 1)))
    raw.send(codec.encode(Ping(2, 2)))             # last: once it arrives, every frame before it was read
    assert _recv_all(pull, dec, 1) == [Ping(2, 2)]
    assert dec.counters["backchannel_rejected_malformed"] == 1
    assert dec.counters["backchannel_rejected_multipart"] == 1
    assert dec.counters["backchannel_rejected_unknown_tag"] == 1
    raw.close()
    pull.close()


def test_full_queue_send_returns_false_and_counts(ctx, rt):
    """A receiver that never reads: sends succeed up to the bounds, then fail fast, never block."""
    hwm, size = 8, 4096
    pull = sockets.pull_bind(ctx, rt, "stalled", hwm=hwm)  # bound, connected, never read
    push = sockets.push_connect(ctx, rt, "stalled", hwm=hwm)
    counters: dict[str, int] = {}
    msg = Pong(1, 0)
    big = FlowInstall(1, "p", (1,), (), (), 0.0, 0.0, 0, b"\x00" * size)
    # bound: both HWMs plus what the kernel's unix-socket buffers (a few hundred KiB) can hold
    limit = 2 * hwm + (4 * 1024 * 1024) // size
    sent = 0
    while sockets.send_msg(push, big, counters=counters):
        sent += 1
        assert sent < limit, "send never reported a full queue"
    assert sent >= hwm
    assert counters == {"backchannel_send_full": 1}
    assert not sockets.send_msg(push, msg, counters=counters)
    assert counters["backchannel_send_full"] == 2
    # the receiver wakes up: the queue drains and sends succeed again
    dec = Decoder()
    got = []
    while pull.poll(200):
        got += sockets.recv_msgs(pull, dec, max_n=1000)
    assert got == [big] * sent  # nothing accepted was lost, nothing refused was sent
    assert sockets.send_msg(push, msg, counters=counters)
    assert _recv_all(pull, dec, 1) == [msg]
    push.close()
    pull.close()


def test_xpub_broadcast_waits_for_subscribers_and_counts_a_full_subscriber(ctx, rt):
    pub = sockets.bcast_pub(ctx, rt, "shell", hwm=4)
    subs = [sockets.bcast_sub(ctx, rt, ["shell"], hwm=4) for _ in range(2)]
    assert sockets.wait_subscribers(pub, 2, timeout_ms=5000) == 2
    dec = Decoder()
    assert sockets.send_msg(pub, InvalidateTags(("r1",), 0))
    for sub in subs:
        assert _recv_all(sub, dec, 1) == [InvalidateTags(("r1",), 0)]
    counters: dict[str, int] = {}
    big = FlowInstall(1, "p", (1,), (), (), 0.0, 0.0, 0, b"\x00" * 65536)
    sent = 0
    while sockets.send_msg(pub, big, counters=counters):  # XPUB_NODROP: no silent drop
        sent += 1
        assert sent < 1000
    assert counters == {"backchannel_send_full": 1}
    for s in (pub, *subs):
        s.close()


def test_router_dealer_control_and_unroutable(ctx, rt):
    router = sockets.control_router(ctx, rt)
    dealer = sockets.control_dealer(ctx, rt, "worker-0")
    dec = Decoder()
    counters: dict[str, int] = {}
    assert sockets.send_msg(dealer, Ping(5, 1))
    assert router.poll(5000)
    assert sockets.recv_routed(router, dec) == [(b"worker-0", Ping(5, 1))]
    assert sockets.send_to(router, b"worker-0", StatsRequest(9), counters=counters)
    assert _recv_all(dealer, dec, 1) == [StatsRequest(9)]
    assert not sockets.send_to(router, b"nobody", Shutdown(), counters=counters)
    assert counters == {"backchannel_send_unroutable": 1}
    dealer.send_multipart([b"a", b"b"])  # three parts at the router: rejected
    assert router.poll(5000)
    assert sockets.recv_routed(router, dec) == []
    assert dec.counters["backchannel_rejected_multipart"] == 1
    dealer.close()
    router.close()
