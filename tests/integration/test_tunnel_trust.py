"""The flow-state tunnel does not trust the underlay (DESIGN §7): forged, replayed and wrongly signed datagrams
change nothing.

A real agent (datapath process with its VXLAN socket, two worker processes, the supervisor) for host h1 on
127.0.0.31; the datagrams come from real UDP sockets bound on the address of h2 (127.0.0.32: a source address
anyone on the underlay can use).  Refusals are read from the datapath's counters, the workers' pids and their
flow-state counts are checked unchanged.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from backchannel import messages as m
from backchannel.codec import encode
from engine.datapath.stateauth import StateAuth
from engine.supervisor import Agent
from packet.addr import ip2int
from topology.model import TUNNEL_KEY_FLOW_STATE
from topology.store.registry import register_host
from topology.store.uri import open_store

KEY = bytes.fromhex("11" * 32)
WRONG = bytes.fromhex("22" * 32)
HEADER = struct.pack("!II", 0x08 << 24, TUNNEL_KEY_FLOW_STATE << 8)

TOPO = """
version: 1
hosts:
  h1: {tunnel_ip: 127.0.0.31}
  h2: {tunnel_ip: 127.0.0.32}
bridges:
  br:
    ports:
      vm1: {host: h2, interface: none-vm1}
"""


def _free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.31", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(fn, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def agent(tmp_path):
    topo = tmp_path / "t.yaml"
    topo.write_text(TOPO)
    port = _free_port()
    a = Agent(workers=2, host="h1", datapath="real", tunnel_port=port, topology=str(topo),
              store=f"memory://trust-{tmp_path.name}", state_file=str(tmp_path / "h1.state"),
              state_snapshot_s=0, flow_state_keys=[KEY.hex()])
    with a:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.32", 0))                  # h2's address, any source port: forgeable
        try:
            yield a, lambda payload: sock.sendto(HEADER + payload, ("127.0.0.31", port))
        finally:
            sock.close()


def _dp(agent) -> dict:
    return agent.stats()["datapath"]


def _state_entries(agent) -> int:
    return sum(w.get("worker_state_entries", 0) for w in agent.stats()["workers"])


def _batch(sport: int) -> bytes:
    return encode(m.FlowStateBatch((m.FlowStateEntry("conntrack", (ip2int("10.0.0.2"), ip2int("10.0.0.3"), 6,
                                                                    sport, 80, "br"), None, 1e12),), 9))


def test_forged_replayed_and_wrongly_signed_datagrams_change_nothing(agent):
    a, send = agent
    pids = dict(a.pids)
    h2 = StateAuth("h2", (KEY,), {"h1": ip2int("127.0.0.31")})
    # a valid datagram is accepted: the state reaches both workers
    valid = h2.seal(HEADER, _batch(1000))
    send(valid)
    wait_for(lambda: _state_entries(a) == 2, what="the valid state in both workers")
    # the forged Shutdown of the issue (msgpack 91 22), a forged Fragment, the replayed valid datagram,
    # a batch signed with another key, and one with the right key id but a wrong MAC
    send(b"\x91\x22")
    send(encode(m.Fragment("bridge", "br", (("bridge", "br", b'{"evil": 1}'),))))
    send(valid)
    send(StateAuth("h2", (WRONG,), {}).seal(HEADER, _batch(1001)))
    forged = bytearray(h2.seal(HEADER, _batch(1002)))
    forged[-1] ^= 1
    send(bytes(forged))
    # a datagram signed by h1's own key as "h1" (reflected back at us) is refused too
    send(StateAuth("h1", (KEY,), {}).seal(HEADER, _batch(1003)))
    c = wait_for(lambda: (d := _dp(a)).get("datapath_state_refused", 0) >= 6 and d, what="six refusals")
    assert c["datapath_state_refused"] == 6
    assert c["datapath_state_refused_format"] == 2          # Shutdown, Fragment: no seal at all
    assert c["datapath_state_refused_replay"] == 1
    assert c["datapath_state_refused_key"] == 1             # another key: an unknown key id
    assert c["datapath_state_refused_auth"] == 1
    assert c["datapath_state_refused_sender"] == 1
    assert c["datapath_state_accepted"] == 1
    time.sleep(0.2)
    assert a.health()["alive"] == {i: True for i in pids} and a.pids == pids
    assert _state_entries(a) == 2                           # nothing else was learned


def test_only_flow_state_messages_are_taken_from_the_state_vni(agent):
    a, send = agent
    h2 = StateAuth("h2", (KEY,), {})
    # authentic, but not a message that belongs on the flow-state VNI
    for msg in (m.Shutdown(), m.InvalidateTags(("bridge:br",), 0), m.LeaseGranted("r1", 1, 5000),
                m.DumpState(1)):
        send(h2.seal(HEADER, encode(msg)))
    c = wait_for(lambda: (d := _dp(a)).get("datapath_state_refused", 0) >= 4 and d, what="four refusals")
    assert c["datapath_state_refused_type"] == 4 and c["datapath_state_accepted"] == 0
    assert all(a.health()["alive"].values())


def test_a_state_request_is_answered_only_for_a_port_that_moved_to_the_requester(agent):
    a, send = agent
    h2 = StateAuth("h2", (KEY,), {})
    send(h2.seal(HEADER, _batch(2000)))                   # some state for h1's workers to hold
    wait_for(lambda: _state_entries(a) == 2, what="state")
    # br.vm1 is bound to h2 in the topology: h2 may ask for it; a request for a port bound elsewhere waits
    # for the store to say so, and is never answered
    send(h2.seal(HEADER, encode(m.StateRequest("h2", "br.vm1"))))
    send(h2.seal(HEADER, encode(m.StateRequest("h2", "br.vm1"))))     # again at once: rate-limited
    send(h2.seal(HEADER, encode(m.StateRequest("h2", "br.nothere"))))
    sup = wait_for(lambda: (s := a.stats()["supervisor"]).get("supervisor_state_requests_answered") and s,
                   what="the request answered")
    assert sup["supervisor_state_requests_answered"] == 1
    wait_for(lambda: a.stats()["supervisor"].get("supervisor_state_requests_rate_limited") == 1,
             what="the repeat rate-limited")
    assert _dp(a)["datapath_state_requests"] == 3


def test_data_frames_are_taken_only_from_live_hosts(agent, tmp_path):
    a, send = agent
    data = struct.pack("!II", 0x08 << 24, 4242 << 8) + b"\x02" * 64     # a data VNI no port of h1 has
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.32", 0))
    try:
        port = a.cfg.tunnel_port
        sock.sendto(data, ("127.0.0.31", port))                         # h2 is in the topology but not alive
        c = wait_for(lambda: (d := _dp(a)).get("datapath_tunnel_refused_source", 0) >= 1 and d, what="refused")
        assert c.get("datapath_tunnel_unknown_key", 0) == 0
        store = open_store(a.cfg.store)                                  # h2's agent comes up: it registers
        try:
            register_host(store, "h2", ip2int("127.0.0.32"))
            wait_for(lambda: (sock.sendto(data, ("127.0.0.31", port)), _dp(a))[1].get(
                "datapath_tunnel_unknown_key", 0) >= 1, what="h2's frames taken once it is live")
        finally:
            store.close()                                                # h2's session ends: not live again
        refused = _dp(a)["datapath_tunnel_refused_source"]
        wait_for(lambda: (sock.sendto(data, ("127.0.0.31", port)), _dp(a))[1][
            "datapath_tunnel_refused_source"] > refused, what="h2's frames refused after its agent left")
    finally:
        sock.close()


def test_a_malformed_batch_from_a_known_host_is_refused_at_decode_and_workers_live_on(agent):
    import msgpack

    a, send = agent
    pids = dict(a.pids)
    h2 = StateAuth("h2", (KEY,), {})
    # issue 12's batch: well-formed, but its entry's key has two elements (it used to kill both workers)
    bad = msgpack.packb([m.FlowStateBatch.TAG, [["conntrack", [1, 2], None, 1.0]], 9])
    send(h2.seal(HEADER, bad))
    send(h2.seal(HEADER, msgpack.packb([m.FlowStateBatch.TAG, [["conntrack", [1, 2, 6, 3, 4, "br"], [1], 1.0]], 9])))
    c = wait_for(lambda: (d := _dp(a)).get("datapath_state_refused_decode", 0) >= 2 and d, what="two refusals")
    assert c["datapath_state_accepted"] == 0
    send(h2.seal(HEADER, _batch(3000)))                   # a good one after them still goes through
    wait_for(lambda: _state_entries(a) == 2, what="the good batch in both workers")
    assert a.pids == pids and all(a.health()["alive"].values())
    st = a.stats()
    assert not any(v for w in st["workers"] for k, v in w.items() if k.startswith("worker_handler_errors"))
    assert not any(v for k, v in st["datapath"].items() if k.startswith("datapath_handler_errors"))
