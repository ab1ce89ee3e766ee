"""ZeroMQ socket setup for the backchannel: every socket of shardnet is created here, and nowhere else.

Owns: the private runtime directory that holds the ipc endpoints (``RuntimeDir``), one factory per role, the
socket options (bounded queues, LINGER 0, max message size), and the send/receive helpers that go through
the codec and count instead of raising.

Wiring (who binds: the side that owns the queue; ZMQ reconnects the connecting side by itself):

  upcalls     dispatcher PUSH --connect--> worker-<i> PULL (bind)      one PUSH per worker: the dispatcher
              (datapath PUSH --connect--> dispatcher PULL, if they are separate processes)   picks the worker
  installs    worker PUSH --connect--> datapath PULL (bind)            fan-in
  broadcasts  every sender XPUB (bind bcast-<name>) <--connect-- SUB of every receiver
              XPUB_NODROP: a full subscriber makes send fail (counted) instead of a silent PUB drop;
              XPUB_VERBOSE: ``wait_subscribers`` can see each subscriber arrive (no slow-joiner loss)
  control     supervisor ROUTER (bind control, ROUTER_MANDATORY) <--connect-- DEALER with identity
              "worker-<i>" / "datapath"; an unknown identity is counted, not silently dropped

Queue bounds, in messages per pipe (a frame: one message or one batch frame).  What can wait between a
sender and a stalled receiver is about SNDHWM + RCVHWM plus what the kernel's unix-socket buffers hold
(~200 KiB each way): beyond that a non-blocking send returns False and counts ``backchannel_send_full``.

  DATA_HWM    1024   upcall batches / installs (≤ 64 upcalls a batch: ≤ 64k packets queued per worker)
  BCAST_HWM   4096   state broadcasts: small, and losing one costs a wrong decision, so more room
  CONTROL_HWM   64   stats, ping, shutdown
  MAX_MSG_SIZE 4 MiB a larger inbound frame makes ZMQ drop that peer (a garbage sender cannot balloon us)
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterable

import zmq

from backchannel.codec import MULTIPART, DecodeError, Decoder, encode, encode_many

DATA_HWM = 1024
BCAST_HWM = 4096
CONTROL_HWM = 64
MAX_MSG_SIZE = 4 * 1024 * 1024

DISPATCHER = "dispatcher"
DATAPATH = "datapath"
CONTROL = "control"

_ROLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAX_SUN_PATH = 107  # sockaddr_un.sun_path is 108 bytes with the NUL

# process-wide default for the send counters when the caller passes none
SEND_COUNTERS: dict[str, int] = {}


def worker_role(index: int) -> str:
    return f"worker-{index}"


def bcast_role(name: str | int) -> str:
    return f"bcast-{name}"


class RuntimeDir:
    """A private directory (mode 0700) that holds the ipc endpoints; removed by ``close`` in the process
    that created it.  A copy sent to a child process (pickling) or made by ``attach`` never removes it."""

    def __init__(self, base: str | os.PathLike | None = None, prefix: str = "shardnet-") -> None:
        self.path = tempfile.mkdtemp(prefix=prefix, dir=base)
        os.chmod(self.path, 0o700)
        self._owner_pid: int | None = os.getpid()

    @classmethod
    def attach(cls, path: str) -> RuntimeDir:
        """Use an existing runtime directory (a child process); ``close`` leaves it in place."""
        rt = cls.__new__(cls)
        rt.path = os.fspath(path)
        rt._owner_pid = None
        return rt

    def __reduce__(self):
        return (RuntimeDir.attach, (self.path,))

    def endpoint(self, role: str) -> str:
        """``ipc://<dir>/<role>.ipc``; ValueError for a bad role name or a path too long for AF_UNIX."""
        if not isinstance(role, str) or not _ROLE.fullmatch(role):
            raise ValueError(f"bad backchannel role name: {role!r}")
        path = os.path.join(self.path, f"{role}.ipc")
        if len(os.fsencode(path)) > _MAX_SUN_PATH:
            raise ValueError(f"ipc path too long for a unix socket ({len(path)} > {_MAX_SUN_PATH}): {path}")
        return f"ipc://{path}"

    @property
    def closed(self) -> bool:
        return not os.path.isdir(self.path)

    def close(self) -> None:
        if self._owner_pid == os.getpid():
            shutil.rmtree(self.path, ignore_errors=True)
            self._owner_pid = None

    def __enter__(self) -> RuntimeDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RuntimeDir({self.path!r}, owner={self._owner_pid is not None})"


