"""Log levels: the one place a level name is checked and a process's level is changed at run time (an
operator's ``shardnet ctl log-level``, in the supervisor, the datapath and the workers alike).  Workers may not
import engine/, so it lives here; engine/logs.py (handlers, files, collapsing repeats) builds on it."""

from __future__ import annotations

import logging

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def check_level(level) -> int:
    """A level name (any case; WARN for WARNING) or number → its number; ValueError for anything else."""
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    name = str(level).upper()
    if name == "WARN":
        name = "WARNING"
    if name not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (known: {', '.join(LEVELS)})")
    return logging.getLevelNamesMapping()[name]


def set_level(level) -> dict:
    """This process's log level, now (every logger that has none of its own: shardnet's and kazoo's).
    Returns {"level": new name, "previous": old name}; ValueError for an unknown level."""
    root = logging.getLogger()
    previous = logging.getLevelName(root.level)
    root.setLevel(check_level(level))
    return {"level": logging.getLevelName(root.level), "previous": previous}
