"""A real ZooKeeper for tests and dev scripts: standalone servers and 3-node ensembles on loopback.

Owns: the Java server processes it starts (tracked by pid, stopped by pid: terminate, wait, kill) and their
private data directories (removed at stop unless the caller passed its own directory).  Every server binds
127.0.0.1 on ports picked free at start, runs with a fast tick (tickTime=200, minSessionTimeout=1000, so
session-expiry tests take a second, not six) and no admin HTTP server.  Readiness is polled with the
``srvr`` four-letter word until the server reports a mode (standalone / leader / follower), bounded by a
timeout; a server that does not come up raises ``ZkHarnessError`` with the tail of its log.

No Java or no ZooKeeper jar is an error, never a skip: ``ZkHarnessError`` names what is missing and how to
install it (CI installs the Debian ``zookeeper`` package; a silent skip would hide a broken CI).

Command line, for dev scripts (the server outlives the command; stop it with ``stop``)::

    python -m tests.zkharness start DIR      # prints HOST:PORT, writes DIR/zk.pid
    python -m tests.zkharness stop DIR
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ZK_JAR = Path(os.environ.get("SHARDNET_ZK_JAR", "/usr/share/java/zookeeper.jar"))
SLF4J_JAR = Path("/usr/share/java/slf4j-simple.jar")
STANDALONE_MAIN = "org.apache.zookeeper.server.ZooKeeperServerMain"
QUORUM_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
HOST = "127.0.0.1"
JVM_FLAGS = ("-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
             "-Dzookeeper.admin.enableServer=false")


class ZkHarnessError(RuntimeError):
    """ZooKeeper could not be started (missing Java/jar, server did not come up)."""


def check_prerequisites() -> str:
    """Return the java executable, or raise ZkHarnessError saying what is missing."""
    java = shutil.which("java")
    if java is None:
        raise ZkHarnessError("java not found on PATH: install a JRE "
                             "(Debian: apt-get install default-jre-headless)")
    if not ZK_JAR.is_file():
        raise ZkHarnessError(
            f"ZooKeeper jar {ZK_JAR} not found: install Debian's zookeeper package "
            "(apt-get install zookeeper, or `make sysdeps`)"
        )
    return java


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held together while picking, released before return)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def four_letter(port: int, word: str, timeout: float = 1.0) -> str:
    """Send a 4lw command; return the reply ('' when the server does not answer)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(word.encode())
            chunks = []
            while True:
                data = s.recv(4096)
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


def server_mode(port: int) -> str | None:
    """'standalone', 'leader' or 'follower' when the server serves requests, else None."""
    for line in four_letter(port, "srvr").splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return None


