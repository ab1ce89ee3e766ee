"""Issue 16: five behaviours checked against MidoNet's own simulation tests (BridgeSimulationTest,
RouterSimulationTest, FloatingIpTest, IcmpErrorNatTest), through the trace entry point, with the issue's
inputs.  Every port is bound to one host so that outputs show."""

from __future__ import annotations

from tests.scenario.conftest import Tracer
from workers.simulation.result import MacTableWrite

# -- 1. a group source MAC is never learned nor forwarded ------------------------------------------------
BRIDGE = """
version: 1
hosts: {h: {tunnel_ip: 127.0.0.11}}
bridges:
  br:
    ports:
      p1: {host: h, interface: t1}
      p2: {host: h, interface: t2}
      p3: {host: h, interface: t3}
      h2: {host: h, interface: t4}
      h3: {host: h, interface: t5}
"""

GROUP_SRC = "eth_src=ff:54:ce:50:44:ce,eth_dst=0a:de:57:16:a3:06,ip_src=10.10.10.12,ip_dst=10.11.11.12," \
            "proto=udp,tp_src=10,tp_dst=12"


def test_a_group_source_mac_is_dropped_and_not_learned():
    t = Tracer(BRIDGE)
    for spec in (GROUP_SRC, GROUP_SRC + ",vlan=10"):
        out = t("br.p1", spec)
        assert out["result"] == "drop" and out["drop_reason"] == "bad_src_mac"
        assert out["outputs"] == [] and out["generated"] == [] and out["flow_state"] == []
        assert not [e for e in t.last.effects if type(e) is MacTableWrite]
    assert t.session.state.macs == {}
    # the broadcast address is a group address too
    out = t("br.p2", GROUP_SRC.replace("ff:54:ce:50:44:ce", "ff:ff:ff:ff:ff:ff"))
    assert out["drop_reason"] == "bad_src_mac"
    # a unicast source on the same frame still floods to every other port and is learned
    out = t("br.p1", GROUP_SRC.replace("ff:54:ce:50:44:ce", "02:54:ce:50:44:ce"))
    assert sorted(o["port"] for o in out["outputs"]) == ["br.h2", "br.h3", "br.p2", "br.p3"]
    assert [e.port for e in t.last.effects if type(e) is MacTableWrite] == ["br.p1"]
