"""ZeroMQ socket setup for the backchannel: every socket of shardnet is created here, and nowhere else.

Owns: the private runtime directory that holds the ipc endpoints (``RuntimeDir``), one factory per role, the
socket options (bounded queues, LINGER 0, max message size), and the send/receive helpers that go through
the codec and count instead of raising.

Wiring: every process binds one PULL inbox named after its role and connects one PUSH to each peer it sends
to (the side that owns the queue binds; ZMQ reconnects the connecting side by itself):

  datapath    PULL "datapath"     ← installs, executes, packet-outs, deletes, relays from the workers;
                                    commands from the supervisor; frames from a traffic source
  worker-<i>  PULL "worker-<i>"   ← upcall batches and relayed messages from the datapath; fragments,
                                    leases, table entries and commands from the supervisor
  supervisor  PULL "supervisor"   ← requests of the workers, answers of everyone

Queue bounds, in messages per pipe (a frame: one message or one batch frame).  What can wait between a
sender and a stalled receiver is about SNDHWM + RCVHWM plus what the kernel's unix-socket buffers hold
(~200 KiB each way): beyond that a non-blocking send returns False and counts ``backchannel_send_full``.

  DATA_HWM    1024   upcall batches / installs (≤ 64 upcalls a batch: ≤ 64k packets queued per worker)
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
MAX_MSG_SIZE = 4 * 1024 * 1024

# the roles: every process binds one PULL inbox named after its role (defined here, and only here)
DATAPATH = "datapath"
SUPERVISOR = "supervisor"

_ROLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAX_SUN_PATH = 107  # sockaddr_un.sun_path is 108 bytes with the NUL

# process-wide default for the send counters when the caller passes none
SEND_COUNTERS: dict[str, int] = {}


def worker_role(index: int) -> str:
    return f"worker-{index}"


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
