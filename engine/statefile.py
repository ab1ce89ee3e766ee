"""The agent's flow-state file: the state of its workers, saved so connections survive an agent restart.

Owns the file format: one encoded FlowStateBatch (backchannel codec), written atomically: a temporary file with
a random name in the same directory (``tempfile.mkstemp``: created exclusively, mode 0600, so nobody can plant
or pre-open it), then renamed over the old file, so a reader sees the old file or the new one, never a part.
It is not fsynced (it is written every second, from the service thread): a power loss may lose the last
snapshots.  The file holds connection state (addresses, ports, NAT bindings): it is 0600, and a directory this
creates is 0700.  The supervisor decides when to snapshot and whom to restore to.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

from backchannel import messages as m
from backchannel.codec import DecodeError, decode, encode


class StateFileError(Exception):
    pass


def read_state(path: str) -> m.FlowStateBatch | None:
    """The saved batch, None when there is no file; StateFileError when it cannot be read or decoded."""
    try:
        with open(path, "rb") as f:
            msg = decode(f.read())
    except FileNotFoundError:
        return None
    except (OSError, DecodeError) as e:
        raise StateFileError(f"{path}: {e}") from None
    if type(msg) is not m.FlowStateBatch:
        raise StateFileError(f"{path}: not a flow-state batch")
    return msg


def write_state(path: str, entries) -> None:
    """Replace the file with ``entries`` (FlowStateEntry records), atomically; the file is mode 0600.  Raises
    OSError (the temporary file is removed then)."""
    data = encode(m.FlowStateBatch(tuple(entries), -1))
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)             # mkstemp's mode already; stated, not assumed
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
