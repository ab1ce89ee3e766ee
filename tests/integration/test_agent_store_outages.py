"""An agent on a real 3-node ZooKeeper ensemble under store faults (issue 11, store outages).

The agent is a real process pool (in-memory datapath, 2 workers) whose store is the ensemble; the packets are
SNAT connections from vm1 to the internet, so a new flow may need a port block leased in the store while a
cached one needs nothing off-box.

- the leader is killed while packets flow: no packet of a cached flow is lost, and new flows (new leases
  ride over the election) keep going through;
- 2 of 3 nodes down: cached flows forward; new flows that need a lease wait, then drop with a named reason
  (``lease_store_unavailable`` / ``store_down_lease``), the supervisor's counters say the store is suspended,
  and the service thread keeps answering meanwhile; kazoo's per-retry lines are logged once per state change;
  after the nodes are back new flows go through again;
- a forced session expiry: every ephemeral the agent owned (host registration, MAC entries, NAT blocks) is
  back, in the new session.

Each test leaves every node running (``finally``), so the module shares the ensemble.
"""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from kazoo.client import KazooClient

from engine.supervisor import Agent
from tests.integration.test_engine import Outputs, frame, wait_for
from tests.zkharness import expire_kazoo_session

pytestmark = pytest.mark.zk

TOPO = """
version: 1
hosts:
  host-a: {tunnel_ip: 127.0.0.11}
bridges:
  tenant:
    ports:
      vm1: {host: host-a, interface: tap-vm1}
      up: {peer: r1.tenant}
routers:
  r1:
    ports:
      tenant: {address: 10.0.0.1/24, mac: "02:0a:00:00:00:01"}
      uplink: {address: 198.51.100.2/24, mac: "02:0a:00:00:00:02", host: host-a, interface: up0}
    routes:
      - {dst: 0.0.0.0/0, gateway: 198.51.100.1, port: uplink}
    arp_table: {198.51.100.1: "02:0b:00:00:00:01"}
    inbound_filter: r1-in
    outbound_filter: r1-out
chains:
  r1-in:
    - {action: rev_snat}
  r1-out:
    - {match: {src: 10.0.0.0/24, dst: "!10.0.0.0/24"}, action: snat,
       targets: [{ip: 198.51.100.100, port: 5000-65535}]}
"""
UPLINK = "r1.uplink"
STORE_DROPS = ("lease_store_unavailable", "lease_store_busy", "store_down_lease")


def snat_frames(ports) -> list[bytes]:
    return [frame(f"eth_src=02:00:00:00:00:01,eth_dst=02:0a:00:00:00:01,ip_src=10.0.0.2,ip_dst=203.0.113.80,"
                  f"proto=udp,tp_src={p},tp_dst=443") for p in ports]


def drops(agent: Agent) -> dict[str, int]:
    out: dict[str, int] = {}
    for w in agent.stats()["workers"]:
        for k, v in w.items():
            if k.startswith("worker_drops_"):
                out[k[13:]] = out.get(k[13:], 0) + v
    return out


@pytest.fixture
def ensemble(zk_ensemble):
    yield zk_ensemble
    for node in zk_ensemble.nodes:
        if not node.running:
            zk_ensemble.restart_node(node)
    zk_ensemble.wait_ready()


@pytest.fixture
def agent_on(ensemble, tmp_path):
    (tmp_path / "t.yaml").write_text(TOPO)
    started = []

    def start(op_timeout: float = 5.0, **kw) -> Agent:
        root = f"/outage/{uuid.uuid4().hex}"
        a = Agent(workers=2, host="host-a", topology=str(tmp_path / "t.yaml"),
                  store=f"zk://{ensemble.hosts}{root}?session_timeout=10&op_timeout={op_timeout}", **kw).start()
        a.test_root = root
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()


def warm(agent: Agent, out: Outputs, n: int) -> list[bytes]:
    """``n`` SNAT connections set up (their flows cached in the datapath)."""
    frames = snat_frames(range(20000, 20000 + n))
    agent.inject("tenant.vm1", frames)
    out.wait(UPLINK, n, timeout=30)
    wait_for(lambda: agent.stats()["datapath"].get("datapath_flows", 0) >= n, what="flows cached")
    return frames


def test_leader_kill_under_load_loses_no_cached_packet_and_new_flows_continue(ensemble, agent_on):
    agent = agent_on(op_timeout=10.0)
    out = Outputs(agent)
    cached = warm(agent, out, 200)
    hits0 = agent.stats()["datapath"]["datapath_hits"]
    base = len(out.poll()[UPLINK])
    leader = ensemble.leader()
    assert leader is not None
    ensemble.stop_node(leader, kill=True)
    rounds, new_per_round = 10, 30
    try:
        for r in range(rounds):                         # bounded: 10 rounds of 200 cached + 30 new packets
            agent.inject("tenant.vm1", cached)
            agent.inject("tenant.vm1", snat_frames(range(30000 + r * new_per_round, 30000 + (r + 1) * new_per_round)))
            time.sleep(0.1)
        out.wait(UPLINK, base + rounds * (len(cached) + new_per_round), timeout=60)
    finally:
        ensemble.restart_node(leader)
    stats = agent.stats()
    assert stats["datapath"]["datapath_hits"] - hits0 == rounds * len(cached)     # every cached packet a hit
    assert not any(drops(agent).values()), drops(agent)
    assert len({f for f in out.frames[UPLINK][base:]}) >= rounds * new_per_round


