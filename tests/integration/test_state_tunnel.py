"""Flow-state replication between two datapath processes' shells over real VXLAN/UDP sockets on loopback:
state goes out on the reserved tunnel key, sealed with the deployment key, is accepted only when authentic and
from a known host, and reaches every local worker."""

from __future__ import annotations

import random
import socket
import time

import zmq

from backchannel import messages as m
from backchannel.codec import decode, encode
from engine.datapath.tunnel import VxlanTunnel
from engine.dpproc import DatapathConfig, DatapathProcess
from packet.addr import ip2int

KEY = bytes(range(32))


def _free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _agent(ctx, ip: str, port: int, hosts: dict, n_workers: int = 2):
    inboxes, pushes = [], []
    for _ in range(n_workers):
        pull = ctx.socket(zmq.PULL)
        endpoint = f"inproc://w-{random.getrandbits(48):x}"
        pull.bind(endpoint)
        push = ctx.socket(zmq.PUSH)
        push.connect(endpoint)
        inboxes.append(pull)
        pushes.append(push)
    cfg = DatapathConfig("/nonexistent", n_workers, mode="real", tunnel_ip=ip2int(ip), tunnel_port=port,
                         hosts={k: ip2int(v) for k, v in hosts.items()})
    proc = DatapathProcess(cfg, pushes, None)
    name = next(h for h, a in hosts.items() if a == ip)
    proc.handle(m.SetStateAuth(0, name, (KEY,)), time.monotonic())
    return proc, inboxes


def _drain(proc: DatapathProcess, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    fd = proc.tunnel.fileno()
    while time.monotonic() < deadline:
        proc.dp.poll_ready(fd, time.monotonic())
        time.sleep(0.01)


def test_state_reaches_every_worker_of_the_other_host_and_strangers_are_refused():
    port = _free_udp_port()
    hosts = {"host-a": "127.0.0.61", "host-b": "127.0.0.62"}
    ctx = zmq.Context()
    a, a_inboxes = _agent(ctx, "127.0.0.61", port, hosts)
    b, b_inboxes = _agent(ctx, "127.0.0.62", port, hosts)
    stranger = VxlanTunnel("127.0.0.63", port)
    try:
        batch = m.FlowStateBatch((m.FlowStateEntry("conntrack", (1, 2, 6, 3, 4, "br"), None, 60.0),), 0)
        a.handle(m.StateToHosts(("host-b", "host-z"), encode(batch)), time.monotonic())
        assert a.counters["datapath_state_tx"] == 1 and a.counters["datapath_state_no_host"] == 1
        stranger.send_state(ip2int("127.0.0.62"), encode(batch))
        _drain(b, 0.5)
        assert b.counters["datapath_state_accepted"] == 1
        assert b.counters["datapath_state_refused"] == 1 and b.counters["datapath_state_refused_format"] == 1
        for inbox in b_inboxes:
            assert inbox.poll(1000)
            assert decode(inbox.recv()) == batch
            assert not inbox.poll(50)                     # the stranger's copy went nowhere
    finally:
        stranger.close()
        for proc in (a, b):
            proc.dp.close()
            proc.tunnel.close()
            for s in proc.to_workers:
                s.close(0)
        for s in (*a_inboxes, *b_inboxes):
            s.close(0)
        ctx.term()
