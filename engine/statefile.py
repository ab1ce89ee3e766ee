"""The agent's flow-state file: the state of its workers, saved so connections survive an agent restart.

Owns the file format: a header line ``SHARDNET-STATE 2``, then chunks, each a 4-byte big-endian length and one
encoded FlowStateBatch (backchannel codec) of at most CHUNK entries — so neither writing nor restoring ever
holds one message of the whole state (messages are capped at 4 MiB on the sockets), and a snapshot is
written chunk by chunk as the workers' pages arrive (``StateWriter``).  A file of the first format (one
encoded FlowStateBatch, no header) is still read.

Written atomically: a temporary file with a random name in the same directory (``tempfile.mkstemp``: created
exclusively, mode 0600, so nobody can plant or pre-open it), then renamed over the old file, so a reader sees
the old file or the new one, never a part.  It is not fsynced (it is written every second, from the service
thread): a power loss may lose the last snapshots.  The file holds connection state (addresses, ports, NAT
bindings): it is 0600, and a directory this creates is 0700.  The supervisor decides when to snapshot and whom
to restore to.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile

from backchannel import messages as m
from backchannel.codec import DecodeError, decode, new_packer

MAGIC = b"SHARDNET-STATE 2\n"
CHUNK = 4096                                   # entries per chunk (~250 KB encoded)
MAX_CHUNK_BYTES = 4 * 1024 * 1024              # a longer chunk is a corrupt file
_LEN = struct.Struct(">I")


class StateFileError(Exception):
    pass


def read_chunks(path: str) -> list[bytes] | None:
    """The file's chunks, still encoded (``decode_chunk`` each), None when there is no file; StateFileError when
    it cannot be read or its framing is broken."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateFileError(f"{path}: {e}") from None
    if not data.startswith(MAGIC):
        return [data]                          # the first format: one batch
    chunks, pos = [], len(MAGIC)
    while pos < len(data):
        if pos + 4 > len(data):
            raise StateFileError(f"{path}: truncated chunk header at byte {pos}")
        (n,) = _LEN.unpack_from(data, pos)
        pos += 4
        if n > MAX_CHUNK_BYTES or pos + n > len(data):
            raise StateFileError(f"{path}: bad chunk length {n} at byte {pos - 4}")
        chunks.append(data[pos:pos + n])
        pos += n
    return chunks


def decode_chunk(data: bytes, path: str = "state file") -> m.FlowStateBatch:
    try:
        msg = decode(data)
    except DecodeError as e:
        raise StateFileError(f"{path}: {e}") from None
    if type(msg) is not m.FlowStateBatch:
        raise StateFileError(f"{path}: not a flow-state batch")
    return msg


def read_state(path: str) -> m.FlowStateBatch | None:
    """Every saved entry in one batch (for small files and tests), None when there is no file; StateFileError
    when it cannot be read or decoded."""
    chunks = read_chunks(path)
    if chunks is None:
        return None
    entries: list = []
    for c in chunks:
        entries.extend(decode_chunk(c, path).entries)
    return m.FlowStateBatch(tuple(entries), -1)


class StateWriter:
    """A new state file, written chunk by chunk (``add``), in place at ``commit`` (or removed at ``abort``).
    Raises OSError (the temporary file is removed then)."""

    def __init__(self, path: str):
        self.path = path
        self.entries = 0                       # written so far
        self._buf: list = []
        self._pack = new_packer().pack
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        try:
            self._f = os.fdopen(fd, "wb")
            os.fchmod(self._f.fileno(), 0o600)   # mkstemp's mode already; stated, not assumed
            self._f.write(MAGIC)
        except BaseException:
            self.abort()
            raise

    def add(self, entries) -> None:
        """Append FlowStateEntry records or their wire rows (kind, key, value, expires_at) — a DumpStatePage
        answer's entries as they came, packed as they are (the reader decodes and checks every chunk); written
        out in chunks of CHUNK entries."""
        self._buf.extend(entries)
        while len(self._buf) >= CHUNK:
            self._flush(CHUNK)

    def _flush(self, n: int) -> None:
        chunk, self._buf = self._buf[:n], self._buf[n:]
        try:
            # the wire form of FlowStateBatch(chunk, -1): [TAG, [entry fields, ...], origin] (a nested message
            # travels as its bare field array), so the rows need no FlowStateEntry built around them
            data = self._pack((m.FlowStateBatch.TAG, chunk, -1))
            self._f.write(_LEN.pack(len(data)))
            self._f.write(data)
        except BaseException:
            self.abort()
            raise
        self.entries += len(chunk)

    def commit(self) -> None:
        if self._buf:
            self._flush(len(self._buf))
        try:
            self._f.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            self._f.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


def write_state(path: str, entries) -> None:
    """Replace the file with ``entries`` (FlowStateEntry records), atomically; the file is mode 0600.  Raises
    OSError (the temporary file is removed then)."""
    w = StateWriter(path)
    w.add(entries)
    w.commit()
