"""The engine with real processes and ZeroMQ: datapath + dispatcher process, pinned workers, supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import zmq

from engine.supervisor import Agent
from packet.codec import build, parse
from packet.spec import packet_to_dict, parse_spec
from tests.inprocess import TOPO as SEED_TOPO
from topology.loader import loads_topology
from topology.model import Route

# the in-process seed topology without vm4 (an exterior port bound to no host)
TOPO = SEED_TOPO.replace("      vm4: {}\n", "")
assert TOPO != SEED_TOPO

VM1, VM2 = "eth_src=02:00:00:00:00:01", "eth_src=02:00:00:00:00:02"


def frame(spec: str) -> bytes:
    return build(parse_spec(spec))


def vm1_to_vm2(sport: int, flags: str = "syn") -> bytes:
    """A TCP SYN (``flags`` other than syn: a packet that sets up no reply ahead, README "Replies set up ahead")."""
    return frame(f"{VM1},eth_dst=02:00:00:00:00:02,ip_src=10.0.0.2,ip_dst=10.0.0.3,proto=tcp,tp_src={sport},"
                 f"tp_dst=80,tcp_flags={flags}")


def vm2_to_vm1(sport: int) -> bytes:
    return frame(f"{VM2},eth_dst=02:00:00:00:00:01,ip_src=10.0.0.3,ip_dst=10.0.0.2,proto=tcp,tp_src=80,"
                 f"tp_dst={sport},tcp_flags=syn|ack")


def to_internet(sport: int, flags: str = "syn") -> bytes:
    return frame(f"{VM1},eth_dst=02:0a:00:00:00:01,ip_src=10.0.0.2,ip_dst=203.0.113.5,proto=tcp,"
                 f"tp_src={sport},tp_dst=443,tcp_flags={flags}")


def wait_for(fn, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Outputs:
    """Accumulates the frames the in-memory datapath output (the query drains them)."""

    def __init__(self, agent: Agent):
        self.agent = agent
        self.frames: dict[str, list[bytes]] = {}

    def poll(self) -> dict[str, list[bytes]]:
        for port, frames in self.agent.outputs().items():
            self.frames.setdefault(port, []).extend(frames)
        return self.frames

    def wait(self, port: str, n: int, timeout: float = 10.0) -> list[bytes]:
        return wait_for(lambda: len(self.poll().get(port, [])) >= n and self.frames[port], timeout,
                        f"{n} frames on {port}")


@pytest.fixture
def topo_file(tmp_path):
    path = tmp_path / "topo.yaml"
    path.write_text(TOPO)
    return str(path)


def make_agent(topo_file, tmp_path, **kw) -> Agent:
    kw.setdefault("workers", 2)
    return Agent(topology=topo_file, host="host-a", store=f"memory://{tmp_path.name}", **kw)


@pytest.mark.parametrize("workers", [1, 2])
def test_flows_are_set_up_through_the_workers(topo_file, tmp_path, workers):
    with make_agent(topo_file, tmp_path, workers=workers) as agent:
        out = Outputs(agent)
        agent.inject("tenant.vm1", [vm1_to_vm2(p) for p in range(2000, 2040)])
        frames = out.wait("tenant.vm2", 40)
        assert {parse(f).tp_src for f in frames} == set(range(2000, 2040))
        stats = agent.stats()
        # every SYN's flow, and its SYN-ACK's set up with it (README "Replies set up ahead")
        installed = [w["flows_installed"] for w in stats["workers"]]
        assert sum(installed) == 80 and all(n > 0 for n in installed)
        assert sum(w["worker_replies_ahead"] for w in stats["workers"]) == 40
        assert stats["datapath"]["datapath_flows"] == 80 and stats["datapath"]["datapath_flows_ahead"] == 40
        assert stats["datapath"]["datapath_misses"] == 40
        # the same packets again are cache hits: no new upcall; and so are the SYN-ACKs
        agent.inject("tenant.vm1", [vm1_to_vm2(p) for p in range(2000, 2040)])
        out.wait("tenant.vm2", 80)
        agent.inject("tenant.vm2", [vm2_to_vm1(p) for p in range(2000, 2040)])
        back = out.wait("tenant.vm1", 40)
        assert {parse(f).tp_dst for f in back} == set(range(2000, 2040))
        dp = agent.stats()["datapath"]
        assert dp["datapath_hits"] == 80 and dp["datapath_misses"] == 40


def test_return_flow_on_another_worker_finds_its_conntrack_state(topo_file, tmp_path):
    pins = {"tenant.vm1": 0, "tenant.vm2": 1}
    with make_agent(topo_file, tmp_path, port_workers=pins) as agent:
        out = Outputs(agent)
        agent.inject("tenant.vm1", [vm1_to_vm2(3000)])
        out.wait("tenant.vm2", 1)
        agent.inject("tenant.vm2", [vm2_to_vm1(3000), vm2_to_vm1(3999)])   # a reply, and one with no request
        [reply] = out.wait("tenant.vm1", 1)
        assert parse(reply).tp_dst == 3000
        time.sleep(0.3)
        assert len(out.poll()["tenant.vm1"]) == 1
        w1 = agent.stats()["workers"][1]
        assert w1["worker_state_received"] >= 1 and w1["worker_drops_filter_drop"] == 1


def test_return_flow_on_another_worker_finds_its_nat_state(topo_file, tmp_path):
    pins = {"tenant.vm1": 0, "r1.uplink": 1}
    with make_agent(topo_file, tmp_path, port_workers=pins) as agent:
        out = Outputs(agent)
        agent.inject("tenant.vm1", [to_internet(4000)])
        [fwd] = out.wait("r1.uplink", 1)
        p = parse(fwd)
        d = packet_to_dict(p)
        assert d["ip_src"] == "198.51.100.100" and 5000 <= p.tp_src <= 65535 and p.ttl == 63
        reply = frame(f"eth_src=02:0b:00:00:00:01,eth_dst=02:0a:00:00:00:02,ip_src=203.0.113.5,"
                      f"ip_dst=198.51.100.100,proto=tcp,tp_src=443,tp_dst={p.tp_src},tcp_flags=syn|ack")
        agent.inject("r1.uplink", [reply])
        [back] = out.wait("tenant.vm1", 1)
        b = packet_to_dict(parse(back))
        assert (b["ip_dst"], b["tp_dst"], b["ip_src"]) == ("10.0.0.2", 4000, "203.0.113.5")
        assert agent.stats()["workers"][1]["worker_state_received"] >= 2


def test_topology_edit_invalidates_exactly_the_flows_tagged_with_it(topo_file, tmp_path):
    with make_agent(topo_file, tmp_path) as agent:
        out = Outputs(agent)
        agent.inject("tenant.vm1", [vm1_to_vm2(p, "ack") for p in range(5000, 5010)])    # no reply set up ahead
        agent.inject("tenant.vm1", [to_internet(p, "ack") for p in range(6000, 6010)])
        out.wait("tenant.vm2", 10)
        out.wait("r1.uplink", 10)
        flows = agent.flows()
        routed = [f for f in flows if "router:r1" in f[3]]
        assert len(flows) == 20 and len(routed) == 10
        topo = loads_topology(TOPO)
        r1 = topo.routers["r1"]
        edited = replace(topo, routers={"r1": replace(r1, routes=r1.routes + (
            Route(dst=0x0B000000, dst_len=24, type="blackhole"),))})
        counts = agent.apply_topology(edited)
        assert counts["updated"] == 1
        wait_for(lambda: len(agent.flows()) == 10, what="router flows removed")
        left = agent.flows()
        assert all("router:r1" not in f[3] for f in left) and all(f[0][0] == "tenant.vm1" for f in left)
        # the routed flows are simulated again against the new router
        agent.inject("tenant.vm1", [to_internet(6000, "ack")])
        out.wait("r1.uplink", 11)


def test_parked_simulation_resumes_when_the_fragment_appears_or_drops_at_deadline(topo_file, tmp_path):
    with make_agent(topo_file, tmp_path, park_timeout_s=1.0, workers=1) as agent:
        out = Outputs(agent)
        # vm9 does not exist yet: its packets park
        vm9 = frame("eth_src=02:00:00:00:00:09,eth_dst=02:00:00:00:00:02,ip_src=10.0.0.9,ip_dst=10.0.0.3")
        agent.inject("tenant.vm8", [vm9])                # never appears: dropped at the deadline
        wait_for(lambda: agent.stats()["workers"][0].get("worker_drops_parked_timeout_fragment", 0) == 1,
                 what="the parked packet to time out")
        agent.inject("tenant.vm9", [vm9])
        wait_for(lambda: agent.stats()["workers"][0]["worker_parked_now"] == 1, what="parking")
        topo = loads_topology(TOPO.replace("      up: {peer: r1.tenant}",
                                           "      up: {peer: r1.tenant}\n      vm9: {host: host-a, interface: t9}")
                              .replace("{ct: forward, in_port: [tenant.vm1, tenant.up]}",
                                       "{ct: forward, in_port: [tenant.vm1, tenant.up, tenant.vm9]}"))
        agent.apply_topology(topo)
        [f] = out.wait("tenant.vm2", 1)
        assert parse(f).ip_src == 0x0A000009
        stats = agent.stats()["workers"][0]
        assert stats["parked_resumed"] >= 1 and stats["worker_parked_now"] == 0


def test_a_killed_worker_is_restarted_and_forwarding_continues(topo_file, tmp_path):
    with make_agent(topo_file, tmp_path) as agent:
        out = Outputs(agent)
        agent.inject("tenant.vm1", [vm1_to_vm2(p) for p in range(7000, 7020)])
        out.wait("tenant.vm2", 20)
        old = agent.pids[0]
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: agent.health()["restarts"] == 1 and agent.pids[0] != old, what="restart")
        # the dead worker's flows were purged from the datapath; the other worker's flows stay
        wait_for(lambda: all(f[1] != 0 for f in agent.flows()), what="purge")
        wait_for(lambda: agent.stats()["workers"][0].get("worker_pid") == agent.pids[0], what="new worker up")
        agent.inject("tenant.vm1", [vm1_to_vm2(p) for p in range(7000, 7040)])
        out.wait("tenant.vm2", 60)
        assert agent.stats()["workers"][0]["flows_installed"] > 0


def test_malformed_backchannel_bytes_are_rejected_and_counted(topo_file, tmp_path):
    with make_agent(topo_file, tmp_path) as agent:
        ctx = zmq.Context()
        try:
            for role in ("worker-0", "datapath"):
                s = ctx.socket(zmq.PUSH)
                s.setsockopt(zmq.LINGER, 2000)
                s.connect(agent.rt.endpoint(role))
                for junk in (b"", b"\xc1\xc1", b"\x92\x7f\x01", b"not msgpack at all", b"\x93\x01\x02"):
                    s.send(junk)
                s.close()
        finally:
            ctx.term()

        def rejected(counters):
            return sum(v for k, v in counters.items() if "backchannel_rejected_" in k)

        wait_for(lambda: rejected(agent.stats()["workers"][0]) == 5 and rejected(agent.stats()["datapath"]) == 5,
                 what="rejects counted")
        out = Outputs(agent)
        agent.inject("tenant.vm1", [vm1_to_vm2(8000)])
        out.wait("tenant.vm2", 1)
        assert all(agent.health()["alive"].values())


def test_stop_leaves_no_process_and_no_socket_file(topo_file, tmp_path):
    agent = make_agent(topo_file, tmp_path).start()
    pids, rundir = list(agent.pids.values()), agent.rt.path
    assert os.listdir(rundir)
    agent.stop()
    assert not os.path.exists(rundir)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_run_demo_prints_counters_with_flows_from_every_worker():
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "run", "--store", "memory://", "--demo",
                           "--duration", "5"], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("flows installed"))
    counts = [int(x) for x in row.split()[2:]]
    assert len(counts) == 2 and all(c > 0 for c in counts)
