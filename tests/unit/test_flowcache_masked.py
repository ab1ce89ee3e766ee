"""The datapath's masked flow cache (megaflows): subtables per mask, the exact-match cache in front, and the
lifecycle (delete, expiry, eviction, replacement) keeping both right."""

from __future__ import annotations

from engine.datapath.flowcache import FlowCache
from packet.flowkey import EXACT_MASK, flow_key, masked_key, prefix_len, prefix_mask, slot_mask
from packet.packet import Packet

A, B = 0x020000000001, 0x020000000002
BRIDGE = (("in_port", -1), ("eth_type", -1), ("eth_src", -1), ("eth_dst", -1), ("vlan", -1))
ROUTED = (*BRIDGE, ("ip_dst", prefix_mask(24)), ("ttl", -1))


def key(sport=1000, dst=0xCB007105, src_mac=A, port="b.vm1", ttl=64):
    return flow_key(Packet(eth_src=src_mac, eth_dst=B, ip_src=0x0A000002, ip_dst=dst, proto=17, ttl=ttl, tos=0,
                           tp_src=sport, tp_dst=53), port)


def cache(**kw):
    return FlowCache(lambda *a: None, **kw)


def test_a_megaflow_matches_every_key_that_agrees_on_its_mask_and_nothing_else():
    c = cache()
    f = c.install(key(), (("output", "b.vm2"),), 0, 60, 0, 0.0, ("bridge:b",), 7, BRIDGE)
    assert f is not None and f.mask != EXACT_MASK
    for sport in range(2000, 2050):                       # new 5-tuples between the same two MACs: hits
        assert c.lookup(key(sport=sport, dst=0x0A000000 + sport), 1.0) is f
    assert c.lookup(key(src_mac=0x020000000009), 1.0) is None      # a new source MAC: a miss (learned upstairs)
    assert c.lookup(key(port="b.vm3"), 1.0) is None                # another ingress port: a miss
    assert c.counters["datapath_hits"] == 50 and c.counters["datapath_misses"] == 2
    assert c.counters["datapath_megaflow_hits"] == 50 and c.counters["datapath_emc_hits"] == 0
    assert c.lookup(key(sport=2000, dst=0x0A000000 + 2000), 2.0) is f      # again: from the EMC
    assert c.counters["datapath_emc_hits"] == 1 and f.hits == 51 and f.last_used == 2.0


def test_a_prefix_mask_matches_the_prefix_only():
    c = cache()
    f = c.install(key(dst=0xCB007105), (("set", "ttl", 63), ("output", "r.up")), 0, 60, 0, 0.0, (), 1, ROUTED)
    assert c.lookup(key(dst=0xCB0071FE, sport=9), 0.0) is f        # 203.0.113.254: same /24
    assert c.lookup(key(dst=0xCB007205), 0.0) is None               # 203.0.114.5: another /24
    assert c.lookup(key(ttl=3), 0.0) is None                        # ttl is matched whole (decremented)
    assert masked_key(f.key, f.mask)[f.mask.index(prefix_mask(24))] == 0xCB007100
    assert prefix_len(prefix_mask(24)) == 24 and prefix_len(-1) == 32 and prefix_len(0xFF00FF00) is None


def test_exact_match_is_the_upcalls_key_only():
    c = cache()
    f = c.install(key(), (("output", "b.vm2"),), 0, 60, 0, 0.0, (), 1)            # match () = exact
    assert f.mask is EXACT_MASK and c.lookup(key(), 0.0) is f and c.lookup(key(sport=1001), 0.0) is None
    assert c.counters["datapath_megaflow_hits"] == 0 and not c.emc       # exact flows never enter the EMC


def test_one_subtable_per_mask_ordered_by_hits_and_removed_when_empty():
    c = cache()
    c.install(key(), (("output", "b.vm2"),), 0, 60, 0, 0.0, (), 1, ROUTED)
    c.install(key(port="b.vm2"), (("output", "b.vm1"),), 0, 60, 0, 0.0, (), 2, BRIDGE)
    c.install(key(port="b.vm3"), (("drop",),), 0, 60, 0, 0.0, (), 3)
    assert c.counters["datapath_subtables"] == 3 and c.subtables[0].mask == slot_mask(ROUTED)
    for i in range(5):
        c.lookup(key(port="b.vm3"), 0.0)                                # the exact subtable is hit most
        c.lookup(key(port="b.vm2", sport=i), 0.0)
    c.lookup(key(port="b.vm2", sport=99), 0.0)
    c.expire(1.0)                                                         # re-sorts by hits since last time
    assert [s.mask for s in c.subtables] == [slot_mask(BRIDGE), EXACT_MASK, slot_mask(ROUTED)]
    assert all(s.hits == 0 for s in c.subtables)
    assert c.delete_ids([2]) == 1 and c.counters["datapath_subtables"] == 2
    assert c.lookup(key(port="b.vm2", sport=99), 2.0) is None        # its EMC entry died with it


