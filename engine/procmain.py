"""Entry point of the agent's child processes: ``python -m engine.procmain ROLE CONFIG_JSON``.

The supervisor starts the datapath and the workers as plain subprocesses (not multiprocessing), so an embedding
program needs no ``if __name__ == "__main__"`` guard and every child starts from a clean interpreter.
CONFIG_JSON is the child's config (DatapathConfig / WorkerConfig, by field) plus ``"log"``: its logging
settings (engine/logs.py ``child_settings``), applied here before the role starts.
"""

from __future__ import annotations

import json
import logging
import os
import sys

log = logging.getLogger("engine.procmain")     # run as __main__


def main(argv: list[str]) -> int:
    role, raw = argv[0], json.loads(argv[1])
    _logging(role, raw)
    prof_dir = os.environ.get("SHARDNET_PROFILE_DIR")
    if prof_dir:                                  # developer aid: a cProfile dump per process at exit
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        try:
            return _run(role, raw)
        finally:
            prof.disable()
            prof.dump_stats(os.path.join(prof_dir, f"{role}-{raw.get('index', 'dp')}-{os.getpid()}.prof"))
    return _run(role, raw)


def _logging(role: str, raw: dict) -> None:
    from engine import logs

    settings = raw.pop("log", None) or {}
    name = "datapath" if role == "datapath" else f"{role}-{raw.get('index', '?')}"
    logs.setup(name, settings.get("level", "INFO"), settings.get("file"),
               repeat_s=settings.get("repeat_s", logs.REPEAT_S))


def _run(role: str, raw: dict) -> int:
    name = role if role == "datapath" else f"worker {raw.get('index')}"
    log.info("%s started (pid %d)", name, os.getpid())
    try:
        status = _role(role, raw)
    except Exception:                                  # the last resort: the traceback goes to the log too
        log.exception("%s (pid %d) crashed", name, os.getpid())
        return 1
    log.info("%s stopped (pid %d)", name, os.getpid())
    return status


def _role(role: str, raw: dict) -> int:
    if role == "datapath":
        from engine.dpproc import DatapathConfig, datapath_main

        datapath_main(DatapathConfig(**raw))
    elif role == "worker":
        from workers.loop import worker_main
        from workers.worker import WorkerConfig

        worker_main(WorkerConfig(**raw))
    else:
        print(f"unknown role {role!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
