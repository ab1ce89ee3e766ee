"""Megaflows end to end in one process (tests/inprocess.py Wire: workers + DatapathProcess over the real codec):
the worker installs the mask its decision read, the datapath matches new 5-tuples with it, and invalidation by
tag (a MAC move, a route change, a chain change) deletes exactly the megaflows that read the object."""

from __future__ import annotations

import pytest

from backchannel import messages as m
from backchannel.codec import encode
from engine.ctlcommands import key_dict
from packet.addr import ip2int
from tests.inprocess import Wire, frame

PLAIN = """
version: 1
hosts:
  host-a: {tunnel_ip: 127.0.0.11}
bridges:
  tenant:
    ports:
      vm1: {host: host-a, interface: tap-vm1}
      vm2: {host: host-a, interface: tap-vm2}
      vm3: {host: host-a, interface: tap-vm3}
      up: {peer: r1.tenant}
    mac_table:
      "02:00:00:00:00:01": vm1
      "02:00:00:00:00:02": vm2
  guarded:
    ports:
      g1: {host: host-a, interface: tap-g1}
      g2: {host: host-a, interface: tap-g2}
    mac_table:
      "02:00:00:00:00:11": g1
      "02:00:00:00:00:12": g2
    inbound_filter: guard
routers:
  r1:
    ports:
      tenant: {address: 10.0.0.1/24, mac: "02:0a:00:00:00:01"}
      uplink: {address: 198.51.100.2/24, mac: "02:0a:00:00:00:02", host: host-a, interface: up0}
    routes:
      - {dst: 203.0.113.0/24, gateway: 198.51.100.1, port: uplink}
      - {dst: 0.0.0.0/0, gateway: 198.51.100.3, port: uplink}
    arp_table: {198.51.100.1: "02:0b:00:00:00:01", 198.51.100.3: "02:0b:00:00:00:03"}
chains:
  guard:
    - {match: {dst: 10.9.0.0/16}, action: drop}
"""
VM1_MAC, VM2_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


def udp(sport: int, src_mac=VM1_MAC, dst_mac=VM2_MAC, ip_dst="10.0.0.3") -> bytes:
    return frame(f"eth_src={src_mac},eth_dst={dst_mac},ip_src=10.0.0.2,ip_dst={ip_dst},proto=udp,tp_src={sport},"
                 f"tp_dst=53")


def upcalls(wire) -> int:
    return sum(len(b.upcalls) for b in wire.sent_to_workers(m.UpcallBatch))


@pytest.fixture(params=[True, False], ids=["megaflows", "exact"])
def wire(request):
    w = Wire(topo=PLAIN, megaflows=request.param)
    yield w
    w.close()


def test_a_plain_bridge_between_two_known_macs_upcalls_once_with_megaflows_and_per_5_tuple_without(wire):
    n = 200
    for sport in range(1000, 1000 + n):              # distinct 5-tuples, one after the other
        wire.inject("tenant.vm1", udp(sport))
    assert len(wire.outputs("tenant.vm2")) == n
    c = wire.dp.dp.cache.counters
    if wire.workers[0].cfg.megaflows:
        assert upcalls(wire) == 1 and len(wire.dp.dp.cache.flows) == 1
        assert c["datapath_megaflow_hits"] == n - 1 and c["datapath_hits"] == n - 1
        [put] = wire.answers(m.FlowPut)
        assert dict(put.match) == {"in_port": -1, "eth_type": -1, "eth_src": -1, "eth_dst": -1, "vlan": -1}
        for sport in range(1000, 1010):              # again: from the exact-match cache in front (but the
            wire.inject("tenant.vm1", udp(sport))    # first, which came up and was never looked up in the flows)
        assert c["datapath_emc_hits"] == 9 and c["datapath_megaflow_hits"] == n and upcalls(wire) == 1
    else:
        assert upcalls(wire) == n and len(wire.dp.dp.cache.flows) == n
        assert c["datapath_megaflow_hits"] == 0 and all(p.match == () for p in wire.answers(m.FlowPut))


def test_a_new_source_mac_still_comes_up_and_is_learned(wire):
    wire.inject("tenant.vm1", udp(1))
    wire.inject("tenant.vm1", udp(2, src_mac="02:00:00:00:00:09"))     # same dst, a station not seen yet
    assert upcalls(wire) == 2
    learned = [msg for msg in wire.to_supervisor if type(msg) is m.MacLearned]
    assert [(x.mac, x.port) for x in learned] == [(0x020000000009, "tenant.vm1")]


def test_a_routed_megaflow_matches_the_destination_prefix_and_shows_it(wire):
    to_r1 = "02:0a:00:00:00:01"
    for i in range(1, 21):                               # 203.0.113.1..20: one /24 route
        wire.inject("tenant.vm1", udp(i, dst_mac=to_r1, ip_dst=f"203.0.113.{i}"))
    wire.inject("tenant.vm1", udp(99, dst_mac=to_r1, ip_dst="203.0.114.77"))   # another route: its own flow
    outs = wire.outputs("r1.uplink")
    assert len(outs) == 21 and {o.ttl for o in outs} == {63}
    assert [o.eth_dst for o in outs][-2:] == [0x020B00000001, 0x020B00000003]
    if not wire.workers[0].cfg.megaflows:
        assert upcalls(wire) == 21
        return
    assert upcalls(wire) == 2
    wire.dp.handle(m.DumpFlowTable(5, -1, 0, 100), wire.now)
    [answer] = [a for a in wire.dp.to_sup.take() if type(a) is m.Answer and a.req_id == 5]
    shown = [key_dict(f["key"], f["mask"]) for f in answer.body["flows"]]
    assert shown[0]["ip_dst"] == "203.0.113.0/24" and "ip_src" not in shown[0] and "tp_src" not in shown[0]
    assert shown[0]["ttl"] == 64 and shown[0]["in_port"] == "tenant.vm1"
    # the default route: as many bits as tell 203.0.114.77 from 203.0.113.0/24 (they differ in bit 23) and
    # from the router's own addresses and connected routes
    assert shown[1]["ip_dst"] == "203.0.114.0/23"


