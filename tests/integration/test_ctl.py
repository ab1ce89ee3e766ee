"""`shardnet ctl` against a real agent (datapath and worker processes, ZMQ, the control socket), through the
real command-line client in a subprocess.  The topology is tests/integration/test_engine.py's: a bridge with a
stateful filter, a router that SNATs to the uplink."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from engine.supervisor import Agent
from packet.codec import parse
from packet.spec import packet_to_dict
from tests.integration.test_engine import TOPO, Outputs, frame, to_internet, vm1_to_vm2, wait_for

TO_INTERNET_SPEC = ("eth_src=02:00:00:00:00:01,eth_dst=02:0a:00:00:00:01,ip_src=10.0.0.2,ip_dst=203.0.113.5,"
                    "proto=tcp,tp_src={sport},tp_dst=443,ip_id=7,tcp_seq=1")


def ctl(agent: Agent, *args: str, ok: bool = True):
    p = subprocess.run([sys.executable, "-m", "engine.cli", "ctl", "--ctl", agent.ctl_path, "--json", *args],
                       capture_output=True, text=True, timeout=30)
    if ok:
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)
    return p


@pytest.fixture
def agent(tmp_path):
    path = tmp_path / "topo.yaml"
    path.write_text(TOPO)
    with Agent(topology=str(path), host="host-a", store=f"memory://ctl-{tmp_path.name}", workers=2) as a:
        yield a


def test_the_control_socket_is_private(agent):
    assert stat.S_IMODE(os.stat(agent.ctl_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(agent.ctl_path)).st_mode) == 0o700


def test_dump_flows_stats_and_workers(agent):
    out = Outputs(agent)
    agent.inject("tenant.vm1", [vm1_to_vm2(p, "ack") for p in range(3000, 3010)])   # no reply set up ahead
    out.wait("tenant.vm2", 10)
    flows = ctl(agent, "dump-flows")
    assert len(flows) == 10
    f = flows[0]
    assert f["match"]["in_port"] == "tenant.vm1" and f["match"]["ip_src"] == "10.0.0.2"
    assert f["actions"] == [["output", "tenant.vm2"]] and "bridge:tenant" in f["tags"]
    assert f["worker"] in (0, 1) and f["idle_left_s"] > 0
    one = ctl(agent, "dump-flows", "--match", "in_port=tenant.vm1,proto=tcp,tp_src=3004")
    assert [x["match"]["tp_src"] for x in one] == [3004]
    assert len(ctl(agent, "dump-flows", "--worker", str(f["worker"]))) == sum(x["worker"] == f["worker"]
                                                                              for x in flows)
    stats = ctl(agent, "stats")
    assert stats["datapath.datapath_flows"] == 10
    assert stats["worker-0.flows_installed"] + stats["worker-1.flows_installed"] == 10
    ctl(agent, "stats", "--rate")
    agent.inject("tenant.vm1", [vm1_to_vm2(p, "ack") for p in range(3000, 3010)])    # hits
    out.wait("tenant.vm2", 20)
    rates = ctl(agent, "stats", "--rate")
    assert rates["rates"]["datapath.datapath_hits"] > 0
    rows = ctl(agent, "workers")
    assert sorted(r["name"] for r in rows) == ["datapath", "worker 0", "worker 1"]
    assert all(r["alive"] and r["pid"] == agent.pids[r["index"]] for r in rows)
    assert ctl(agent, "health")["ok"] is True
    assert ctl(agent, "del-flows", "--match", "tp_src=3004") == {"deleted": 1}
    assert len(ctl(agent, "dump-flows")) == 9


def test_trace_is_the_agents_decision_and_changes_nothing(agent):
    out = Outputs(agent)
    agent.inject("tenant.vm1", [to_internet(4000)])            # warm: fragments, a lease
    out.wait("r1.uplink", 1)
    before = agent.stats()
    flows_before = len(agent.flows())
    states_before = sum(w["worker_state_entries"] for w in before["workers"])
    got = ctl(agent, "trace", "tenant.vm1", TO_INTERNET_SPEC.format(sport=4001))
    assert got["result"] == "forward" and got["path"][0] == "tenant.vm1"
    [o] = got["outputs"]
    assert o["port"] == "r1.uplink" and o["packet"]["ip_src"] == "198.51.100.100"
    assert {s["type"] for s in got["flow_state"]} >= {"conntrack", "nat"}
    after = agent.stats()
    assert len(agent.flows()) == flows_before
    assert sum(w["worker_state_entries"] for w in after["workers"]) == states_before
    assert sum(w.get("worker_upcalls", 0) for w in after["workers"]) == sum(
        w.get("worker_upcalls", 0) for w in before["workers"])
    # the same packet, sent: the agent does what the trace said, except the SNAT port may differ (the trace
    # chose one without taking it)
    agent.inject("tenant.vm1", [frame(TO_INTERNET_SPEC.format(sport=4001))])
    [sent] = out.wait("r1.uplink", 2)[1:]
    real = packet_to_dict(parse(sent))
    assert {k: v for k, v in real.items() if k != "tp_src"} == {
        k: v for k, v in o["packet"].items() if k != "tp_src"}


def test_tables_flow_state_leases_and_log_level(agent):
    out = Outputs(agent)
    agent.inject("tenant.vm1", [to_internet(4100)])
    out.wait("r1.uplink", 1)
    states = ctl(agent, "flow-state")
    assert {s["kind"] for s in states} >= {"conntrack", "fwd_snat", "rev_snat"}
    assert ctl(agent, "flow-state", "--match", "ip_src=10.0.0.99") == []
    [lease] = ctl(agent, "leases")
    assert lease["device"] == "r1" and lease["ip"] == "198.51.100.100" and lease["block"] >= 5000
    agent.inject("tenant.vm1", [frame("eth_src=02:00:00:00:00:09,eth_dst=ff:ff:ff:ff:ff:ff,ip_src=10.0.0.9,"
                                      "ip_dst=10.0.0.255,proto=udp,tp_src=9,tp_dst=9")])
    macs = wait_for(lambda: ctl(agent, "mac-table", "tenant"), what="a learned MAC")
    assert {(x["mac"], x["port"]) for x in macs} == {("02:00:00:00:00:09", "tenant.vm1")}
    assert ctl(agent, "arp-table", "r1") == []          # every next hop is static here: nothing learned
    levels = ctl(agent, "log-level", "DEBUG")
    assert levels == {"supervisor": "DEBUG", "datapath": "DEBUG", "worker-0": "DEBUG", "worker-1": "DEBUG"}
    assert ctl(agent, "log-level", "worker-1", "warning") == {"worker-1": "WARNING"}
    bad = ctl(agent, "log-level", "LOUD", ok=False)
    assert bad.returncode == 1 and "unknown log level" in bad.stderr


def test_errors_are_clear(agent, tmp_path):
    p = ctl(agent, "trace", "tenant.vm1", "ip_src=nope", ok=False)
    assert p.returncode == 1 and "packet spec" in p.stderr
    p = subprocess.run([sys.executable, "-m", "engine.cli", "ctl", "--ctl", str(tmp_path / "none.sock"), "health"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "none.sock" in p.stderr


def test_ctl_finds_the_agent_of_a_host(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    path = tmp_path / "topo.yaml"
    path.write_text(TOPO)
    with Agent(topology=str(path), host="host-a", store=f"memory://ctlh-{tmp_path.name}", workers=1) as a:
        pointer = tmp_path / "state" / "shardnet" / "host-a.ctl"
        assert pointer.read_text().strip() == a.ctl_path
        p = subprocess.run([sys.executable, "-m", "engine.cli", "ctl", "--host", "host-a", "--json", "health"],
                           capture_output=True, text=True, timeout=30, env=os.environ)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["ok"] is True
    assert not pointer.exists()
