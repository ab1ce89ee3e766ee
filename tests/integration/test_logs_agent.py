"""Logs of a real agent (real processes): every process writes to one file, deaths, restarts and store state
changes are logged, and a ZooKeeper outage's reconnect noise is collapsed."""

from __future__ import annotations

import logging
import os
import re
import signal
import time

import pytest

from engine import logs
from engine.supervisor import Agent
from tests.integration.test_engine import TOPO, Outputs, vm1_to_vm2, wait_for
from tests.zkharness import ZkCluster


@pytest.fixture
def topo_file(tmp_path):
    path = tmp_path / "topo.yaml"
    path.write_text(TOPO)
    return str(path)


@pytest.fixture
def restore_root_logger():
    """An Agent with a log file sets up this (the test's) process's logging: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    logs.remove()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_every_process_logs_to_the_file_and_a_dead_worker_is_logged_with_its_restart(topo_file, tmp_path,
                                                                                      restore_root_logger):
    log_file = tmp_path / "agent.log"
    with Agent(topology=topo_file, host="host-a", store=f"memory://{tmp_path.name}", workers=2,
               log_file=str(log_file)) as agent:
        old = agent.pids[1]
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: agent.pids[1] != old and log_file.read_text().count("worker 1 started") == 2,
                 what="worker 1 restarted")
        out = Outputs(agent)
        agent.inject("tenant.vm1", [vm1_to_vm2(7000)])
        out.wait("tenant.vm2", 1)
        new = agent.pids[1]
    assert not any(getattr(h, "shardnet", False) for h in logging.getLogger().handlers)   # gone with the agent
    text = log_file.read_text()
    for role, what in (("datapath", "datapath started"), ("worker-0", "worker 0 started"),
                       ("worker-1", "worker 1 started"), ("supervisor", "agent up: host host-a, 2 workers"),
                       ("supervisor", f"worker 1 (pid {old}) died with exit status -9; restarting it"),
                       ("supervisor", f"worker 1 restarted (pid {new})"), ("datapath", "datapath stopped"),
                       ("supervisor", "agent down")):
        assert re.search(rf"shardnet\[{role}\] \w+ [\w.]+: {re.escape(what)}", text), (role, what, text)
    assert text.count("worker 1 started") == 2


def test_a_store_session_expiry_is_logged_and_counted(topo_file, tmp_path, restore_root_logger):
    log_file = tmp_path / "agent.log"
    with Agent(topology=topo_file, host="host-a", store=f"memory://{tmp_path.name}", workers=1,
               log_file=str(log_file)) as agent:
        assert agent.store_state == "connected"
        agent.store.expire_session()                   # LOST, then a new session: CONNECTED
        wait_for(lambda: agent.stats()["supervisor"]["supervisor_store_state_changes"] == 2, what="two changes")
        sup = agent.stats()["supervisor"]
        assert sup["supervisor_store_connected"] == 1 and sup["store_sessions_expired"] == 1
        assert agent.store_state == "connected"
    text = log_file.read_text()
    assert "WARNING engine.session: store session expired" in text
    assert "INFO engine.session: store connected again (memory://" in text and "after lost" in text


@pytest.mark.zk
def test_a_zookeeper_outage_is_logged_once_and_kazoos_reconnect_noise_is_collapsed(topo_file, tmp_path,
                                                                                    restore_root_logger):
    zk = ZkCluster(1).start()                          # our own server: this test stops it
    kazoo_records = []

    class Count(logging.Handler):
        def emit(self, record):
            kazoo_records.append(record.getMessage())

    counter = Count()
    logging.getLogger("kazoo").addHandler(counter)
    log_file = tmp_path / "agent.log"
    repeat_s = 2.0
    try:
        with Agent(topology=topo_file, host="host-a", store=f"zk://{zk.hosts}/t-{tmp_path.name}", workers=1,
                   log_file=str(log_file), log_repeat_s=repeat_s) as agent:
            zk.stop_node(zk.nodes[0])
            wait_for(lambda: agent.store_state == "suspended", timeout=20, what="the store suspended")
            assert agent.stats()["supervisor"]["supervisor_store_connected"] == 0
            # kazoo retries the connection again and again, writing its lines each time: they pass once per
            # connection-state change (topology/store/zk.py KazooLogTamer), the rest are counted
            wait_for(lambda: agent.store.counters["store_log_lines_suppressed"] >= 20, timeout=30,
                     what="kazoo retrying")
            zk.restart_node(zk.nodes[0])
            wait_for(lambda: agent.store_state == "connected", timeout=30, what="the store connected again")
            changes = agent.stats()["supervisor"]["supervisor_store_state_changes"]
            time.sleep(repeat_s + 0.5)                 # the last interval's count is written
    finally:
        logging.getLogger("kazoo").removeHandler(counter)
        zk.stop()
    text = log_file.read_text()
    assert text.count("store connection lost") == 1 and "store connected again" in text
    # each of kazoo's reconnect lines once per state change, not once per retry
    assert 1 <= kazoo_records.count(REFUSED) <= changes, kazoo_records
    assert sum(r.startswith("Connecting to ") for r in kazoo_records) <= changes + 1, kazoo_records
    written = [x for x in text.splitlines() if f"kazoo.client: {REFUSED}" in x]
    assert 1 <= len(written) <= changes, written


REFUSED = "Connection dropped: socket connection error: Connection refused"
