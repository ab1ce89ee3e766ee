"""Open vSwitch as the peer of ``shardnet bench --datapath real --peer ovs``: a private instance, its userspace
(netdev) datapath on the rig's two root veth ends, and the OpenFlow pipelines that match shardnet's.

Owns one private instance under a temporary directory: its own ovsdb (created from the Debian package's
schema), ``ovsdb-server`` and ``ovs-vswitchd`` started with ``--detach`` and pidfiles there, one bridge
(datapath_type=netdev, fail-mode=secure) with the sender's end as OpenFlow port 1 and the sink's as port 2.
Never the system's paths: every command gets OVS_RUNDIR/OVS_DBDIR/OVS_LOGDIR/OVS_SYSCONFDIR of the temp dir
and an explicit ``--db`` / ``-t`` target.  ``stop`` deletes the bridge, then ends both daemons by the pids in
their pidfiles (SIGTERM, SIGKILL after 5 s) and removes the directory.

Variants (``VARIANTS[pipeline]``), each with megaflows on or off (``upcall/enable-megaflows`` /
``disable-megaflows``; "-nomf" = exact match, one upcall per new 5-tuple):
    l2    normal, normal-nomf        priority=0,actions=NORMAL
    ct    ct-nomf, ct                ARP NORMAL; ip -trk -> ct(table=1); +new -> ct(commit),NORMAL; +est NORMAL
    l3    l3-nomf, l3                an OpenFlow router: per direction, set both MACs, dec_ttl, output
    full  full-nomf, full            the router + SNAT: ct(commit,nat(src=pool)) out, ct(nat) back

OVS sets no receive buffer on its ports' AF_PACKET sockets (they get net.core.rmem_default, 212 KB here: ~280
small frames), shardnet's datapath asks 4 MB; ``rcvbuf`` sets rmem_default while the ports are added (and puts
it back at once) so that both read with the same buffer.  ``rx_buffers`` records what the sockets got.

``OvsMissing`` is raised, naming the Debian package, when a binary is missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from bench.wirerig import NAT_POOL, ROUTER_MAC_A, ROUTER_MAC_B, SENDER_MAC, SINK_MAC

BINARIES = ("ovsdb-tool", "ovsdb-server", "ovs-vsctl", "ovs-vswitchd", "ovs-ofctl", "ovs-appctl")
SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
VARIANTS = {"l2": ("normal", "normal-nomf"), "ct": ("ct-nomf", "ct"), "l3": ("l3-nomf", "l3"),
            "full": ("full-nomf", "full")}


class OvsMissing(RuntimeError):
    pass


class OvsError(RuntimeError):
    pass


def check_installed() -> None:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing or not os.path.exists(SCHEMA):
        raise OvsMissing(f"Open vSwitch is not installed ({', '.join(missing) or SCHEMA} missing): "
                         "apt-get install -y openvswitch-switch (or `make bench-peer`)")


def flows(variant: str) -> list[str]:
    base = variant.removesuffix("-nomf")
    if base == "normal":
        return ["priority=0,actions=NORMAL"]
    if base == "ct":
        return ["table=0,priority=10,arp,actions=NORMAL",
                "table=0,priority=10,ip,ct_state=-trk,actions=ct(table=1)",
                "table=0,priority=0,actions=drop",
                "table=1,priority=10,ip,ct_state=+trk+new,actions=ct(commit),NORMAL",
                "table=1,priority=10,ip,ct_state=+trk+est,actions=NORMAL",
                "table=1,priority=0,actions=drop"]
    to_sink = f"mod_dl_src:{ROUTER_MAC_B},mod_dl_dst:{SINK_MAC},dec_ttl,output:2"
    to_sender = f"mod_dl_src:{ROUTER_MAC_A},mod_dl_dst:{SENDER_MAC},dec_ttl,output:1"
    if base == "l3":
        return [f"priority=10,ip,in_port=1,nw_dst=203.0.113.0/24,actions={to_sink}",
                f"priority=10,ip,in_port=2,nw_dst=198.51.100.0/24,actions={to_sender}",
                "priority=0,actions=drop"]
    if base == "full":
        pool = f"{NAT_POOL[0]}-{NAT_POOL[-1]}:1024-65535"
        return [f"table=0,priority=10,ip,in_port=1,nw_dst=203.0.113.0/24,"
                f"actions=ct(commit,zone=1,nat(src={pool}),table=1)",
                "table=0,priority=10,ip,in_port=2,actions=ct(zone=1,nat,table=2)",
                "table=0,priority=0,actions=drop",
                f"table=1,priority=10,ip,in_port=1,actions={to_sink}",
                f"table=2,priority=10,ip,in_port=2,ct_state=+trk+est,actions={to_sender}",
                "table=2,priority=0,actions=drop"]
    raise ValueError(f"unknown OVS variant {variant!r}")


class OvsPeer:
    """A private ovsdb-server + ovs-vswitchd with one netdev bridge on two interfaces (OpenFlow ports 1, 2)."""

    def __init__(self, port1: str, port2: str, bridge: str, rcvbuf: int | None = None):
        check_installed()
        self.port1, self.port2, self.bridge = port1, port2, bridge
        self.rcvbuf = rcvbuf
        self.dir: str | None = None
        self.env: dict = {}
        self.db_sock = ""
        self.vswitchd_pid: int | None = None
        self.ovsdb_pid: int | None = None
        self.started: list[str] = []                  # pidfiles of daemons started
        self.rx_buffers: list[int] = []

    # --- commands ----------------------------------------------------------------------------------------

    def _run(self, argv: list[str], timeout: float = 20.0, check: bool = True) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.env)
        except subprocess.TimeoutExpired:
            raise OvsError(f"{' '.join(argv)}: no answer in {timeout} s") from None
        if check and r.returncode != 0:
            raise OvsError(f"{' '.join(argv)} exited {r.returncode}: {(r.stderr or r.stdout).strip()[-600:]}")
        return r.stdout

    def vsctl(self, *args: str) -> str:
        return self._run(["ovs-vsctl", f"--db=unix:{self.db_sock}", "--timeout=15", *args])

    def ofctl(self, *args: str) -> str:
        return self._run(["ovs-ofctl", *args])

    def appctl(self, *args: str) -> str:
        return self._run(["ovs-appctl", "--timeout=15", "-t", self._ctl(), *args])

    def _ctl(self) -> str:
        return os.path.join(self.dir, "run", f"ovs-vswitchd.{self.vswitchd_pid}.ctl")

    # --- life cycle --------------------------------------------------------------------------------------

    def start(self) -> OvsPeer:
        self.dir = tempfile.mkdtemp(prefix="shardnet-ovs-")
        d = self.dir
        for sub in ("run", "db", "log", "etc"):
            os.makedirs(os.path.join(d, sub))
        self.env = {**os.environ, "OVS_RUNDIR": f"{d}/run", "OVS_DBDIR": f"{d}/db", "OVS_LOGDIR": f"{d}/log",
                    "OVS_SYSCONFDIR": f"{d}/etc"}
        self.db_sock = f"{d}/run/db.sock"
        try:
            self._run(["ovsdb-tool", "create", f"{d}/db/conf.db", SCHEMA])
            self.started.append(f"{d}/run/ovsdb-server.pid")
            self._run(["ovsdb-server", f"{d}/db/conf.db", f"--remote=punix:{self.db_sock}",
                       f"--pidfile={d}/run/ovsdb-server.pid", "--detach", f"--log-file={d}/log/db.log",
                       f"--unixctl={d}/run/ovsdb-server.ctl"])
            self.ovsdb_pid = _read_pid(f"{d}/run/ovsdb-server.pid")
            self.vsctl("--no-wait", "init")
            self.started.append(f"{d}/run/ovs-vswitchd.pid")
            self._run(["ovs-vswitchd", f"unix:{self.db_sock}", f"--pidfile={d}/run/ovs-vswitchd.pid", "--detach",
                       f"--log-file={d}/log/vswitchd.log"], timeout=30)
            self.vswitchd_pid = _read_pid(f"{d}/run/ovs-vswitchd.pid")
            self.vsctl("add-br", self.bridge, "--", "set", "bridge", self.bridge, "datapath_type=netdev",
                       "fail-mode=secure")
            with _rmem_default(self.rcvbuf):
                for n, port in ((1, self.port1), (2, self.port2)):
                    self.vsctl("add-port", self.bridge, port, "--", "set", "interface", port,
                               f"ofport_request={n}")
            self.rx_buffers = rx_buffers(self.vswitchd_pid)
            mgmt = os.path.join(d, "run", f"{self.bridge}.mgmt")       # ovs-ofctl's way in: it may come late
            deadline = time.monotonic() + 10.0
            while not os.path.exists(mgmt) and time.monotonic() < deadline:
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def use(self, variant: str) -> None:
        """Install a variant's flows, set megaflows, empty the datapath flows and the conntrack table."""
        self.ofctl("del-flows", self.bridge)
        for f in flows(variant):
            self.ofctl("add-flow", self.bridge, f)
        self.appctl("upcall/disable-megaflows" if variant.endswith("-nomf") else "upcall/enable-megaflows")
        self.appctl("revalidator/purge")
        self._run(["ovs-appctl", "--timeout=15", "-t", self._ctl(), "dpctl/flush-conntrack"], check=False)

    def pids(self) -> list[int]:
        return [p for p in (self.vswitchd_pid,) if p]

    def counters(self) -> dict:
        """Upcalls and megaflow/EMC hits summed over the datapath's threads (pmd-stats-show)."""
        out: dict[str, int] = {}
        try:
            text = self.appctl("dpif-netdev/pmd-stats-show")
        except OvsError:
            return out
        for line in text.splitlines():
            key, sep, val = line.strip().partition(":")
            if not sep:
                continue
            num = val.strip().split(" ")[0]
            if num.isdigit():
                k = key.strip().replace(" ", "_")
                out[k] = out.get(k, 0) + int(num)
        return out

    def stop(self) -> None:
        if self.vswitchd_pid and self.dir:
            try:
                self.vsctl("--if-exists", "del-br", self.bridge)
            except OvsError:
                pass
        for pidfile in reversed(self.started):
            pid = _read_pid(pidfile, wait_s=0)
            if pid:
                _end(pid)
        self.started.clear()
        self.vswitchd_pid = self.ovsdb_pid = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> OvsPeer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


