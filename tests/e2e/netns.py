"""End-to-end harness: network namespaces as VMs and "external" hosts, with veth ends for the datapath.

Owns everything it creates and removes it in ``close``: namespaces (named ``sn-`` + 8 hex digits), the root
ends of veth pairs (deleting one end deletes the pair), TAP devices, and the processes started with
``popen`` (each in its own session; killed by process group id = its own pid, never by name).

- ``NetnsFactory()``: ``factory.vm(address="198.51.100.1/24", mac=..., gateway=None, tx_offload=True)``
  makes a namespace with an interface ``eth0`` whose peer (``vm.host_if``) stays in the root namespace,
  configured for the datapath (up, no address, IPv6 off, arp_ignore=1).  ``factory.namespace()`` makes a
  bare one; ``factory.tap()`` a TAP device in the root namespace.
- ``Namespace.run(cmd)`` / ``popen(cmd)``: ``ip netns exec NAME ...`` (cmd as a list, or a string run with
  ``sh -c``).  ``call(fn, *args)`` runs ``fn`` in a thread that entered the namespace (setns), so sockets
  it opens live there.
- ``check_prerequisites()`` raises E2eError naming what is missing (root, ip, ping, nc, ethtool): the
  fixtures turn that into a test FAILURE, never a skip.

Addresses: 198.51.100.0/24, 203.0.113.0/24 or 10.x only, and 2001:db8::/32 for IPv6; never 192.0.2.0/24 or
fd00::/64 (the machine's own network).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import uuid
from dataclasses import dataclass, field

from engine.datapath import netdev

TOOLS = {"ip": "iproute2", "ping": "iputils-ping", "nc": "netcat-openbsd", "ethtool": "ethtool"}


class E2eError(RuntimeError):
    pass


def check_prerequisites() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("e2e tests need root (network namespaces, veth, AF_PACKET)")
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        problems.append(f"missing tools: install Debian packages {' '.join(missing)} (`make sysdeps`)")
    if not os.path.exists("/dev/net/tun"):
        problems.append("/dev/net/tun is missing (TAP devices)")
    if problems:
        raise E2eError("; ".join(problems))


def short_id() -> str:
    return uuid.uuid4().hex[:8]


@dataclass
class Namespace:
    name: str
    host_if: str | None = None         # the root-namespace end of its eth0 (vm() only)
    ifname: str | None = None
    mac: str | None = None
    ip: str | None = None
    ip6: str | None = None
    procs: list[subprocess.Popen] = field(default_factory=list)

    def _argv(self, cmd: str | list[str]) -> list[str]:
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, cmd: str | list[str], check: bool = True, timeout: float = 60.0, input: bytes | None = None
            ) -> subprocess.CompletedProcess:
        r = subprocess.run(self._argv(cmd), capture_output=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            out = (r.stdout + r.stderr).decode(errors="replace")[-800:]
            raise E2eError(f"in {self.name}: {cmd!r} exited {r.returncode}: {out}")
        return r

    def popen(self, cmd: str | list[str], **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen(self._argv(cmd), start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def call(self, fn, *args, **kw):
        """``fn(*args, **kw)`` in a thread inside this namespace; its result (or exception) comes back."""
        return netdev.in_netns(self.name, fn, *args, **kw)

    def kill_procs(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)      # its own session: pgid == pid
                except ProcessLookupError:
                    pass
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for s in (p.stdout, p.stderr, p.stdin):
                if s is not None:
                    s.close()
        self.procs.clear()


class NetnsFactory:
    def __init__(self):
        self.namespaces: list[Namespace] = []
        self.links: list[str] = []           # root-namespace interfaces to delete
        self.taps: list[netdev.TapFd] = []

    def namespace(self) -> Namespace:
        ns = Namespace(f"sn-{short_id()}")
        netdev.create_netns(ns.name)
        self.namespaces.append(ns)
        return ns

    def vm(self, address: str | None = None, mac: str | None = None, gateway: str | None = None,
           tx_offload: bool = True, ifname: str = "eth0", mtu: int | None = None,
           address6: str | None = None, gateway6: str | None = None) -> Namespace:
        """A namespace with ``ifname`` (address "IP/len", MAC) whose veth peer stays in the root namespace,
        configured as a datapath end.  ``tx_offload=False`` runs ethtool -K tx off on the namespace side.
        ``address6`` ("2001:db8:1::10/64") turns IPv6 on in the VM (no DAD, no router advertisements) and
        sets ``ns.ip6``; ``gateway6`` its IPv6 default route."""
        ns = self.namespace()
        host_if = f"sv{ns.name[3:]}"
        netdev.create_veth(host_if, ifname, ns.name)
        self.links.append(host_if)
        netdev.configure_datapath_end(host_if, mtu=mtu)
        netdev.configure_ns_end(ns.name, ifname, mac=mac, address=address, gateway=gateway, mtu=mtu,
                                addresses6=(address6,) if address6 else (), gateway6=gateway6)
        if not tx_offload:
            netdev.set_tx_offload(ifname, False, ns.name)
        ns.host_if, ns.ifname, ns.mac = host_if, ifname, mac
        ns.ip = address.partition("/")[0] if address else None
        ns.ip6 = address6.partition("/")[0] if address6 else None
        return ns

    def tap(self) -> tuple[str, netdev.TapFd]:
        """A TAP device in the root namespace (configured as a datapath end) and its fd side."""
        name = f"st{short_id()}"
        netdev.create_tap(name)
        self.links.append(name)
        fd = netdev.TapFd(name)
        self.taps.append(fd)
        netdev.configure_datapath_end(name)
        return name, fd

    def close(self) -> None:
        errors = []
        for ns in self.namespaces:
            ns.kill_procs()
        for t in self.taps:
            t.close()
        for name in self.links:
            try:
                netdev.delete_link(name)
            except netdev.NetdevError as e:
                errors.append(str(e))
        for ns in self.namespaces:
            try:
                netdev.delete_netns(ns.name)
            except OSError as e:
                errors.append(f"netns {ns.name}: {e}")
        self.namespaces.clear()
        self.links.clear()
        self.taps.clear()
        if errors:
            raise E2eError("cleanup: " + "; ".join(errors))


class DatapathThread:
    """Runs a datapath's I/O shell in a background thread: epoll on ``dp.fds()``, ``dp.poll_ready`` for each
    readable fd, ``on_miss(dp, port, frame, pkt, key, now)`` for each miss.  ``lock`` serialises access with
    the test thread (the flow cache is not thread-safe); stopped by ``stop()``."""

    def __init__(self, dp, on_miss=None):
        import select
        import time

        self.dp, self.on_miss = dp, on_miss
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ep = select.epoll()
        self._registered: set[int] = set()
        self._clock = time.monotonic
        self._thread = threading.Thread(target=self._run, name="datapath", daemon=True)

    def start(self) -> DatapathThread:
        self._thread.start()
        return self

    def _sync_fds(self) -> None:
        import select

        fds = set(self.dp.fds())
        for fd in fds - self._registered:
            self._ep.register(fd, select.EPOLLIN)
        for fd in self._registered - fds:
            try:
                self._ep.unregister(fd)
            except OSError:
                pass
        self._registered = fds

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                with self.lock:
                    self._sync_fds()
                for fd, _ev in self._ep.poll(0.05):
                    with self.lock:
                        now = self._clock()
                        for port, frame, pkt, key in self.dp.poll_ready(fd, now):
                            if self.on_miss is not None:
                                self.on_miss(self.dp, port, frame, pkt, key, now)
        except BaseException as e:   # noqa: B036 - reported by stop()
            self.error = e

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._ep.close()
        if self.error is not None:
            raise E2eError(f"datapath thread failed: {self.error!r}") from self.error
