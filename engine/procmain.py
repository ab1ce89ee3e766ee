"""Entry point of the agent's child processes: ``python -m engine.procmain ROLE CONFIG_JSON``.

The supervisor starts the datapath and the workers as plain subprocesses (not multiprocessing), so an embedding
program needs no ``if __name__ == "__main__"`` guard and every child starts from a clean interpreter.
CONFIG_JSON is the child's config (DatapathConfig / WorkerConfig, by field) plus ``"log"``: its logging
settings (engine/logs.py ``child_settings``), applied here before the role starts.

No child outlives its supervisor: the pool hands every child the read end of its *lifeline* pipe (the fd in
``SHARDNET_LIFELINE_FD``; only the supervisor's process holds the write end).  A watcher thread blocks reading
it; EOF means the supervisor's process is gone (exited, crashed, ``kill -9``): the child removes what the
supervisor can no longer remove (``SHARDNET_CLEANUP``: the runtime directory with its sockets, the control
socket, the ctl pointer file if it still points to that socket) and exits at once.  (Not PR_SET_PDEATHSIG:
that fires when the parent *thread* that forked exits, and an embedding program may start the agent from a
short-lived thread.)

Priority: the pool puts the child's nice value in ``SHARDNET_NICE`` (AgentConfig ``datapath_nice``, default
-10 as ovs-ctl gives ovs-vswitchd, and ``worker_nice``, default 0); the child sets it on itself first thing,
before it starts any thread (the lifeline watcher, ZMQ's I/O threads), so every thread of the process
inherits it.  Under overload the datapath
then gets the CPU before the simulation workers, as Open vSwitch's PMD threads do before its handlers.
The datapath also gets a scheduling group of its own (``_set_nice``: autogroups) when its value is below
the workers'.  A
value the process may not take (a negative one without root or CAP_SYS_NICE) leaves it as it was, with one
warning in the log.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading

log = logging.getLogger("engine.procmain")     # run as __main__


def main(argv: list[str]) -> int:
    role, raw = argv[0], json.loads(argv[1])
    _logging(role, raw)
    _set_nice()
    _watch_lifeline()
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


AUTOGROUP = "/proc/self/autogroup"


def _set_nice() -> None:
    """This process's nice value from ``SHARDNET_NICE`` (absolute, like setpriority(2)); EPERM → unchanged.
    With ``SHARDNET_OWN_GROUP`` (the datapath, when it is to run before the workers) the process first leaves
    the agent's session (setsid) and gives its own autogroup the same nice value: with the kernel's
    autogroup scheduling (sched_autogroup_enabled) a nice value only weighs inside its session, and every other
    session — the supervisor's with the workers, each program on the host — gets an equal share whatever its
    processes' nice values.  The lifeline, not the session, ties the child to its supervisor."""
    want = os.environ.get("SHARDNET_NICE")
    if not want:
        return
    try:
        value = int(want)
    except ValueError:
        log.warning("SHARDNET_NICE=%r is not an integer: priority unchanged", want)
        return
    if os.environ.get("SHARDNET_OWN_GROUP"):
        try:
            os.setsid()
        except OSError:                                # already a group leader (started by hand): keep it
            pass
        if os.path.exists(AUTOGROUP):
            try:
                with open(AUTOGROUP, "w") as f:
                    f.write(str(value))
            except OSError as e:                       # EPERM: a negative value without CAP_SYS_NICE
                log.warning("cannot set the autogroup's nice %s (%s): its weight unchanged", want, e.strerror)
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) != value:
            os.setpriority(os.PRIO_PROCESS, 0, value)
    except OSError as e:                               # EPERM/EACCES: a negative value without the privilege
        log.warning("cannot set nice %s (%s): priority unchanged", want, e.strerror)


def _watch_lifeline() -> None:
    fd = os.environ.get("SHARDNET_LIFELINE_FD")
    if not fd:
        return                                         # started by hand: nobody to outlive
    cleanup = json.loads(os.environ.get("SHARDNET_CLEANUP") or "[]")

    def watch() -> None:
        try:
            while os.read(int(fd), 64):
                pass
        except OSError:
            pass
        log.error("the supervisor is gone (its lifeline closed): exiting")
        for item in cleanup:                           # a path, or [a pointer file, what it must still say]
            path, want = (item, None) if isinstance(item, str) else item
            try:
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                elif want is None or _read(path) == want:
                    os.unlink(path)
            except OSError:
                pass
        logging.shutdown()
        os._exit(3)

    threading.Thread(target=watch, name="shardnet-lifeline", daemon=True).start()


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


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
