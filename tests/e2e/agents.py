"""Helpers of the agent end-to-end tests: topologies written for the interfaces the harness created, agents
with the real datapath on one ZooKeeper store, traffic checks (ping, a Python TCP transfer, nc).

Each test picks a fresh loopback /24 for the hosts' tunnel addresses and a fresh UDP port, so runs never
collide.  Agents are stopped (and their processes reaped) by the ``real_agents`` fixture's finalizer.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import time

from engine.config import AgentConfig
from engine.datapath import netdev
from engine.supervisor import Agent
from tests.e2e.netns import Namespace, NetnsFactory, short_id

SERVER = """
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); print("ready", flush=True)
c, peer = s.accept(); print("peer", peer[0], flush=True); h = hashlib.sha256(); n = 0
while b := c.recv(65536):
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""
CLIENT = """
import random, socket, sys
data = random.Random(int(sys.argv[3])).randbytes(int(sys.argv[4]))
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
c.sendall(data); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
"""


class Net:
    """Tunnel addresses and port of one test."""

    def __init__(self):
        self.net = random.randrange(64, 250)
        self.tunnel_port = random.randrange(30000, 60000)

    def ip(self, n: int) -> str:
        return f"127.0.{self.net}.{n}"


def hosts_yaml(net: Net, *names: str) -> str:
    """The ``hosts:`` section of a topology: each host's tunnel address on the test's loopback /24."""
    return "hosts:\n" + "".join(f"  {n}: {{tunnel_ip: {net.ip(11 + i)}}}\n" for i, n in enumerate(names))


def add_interface(factory: NetnsFactory, ns: Namespace, ifname: str, address: str, mac: str) -> str:
    """One more veth in an existing namespace (``ifname``, "IP/len", MAC); returns its root-namespace end,
    configured as a datapath end and removed with the factory."""
    host_if = f"sv{short_id()}"
    netdev.create_veth(host_if, ifname, ns.name)
    factory.links.append(host_if)
    netdev.configure_datapath_end(host_if)
    netdev.configure_ns_end(ns.name, ifname, mac=mac, address=address)
    return host_if


def if_counter(ns: Namespace, ifname: str, key: str = "tx_packets") -> int:
    """A kernel interface counter inside ``ns`` (/sys as ``ip netns exec`` mounts it)."""
    return int(ns.run(["cat", f"/sys/class/net/{ifname}/statistics/{key}"]).stdout)


def start_agent(store: str, host: str, net: Net, tmp_path, topology: str | None = None, **kw) -> Agent:
    cfg = AgentConfig(store=store, host=host, workers=kw.pop("workers", 2), datapath="real",
                      tunnel_port=net.tunnel_port, topology=topology,
                      state_file=str(tmp_path / f"{host}.state"), runtime_base=str(tmp_path), **kw)
    return Agent(cfg).start()


def ping(src, dst_ip: str, count: int = 3) -> None:
    r = src.run(["ping", "-c", str(count), "-i", "0.2", "-W", "2", dst_ip], check=False, timeout=30)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


def ping_eventually(src, dst_ip: str, tries: int = 5) -> None:
    """The first packets may wait for ARP, MAC learning through the store, leases: retry a few times."""
    for _ in range(tries - 1):
        r = src.run(["ping", "-c", "1", "-W", "2", dst_ip], check=False, timeout=30)
        if r.returncode == 0:
            break
    ping(src, dst_ip)


def python_transfer(src, dst, dst_ip: str, port: int, size: int = 300_000, seed: int = 7) -> str:
    """A TCP transfer from ``src`` to a Python server in ``dst``; returns the peer address the server saw."""
    server = dst.popen([sys.executable, "-c", SERVER, str(port)])
    assert server.stdout.readline().strip() == b"ready"
    src.run([sys.executable, "-c", CLIENT, dst_ip, str(port), str(seed), str(size)], timeout=60)
    out, err = server.communicate(timeout=30)
    lines = out.decode().split("\n")
    want = random.Random(seed).randbytes(size)
    assert lines[1].split() == [str(size), hashlib.sha256(want).hexdigest()], err
    return lines[0].split()[1]


def nc_transfer(src, dst, dst_ip: str, port: int, tmp_path, size: int = 300_000) -> None:
    data = random.Random(port).randbytes(size)
    (tmp_path / f"blob{port}").write_bytes(data)
    got = tmp_path / f"got{port}"
    server = dst.popen(f"nc -l {port} > {got}", stdin=subprocess.DEVNULL)
    wait_listening(dst, port)
    src.run(f"nc -N -w 20 {dst_ip} {port} < {tmp_path / f'blob{port}'}", timeout=60)
    server.wait(timeout=30)
    assert got.read_bytes() == data


def wait_listening(ns, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ns.run(["ss", "-ltnH", f"sport = :{port}"]).stdout.strip():
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing listens on {port} in {ns.name}")
        time.sleep(0.05)


def stat(agent: Agent, key: str, where: str = "datapath") -> int:
    s = agent.stats()
    if where == "datapath":
        return s["datapath"].get(key, 0)
    return sum(w.get(key, 0) for w in s["workers"])
