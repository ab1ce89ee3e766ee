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
from backchannel.messages import FlowPut, PacketOut, Ping, Pong


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
    pull = sockets.pull_bind(ctx, rt, sockets.DATAPATH)
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
    assert rt.endpoint(sockets.DATAPATH).endswith("/datapath.ipc")
    assert rt.endpoint(sockets.SUPERVISOR).endswith("/supervisor.ipc")
    for bad in ("", "../x", "a/b", "-x", " x", None, "x" * 100):
        with pytest.raises(ValueError):
            rt.endpoint(bad)


def test_endpoint_path_too_long(tmp_path):
    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    with sockets.RuntimeDir(base=deep) as rt, pytest.raises(ValueError, match="too long"):
        rt.endpoint(sockets.DATAPATH)


def test_socket_options(ctx, rt):
    s = sockets.pull_bind(ctx, rt, sockets.DATAPATH, hwm=17)
    assert (s.getsockopt(zmq.LINGER), s.getsockopt(zmq.SNDHWM), s.getsockopt(zmq.RCVHWM)) == (0, 17, 17)
    assert s.getsockopt(zmq.MAXMSGSIZE) == sockets.MAX_MSG_SIZE
    s.close()
    with pytest.raises(ValueError):
        sockets.make_socket(ctx, zmq.PUSH, 0)


def test_push_pull_round_trip_with_batches(ctx, rt):
    role = sockets.worker_role(0)
    pull, push = sockets.pull_bind(ctx, rt, role), sockets.push_connect(ctx, rt, role)
    dec = Decoder()
    fp = FlowPut(1, (), (("drop",),), (), 0.0, 0.0)
    assert sockets.send_msg(push, fp)
    assert sockets.send_many(push, [Ping(1, 1), Ping(2, 2)])
    assert _recv_all(pull, dec, 3) == [fp, Ping(1, 1), Ping(2, 2)]
    assert dec.counters["backchannel_decoded"] == 3
    push.close()
    pull.close()


def test_garbage_and_multipart_frames_are_counted_and_skipped(ctx, rt):
    pull = sockets.pull_bind(ctx, rt, sockets.DATAPATH)
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
    big = PacketOut((("output", "p"),), b"\x00" * size)  # the message that carries a frame
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
