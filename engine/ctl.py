"""The agent's control socket: ``shardnet ctl`` talks to a running agent through it.

Owns a unix stream socket (mode 0600; by default ``ctl.sock`` in the agent's private 0700 runtime directory,
or ``AgentConfig.ctl``), the thread that serves it, and a pointer file ``<state dir>/shardnet/<host>.ctl``
holding the socket's path so that ``shardnet ctl --host NAME`` finds it.

Protocol: JSON lines.  A request is ``{"cmd": NAME, "args": {...}}``; the answer ``{"ok": true, "result": ...}``
or ``{"ok": false, "error": "..."}``.  One thread per connection; each command goes through the embedding API
(Agent.command and friends), i.e. through the service thread as messages to the datapath and the workers, so
serving a command never blocks their loops.  The commands themselves are in engine/ctlcommands.py.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading

from engine.ctlcommands import COMMANDS, CtlError

log = logging.getLogger(__name__)
MAX_REQUEST = 1 << 16


def pointer_path(cfg) -> str | None:
    """Where ``shardnet ctl --host NAME`` looks for the socket of agent NAME."""
    if not cfg.host:
        return None
    return os.path.join(os.path.dirname(cfg.state_path()), f"{cfg.host}.ctl")


class ControlServer:
    def __init__(self, agent, path: str, pointer: str | None = None):
        self.agent = agent
        self.path = path
        self.pointer = pointer
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self.state: dict = {}                          # what commands keep between calls (stats --rate)
        self._conns: set[socket.socket] = set()

    def start(self) -> ControlServer:
        if os.path.exists(self.path):
            os.unlink(self.path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)                          # the socket file is born 0600
        try:
            s.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        s.listen(8)
        self.sock = s
        self.thread = threading.Thread(target=self._accept, name="shardnet-ctl", daemon=True)
        self.thread.start()
        if self.pointer:
            os.makedirs(os.path.dirname(self.pointer), exist_ok=True)
            tmp = f"{self.pointer}.{os.getpid()}.tmp"
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(self.path + "\n")
            os.replace(tmp, self.pointer)
        return self

    def stop(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self.sock = None
        for c in list(self._conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self.thread is not None:
            self.thread.join(2)
        for p in (self.path,):
            try:
                os.unlink(p)
            except OSError:
                pass
        if self.pointer:
            try:
                with open(self.pointer) as f:
                    mine = f.read().strip() == self.path
                if mine:
                    os.unlink(self.pointer)
            except OSError:
                pass

    def _accept(self) -> None:
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="shardnet-ctl-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        self._conns.add(conn)
        try:
            f = conn.makefile("rwb")
            while True:
                line = f.readline(MAX_REQUEST + 1)
                if not line:
                    return
                f.write(json.dumps(self.handle_line(line), separators=(",", ":")).encode() + b"\n")
                f.flush()
        except OSError:
            return
        finally:
            self._conns.discard(conn)
            conn.close()

    def handle_line(self, line: bytes) -> dict:
        if len(line) > MAX_REQUEST:
            return {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"}
        try:
            req = json.loads(line)
            cmd, args = req["cmd"], req.get("args") or {}
            if not isinstance(args, dict):
                raise TypeError("args: an object")
        except (ValueError, KeyError, TypeError) as e:
            return {"ok": False, "error": f"bad request: {e}"}
        fn = COMMANDS.get(cmd)
        if fn is None:
            return {"ok": False, "error": f"unknown command {cmd!r} (known: {', '.join(sorted(COMMANDS))})"}
        try:
            return {"ok": True, "result": fn(self.agent, self.state, **args)}
        except CtlError as e:
            return {"ok": False, "error": str(e)}
        except TypeError as e:
            return {"ok": False, "error": f"{cmd}: {e}"}
        except Exception as e:                          # noqa: BLE001 - one bad command must not end the server
            log.exception("ctl command %s failed", cmd)
            return {"ok": False, "error": f"{cmd}: {type(e).__name__}: {e}"}
