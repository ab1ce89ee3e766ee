"""Network devices for the real datapath: the agent's side of veth pairs and TAP devices (pyroute2).

Owns nothing long-lived: each helper creates, configures or deletes one thing and returns.  The caller (the
agent, or the e2e harness) decides names and keeps track of what it created.

- An interface the datapath reads with AF_PACKET stays in the root namespace and is kept out of the root
  kernel's way (``configure_datapath_end``): up, no address, IPv6 disabled (else the kernel sends router
  solicitations and MLD reports into the datapath), ``arp_ignore=1`` (else the root kernel answers ARP for
  the machine's own address on it).  /proc/sys is written directly.
- The other end of a veth may be moved into a named namespace (``ip netns`` style, /var/run/netns/NAME) and
  given a MAC, an address and a default route (``configure_ns_end``).
- ``set_tx_offload`` runs ``ethtool -K IF tx on|off`` (inside ``ip netns exec NS`` when a namespace is given);
  the datapath completes partial checksums itself, so this is only needed to compare or to work around.
- A TAP device: ``create_tap`` makes a persistent one (the agent's port side: the datapath reads its netdev
  with AF_PACKET); ``TapFd`` opens /dev/net/tun with IFF_TAP|IFF_NO_PI (the "VM" side: whole Ethernet frames
  read from and written to a file descriptor).

Errors come out as NetdevError with what failed; a missing tool (ethtool, ip) says which package to install.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import struct
import subprocess
import threading

from pyroute2 import IPRoute, NetlinkError, NetNS, netns

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFNAMSIZ = 16


class NetdevError(RuntimeError):
    """An interface or namespace could not be created, configured or deleted."""


def _ipr(ns: str | None):
    return NetNS(ns) if ns else IPRoute()


def _index(ipr, ifname: str) -> int:
    idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        raise NetdevError(f"no interface {ifname!r}")
    return idx[0]


def _check_name(ifname: str) -> None:
    if not ifname or len(ifname) >= IFNAMSIZ or "/" in ifname or " " in ifname:
        raise NetdevError(f"bad interface name {ifname!r} (1..15 characters, no '/' or blanks)")


# --- namespaces ------------------------------------------------------------------------------------------

def create_netns(name: str) -> None:
    try:
        netns.create(name)
    except OSError as e:
        raise NetdevError(f"cannot create netns {name!r}: {e}") from None
    with NetNS(name) as n:
        n.link("set", index=_index(n, "lo"), state="up")


def delete_netns(name: str) -> bool:
    if name not in netns.listnetns():
        return False
    netns.remove(name)
    return True


# --- links -----------------------------------------------------------------------------------------------

def create_veth(host_if: str, peer_if: str, peer_ns: str | None = None) -> None:
    """A veth pair: ``host_if`` in the root namespace, ``peer_if`` moved into ``peer_ns`` (when given)."""
    _check_name(host_if)
    _check_name(peer_if)
    peer: dict = {"ifname": peer_if}
    if peer_ns:
        peer["net_ns_fd"] = peer_ns
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=host_if, kind="veth", peer=peer)
        except NetlinkError as e:
            raise NetdevError(f"cannot create veth {host_if}/{peer_if}: {e}") from None


def delete_link(ifname: str, ns: str | None = None) -> bool:
    """Delete an interface (for a veth: both ends).  False when it did not exist."""
    try:
        with _ipr(ns) as ipr:
            idx = ipr.link_lookup(ifname=ifname)
            if not idx:
                return False
            ipr.link("del", index=idx[0])
            return True
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return False
        raise NetdevError(f"cannot delete {ifname}: {e}") from None
    except OSError:          # the namespace itself is gone
        return False


def link_exists(ifname: str, ns: str | None = None) -> bool:
    with _ipr(ns) as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


def get_mtu(ifname: str, ns: str | None = None) -> int:
    with _ipr(ns) as ipr:
        return ipr.get_links(_index(ipr, ifname))[0].get("IFLA_MTU")


def _write_sysctl(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise NetdevError(f"cannot write {path}: {e}") from None


def configure_datapath_end(ifname: str, mtu: int | None = None) -> None:
    """The root-namespace end the datapath reads: up, no address, no IPv6, arp_ignore=1."""
    _write_sysctl(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "1")
    _write_sysctl(f"/proc/sys/net/ipv4/conf/{ifname}/arp_ignore", "1")
    with IPRoute() as ipr:
        idx = _index(ipr, ifname)
        try:
            ipr.flush_addr(index=idx)
            kw = {"mtu": mtu} if mtu else {}
            ipr.link("set", index=idx, state="up", **kw)
        except NetlinkError as e:
            raise NetdevError(f"cannot configure {ifname}: {e}") from None


def configure_ns_end(ns: str, ifname: str, mac: str | None = None, address: str | None = None,
                     gateway: str | None = None, mtu: int | None = None, disable_ipv6: bool = True,
                     addresses6: tuple[str, ...] | list[str] = (), gateway6: str | None = None) -> None:
    """The "VM" end inside namespace ``ns``: MAC, ``address`` ("198.51.100.2/24"), default route, up.

    IPv6 stays off unless ``addresses6`` ("2001:db8:1::10/64", ...) or ``gateway6`` are given (or
    ``disable_ipv6=False``); then the interface takes no router advertisements (accept_ra=0), does no duplicate
    address detection (accept_dad=0, and the addresses are added ``nodad``: usable at once) and sends no router
    solicitations, and ``gateway6`` becomes the IPv6 default route."""
    v6 = bool(addresses6 or gateway6) or not disable_ipv6
    if not v6:
        run_in_ns(ns, ["sysctl", "-q", "-w", f"net.ipv6.conf.{ifname}.disable_ipv6=1"])
    else:
        run_in_ns(ns, ["sysctl", "-q", "-w", f"net.ipv6.conf.{ifname}.disable_ipv6=0",
                       f"net.ipv6.conf.{ifname}.accept_ra=0", f"net.ipv6.conf.{ifname}.accept_dad=0",
                       f"net.ipv6.conf.{ifname}.dad_transmits=0", f"net.ipv6.conf.{ifname}.router_solicitations=0"])
    with NetNS(ns) as n:
        idx = _index(n, ifname)
        try:
            kw: dict = {}
            if mac:
                kw["address"] = mac
            if mtu:
                kw["mtu"] = mtu
            if kw:
                n.link("set", index=idx, **kw)
            if address:
                ip, _, plen = address.partition("/")
                n.addr("add", index=idx, address=ip, prefixlen=int(plen or 24))
            n.link("set", index=idx, state="up")
            if gateway:
                n.route("add", dst="0.0.0.0/0", gateway=gateway)
        except NetlinkError as e:
            raise NetdevError(f"cannot configure {ifname} in {ns}: {e}") from None
    for a in addresses6:
        run_in_ns(ns, ["ip", "-6", "addr", "add", a if "/" in a else f"{a}/64", "dev", ifname, "nodad"])
    if gateway6:
        run_in_ns(ns, ["ip", "-6", "route", "add", "default", "via", gateway6, "dev", ifname])


def run_in_ns(ns: str | None, argv: list[str], check: bool = True, timeout: float = 30.0
              ) -> subprocess.CompletedProcess:
    """Run a command (argv list) inside ``ns`` through ``ip netns exec`` (in the root namespace when None)."""
    tool = argv[0]
    if shutil.which(tool) is None:
        raise NetdevError(f"{tool} not found: install it (Debian packages iproute2 iputils-ping ethtool "
                          "netcat-openbsd, or `make sysdeps`)")
    full = (["ip", "netns", "exec", ns] if ns else []) + argv
    r = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise NetdevError(f"{' '.join(full)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def set_tx_offload(ifname: str, on: bool, ns: str | None = None) -> None:
    """``ethtool -K IF tx on|off`` (TCP/UDP checksum and, with it, segmentation offload)."""
    run_in_ns(ns, ["ethtool", "-K", ifname, "tx", "on" if on else "off"])


def tx_offload(ifname: str, ns: str | None = None) -> bool:
    out = run_in_ns(ns, ["ethtool", "-k", ifname]).stdout
    for line in out.splitlines():
        if line.startswith("tx-checksumming:"):
            return line.split(":", 1)[1].strip().startswith("on")
    raise NetdevError(f"ethtool -k {ifname}: no tx-checksumming line")


# --- TAP -------------------------------------------------------------------------------------------------

def create_tap(ifname: str) -> None:
    """A persistent TAP device in the root namespace (delete it with delete_link)."""
    _check_name(ifname)
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=ifname, kind="tuntap", mode="tap")
        except NetlinkError as e:
            raise NetdevError(f"cannot create tap {ifname}: {e}") from None


class TapFd:
    """The file-descriptor side of a TAP device (IFF_TAP|IFF_NO_PI): one Ethernet frame per read/write.
    Attaches to an existing TAP (or creates a non-persistent one that vanishes at close)."""

    def __init__(self, ifname: str, nonblocking: bool = True):
        _check_name(ifname)
        try:
            self.fd = os.open("/dev/net/tun", os.O_RDWR | (os.O_NONBLOCK if nonblocking else 0))
        except OSError as e:
            raise NetdevError(f"cannot open /dev/net/tun: {e}") from None
        ifr = struct.pack("16sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI)
        try:
            fcntl.ioctl(self.fd, TUNSETIFF, ifr)
        except OSError as e:
            os.close(self.fd)
            raise NetdevError(f"TUNSETIFF {ifname}: {e}") from None
        self.ifname = ifname

    def fileno(self) -> int:
        return self.fd

    def write(self, frame: bytes) -> int:
        return os.write(self.fd, frame)

    def read(self, size: int = 65536) -> bytes | None:
        """One frame, or None when nothing is waiting (non-blocking mode)."""
        try:
            return os.read(self.fd, size)
        except BlockingIOError:
            return None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> TapFd:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(name: str, fn, *args, wait_s: float | None = None, **kw):
    """``fn(*args, **kw)`` in a thread that entered network namespace ``name`` (setns: sockets it opens live
    there); its result, or its exception, comes back.  ``wait_s``: how long to wait for it (None: as long as it
    takes); TimeoutError when it did not return in time."""
    box: dict = {}

    def target() -> None:
        try:
            fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"setns {name}: {os.strerror(e)}")
            finally:
                os.close(fd)
            box["value"] = fn(*args, **kw)
        except BaseException as e:   # noqa: B036 - handed back to the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, name=f"in-{name}")
    t.start()
    t.join(wait_s)
    if t.is_alive():
        raise TimeoutError(f"in_netns {name}: {fn!r} did not return in {wait_s} s")
    if "error" in box:
        raise box["error"]
    return box["value"]
