"""`--metrics`: a real agent (real processes, in-memory datapath) scraped over HTTP with urllib; the values move
with the traffic the test drives, and the endpoint goes away with the agent.  Also `shardnet run` with
--metrics, --log-file and --status as a user starts it."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.supervisor import Agent, AgentError
from tests.integration.test_engine import TOPO, Outputs, vm1_to_vm2, vm2_to_vm1, wait_for


@pytest.fixture
def topo_file(tmp_path):
    path = tmp_path / "topo.yaml"
    path.write_text(TOPO)
    return str(path)


def scrape(url: str) -> dict:
    """{(name, frozenset(labels)): value} of one GET of ``url``."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict, name: str, **labels) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


DP = {"process": "datapath", "worker": ""}


def test_a_scrape_of_a_real_agent_moves_with_its_traffic(topo_file, tmp_path):
    with Agent(topology=topo_file, host="host-a", store=f"memory://{tmp_path.name}", workers=2,
               metrics="127.0.0.1:0", port_workers={"tenant.vm1": 0, "tenant.vm2": 1}) as agent:
        host, port = agent.metrics.address
        url = f"http://{host}:{port}/metrics"
        before = scrape(url)
        assert value(before, "shardnet_up") == 1 and value(before, "shardnet_store_connected") == 1
        assert value(before, "shardnet_store_state", state="connected") == 1
        assert value(before, "shardnet_flows", **DP) == 0
        assert value(before, "shardnet_setup_latency_seconds_count", **DP) == 0
        assert value(before, "shardnet_agent_info", host="host-a", store=f"memory://{tmp_path.name}",
                     datapath="memory", workers="2") == 1

        out = Outputs(agent)
        agent.inject("tenant.vm1", [vm1_to_vm2(p, "ack") for p in range(9000, 9040)])
        out.wait("tenant.vm2", 40)
        agent.inject("tenant.vm1", [vm1_to_vm2(p, "ack") for p in range(9000, 9040)])    # the same again: hits
        agent.inject("tenant.vm2", [vm2_to_vm1(9999)])                            # a reply to nothing: dropped
        out.wait("tenant.vm2", 80)
        wait_for(lambda: agent.stats()["workers"][1].get("worker_drops_filter_drop") == 1, what="the drop")
        after = scrape(url)

        assert value(after, "shardnet_datapath_misses_total", **DP) == 41
        assert value(after, "shardnet_datapath_hits_total", **DP) == 40
        assert value(after, "shardnet_flows", **DP) == 41
        assert value(after, "shardnet_worker_upcalls_total", process="worker", worker="0") == 40
        assert value(after, "shardnet_flows", process="worker", worker="0") == 40
        assert value(after, "shardnet_flow_state_entries", process="worker", worker="0") >= 40
        assert value(after, "shardnet_drops_total", process="worker", worker="1", reason="filter_drop") == 1
        assert value(after, "shardnet_parked_now", process="worker", worker="0") == 0
        assert value(after, "shardnet_restarts_total", process="supervisor", worker="") == 0
        # one latency sample per answered upcall, in cumulative buckets
        assert value(after, "shardnet_setup_latency_seconds_count", **DP) == 41
        assert value(after, "shardnet_setup_latency_seconds_bucket", **DP, le="+Inf") == 41
        assert 0 < value(after, "shardnet_setup_latency_seconds_sum", **DP) < 41 * 5.0
        buckets = sorted((float(dict(ls)["le"]), v) for (n, ls), v in after.items()
                         if n == "shardnet_setup_latency_seconds_bucket")
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)
        # counters only grow between scrapes
        for key, v in before.items():
            if key[0].endswith("_total") and key in after:
                assert after[key] >= v, key
        assert total(after, "shardnet_backchannel_decoded_total") > total(before, "shardnet_backchannel_decoded_total")

        agent.store.expire_session()                   # the store's state is followed: LOST, then CONNECTED
        wait_for(lambda: value(scrape(url), "shardnet_supervisor_store_state_changes_total",
                               process="supervisor", worker="") == 2, what="two store state changes")
    with pytest.raises(urllib.error.URLError):        # stopped with the agent
        urllib.request.urlopen(url, timeout=2)


def test_a_busy_metrics_port_fails_the_start(topo_file, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        agent = Agent(topology=topo_file, host="host-a", store=f"memory://{tmp_path.name}", workers=1,
                      metrics=str(port))
        with pytest.raises(AgentError, match=f"metrics: cannot listen on {port}"):
            agent.start()
        assert not any(p.poll() is None for p in agent.procs.values())


def test_shardnet_run_with_metrics_log_file_and_status(tmp_path):
    log_file = tmp_path / "run.log"
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "--demo", "--duration", "4",
                             "--metrics", "0", "--log-file", str(log_file), "--log-level", "info",
                             "--status", "--status-every", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    first = proc.stdout.readline()
    assert first.startswith("shardnet: agent up:") and ", metrics http://127.0.0.1:" in first, first
    url = first.rsplit(" ", 1)[1].strip()
    time.sleep(1.5)
    scraped = scrape(url)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert value(scraped, "shardnet_up") == 1 and value(scraped, "shardnet_datapath_rx_total", **DP) > 0
    status = [x for x in out.splitlines() if x.startswith("shardnet ") and "setups/s" in x]
    assert len(status) >= 2, out
    assert all("flows " in x and "hit " in x and "drops " in x and "store connected" in x for x in status)
    assert "flows installed" in out                    # the summary, as before
    text = log_file.read_text()
    for role in ("supervisor", "datapath", "worker-0", "worker-1"):
        assert f"shardnet[{role}] INFO" in text, (role, text)
    assert "agent up" in text and "agent down" in text and err == ""