@dataclass
class ZkNode:
    """One server process.  ``client_port`` is what clients connect to."""

    myid: int
    client_port: int
    dir: Path
    cfg: Path
    main_class: str
    proc: subprocess.Popen | None = None
    _log: object = field(default=None, repr=False)

    @property
    def hostport(self) -> str:
        return f"{HOST}:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, detach: bool = False) -> None:
        java = check_prerequisites()
        cp = f"{ZK_JAR}:{SLF4J_JAR}" if SLF4J_JAR.is_file() else str(ZK_JAR)
        self._log = open(self.dir / "zk.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [java, *JVM_FLAGS, "-cp", cp, self.main_class, str(self.cfg)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.dir,
            start_new_session=detach,
        )
        (self.dir / "zk.pid").write_text(str(self.proc.pid))

    def stop(self, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop this server (SIGTERM then SIGKILL after timeout; ``kill=True``: SIGKILL at once)."""
        if self.proc is not None:
            _stop_pid(self.proc, kill, timeout)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join((self.dir / "zk.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def _stop_pid(proc: subprocess.Popen, kill: bool, timeout: float) -> None:
    if proc.poll() is None:
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def _write_cfg(node: ZkNode, extra: dict[str, str]) -> None:
    lines = {
        "tickTime": "200",
        "initLimit": "25",
        "syncLimit": "10",
        "minSessionTimeout": "1000",
        "maxSessionTimeout": "30000",
        "dataDir": str(node.dir / "data"),
        "clientPort": str(node.client_port),
        "clientPortAddress": HOST,
        "admin.enableServer": "false",
        "4lw.commands.whitelist": "*",
        "forceSync": "no",
        "maxClientCnxns": "0",
        **extra,
    }
    (node.dir / "data").mkdir(parents=True, exist_ok=True)
    node.cfg.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))


class ZkCluster:
    """One standalone server (``size=1``) or an ensemble.  ``hosts`` is the kazoo connection string."""

    def __init__(self, size: int = 1, base_dir: str | Path | None = None):
        check_prerequisites()
        self._own_dir = base_dir is None
        self.dir = Path(tempfile.mkdtemp(prefix="shardnet-zk-")) if base_dir is None else Path(base_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.nodes: list[ZkNode] = []
        main = STANDALONE_MAIN if size == 1 else QUORUM_MAIN
        ports = free_ports(size * 3)
        servers = {}
        for i in range(size):
            myid = i + 1
            d = self.dir / f"node{myid}"
            d.mkdir(parents=True, exist_ok=True)
            self.nodes.append(ZkNode(myid, ports[3 * i], d, d / "zoo.cfg", main))
            servers[f"server.{myid}"] = f"{HOST}:{ports[3 * i + 1]}:{ports[3 * i + 2]}"
        for node in self.nodes:
            extra = {} if size == 1 else {**servers, "reconfigEnabled": "false", "standaloneEnabled": "false"}
            _write_cfg(node, extra)
            if size > 1:
                (node.dir / "data" / "myid").write_text(f"{node.myid}\n")

    @property
    def hosts(self) -> str:
        return ",".join(n.hostport for n in self.nodes)

    def start(self, timeout: float = 30.0, detach: bool = False) -> ZkCluster:
        try:
            for node in self.nodes:
                if not node.running:
                    node.start(detach=detach)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 30.0, nodes: list[ZkNode] | None = None) -> None:
        """Block until every given (default: every running) node serves requests."""
        nodes = [n for n in (nodes or self.nodes) if n.proc is not None]
        deadline = time.monotonic() + timeout
        pending = list(nodes)
        while pending:
            pending = [n for n in pending if server_mode(n.client_port) is None]
            for n in pending:
                if not n.running:
                    raise ZkHarnessError(f"ZooKeeper node {n.myid} exited at start:\n{n.log_tail()}")
            if not pending:
                return
            if time.monotonic() > deadline:
                n = pending[0]
                raise ZkHarnessError(f"ZooKeeper node {n.myid} not ready after {timeout}s:\n{n.log_tail()}")
            time.sleep(0.05)

    def leader(self) -> ZkNode | None:
        for n in self.nodes:
            if n.running and server_mode(n.client_port) in ("leader", "standalone"):
                return n
        return None

    def stop_node(self, node: ZkNode, kill: bool = False) -> None:
        node.stop(kill=kill)

    def restart_node(self, node: ZkNode, timeout: float = 30.0) -> None:
        node.start()
        self.wait_ready(timeout, [node])

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ZkCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def expire_kazoo_session(client, hosts: str, timeout: float = 10.0) -> None:
    """Force the server to expire ``client``'s session: a second client attaches to the same session id and
    password, then closes it.  The server drops the session's ephemerals at once; ``client`` sees LOST on
    its next reconnect and kazoo opens a new session.  Returns once ``client`` has seen LOST."""
    from kazoo.client import KazooClient, KazooState

    lost = threading.Event()

    def on_state(state: str) -> None:
        if state == KazooState.LOST:
            lost.set()

    client.add_listener(on_state)
    try:
        session_id, password = client.client_id
        other = KazooClient(hosts=hosts, client_id=(session_id, password), timeout=5.0)
        other.start(timeout=timeout)
        other.stop()
        other.close()
        if not lost.wait(timeout):
            raise ZkHarnessError(f"session {session_id:#x} did not expire within {timeout}s")
    finally:
        client.remove_listener(on_state)


def _cli(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python -m tests.zkharness {start|stop} DIR", file=sys.stderr)
        return 2
    cmd, d = argv[0], Path(argv[1])
    if cmd == "start":
        try:
            cluster = ZkCluster(1, d).start(detach=True)
        except ZkHarnessError as e:
            print(f"zkharness: {e}", file=sys.stderr)
            return 1
        print(cluster.hosts)
        return 0
    pidfile = d / "node1" / "zk.pid"
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        print(f"zkharness: no server pid in {pidfile}", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pidfile.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
