"""IPv6 flow state through persistence: a restarted worker gets back exactly the IPv6 conntrack entries whose
packets the dispatcher sends to it (normalized_flow_hash of the packet, tuple_hash of the state key: an
address above 2**32 is IPv6), and an ICMPv6 error is dispatched to the worker holding the connection it
reports.  The entries are the ones the simulation writes (trace of real IPv6 connections), not made up."""

from __future__ import annotations

from backchannel import messages as m
from engine.config import AgentConfig
from engine.persistence import Persistence
from engine.statefile import StateWriter
from packet.addr import int2ip6
from packet.flowkey import normalized_flow_hash, tuple_hash
from packet.spec import parse_spec
from tests.scenario.test_trace_filters6 import STATEFUL, V6, Tracer6
from workers.simulation.result import CONNTRACK

N_WORKERS = 3


def _connections() -> tuple[Tracer6, list]:
    """Twelve IPv6 connections (TCP, UDP, echo) opened by vm1: (spec of the first packet, the entry written)."""
    t = Tracer6(STATEFUL)
    conns = []
    for i in range(12):
        kind = (f"proto=tcp,tp_src={40000 + i},tp_dst=80", f"proto=udp,tp_src={5000 + i},tp_dst=53",
                f"icmpv6_type=128,icmp_id={100 + i}")[i % 3]
        spec = V6(1, 2, src=f"2001:db8:{i}::", dst=f"2001:db8:{i + 20}::") + "," + kind
        res = t.session.run("tenant.vm1", spec)
        (write,) = res.flow_state
        assert write.kind == CONNTRACK and write.key.src > 0xFFFFFFFF
        conns.append((spec, m.FlowStateEntry(write.kind, tuple(write.key), write.value, 60.0)))
    return t, conns


def test_a_restarted_worker_gets_the_ipv6_entries_of_the_packets_it_is_sent(tmp_path):
    _, conns = _connections()
    cfg = AgentConfig(state_file=str(tmp_path / "s.state"), workers=N_WORKERS)
    w = StateWriter(cfg.state_path())
    w.add([e for _, e in conns])
    w.commit()
    p = Persistence(cfg, {}, None)
    got: dict[int, set] = {}
    for worker in range(N_WORKERS):
        sent: list = []
        p.restore_worker(worker, set(), lambda i, msg, sent=sent: sent.append((i, msg)))
        got[worker] = {tuple(e.key) for i, msg in sent for e in msg.entries if i == worker}
    seen = set()
    for spec, e in conns:
        pkt = parse_spec(spec)
        want = normalized_flow_hash(pkt) % N_WORKERS
        assert tuple(e.key) in got[want], (spec, want)
        seen.add(want)
    assert sum(len(v) for v in got.values()) == len(conns)          # each entry to exactly one worker
    assert len(seen) > 1                                            # the test spans several workers


def test_the_state_key_hash_of_an_ipv6_connection_is_the_dispatch_hash_of_both_directions_and_its_errors():
    t, conns = _connections()
    spec, e = conns[1]                                              # a UDP connection
    src, dst, proto, sport, dport, _ = e.key                        # the reply's tuple
    h = tuple_hash(proto, src, sport, dst, dport)
    fwd = parse_spec(spec)
    assert h == normalized_flow_hash(fwd)
    reply = fwd._replace(ipv6_src=fwd.ipv6_dst, ipv6_dst=fwd.ipv6_src, tp_src=fwd.tp_dst, tp_dst=fwd.tp_src)
    assert h == normalized_flow_hash(reply)
    err = t.session.run("tenant.vm2", "eth_src=02:00:00:00:00:02,eth_dst=02:00:00:00:00:01,"
                        f"ipv6_src={_ip6(dst)},ipv6_dst={_ip6(src)},icmpv6_type=1,icmpv6_code=4,"
                        f"inner_ipv6_src={_ip6(dst)},inner_ipv6_dst={_ip6(src)},inner_proto=udp,"
                        f"inner_tp_src={dport},inner_tp_dst={sport}")
    assert err.result == "forward"                                  # related to the connection
    assert normalized_flow_hash(err.outputs[0].packet) == h


def _ip6(v: int) -> str:
    return int2ip6(v)