def _megaflows_tagged(wire, tag: str) -> list:
    return [f for f in wire.dp.dp.cache.flows.values() if tag in f.tags]


def _tell_workers(wire, msg) -> None:
    for i in range(len(wire.workers)):
        wire.to_workers[i].send(encode(msg))
    wire.pump()


def test_a_mac_move_deletes_the_megaflows_that_read_the_mac(wire):
    mac9 = "02:00:00:00:00:09"
    _tell_workers(wire, m.MacLearned("tenant", 0, 0x020000000009, "tenant.vm2", -1))
    for sport in range(10):
        wire.inject("tenant.vm1", udp(sport, dst_mac=mac9))
    wire.inject("tenant.vm1", udp(50))                   # to vm2: reads another MAC
    assert len(_megaflows_tagged(wire, "mac:tenant:0:020000000009")) == (1 if wire.workers[0].cfg.megaflows else 10)
    _tell_workers(wire, m.MacLearned("tenant", 0, 0x020000000009, "tenant.vm3", -1))
    assert not _megaflows_tagged(wire, "mac:tenant:0:020000000009")
    assert len(wire.dp.dp.cache.flows) == 1                # the flow to vm2 stays
    wire.outputs("tenant.vm2")
    wire.inject("tenant.vm1", udp(77, dst_mac=mac9))
    assert len(wire.outputs("tenant.vm3")) == 1 and not wire.outputs("tenant.vm2")


def test_a_route_change_deletes_the_routed_megaflows_and_a_chain_change_the_filtered_ones(wire):
    for i in range(5):
        wire.inject("tenant.vm1", udp(i, dst_mac="02:0a:00:00:00:01", ip_dst=f"203.0.113.{i + 1}"))
        wire.inject("guarded.g1", udp(i, src_mac="02:00:00:00:00:11", dst_mac="02:00:00:00:00:12",
                                       ip_dst=f"10.8.0.{i + 1}"))
    wire.inject("tenant.vm1", udp(9))
    n = 1 if wire.workers[0].cfg.megaflows else 5
    assert len(_megaflows_tagged(wire, "router:r1")) == n and len(_megaflows_tagged(wire, "chain:guard")) == n
    if wire.workers[0].cfg.megaflows:                   # the filter read 16 bits of ip_dst, the dst/16 rule's
        [g] = _megaflows_tagged(wire, "chain:guard")
        assert key_dict(g.key, g.mask)["ip_dst"] == "10.8.0.0/16"
    _tell_workers(wire, m.TopologyChanged("router", "r1"))
    assert not _megaflows_tagged(wire, "router:r1") and len(_megaflows_tagged(wire, "chain:guard")) == n
    _tell_workers(wire, m.TopologyChanged("chain", "guard"))
    assert not _megaflows_tagged(wire, "chain:guard")
    assert [f.key[0] for f in wire.dp.dp.cache.flows.values()] == ["tenant.vm1"]      # the plain bridge flow
    # what the megaflows did is what the new packets get again after the change
    wire.outputs("r1.uplink")
    wire.inject("tenant.vm1", udp(3, dst_mac="02:0a:00:00:00:01", ip_dst="203.0.113.200"))
    [o] = wire.outputs("r1.uplink")
    assert o.ip_dst == ip2int("203.0.113.200") and o.eth_dst == 0x020B00000001


def test_a_megaflow_never_carries_a_packet_the_filter_would_drop(wire):
    wire.inject("guarded.g1", udp(1, src_mac="02:00:00:00:00:11", dst_mac="02:00:00:00:00:12", ip_dst="10.8.0.1"))
    wire.inject("guarded.g1", udp(2, src_mac="02:00:00:00:00:11", dst_mac="02:00:00:00:00:12", ip_dst="10.9.0.1"))
    assert len(wire.outputs("guarded.g2")) == 1 and upcalls(wire) == 2      # 10.9/16 is outside 10.8/16's flow


def test_megaflows_is_on_by_default_a_checked_boolean_and_reaches_the_workers(tmp_path):
    from engine.config import AgentConfig, ConfigError
    from engine.pool import worker_config

    assert AgentConfig().megaflows is True
    assert worker_config(AgentConfig(megaflows=False), 0, "").megaflows is False
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigError, match="megaflows"):
            AgentConfig(megaflows=bad)
    toml = tmp_path / "agent.toml"
    toml.write_text("megaflows = 1\n")
    with pytest.raises(ConfigError, match="megaflows: expected true or false"):
        AgentConfig.from_toml(str(toml))
    toml.write_text("megaflows = false\n")
    assert AgentConfig.from_toml(str(toml)).megaflows is False