def test_two_of_three_down_cached_flows_forward_and_new_ones_drop_with_a_reason(ensemble, agent_on, caplog):
    agent = agent_on(op_timeout=2.0)
    out = Outputs(agent)
    cached = warm(agent, out, 200)
    down = [n for n in ensemble.nodes if n is not ensemble.leader()][:1] + [ensemble.leader()]
    caplog.set_level(logging.INFO, logger="kazoo.client")
    for node in down:
        ensemble.stop_node(node, kill=True)
    try:
        wait_for(lambda: agent.store_state == "suspended", timeout=20, what="the agent to see the store suspended")
        base = len(out.poll()[UPLINK])
        agent.inject("tenant.vm1", cached)
        out.wait(UPLINK, base + len(cached), timeout=20)            # cached flows: every packet out
        # 600 new connections need more ports than the blocks held: some must wait for a lease, and drop
        agent.inject("tenant.vm1", snat_frames(range(40000, 40600)))
        # while those leases hang in the store (each up to op_timeout), the service thread answers at once
        wait_for(lambda: agent.stats(timeout=5)["supervisor"]["supervisor_store_calls_in_flight"] > 0, timeout=10,
                 what="a stats answer while lease calls are in flight")
        wait_for(lambda: sum(drops(agent).get(r, 0) for r in STORE_DROPS) > 0, timeout=30,
                 what="new flows to drop for want of the store")
        sup = agent.stats()["supervisor"]                           # the service thread answers meanwhile
        assert sup["supervisor_store_connected"] == 0 and sup["store_suspended"] >= 1
        reasons = drops(agent)
        got_new = len(out.poll()[UPLINK]) - base - len(cached)
        wait_for(lambda: len(out.poll()[UPLINK]) - base - len(cached) + sum(drops(agent).get(r, 0)
                 for r in STORE_DROPS) >= 600, timeout=30, what="every new packet out or dropped with a reason")
        assert set(reasons) <= set(STORE_DROPS), reasons            # no other reason: nothing else went wrong
        assert got_new < 600
        time.sleep(1.0)                                             # kazoo keeps retrying meanwhile
        retry_lines = [r for r in caplog.records if r.name == "kazoo.client" and (
            r.getMessage().startswith("Connection dropped") or r.getMessage().startswith("Connecting to"))]
        changes = agent.stats()["supervisor"]["supervisor_store_state_changes"]
        assert len(retry_lines) <= 2 * (changes + 1), [r.getMessage() for r in retry_lines]
        assert agent.store.counters["store_log_lines_suppressed"] > 0
    finally:
        for node in down:
            ensemble.restart_node(node)
    wait_for(lambda: agent.store_state == "connected", timeout=30, what="the store back")
    base = len(out.poll()[UPLINK])
    agent.inject("tenant.vm1", snat_frames(range(50000, 50100)))
    out.wait(UPLINK, base + 100, timeout=30)                         # new flows lease again


def _ephemerals(client: KazooClient, path: str) -> dict[str, int]:
    """Every ephemeral node under ``path``: {path: owning session id}."""
    out = {}
    for child in client.get_children(path):
        p = f"{path.rstrip('/')}/{child}"
        _, stat = client.get(p)
        if stat.ephemeralOwner:
            out[p] = stat.ephemeralOwner
        else:
            out.update(_ephemerals(client, p))
    return out


def test_a_forced_session_expiry_brings_every_owned_entry_back(ensemble, agent_on):
    agent = agent_on()
    out = Outputs(agent)
    warm(agent, out, 100)                                            # a MAC learned, NAT blocks leased
    client = KazooClient(hosts=ensemble.hosts)
    client.start(timeout=10)
    try:
        old = agent.store.session_id
        before = wait_for(lambda: (e := _ephemerals(client, agent.test_root)) and any("/tables/mac/" in p for p in e)
                          and e, what="the MAC entry written")
        assert set(before.values()) == {old}
        kinds = {p.split("/")[3] for p in before}
        assert {"hosts", "tables", "nat"} <= kinds, sorted(before)
        expire_kazoo_session(agent.store.client, ensemble.hosts)
        t0 = time.monotonic()
        wait_for(lambda: agent.store.session_id != old and _ephemerals(client, agent.test_root).keys() >= before.keys(),
                 timeout=20, what="the owned entries re-created")
        took = time.monotonic() - t0
        after = _ephemerals(client, agent.test_root)
        assert {after[p] for p in before} == {agent.store.session_id}
        print(f"owned entries ({len(before)}) back {took:.2f} s after the expiry was seen")
    finally:
        client.stop()
        client.close()
    base = len(out.poll()[UPLINK])
    agent.inject("tenant.vm1", snat_frames(range(20000, 20100)))    # the cached connections carry on
    out.wait(UPLINK, base + 100, timeout=20)