# ---------------------------------------------------------------------------------------------------------
# factories


def make_socket(ctx: zmq.Context, kind: int, hwm: int) -> zmq.Socket:
    """The one place a ZMQ socket is created: LINGER 0, SNDHWM = RCVHWM = hwm, MAXMSGSIZE bounded."""
    if hwm < 1:
        raise ValueError("hwm must be >= 1 (0 would mean unbounded)")
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MSG_SIZE)
    return sock


def pull_bind(ctx: zmq.Context, rt: RuntimeDir, role: str, hwm: int = DATA_HWM) -> zmq.Socket:
    sock = make_socket(ctx, zmq.PULL, hwm)
    sock.bind(rt.endpoint(role))
    return sock


def push_connect(ctx: zmq.Context, rt: RuntimeDir, role: str, hwm: int = DATA_HWM) -> zmq.Socket:
    sock = make_socket(ctx, zmq.PUSH, hwm)
    sock.connect(rt.endpoint(role))
    return sock


def upcall_pull(ctx: zmq.Context, rt: RuntimeDir, worker: int, hwm: int = DATA_HWM) -> zmq.Socket:
    """Worker side: where its upcall batches arrive."""
    return pull_bind(ctx, rt, worker_role(worker), hwm)


def upcall_push(ctx: zmq.Context, rt: RuntimeDir, worker: int, hwm: int = DATA_HWM) -> zmq.Socket:
    """Dispatcher side: one per worker."""
    return push_connect(ctx, rt, worker_role(worker), hwm)


def dispatcher_pull(ctx: zmq.Context, rt: RuntimeDir, hwm: int = DATA_HWM) -> zmq.Socket:
    return pull_bind(ctx, rt, DISPATCHER, hwm)


def dispatcher_push(ctx: zmq.Context, rt: RuntimeDir, hwm: int = DATA_HWM) -> zmq.Socket:
    return push_connect(ctx, rt, DISPATCHER, hwm)


def install_pull(ctx: zmq.Context, rt: RuntimeDir, hwm: int = DATA_HWM) -> zmq.Socket:
    """Datapath side: FlowInstall / FlowDelete / PacketOut from all workers."""
    return pull_bind(ctx, rt, DATAPATH, hwm)


def install_push(ctx: zmq.Context, rt: RuntimeDir, hwm: int = DATA_HWM) -> zmq.Socket:
    return push_connect(ctx, rt, DATAPATH, hwm)


def bcast_pub(ctx: zmq.Context, rt: RuntimeDir, name: str | int, hwm: int = BCAST_HWM) -> zmq.Socket:
    """A broadcaster (a worker index, "shell", a host name): XPUB bound at ``bcast-<name>``."""
    sock = make_socket(ctx, zmq.XPUB, hwm)
    sock.setsockopt(zmq.XPUB_NODROP, 1)
    sock.setsockopt(zmq.XPUB_VERBOSE, 1)
    sock.bind(rt.endpoint(bcast_role(name)))
    return sock


def bcast_sub(ctx: zmq.Context, rt: RuntimeDir, names: Iterable[str | int],
              hwm: int = BCAST_HWM) -> zmq.Socket:
    """A receiver of broadcasts from every broadcaster in ``names`` (all messages, no topic filter)."""
    sock = make_socket(ctx, zmq.SUB, hwm)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    for name in names:
        sock.connect(rt.endpoint(bcast_role(name)))
    return sock


