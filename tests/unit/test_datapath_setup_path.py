"""The datapath's lean setup path keeps its contracts: the dispatcher's shortcut to the 5-tuple hash picks the
worker normalized_flow_hash picks, and the flow cache's expiry wheel expires exactly what a full scan would."""

from __future__ import annotations

import random

from engine.datapath.flowcache import EXPIRY_TICK, FlowCache
from engine.dispatcher import Dispatcher
from packet.flowkey import normalized_flow_hash
from packet.spec import parse_spec

SPECS = [
    "ip_src=10.0.0.{a},ip_dst=10.0.0.{b},proto=udp,tp_src={p},tp_dst={q}",
    "ip_src=10.0.0.{a},ip_dst=10.0.0.{b},proto=tcp,tp_src={p},tp_dst={q},tcp_flags=syn",
    "ip_src=10.0.0.{a},ip_dst=10.0.0.{b},proto=icmp,icmp_type=8,icmp_id={p}",
    "ip_src=10.0.0.{a},ip_dst=10.0.0.{b},proto=udp,tp_src={p},tp_dst={q},frag=first",
    "ip_src=10.0.0.{a},ip_dst=10.0.0.{b},proto=udp,frag=later",
    "ipv6_src=2001:db8::{a},ipv6_dst=2001:db8::{b},proto=udp,tp_src={p},tp_dst={q}",
    "ipv6_src=2001:db8::{a},ipv6_dst=2001:db8::{b},proto=tcp,tp_src={p},tp_dst={q}",
    "eth_src=02:00:00:00:00:{a:02x},eth_dst=02:00:00:00:00:{b:02x},arp_op=1,arp_spa=10.0.0.{a},arp_tpa=10.0.0.{b}",
]


def test_the_worker_of_an_upcall_is_the_normalized_flow_hash_of_its_packet():
    rng = random.Random(7)
    for n in (2, 3, 7):
        d = Dispatcher(n, lambda w, b: True)
        for _ in range(300):
            spec = rng.choice(SPECS).format(a=rng.randrange(1, 250), b=rng.randrange(1, 250),
                                            p=rng.randrange(1, 65536), q=rng.randrange(1, 65536))
            pkt = parse_spec(spec)
            assert d.worker_for(pkt, "p") == normalized_flow_hash(pkt) % n, spec


def _scan(flows, now):
    """What expiry means: the flows past their idle or hard timeout (the old full scan)."""
    return {f.id for f in flows if (f.idle_s and now - f.last_used > f.idle_s)
            or (f.hard_s and now - f.installed_at > f.hard_s)}


def test_the_expiry_wheel_expires_what_a_full_scan_would_and_nothing_else():
    rng = random.Random(3)
    c = FlowCache(lambda *a: None, max_flows=500)
    live, now, next_id = {}, 1000.0, 1
    for _step in range(400):
        now += rng.choice((0.0, 0.05, 0.2, EXPIRY_TICK, 1.3))
        for _ in range(rng.randrange(0, 6)):            # installs, some replacing a live key, some evicting
            k = (rng.randrange(0, 300),)
            idle, hard = rng.choice(((0, 0), (1.0, 0), (0, 2.0), (1.5, 3.0), (0.3, 0)))
            f = c.install(k, (("drop",),), 0, idle, hard, now, (), next_id)
            next_id += 1
            live[f.id] = f
        for f in rng.sample(list(c.flows.values()), min(5, len(c.flows))):   # hits move idle deadlines
            c.lookup(f.key, now)
        if rng.random() < 0.1 and c.flows:
            c.delete_ids([rng.choice(list(c.flows.values())).id])
        want = _scan(c.flows.values(), now)
        got = {f.id for f in c.expire(now)}
        assert got == want
        assert not _scan(c.flows.values(), now)
        assert c.wheel_size <= 2 * len(c.flows) + 1024 + 6    # dead flows do not pile up in the wheel


def test_a_flow_used_within_its_idle_timeout_stays_however_long_it_lives():
    c = FlowCache(lambda *a: None)
    f = c.install(("k",), (("drop",),), 0, 2.0, 0, 0.0, (), 1)
    for t in range(1, 100):
        c.lookup(("k",), float(t))
        assert c.expire(t + 0.5) == []
    assert c.expire(101.5) == [f] and not c.flows


def test_an_exact_flow_replaced_by_a_megaflow_of_the_same_key_and_back():
    from packet.flowkey import EXACT_MASK, flow_key

    c = FlowCache(lambda *a: None)
    key = flow_key(parse_spec("ip_src=10.0.0.1,ip_dst=10.0.0.2,proto=udp,tp_src=1,tp_dst=2"), "p")
    bridge = (("in_port", -1), ("eth_type", -1), ("eth_src", -1), ("eth_dst", -1), ("vlan", -1))
    a = c.install(key, (("output", "q"),), 0, 60, 0, 0.0, (), 1)
    b = c.install(key, (("output", "q"),), 0, 60, 0, 0.0, (), 2, bridge)
    assert a.dead and not b.dead and b.mask != EXACT_MASK and c.lookup(key, 0.0) is b
    assert c.counters["datapath_subtables"] == 1                 # the exact subtable went with its last flow
    e = c.install(key, (("output", "r"),), 0, 60, 0, 0.0, (), 3)
    assert b.dead and c.lookup(key, 0.0) is e and e.mask is EXACT_MASK and len(c.flows) == 1
    assert [r for _, r in c.take_removed()] == ["replaced", "replaced"]


def test_a_full_table_evicts_its_oldest_flow_whatever_left_it_before():
    rng = random.Random(11)
    c = FlowCache(lambda *a: None, max_flows=50)
    for i in range(1, 3000):
        k = (rng.randrange(0, 120),)
        full = len(c.flows) >= 50 and k not in c.flows
        oldest = next(iter(c.flows.values())) if full else None     # what "oldest" means: install order
        c.install(k, (("drop",),), 0, 0, 0, float(i), (), i)
        evicted = [f for f, why in c.take_removed() if why == "evicted"]
        assert evicted == ([oldest] if full else [])
        if rng.random() < 0.2:
            c.delete_ids([rng.choice(list(c.flows.values())).id])
        assert len(c._order) <= 2 * len(c.flows) + 1024 + 1
