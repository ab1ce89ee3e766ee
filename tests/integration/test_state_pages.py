"""Flow state larger than one message, through the real processes: a worker holding 100k entries (about 6 MB
of them on the wire, past the 4 MiB message cap that used to end persistence without a word) is snapshotted
page by page into the state file, and ``shardnet ctl flow-state`` pages through it too."""

from __future__ import annotations

import pytest

from backchannel import messages as m
from engine.ctlclient import request
from engine.ctlcommands import flow_state
from engine.statefile import read_state
from engine.supervisor import Agent
from tests.integration.test_engine import wait_for

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
