"""Entry point of the agent's child processes: ``python -m engine.procmain ROLE CONFIG_JSON``.

The supervisor starts the datapath and the workers as plain subprocesses (not multiprocessing), so an embedding
program needs no ``if __name__ == "__main__"`` guard and every child starts from a clean interpreter.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> int:
    role, raw = argv[0], json.loads(argv[1])
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


def _run(role: str, raw: dict) -> int:
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
