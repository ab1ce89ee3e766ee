"""Scenario tests drive the one trace entry point (workers.trace.TraceSession) over small topologies and
check the packets that come out against scapy, an independent parser."""

from __future__ import annotations

import pytest
from scapy.layers.l2 import Ether

from packet.codec import build
from topology.loader import loads_topology
from workers.trace import TraceSession, result_json


class Tracer:
    def __init__(self, text: str, host: str | None = None):
        self.topo = loads_topology(text)
        self.session = TraceSession(self.topo, host=host)

    def __call__(self, port: str, spec: str) -> dict:
        res = self.session.run(port, spec)
        self.last = res
        return result_json(res)

    def advance(self, seconds: float) -> dict:
        return self.session.advance(seconds)


def scapy_of(res, i: int = 0, generated: bool = False):
    """The i-th output (or generated) packet of a SimResult, built to bytes and parsed by scapy."""
    pkt = (res.generated[i] if generated else res.outputs[i]).packet
    return Ether(build(pkt))


@pytest.fixture
def tracer():
    return Tracer
