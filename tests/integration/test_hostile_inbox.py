"""Real processes: well-formed messages with hostile contents on every child's inbox change nothing but counters.

The one that started it (issue 12): a FlowStateBatch whose entry key has two elements used to kill both workers
with a ValueError in conntrack.  Now decode refuses it (and the other hostile contents below), the refusal is
counted where it arrived, no handler raises (``*_handler_errors`` stay 0), every process lives on and forwarding
goes on.
"""

from __future__ import annotations

import zmq

from backchannel import codec
from backchannel import messages as m
from backchannel.codec import encode
from tests.integration.test_engine import Outputs, make_agent, topo_file, vm1_to_vm2, wait_for

__all__ = ["topo_file"]                               # the fixture, imported from test_engine
pack = codec.new_packer().pack

KEY = (0x0A000003, 0x0A000002, 6, 80, 8000, "tenant")
HOSTILE = [
    pack((m.FlowStateBatch.TAG, (("conntrack", (1, 2), None, 60.0),), 0)),              # a 2-element key
    pack((m.FlowStateBatch.TAG, (("conntrack", (*KEY[:5], 7), None, 60.0),), 0)),      # device not a str
    pack((m.FlowStateBatch.TAG, (("fwd_snat", KEY, (1, 2, 3), 60.0),), 0)),            # a 3-element binding
    pack((m.FlowStateBatch.TAG, (("no_such_kind", KEY, None, 60.0),), 0)),
    pack((m.MacLearned.TAG, "tenant", 5000, 2, "tenant.vm1", 0)),                      # VLAN out of range
    pack((m.LeaseGranted.TAG, "r1", 0xC6336464, 2**40)),                               # a block beyond ports
    pack((m.Fragment.TAG, "bridge", "tenant", (("bridge", "tenant"),))),               # a 2-element record
    pack((m.FlowPut.TAG, 1, (), (("set", "ip_src", 2**33), ("output", "tenant.vm2")), (), 1.0, 0.0)),
    pack((m.FlowPut.TAG, 1, (), (("goto", "tenant.vm2"),), (), 1.0, 0.0)),
    pack((m.SetPortMap.TAG, 0, (("tenant.vm1",),), (), ())),
    pack((m.TunnelFrames.TAG, 2**24, (b"x",))),
]
# well-formed and decodable, but nonsense: handled without raising
NONSENSE = [
    encode(m.Fragment("bridge", "tenant", (("bridge", "tenant", b"\xff junk"),))),
    encode(m.MacLearned("tenant", 0, 0x020000000002, "r1.uplink", 0)),     # vm2's MAC behind another device
    encode(m.PurgeWorker(0, 99)),
    encode(m.FlowPut(424242, (), (("output", "tenant.vm2"),), (), 1.0, 0.0)),
]


def test_hostile_contents_on_every_inbox_are_refused_and_counted_and_nothing_stops(topo_file, tmp_path):
    with make_agent(topo_file, tmp_path) as agent:
        out = Outputs(agent)
        agent.inject("tenant.vm1", [vm1_to_vm2(8000)])
        out.wait("tenant.vm2", 1)
        ctx = zmq.Context()
        try:
            for role in ("worker-0", "worker-1", "datapath"):
                s = ctx.socket(zmq.PUSH)
                s.setsockopt(zmq.LINGER, 2000)
                s.connect(agent.rt.endpoint(role))
                for data in (*HOSTILE, *NONSENSE):
                    s.send(data)
                s.close()
        finally:
            ctx.term()

        def rejected(counters):
            return sum(v for k, v in counters.items() if "backchannel_rejected_" in k)

        def settled():
            st = agent.stats()
            return all(rejected(c) >= len(HOSTILE) for c in (*st["workers"], st["datapath"])) and st

        st = wait_for(settled, what="refusals counted")
        for c in (*st["workers"], st["datapath"]):
            assert rejected(c) == len(HOSTILE)
            assert sum(v for k, v in c.items() if "handler_errors" in k) == 0
        assert st["datapath"]["datapath_bad_worker"] == 1
        assert all(agent.health()["alive"].values())
        agent.inject("tenant.vm1", [vm1_to_vm2(8001), vm1_to_vm2(8000)])         # a new flow and a known one
        out.wait("tenant.vm2", 3)
        assert sum(w["worker_state_entries"] for w in agent.stats()["workers"]) >= 1
