"""Flow state larger than one message, through the real processes: a worker holding 100k entries (about 6 MB
of them on the wire, past the 4 MiB message cap that used to end persistence without a word) is snapshotted
page by page into the state file, and ``shardnet ctl flow-state`` pages through it too."""

from __future__ import annotations

import time

import pytest

from backchannel import messages as m
from engine.ctlclient import request
from engine.ctlcommands import flow_state
from engine.statefile import read_state
from engine.supervisor import Agent
from tests.integration.test_engine import frame, wait_for

N = 100_000
TOPO = """
version: 1
hosts:
  host-a: {tunnel_ip: 127.0.0.11}
bridges:
  tenant:
    ports:
      vm1: {host: host-a, interface: tap-vm1}
"""


@pytest.fixture
def agent(tmp_path):
    (tmp_path / "t.yaml").write_text(TOPO)
    a = Agent(workers=2, host="host-a", topology=str(tmp_path / "t.yaml"), store=f"memory://pages-{tmp_path.name}",
              state_file=str(tmp_path / "a.state"), flow_state_idle_s=600.0).start()
    yield a
    a.stop()


def test_a_shard_past_the_message_cap_is_saved_whole_and_listed_whole(agent):
    entries = [m.FlowStateEntry("conntrack", (0x0A000002, 0xCB007100 + i // 60_000, 17, 1024 + i % 60_000, 53,
                                              "tenant"), None, 0.0) for i in range(N)]
    for i in range(0, N, 4000):                       # as replicas pushed by a peer, into worker 0 only
        agent._call("send", (0, m.FlowStateBatch(tuple(entries[i:i + 4000]), 1)))
    wait_for(lambda: agent.stats()["workers"][0]["worker_state_entries"] == N, timeout=60, what="100k entries")
    agent.save_state(timeout=60)
    saved = read_state(agent.cfg.state_path())
    assert {e.key for e in saved.entries} == {e.key for e in entries} and len(saved.entries) == N
    assert agent.stats()["supervisor"]["supervisor_state_snapshot_entries"] == N
    rows = flow_state(agent, {})
    assert len(rows) == N and {r["worker"] for r in rows} == {0}
    answer = request(agent.ctl_path, "flow-state", {"match": "tp_src=1024"})    # over the control socket
    assert answer["ok"] and len(answer["result"]) == -(-N // 60_000)
    whole = request(agent.ctl_path, "flow-state", {})                           # ~15 MB of JSON in one answer
    assert whole["ok"] and len(whole["result"]) == N


L2 = """
version: 1
hosts:
  host-a: {tunnel_ip: 127.0.0.11}
bridges:
  tenant:
    ports:
      vm1: {host: host-a, interface: tap-vm1}
      vm2: {host: host-a, interface: tap-vm2}
    mac_table: {"02:00:00:00:00:02": vm2}
"""


def test_flow_dumps_of_a_table_larger_than_a_page_list_every_flow(tmp_path):
    (tmp_path / "l2.yaml").write_text(L2)
    n = 12_000                                          # more than two pages of 5000 (and pages short in bytes)
    with Agent(workers=2, host="host-a", topology=str(tmp_path / "l2.yaml"),
               store=f"memory://flows-{tmp_path.name}", keep_outputs=False,
               megaflows=False) as a:                  # exact match: one flow per frame
        frames = [frame(f"eth_src=02:00:00:00:00:01,eth_dst=02:00:00:00:00:02,ip_src=10.0.0.2,ip_dst=10.0.0.3,"
                        f"proto=udp,tp_src={1024 + i % 60000},tp_dst={53 + i // 60000}") for i in range(n)]
        for _ in range(5):                              # an upcall refused under the burst is sent again
            for i in range(0, n, 500):
                a.inject("tenant.vm1", frames[i:i + 500])
                time.sleep(0.05)
            try:
                wait_for(lambda: a.stats()["datapath"]["datapath_flows"] >= n, timeout=10, what=f"{n} flows")
                break
            except AssertionError:
                continue
        assert a.stats()["datapath"]["datapath_flows"] == n
        flows = a.flows()
        assert len(flows) == n and len({f[4] for f in flows}) == n
        answer = request(a.ctl_path, "dump-flows", {})
        assert answer["ok"] and len({f["id"] for f in answer["result"]}) == n
        assert {f["id"] for f in answer["result"]} == {f[4] for f in flows}
