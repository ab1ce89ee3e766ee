"""The supervisor's service thread: the one thread that touches the agent's sockets.

Owns the supervisor's sockets (the PULL inbox "supervisor", one PUSH to the datapath and to each worker), the
wake pipe, the command queue (public calls, from any thread), the change queue (store callbacks, from the
store's thread), and the commands in flight (``_pending``: req_id → targets, answers so far, future).

One loop (``_run``) polls the inbox and the wake pipe, then:
- runs the callbacks of the store calls that finished (engine/storecalls.py: the store is never called on this
  thread, so a store outage never stalls it);
- hands the workers' requests and the queued store changes to the store shell (engine/storeshell.py), takes
  Ready from every child (engine/pool.py) and Answer / StatsReply from anyone;
- runs the queued commands: "send" (one message to one process), "ask" (a command to several, answered
  through a future), "snapshot" (engine/persistence.py), "shutdown";
- pushes awaited fragments once an edit settled (SETTLE_S after its last record), takes the periodic
  flow-state snapshot, and every CHECK_S restarts dead workers and ticks the replicated tables.

Every inbox message, queued store change and periodic duty runs under the loop guard (backchannel/guard.py):
what one raises is counted as ``supervisor_handler_errors_<Type>`` (``_relay``, ``_topology_changed``,
``_command_<what>``, ``_settled``, ``_snapshot``, ``_check`` for the others), logged rate-limited, and the
thread goes on; a command that raises completes its future with the error.

Commands that want an answer go through ``_ask`` only: it allocates a non-zero req_id, registers the pending
future and sends ``make_msg(req_id)`` to each target; req_id 0 means "no answer wanted".  Pending commands are
bounded: at most ``cfg.max_pending_requests`` at a time (beyond, the future fails at once with ServiceBusy,
counted ``supervisor_requests_refused``), and one unanswered after its timeout (the caller's, else
``cfg.request_timeout_s``: a dead or restarted child never answers) fails with RequestExpired and is forgotten
(``supervisor_requests_expired``); an answer that comes later is dropped (``supervisor_late_answers``).
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future

import zmq

from backchannel import messages as m
from backchannel.codec import Decoder
from backchannel.guard import Guard
from backchannel.sockets import DATAPATH, SUPERVISOR, pull_bind, push_connect, recv_msgs, send_msg, worker_role
from engine.storecalls import StoreCalls
from engine.storeshell import StoreShell

DP = m.DATAPATH_INDEX
SETTLE_S = 0.05        # quiet time after a topology change before pushing objects workers wait for
CHECK_S = 0.2          # how often dead workers are looked for and the replicated tables ticked
POLL_MS = 200          # poll timeout when nothing is due (public calls and store callbacks wake the loop)
SETTLE_POLL_MS = 10
CALL_TIMEOUT_S = 10.0


class ServiceNotRunning(RuntimeError):
    pass


class ServiceBusy(RuntimeError):
    """Too many commands wait for their answers."""


class RequestExpired(TimeoutError):
    """A command was not answered by all its targets in time."""


class Service:
    def __init__(self, cfg, counters: dict):
        self.cfg = cfg
        self.counters = counters
        self._cmds: queue.Queue = queue.Queue()
        self._changes: queue.Queue = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._pending: dict[int, tuple[set, dict, Future, float]] = {}   # req_id → targets, answers, future, deadline
        for name in ("supervisor_requests_expired", "supervisor_requests_refused", "supervisor_late_answers"):
            counters.setdefault(name, 0)
        self._req = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._zctx: zmq.Context | None = None
        self.shell: StoreShell | None = None
        self.calls: StoreCalls | None = None
        self.guard = Guard("supervisor", counters)
        self.on_restarted: Callable[[int], None] | None = None   # a restarted child said Ready (this thread)
        self.dp_log_level: str | None = None           # the datapath's level set at run time (a restart gets it)

    def open(self, rt, *, mirror, tables, allocator, pool, persistence) -> None:
        """Bind the inbox in ``rt`` (a RuntimeDir) and connect to every child's, before they are spawned."""
        self.calls = StoreCalls(self.counters, self.wake)
        self.shell = StoreShell(self.cfg, self.counters, mirror, tables, allocator, self._send, self.calls)
        self.tables, self.pool, self.persistence = tables, pool, persistence
        self._zctx = zmq.Context()
        self._inbox = pull_bind(self._zctx, rt, SUPERVISOR)
        self._to: dict[int, zmq.Socket] = {DP: push_connect(self._zctx, rt, DATAPATH)}
        for i in range(self.cfg.workers):
            self._to[i] = push_connect(self._zctx, rt, worker_role(i))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="shardnet-supervisor", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- any thread ------------------------------------------------------------------------------------------
    def wake(self) -> None:
        """Wake the service thread now (it otherwise sleeps in poll until a socket has input)."""
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass                                       # the pipe is full: a wake-up is pending anyway

    def on_change(self, kind: str, name: str) -> None:
        """The mirror's callback (store thread): topology object ``kind``/``name`` changed."""
        self._changes.put(("topology", kind, name))
        self.wake()

    def relay(self, msg) -> None:
        """The replicated tables' callback (store thread): an entry to relay to every worker."""
        self._changes.put(("relay", msg))
        self.wake()

    def call(self, what: str, arg, wait: bool = True):
        """Run command ``what`` on the service thread; its result, or its future when ``wait`` is False."""
        if not self.alive:
            raise ServiceNotRunning("agent is not running")
        fut: Future = Future()
        self._cmds.put((what, arg, fut))
        self.wake()
        return fut.result(CALL_TIMEOUT_S) if wait else fut

    def shutdown(self, timeout: float = 10.0) -> None:
        """Send Shutdown to every child and end the loop."""
        if self.alive:
            self._cmds.put(("shutdown", None, None))
            self.wake()
            self._thread.join(timeout)

    def close(self) -> None:
        if self.calls is not None:
            self.calls.close()
        if self._zctx is not None:
            for s in [self._inbox, *self._to.values()]:
                s.close(0)
            self._zctx.term()
            self._zctx = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- the loop (service thread) ---------------------------------------------------------------------------
    def _run(self) -> None:
        decoder = Decoder()
        guard = self.guard
        poller = zmq.Poller()
        poller.register(self._inbox, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        next_check = 0.0
        changed_at = None
        while True:
            for sock, _ in poller.poll(POLL_MS if changed_at is None else SETTLE_POLL_MS):
                if sock == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                else:
                    guard.run(self._handle, recv_msgs(self._inbox, decoder, 256))
            self.calls.drain(guard)
            if self._drain_changes():
                changed_at = time.monotonic()
            if not self._drain_commands():
                return
            now = time.monotonic()
            if changed_at is not None and now - changed_at >= SETTLE_S:
                changed_at = None                      # the records of one edit arrive one by one
                guard.call("_settled", self.shell.push_awaited)
            if self.persistence.due(now):
                guard.call("_snapshot", self.persistence.snapshot, self._ask)
            if now >= next_check:
                next_check = now + CHECK_S
                guard.call("_check", self._check, now)

    def _check(self, now: float) -> None:
        self.expire_pending(now)
        self.pool.restart_dead(self._send_dp)
        self.shell.tick()

    def _send(self, target: int, msg) -> bool:
        return send_msg(self._to[target], msg)

    send_now = _send                                   # for callbacks that run on this thread (on_restarted)

    def _send_dp(self, msg) -> bool:
        return send_msg(self._to[DP], msg)

    def _drain_changes(self) -> bool:
        """Hand what the store reported to the shell; True when the topology changed."""
        changed = False
        while True:
            try:
                item = self._changes.get_nowait()
            except queue.Empty:
                return changed
            if item[0] == "relay":                     # learned by another agent, or removed
                self.guard.call("_relay", self.shell.relay, item[1])
            else:
                self.guard.call("_topology_changed", self.shell.topology_changed, item[1], item[2])
                changed = True

    def _drain_commands(self) -> bool:
        """Run the queued commands; False on shutdown (Shutdown was sent to every child)."""
        while True:
            try:
                what, arg, fut = self._cmds.get_nowait()
            except queue.Empty:
                return True
            if what == "shutdown":
                for s in self._to.values():
                    send_msg(s, m.Shutdown())
                return False
            try:
                if what == "send":                     # arg: (target, msg)
                    fut.set_result(self._send(*arg))
                elif what == "ask":                    # arg: (targets, make_msg[, timeout])
                    self._ask(*arg, fut=fut)
                elif what == "snapshot":
                    self.persistence.snapshot(self._ask, then=fut)
                else:
                    fut.set_exception(ValueError(f"unknown command {what!r}"))
            except Exception as e:                     # the caller gets the error; the thread goes on
                self.guard.failed(f"_command_{what}", e)
                if not fut.done():
                    fut.set_exception(e)

    def _ask(self, targets: Iterable[int], make_msg: Callable[[int], tuple], timeout: float | None = None,
             fut: Future | None = None) -> Future:
        """Send ``make_msg(req_id)`` to each target; the future completes with {target: answer body}, or fails
        with ServiceBusy (too many pending) or RequestExpired (not all answered within ``timeout`` seconds,
        default ``cfg.request_timeout_s``)."""
        fut = Future() if fut is None else fut
        if len(self._pending) >= self.cfg.max_pending_requests:
            self.counters["supervisor_requests_refused"] += 1
            fut.set_exception(ServiceBusy(f"{len(self._pending)} commands wait for answers"))
            return fut
        targets = set(targets)
        req = next(self._req)
        deadline = time.monotonic() + (self.cfg.request_timeout_s if timeout is None else timeout)
        self._pending[req] = (targets, {}, fut, deadline)
        for t in targets:
            msg = make_msg(req)
            if t == DP and type(msg) is m.SetLogLevel:
                self.dp_log_level = msg.level
            self._send(t, msg)
        return fut

    def _answered(self, req_id: int, sender: int, body) -> None:
        pending = self._pending.get(req_id)
        if pending is None:
            self.counters["supervisor_late_answers"] += 1
            return
        targets, answers, fut, _deadline = pending
        answers[sender] = body
        if targets <= answers.keys():
            del self._pending[req_id]
            fut.set_result(answers)

    def expire_pending(self, now: float) -> int:
        """Fail and forget the commands unanswered past their deadline; how many."""
        late = [req for req, (_t, _a, _f, deadline) in self._pending.items() if now >= deadline]
        for req in late:
            targets, answers, fut, _deadline = self._pending.pop(req)
            self.counters["supervisor_requests_expired"] += 1
            if not fut.done():
                fut.set_exception(RequestExpired(
                    f"request {req}: no answer from {sorted(targets - answers.keys())} in time"))
        return len(late)

    def _handle(self, msg) -> None:
        t = type(msg)
        if t is m.Answer:
            self._answered(msg.req_id, msg.sender, msg.body)
        elif t is m.StatsReply:
            self._answered(msg.req_id, msg.worker, msg.counters)
        elif t is m.Ready:
            if self.pool.ready(msg.sender, msg.pid) and self.on_restarted is not None:
                self.guard.call("_restarted", self.on_restarted, msg.sender)
        else:
            self.shell.handle(msg)
