"""The wire rig of ``shardnet bench --datapath real``: two namespaces joined by whatever forwards between the
root ends of their veths (a shardnet agent, Open vSwitch, or the floor's echo loop).

Owns everything it creates and removes it in ``close`` (also when creation fails half-way): two namespaces
``sn-<hex>s`` (sender) and ``sn-<hex>k`` (sink), one veth pair into each (``eth0`` inside, ``sv<hex>s`` /
``sv<hex>k`` in the root namespace, configured as datapath ends by engine.datapath.netdev), and the child
processes started with ``popen`` (each in its own session, killed by its pid = process group id).

Addresses (never 192.0.2.0/24):
- l2, ct: sender 198.51.100.1/24, sink 198.51.100.2/24 on one bridge;
- l3, full: sender 198.51.100.1/24 behind the router port 198.51.100.254; sink 203.0.113.1/24 behind the
  router port 203.0.113.254; ``full`` SNATs the sender to the pool 203.0.113.2-203.0.113.9.
- ``ipv6=True`` (l2, ct, l3): l2/ct: sender 2001:db8:ff::1/64, sink 2001:db8:ff::2/64 on the same bridge;
  l3: sender 2001:db8:a::1/64 behind 2001:db8:a::fe, sink 2001:db8:b::1/64 behind 2001:db8:b::fe (static
  neighbour entries for the router in the namespaces; the router resolves the sink by neighbor
  solicitation).  The IPv4 addresses stay too (dual stack); IPv6 is on in both namespaces without DAD,
  router advertisements or solicitations (engine.datapath.netdev.configure_ns_end); ``sender_ip`` /
  ``sink_ip`` are then the IPv6 ones.
Neighbours inside the namespaces are static (the far VM, the gateway, the NAT pool), so neither shardnet nor
OVS sees the namespaces' ARP during a measurement, and tx offload is off on the namespace ends (OVS reads its
ports without virtio-net headers: with offload on, TCP through it carries partial checksums).

``in_netns(name, fn)`` runs ``fn`` in a thread that entered the namespace, so sockets it opens live there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from engine.datapath import netdev

SENDER_MAC, SINK_MAC = "02:5e:00:00:a0:01", "02:5e:00:00:a0:02"
ROUTER_MAC_A, ROUTER_MAC_B = "02:5e:00:00:a0:fa", "02:5e:00:00:a0:fb"
SENDER_IP = "198.51.100.1"
SENDER_IP6, SINK_IP6 = "2001:db8:ff::1", "2001:db8:ff::2"
ROUTED_IP6 = {"sender": "2001:db8:a::1", "sink": "2001:db8:b::1", "gw_a": "2001:db8:a::fe", "gw_b": "2001:db8:b::fe"}
NAT_POOL = [f"203.0.113.{i}" for i in range(2, 10)]
ROUTED = ("l3", "full")
BENCH_ROOT = str(Path(__file__).resolve().parents[1])       # PYTHONPATH of the child processes


class RigError(RuntimeError):
    pass


def mac_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


def ip_int(ip: str) -> int:
    """An IPv4 (dotted) or IPv6 address as an int."""
    if ":" in ip:
        import ipaddress

        return int(ipaddress.IPv6Address(ip))
    a, b, c, d = (int(x) for x in ip.split("."))
    return a << 24 | b << 16 | c << 8 | d


def in_netns(name: str, fn, *args, **kw):
    """``fn(*args, **kw)`` in a thread inside namespace ``name`` (netdev.in_netns), waited for at most 60 s."""
    try:
        return netdev.in_netns(name, fn, *args, wait_s=60, **kw)
    except TimeoutError as e:
        raise RigError(str(e)) from None


@dataclass
class WireRig:
    """Two namespaces and their veths for one pipeline (``l2``, ``ct``, ``l3`` or ``full``)."""

    pipeline: str
    ipv6: bool = False
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sender_ns, self.sink_ns = f"sn-{self.tag}s", f"sn-{self.tag}k"
        self.sender_if, self.sink_if = f"sv{self.tag}s", f"sv{self.tag}k"
        routed = self.pipeline in ROUTED
        if self.ipv6 and self.pipeline == "full":
            raise RigError("no IPv6 rig for the full pipeline (no NAT66; IPv6: l2, ct, l3)")
        self.sink_ip4 = "203.0.113.1" if routed else "198.51.100.2"
        self.sender_ip6 = ROUTED_IP6["sender"] if routed else SENDER_IP6
        self.sink_ip6 = ROUTED_IP6["sink"] if routed else SINK_IP6
        self.sender_gw6 = ROUTED_IP6["gw_a"] if routed and self.ipv6 else None
        self.sink_gw6 = ROUTED_IP6["gw_b"] if routed and self.ipv6 else None
        self.sender_ip = self.sender_ip6 if self.ipv6 else SENDER_IP
        self.sink_ip = self.sink_ip6 if self.ipv6 else self.sink_ip4
        self.sender_gw = "198.51.100.254" if routed else None
        self.sink_gw = "203.0.113.254" if routed else None
        # the destination MAC the sender's frames carry: the far VM, or the router's port
        self.first_hop_mac = ROUTER_MAC_A if routed else SINK_MAC

    # --- building and removing ---------------------------------------------------------------------------

    def build(self) -> WireRig:
        try:
            v6 = self.ipv6
            self._add(self.sender_ns, self.sender_if, SENDER_MAC, f"{SENDER_IP}/24", self.sender_gw,
                      f"{self.sender_ip6}/64" if v6 else None, self.sender_gw6)
            self._add(self.sink_ns, self.sink_if, SINK_MAC, f"{self.sink_ip4}/24", self.sink_gw,
                      f"{self.sink_ip6}/64" if v6 else None, self.sink_gw6)
            if self.pipeline in ROUTED:
                self._neigh(self.sender_ns, self.sender_gw, ROUTER_MAC_A)
                for ip in [self.sink_gw, *NAT_POOL]:
                    self._neigh(self.sink_ns, ip, ROUTER_MAC_B)
                if v6:
                    self._neigh(self.sender_ns, self.sender_gw6, ROUTER_MAC_A)
                    self._neigh(self.sink_ns, self.sink_gw6, ROUTER_MAC_B)
            else:
                self._neigh(self.sender_ns, self.sink_ip4, SINK_MAC)
                self._neigh(self.sink_ns, SENDER_IP, SENDER_MAC)
                if self.ipv6:
                    self._neigh(self.sender_ns, SINK_IP6, SINK_MAC)
                    self._neigh(self.sink_ns, SENDER_IP6, SENDER_MAC)
        except BaseException:
            self.close()
            raise
        return self

    def _add(self, ns: str, host_if: str, mac: str, address: str, gateway: str | None,
             address6: str | None = None, gateway6: str | None = None) -> None:
        netdev.create_netns(ns)
        self.namespaces.append(ns)
        netdev.create_veth(host_if, "eth0", ns)
        self.links.append(host_if)
        netdev.configure_datapath_end(host_if)
        netdev.configure_ns_end(ns, "eth0", mac=mac, address=address, gateway=gateway,
                                addresses6=(address6,) if address6 else (), gateway6=gateway6)
        netdev.set_tx_offload("eth0", False, ns)

    def _neigh(self, ns: str, ip: str, mac: str) -> None:
        fam = ["-6"] if ":" in ip else []
        netdev.run_in_ns(ns, ["ip", *fam, "neigh", "replace", ip, "lladdr", mac, "dev", "eth0", "nud", "permanent"])

    def close(self) -> None:
        errors = []
        self.kill_procs()
        for name in self.links:
            try:
                netdev.delete_link(name)
            except netdev.NetdevError as e:
                errors.append(str(e))
        for ns in self.namespaces:
            try:
                netdev.delete_netns(ns)
            except OSError as e:
                errors.append(f"netns {ns}: {e}")
        self.links.clear()
        self.namespaces.clear()
        if errors:
            raise RigError("cleanup: " + "; ".join(errors))

    def __enter__(self) -> WireRig:
        return self.build()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- processes ---------------------------------------------------------------------------------------

    def popen(self, ns: str | None, module_args: list[str], **kw) -> subprocess.Popen:
        """``python -m bench.wireproc ARGS`` inside ``ns`` (the root namespace when None), own session."""
        argv = [sys.executable, "-m", "bench.wireproc", *module_args]
        if ns is not None:
            argv = ["ip", "netns", "exec", ns, *argv]
        env = dict(os.environ)
        env["PYTHONPATH"] = BENCH_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("stdin", subprocess.PIPE)
        p = subprocess.Popen(argv, start_new_session=True, env=env, **kw)
        self.procs.append(p)
        return p

    def reap(self, p: subprocess.Popen) -> None:
        """Kill one child (if it still runs) and forget it."""
        _kill(p)
        if p in self.procs:
            self.procs.remove(p)

    def kill_procs(self) -> None:
        for p in self.procs:
            _kill(p)
        self.procs.clear()


def _kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGKILL)          # its own session: pgid == pid
        except ProcessLookupError:
            pass
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    for s in (p.stdout, p.stderr, p.stdin):
        if s is not None:
            try:
                s.close()
            except OSError:
                pass
