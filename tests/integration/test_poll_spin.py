"""``poll_spin_us``: the datapath and the workers busy-poll after work; forwarding, parking, expiry and a clean
shutdown work as without it.  No time is asserted (bench/RESULTS.md "Busy-poll" has the figures)."""

from __future__ import annotations

import pytest
import zmq

from backchannel.spin import spin_poll
from packet.codec import parse
from tests.integration.test_engine import Outputs, frame, make_agent, topo_file, vm1_to_vm2, wait_for  # noqa: F401

VM9 = "eth_src=02:00:00:00:00:09,eth_dst=02:00:00:00:00:02,ip_src=10.0.0.9,ip_dst=10.0.0.3"


@pytest.mark.parametrize("spin_workers", [True, False])
def test_a_spinning_agent_forwards_parks_expires_and_stops_cleanly(topo_file, tmp_path, spin_workers):  # noqa: F811
    # a long spin (5 ms) so that the loops are spinning most of the time the test sends to them
    agent = make_agent(topo_file, tmp_path, poll_spin_us=5000, poll_spin_workers=spin_workers,
                       park_timeout_s=0.5, flow_idle_s=1.0).start()
    try:
        # a packet from a port that never appears parks and is dropped at its deadline (a temporary drop flow
        # in the datapath).  Only the datapath is asked meanwhile: nothing but its own deadline wakes the worker
        agent.inject("tenant.vm8", [frame(VM9)])
        wait_for(lambda: len(agent.flows()) == 1, what="the parked packet's drop flow")
        assert sum(w.get("worker_drops_parked_timeout_fragment", 0) for w in agent.stats()["workers"]) == 1
        installed = sum(w["flows_installed"] for w in agent.stats()["workers"])
        out = Outputs(agent)
        agent.inject("tenant.vm1", [vm1_to_vm2(p, "ack") for p in range(3000, 3040)])
        frames = out.wait("tenant.vm2", 40)
        assert {parse(f).tp_src for f in frames} == set(range(3000, 3040))
        assert sum(w["flows_installed"] for w in agent.stats()["workers"]) == installed + 40
        agent.inject("tenant.vm1", [vm1_to_vm2(p, "ack") for p in range(3000, 3040)])
        out.wait("tenant.vm2", 80)
        assert agent.stats()["datapath"]["datapath_hits"] == 40
        # idle flows expire in the datapath and in the workers
        wait_for(lambda: agent.stats()["datapath"]["datapath_flows"] == 0, what="idle flows to expire")
        wait_for(lambda: all(w["worker_flows"] == 0 for w in agent.stats()["workers"]),
                 what="the workers' flows to expire")
        procs = dict(agent.pool.procs)
    finally:
        agent.stop()
    # every child left on Shutdown by itself (exit status 0), not by SIGTERM or SIGKILL
    assert {i: p.returncode for i, p in procs.items()} == {i: 0 for i in procs}


def test_spin_poll_returns_a_message_that_is_there_and_nothing_when_none_comes():
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        pull.bind("inproc://spin")
        push.connect("inproc://spin")
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        assert spin_poll(poller, 10, 0.002) == []              # spins 2 ms, then blocks for the rest: nothing
        assert spin_poll(poller, 0, 0.002) == []               # a deadline that is due: one look, no blocking
        push.send(b"x")
        assert spin_poll(poller, 1000, 0.001) == [(pull, zmq.POLLIN)]
        assert pull.recv() == b"x"
    finally:
        for s in (pull, push):
            s.close(0)
        ctx.term()


def test_a_warm_kept_agent_runs_its_setup_path_while_idle_and_forwards_and_stops_as_before(topo_file, tmp_path):  # noqa: F811
    agent = make_agent(topo_file, tmp_path, keep_warm_ms=1).start()
    try:
        assert all(w.get("worker_warm_runs", 0) == 0 for w in agent.stats()["workers"])   # no upcall yet
        out = Outputs(agent)
        agent.inject("tenant.vm1", [vm1_to_vm2(p, "ack") for p in range(3000, 3020)])
        frames = out.wait("tenant.vm2", 20)
        assert {parse(f).tp_src for f in frames} == set(range(3000, 3020))
        # idle after the upcalls: the workers that had one run their setup path (the in-memory datapath reads
        # no port, so it has no miss to keep warm), and that changes no flow and sends nothing
        wait_for(lambda: all(w.get("worker_warm_runs", 0) >= 5 for w in agent.stats()["workers"]
                             if w.get("worker_upcalls")), what="warm runs")
        stats = agent.stats()
        assert stats["datapath"]["datapath_flows"] == 20 and sum(w["worker_upcalls"] for w in stats["workers"]) == 20
        agent.inject("tenant.vm1", [vm1_to_vm2(p, "ack") for p in range(3000, 3020)])       # hits, as before
        out.wait("tenant.vm2", 40)
        assert agent.stats()["datapath"]["datapath_hits"] == 20
        procs = dict(agent.pool.procs)
    finally:
        agent.stop()
    assert {i: p.returncode for i, p in procs.items()} == {i: 0 for i in procs}
