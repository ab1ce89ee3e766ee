"""Log levels at run time: the one function every process (supervisor, datapath, workers) uses when an
operator asks ``shardnet ctl log-level``.  Workers may not import engine/, so it lives here."""

from __future__ import annotations

import logging

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def set_level(level: str) -> str:
    """Set this process's root log level; returns the level now.  ValueError for an unknown name."""
    name = str(level).upper()
    if name not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (one of {', '.join(LEVELS)})")
    root = logging.getLogger()
    root.setLevel(name)
    return logging.getLevelName(root.level)