def test_the_emc_never_serves_a_flow_that_left():
    c = cache()
    acts = (("output", "b.vm2"),)
    # deleted by id (a worker's FlowDelete after a tag invalidation)
    c.install(key(), acts, 0, 60, 0, 0.0, (), 1, BRIDGE)
    assert c.lookup(key(sport=5), 0.0) and c.lookup(key(sport=5), 0.0)             # now in the EMC
    c.delete_ids([1])
    assert c.lookup(key(sport=5), 0.0) is None and key(sport=5) not in c.emc
    # idle expiry
    c.install(key(), acts, 0, 1.0, 0, 10.0, (), 2, BRIDGE)
    c.lookup(key(sport=6), 10.0)
    assert [f.id for f in c.expire(12.0)] == [2] and c.lookup(key(sport=6), 12.0) is None
    # replaced by a newer install into the same masked slot (another upcall of the same megaflow)
    old = c.install(key(sport=7), acts, 0, 60, 0, 20.0, (), 3, BRIDGE)
    c.lookup(key(sport=8), 20.0)
    new = c.install(key(sport=9), (("output", "b.vm3"),), 1, 60, 0, 20.0, (), 4, BRIDGE)
    assert old.dead and c.lookup(key(sport=8), 20.0) is new
    assert c.take_removed() == [(old, "replaced")] and c.by_id == {4: key(sport=9)} and len(c.flows) == 1
    # a worker purged
    c.purge_worker(1)
    assert c.lookup(key(sport=8), 21.0) is None and not c.flows and not c.subtables


def test_the_emc_is_bounded():
    c = cache(emc_max=4)
    c.install(key(), (("output", "b.vm2"),), 0, 60, 0, 0.0, (), 1, BRIDGE)
    for sport in range(100):
        assert c.lookup(key(sport=sport), 0.0) is not None
        assert len(c.emc) <= 4


def test_eviction_and_replacement_by_origin_key_with_masks():
    c = cache(max_flows=2)
    a = c.install(key(port="p1"), (("drop",),), 0, 0, 0, 0.0, (), 1, BRIDGE)
    c.install(key(port="p2"), (("drop",),), 0, 0, 0, 0.0, (), 2, ROUTED)
    c.install(key(port="p3"), (("drop",),), 1, 0, 0, 0.0, (), 3)                   # over the bound: p1 out
    assert a.dead and c.take_removed() == [(a, "evicted")] and c.counters["datapath_evicted"] == 1
    assert c.lookup(key(port="p1", sport=3), 0.0) is None
    # the same origin key installed again with another mask replaces the flow
    b = c.install(key(port="p2"), (("output", "x"),), 0, 0, 0, 0.0, (), 4, BRIDGE)
    assert [r for _, r in c.take_removed()] == ["replaced"] and c.flows[key(port="p2")] is b
    assert c.lookup(key(port="p2", sport=77, dst=1), 0.0) is b


def test_a_bad_match_is_counted_and_installs_nothing():
    c = cache()
    for bad in ((("eth_src", -1),), (("in_port", -1), ("in_port", -1)), (("in_port", -1), ("tp_dst", 0xFF)),
                (("in_port", -1), ("ip_dst", 0)), (("in_port", -1), ("payload", -1)), ((1, 2),)):
        assert c.install(key(), (("drop",),), 0, 0, 0, 0.0, (), 1, bad) is None
    assert c.counters["datapath_bad_matches"] == 6 and not c.flows and not c.subtables


def test_an_ipv6_prefix_mask_matches_the_128_bit_prefix_only():
    from packet.addr import ip6_2int

    def key6(dst, sport=1000):
        return flow_key(Packet(eth_src=A, eth_dst=B, eth_type=0x86DD, ipv6_src=ip6_2int("2001:db8:1::10"),
                               ipv6_dst=ip6_2int(dst), proto=17, hop_limit=64, tclass=0, tp_src=sport, tp_dst=53),
                        "b.vm1")

    routed6 = (*BRIDGE, ("ipv6_dst", prefix_mask(64, 128)), ("hop_limit", -1))
    assert slot_mask(routed6) is not None
    assert slot_mask((*BRIDGE, ("ipv6_dst", 2**128 - 1))) is None                # a whole mask is written -1
    assert slot_mask((*BRIDGE, ("hop_limit", 0xFF))) is None                     # no partial mask on a non-address
    c = cache()
    f = c.install(key6("2001:db8:2::10"), (("set", "hop_limit", 63), ("output", "r.up")), 0, 60, 0, 0.0, (), 1,
                  routed6)
    assert c.lookup(key6("2001:db8:2::ffff:1", sport=9), 0.0) is f        # the same /64
    assert c.lookup(key6("2001:db8:2:1::10"), 0.0) is None               # another /64
    assert prefix_len(prefix_mask(64, 128), 128) == 64 and prefix_len(-1, 128) == 128
    assert prefix_len(prefix_mask(64, 128) ^ (1 << 100), 128) is None