def wait_subscribers(pub: zmq.Socket, n: int, timeout_ms: int = 5000) -> int:
    """Block until ``n`` subscriptions reached the XPUB ``pub`` (or the timeout); returns how many did."""
    seen = 0
    while seen < n and pub.poll(timeout_ms, zmq.POLLIN):
        if pub.recv()[:1] == b"\x01":
            seen += 1
    return seen


def control_router(ctx: zmq.Context, rt: RuntimeDir, hwm: int = CONTROL_HWM) -> zmq.Socket:
    sock = make_socket(ctx, zmq.ROUTER, hwm)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.bind(rt.endpoint(CONTROL))
    return sock


def control_dealer(ctx: zmq.Context, rt: RuntimeDir, identity: str, hwm: int = CONTROL_HWM) -> zmq.Socket:
    """A controlled process ("worker-0", "datapath"); the ROUTER addresses it by ``identity``."""
    sock = make_socket(ctx, zmq.DEALER, hwm)
    sock.setsockopt(zmq.IDENTITY, identity.encode())
    sock.connect(rt.endpoint(CONTROL))
    return sock


# ---------------------------------------------------------------------------------------------------------
# send / receive


def _count(counters: dict[str, int] | None, name: str) -> None:
    c = SEND_COUNTERS if counters is None else counters
    c[name] = c.get(name, 0) + 1


def _send(sock: zmq.Socket, parts: list[bytes], flags: int, counters: dict[str, int] | None) -> bool:
    try:
        if len(parts) == 1:
            sock.send(parts[0], flags)
        else:
            sock.send_multipart(parts, flags)
        return True
    except zmq.Again:
        _count(counters, "backchannel_send_full")
    except zmq.ZMQError as e:
        if e.errno != errno.EHOSTUNREACH:
            raise
        _count(counters, "backchannel_send_unroutable")
    return False


def send_msg(sock: zmq.Socket, msg: tuple, flags: int = zmq.NOBLOCK, counters: dict | None = None) -> bool:
    """Send one message.  Non-blocking by default: a full queue returns False and counts
    ``backchannel_send_full``.  A non-message raises EncodeError."""
    return _send(sock, [encode(msg)], flags, counters)


def send_many(sock: zmq.Socket, msgs: Iterable[tuple], flags: int = zmq.NOBLOCK,
              counters: dict | None = None) -> bool:
    """Send several messages as one batch frame (all or none)."""
    return _send(sock, [encode_many(msgs)], flags, counters)


def send_to(router: zmq.Socket, identity: bytes, msg: tuple, flags: int = zmq.NOBLOCK,
            counters: dict | None = None) -> bool:
    """ROUTER → the DEALER called ``identity``; an unknown one counts ``backchannel_send_unroutable``."""
    return _send(router, [identity, encode(msg)], flags, counters)


def recv_msgs(sock: zmq.Socket, decoder: Decoder, max_n: int = 64) -> list:
    """Read up to ``max_n`` frames without blocking and return the messages they decode to.  A bad frame
    (or a multipart one) is counted by ``decoder`` and skipped; nothing here raises on peer input."""
    out: list = []
    for _ in range(max_n):
        try:
            parts = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            break
        if len(parts) != 1:
            decoder.reject(MULTIPART)
            continue
        try:
            out.extend(decoder.decode_many(parts[0]))
        except DecodeError:
            pass
    return out


def recv_routed(router: zmq.Socket, decoder: Decoder, max_n: int = 64) -> list[tuple[bytes, tuple]]:
    """Like ``recv_msgs`` for a ROUTER: returns ``(identity, message)`` pairs."""
    out: list[tuple[bytes, tuple]] = []
    for _ in range(max_n):
        try:
            parts = router.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            break
        if len(parts) != 2:
            decoder.reject(MULTIPART)
            continue
        try:
            out.extend((parts[0], m) for m in decoder.decode_many(parts[1]))
        except DecodeError:
            pass
    return out
