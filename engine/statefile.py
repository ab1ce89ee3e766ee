"""The agent's flow-state file: the state of its workers, saved so connections survive an agent restart.

Owns the file format: one encoded FlowStateBatch (backchannel codec), written atomically (temporary file, then
rename).  The supervisor decides when to snapshot and whom to restore to.
"""

from __future__ import annotations

import os

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
    """Replace the file with ``entries`` (FlowStateEntry records).  Raises OSError."""
    tmp = f"{path}.tmp"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(encode(m.FlowStateBatch(tuple(entries), -1)))
    os.replace(tmp, path)