RMEM_DEFAULT = "/proc/sys/net/core/rmem_default"


@contextlib.contextmanager
def _rmem_default(size: int | None):
    """OVS sets no SO_RCVBUF on the AF_PACKET sockets of its ports: they get net.core.rmem_default at creation.
    With ``size``, that sysctl is ``size`` while the ports are added (the sockets are made then) and is put
    back right after; None leaves it alone."""
    if not size:
        yield
        return
    with open(RMEM_DEFAULT) as f:
        old = f.read().strip()
    with open(RMEM_DEFAULT, "w") as f:
        f.write(str(size))
    try:
        yield
    finally:
        with open(RMEM_DEFAULT, "w") as f:
            f.write(old)


def rx_buffers(pid: int | None) -> list[int]:
    """SO_RCVBUF of the AF_PACKET sockets process ``pid`` holds (copies taken with pidfd_getfd, closed again)."""
    if not pid:
        return []
    try:
        with open("/proc/net/packet") as f:
            inodes = {line.split()[-1] for line in f.readlines()[1:] if line.split()}
        fds = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                fds.append(int(fd))
        pidfd = os.pidfd_open(pid)
    except OSError:
        return []
    libc = ctypes.CDLL(None, use_errno=True)
    sizes = []
    try:
        for fd in fds:
            mine = libc.syscall(438, pidfd, fd, 0)               # pidfd_getfd
            if mine < 0:
                continue
            s = socket.socket(fileno=mine)
            try:
                sizes.append(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
            finally:
                s.close()
    finally:
        os.close(pidfd)
    return sorted(sizes)


def _read_pid(path: str, wait_s: float = 10.0) -> int | None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with open(path) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            if time.monotonic() >= deadline:
                if wait_s:
                    raise OvsError(f"no pid in {path}") from None
                return None
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _end(pid: int) -> None:
    """SIGTERM, then SIGKILL after 5 s: a daemon we started, by the pid in its pidfile."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)
