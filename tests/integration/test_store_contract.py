"""The Store contract, run on both implementations (``store`` is parametrized: memory, zk).

Two handles on one store model two agents: ``store_factory()`` opens another session.  Where ZooKeeper may
coalesce watch events (one-shot watches re-armed) the assertions are the contract's: versions never go back,
the last event matches the store; the in-process store must deliver every change, so it is checked exactly.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from packet import addr
from topology.model import (
    Bridge,
    Chain,
    Condition,
    Host,
    LoadBalancer,
    Match,
    Member,
    NatTarget,
    Pool,
    Port,
    PortGroup,
    Route,
    Router,
    Rule,
    Topology,
    Vip,
)
from topology.store import topo as topo_store
from topology.store.base import (
    BadVersion,
    ConnState,
    EventKind,
    InvalidPath,
    InvalidValue,
    NoChildrenForEphemerals,
    NodeExists,
    NoNode,
    NotEmpty,
    StoreClosed,
    StoreUnavailable,
)
from topology.store.memory import MemoryStore, drop_backend
from topology.store.uri import BadStoreUri, open_store


class Recorder:
    """A callback that records what it gets and lets the test wait for a predicate over the record."""

    def __init__(self):
        self.items: list = []
        self.threads: set[str] = set()
        self._cv = threading.Condition()

    def __call__(self, item) -> None:
        with self._cv:
            self.items.append(item)
            self.threads.add(threading.current_thread().name)
            self._cv.notify_all()

    def wait(self, predicate, timeout: float = 10.0) -> list:
        """Wait until ``predicate(items)`` holds (an empty record never satisfies it)."""
        with self._cv:
            if not self._cv.wait_for(lambda: bool(self.items) and predicate(self.items), timeout):
                pytest.fail(f"timed out; recorded {self.items!r}")
            return list(self.items)


def exact(store) -> bool:
    return isinstance(store, MemoryStore)


def test_create_get_set_delete(store):
    assert store.create("/a/b", b"one") == "/a/b"
    assert store.get("/a/b") == (b"one", 0)
    assert store.exists("/a") == 0 and store.get("/a") == (b"", 0)
    assert store.set("/a/b", b"two") == 1
    assert store.get("/a/b") == (b"two", 1)
    assert store.exists("/a/b") == 1
    store.delete("/a/b")
    assert store.exists("/a/b") is None
    assert store.children("/a") == []


def test_compare_and_set(store):
    store.create("/cas", b"0")
    assert store.set("/cas", b"1", version=0) == 1
    with pytest.raises(BadVersion):
        store.set("/cas", b"x", version=0)            # a stale writer loses
    assert store.get("/cas") == (b"1", 1)
    with pytest.raises(BadVersion):
        store.delete("/cas", version=0)
    store.delete("/cas", version=1)
    assert store.exists("/cas") is None


def test_errors(store):
    with pytest.raises(NoNode):
        store.get("/missing")
    with pytest.raises(NoNode):
        store.set("/missing", b"")
    with pytest.raises(NoNode):
        store.delete("/missing")
    with pytest.raises(NoNode):
        store.children("/missing")
    with pytest.raises(NoNode):
        store.create("/no/parent", b"", makepath=False)
    store.create("/dup", b"")
    with pytest.raises(NodeExists):
        store.create("/dup", b"")
    store.create("/dup/child", b"")
    with pytest.raises(NotEmpty):
        store.delete("/dup")
    store.create("/eph", b"", ephemeral=True)
    with pytest.raises(NoChildrenForEphemerals):
        store.create("/eph/child", b"")
    for bad in ("", "rel", "/trailing/", "/a//b", "/a/./b", "/a/..", None):
        with pytest.raises(InvalidPath):
            store.get(bad)
    with pytest.raises(InvalidValue):
        store.create("/str", "not bytes")
    with pytest.raises(InvalidValue):
        store.set("/dup", b"x" * (1024 * 1024))


def test_children_sorted_and_makepath(store):
    for name in ("c", "a", "b"):
        store.create(f"/p/q/{name}", name.encode())
    assert store.children("/p/q") == ["a", "b", "c"]
    assert store.children("/p") == ["q"]


def test_sequence_nodes(store):
    store.create("/q", b"")
    paths = [store.create("/q/item-", str(i).encode(), sequence=True) for i in range(5)]
    assert len(set(paths)) == 5 and paths == sorted(paths)
    for p in paths:
        suffix = p.rsplit("-", 1)[1]
        assert len(suffix) == 10 and suffix.isdigit()
    assert store.children("/q") == [p.rsplit("/", 1)[1] for p in paths]
    assert [store.get(p)[0] for p in paths] == [b"0", b"1", b"2", b"3", b"4"]


def test_recursive_delete(store):
    for p in ("/tree/a/x", "/tree/a/y", "/tree/b", "/other"):
        store.create(p, b"v")
    store.delete("/tree", recursive=True)
    assert store.exists("/tree") is None and store.exists("/tree/a/x") is None
    assert store.exists("/other") == 0
    with pytest.raises(NoNode):
        store.delete("/tree", recursive=True)


def test_data_watch_in_order(store, store_factory):
    peer = store_factory()
    rec = Recorder()
    store.watch_data("/w", rec)
    rec.wait(lambda ev: len(ev) >= 1)
    peer.create("/w", b"0")
    for i in range(1, 21):
        peer.set("/w", str(i).encode())
    peer.delete("/w")
    events = rec.wait(lambda ev: ev[-1].kind is EventKind.DELETED and len(ev) > 1)
    assert events[0].initial and events[0].kind is EventKind.DELETED and events[0].value is None
    assert events[1].kind is EventKind.CREATED and not events[1].initial
    middle = [e for e in events if e.kind is EventKind.CHANGED]
    versions = [e.version for e in events[1:-1]]
    assert versions == sorted(set(versions))             # never backwards, never twice
    assert all(e.path == "/w" for e in events)
    if exact(store):
        assert [e.value for e in middle] == [str(i).encode() for i in range(1, 21)]
    else:
        assert len(events) >= 3
    assert rec.threads and not any(t == threading.current_thread().name for t in rec.threads)


def test_data_watch_initial_value_and_recreate(store):
    store.create("/r", b"first")
    rec = Recorder()
    store.watch_data("/r", rec)
    first = rec.wait(lambda ev: ev)[0]
    assert first.initial and first.kind is EventKind.CHANGED
    assert (first.value, first.version) == (b"first", 0)
    store.delete("/r")
    store.create("/r", b"again")
    events = rec.wait(lambda ev: ev[-1].kind is EventKind.CREATED)
    assert [e.kind for e in events[1:]] == [EventKind.DELETED, EventKind.CREATED]
    assert events[-1].value == b"again" and events[-1].version == 0


def test_children_watch_in_order(store, store_factory):
    peer = store_factory()
    rec = Recorder()
    store.watch_children("/dir", rec)
    assert rec.wait(lambda ev: ev)[0].children == ()
    names = [f"n{i:02d}" for i in range(10)]
    for n in names:
        peer.create(f"/dir/{n}", b"")
    events = rec.wait(lambda ev: ev[-1].children == tuple(names))
    sizes = [len(e.children) for e in events]
    assert sizes == sorted(sizes)
    assert all(e.kind is EventKind.CHILDREN and e.path == "/dir" for e in events)
    if exact(store):
        assert sizes == list(range(11))
    peer.delete("/dir", recursive=True)
    events = rec.wait(lambda ev: ev[-1].children == ())
    tail = [len(e.children) for e in events[events.index(next(e for e in events if len(e.children) == 10)):]]
    assert tail == sorted(tail, reverse=True)


def test_cancelled_watch_gets_nothing_more(store):
    store.create("/c", b"0")
    store.create("/marker", b"0")
    cancelled, marker = Recorder(), Recorder()
    sub = store.watch_data("/c", cancelled)
    cancelled.wait(lambda ev: ev)
    sub.cancel()
    store.watch_data("/marker", marker)
    store.set("/c", b"1")
    store.set("/marker", b"1")
    marker.wait(lambda ev: len(ev) == 2)                  # delivered after any event for /c would have been
    assert len(cancelled.items) == 1


def test_callback_error_does_not_stop_delivery(store, wait_until):
    rec = Recorder()

    def broken(ev):
        raise RuntimeError("subscriber bug")

    store.watch_data("/e", broken)
    store.watch_data("/e", rec)
    store.create("/e", b"x")
    rec.wait(lambda ev: ev[-1].kind is EventKind.CREATED)
    wait_until(lambda: store.counters["store_callback_errors"] == 2, what="both failures counted")


def test_ephemeral_vanishes_when_owner_closes(store, store_factory):
    peer = store_factory()
    peer.create("/agents/a1", b"alive", ephemeral=True)
    rec = Recorder()
    store.watch_data("/agents/a1", rec)
    rec.wait(lambda ev: ev and ev[0].value == b"alive")
    peer.close()
    rec.wait(lambda ev: ev[-1].kind is EventKind.DELETED)
    assert store.exists("/agents/a1") is None
    assert store.exists("/agents") is not None            # parents made by makepath are persistent
    with pytest.raises(StoreClosed):
        peer.get("/agents")


def test_ephemeral_vanishes_when_session_expires(store, store_factory, expire_session, wait_until):
    peer = store_factory()
    states = Recorder()
    peer.add_state_listener(states)
    peer.create("/agents/a2", b"alive", ephemeral=True)
    peer.create("/agents/keep", b"persistent")
    old_session = peer.session_id
    expire_session(peer)
    states.wait(lambda s: ConnState.LOST in s and s[-1] is ConnState.CONNECTED)
    assert states.items[states.items.index(ConnState.LOST):] == [ConnState.LOST, ConnState.CONNECTED]
    assert store.exists("/agents/a2") is None
    assert store.exists("/agents/keep") == 0
    wait_until(lambda: peer.session_id != old_session, what="a new session id")
    peer.create("/agents/a2", b"back", ephemeral=True)     # the handle works on its new session
    assert store.get("/agents/a2") == (b"back", 0)


def test_watch_survives_session_expiry(store, expire_session):
    rec = Recorder()
    store.watch_data("/s", rec)
    rec.wait(lambda ev: ev)
    expire_session(store)
    store.create("/s", b"after")
    rec.wait(lambda ev: ev[-1].value == b"after")


def test_closed_store_refuses(store_factory):
    s = store_factory()
    s.close()
    s.close()                                              # idempotent
    with pytest.raises(StoreClosed):
        s.create("/x", b"")


# -- topology records ---------------------------------------------------------------------------------------
def sample_topology() -> Topology:
    ip, mac, ip6 = addr.ip2int, addr.mac2int, addr.ip6_2int
    tenant = Bridge(
        "tenant",
        {"vm1": Port("tenant", "vm1", host="host-a", interface="tap-vm1", tunnel_key=1),
         "vm2": Port("tenant", "vm2", vlan=10, tunnel_key=2),
         "up": Port("tenant", "up", peer="r1.tenant")},
        inbound_filter="fw",
        mac_table={(0, mac("02:00:00:00:00:03")): "vm2", (10, mac("ff:ff:ff:ff:ff:fe")): "vm1"},
    )
    r1 = Router(
        "r1",
        {"tenant": Port("r1", "tenant", peer="tenant.up", address=ip("10.0.0.1"), prefix_len=24,
                        mac=mac("02:0a:00:00:00:01")),
         "uplink": Port("r1", "uplink", host="host-a", interface="up0", address=ip("198.51.100.2"),
                        prefix_len=24, mac=mac("02:0a:00:00:00:02"), tunnel_key=3,
                        addresses6=((ip6("2001:db8:ff::2"), 64), (ip6("2001:db8:fe::2"), 120)))},
        routes=(Route(0, 0, gateway=ip("198.51.100.1"), port="uplink"),
                Route(ip("11.0.0.0"), 24, type="blackhole"),
                Route(ip("21.31.41.51"), 32, src=ip("10.0.0.0"), src_len=8, gateway=ip("198.51.100.7"),
                      port="uplink", weight=7),
                Route(0, 0, gateway=ip6("2001:db8:ff::1"), port="uplink", v6=True),
                Route(ip6("2001:db8:dead::"), 48, src=ip6("2001:db8:1::"), src_len=64, type="reject", v6=True)),
        arp_table={ip("198.51.100.1"): mac("02:0b:00:00:00:01")},
        nd_table={ip6("2001:db8:ff::1"): mac("02:0b:00:00:00:01"), ip6("fe80::1"): mac("02:0b:00:00:00:03")},
        inbound_filter="r1-in", outbound_filter="r1-out", load_balancer="lb1",
    )
    rules = (
        Rule("rev_snat"),
        Rule("dnat", Match((Condition("src", (ip("10.0.0.0"), 24), negate=True),
                            Condition("dst", (ip("180.0.1.100"), 32)),
                            Condition("src", (ip6("2001:db8:1::"), 64, 6), negate=True),
                            Condition("dst", (ip6("2001:db8::ffff:ffff"), 128, 6)))),
             targets=(NatTarget(ip("10.0.0.1"), ip("10.0.0.5"), 80, 80),)),
        Rule("snat", Match((Condition("in_port", frozenset({"tenant.vm1", "tenant.vm2"})),
                            Condition("proto", 6), Condition("dst_port", (1000, 2000)),
                            Condition("ct", "forward"), Condition("port_group", "uplinks")), invert=True),
             targets=(NatTarget(ip("180.0.1.100"), ip("180.0.1.100"), 5000, 65535), NatTarget(1, 2))),
        Rule("jump", chain="more"),
    )
    lb = LoadBalancer("lb1", (Vip(ip("203.0.113.10"), 80, 6, "web", sticky_source_ip=True),
                              Vip(ip6("2001:db8:ff::10"), 443, 6, "web6", v6=True)),
                      {"web": Pool("web", (Member(ip("10.0.0.2"), 8080),
                                           Member(ip("10.0.0.3"), 8080, 3, False))),
                       "web6": Pool("web6", (Member(ip6("2001:db8:1::5"), 8443, v6=True),))})
    return Topology(
        hosts={"host-a": Host("host-a", ip("127.0.0.11")), "host b/.": Host("host b/.", ip("127.0.0.12"))},
        bridges={"tenant": tenant}, routers={"r1": r1},
        chains={"r1-in": Chain("r1-in", rules), "more": Chain("more", ()),
                "..": Chain("..", (Rule("drop"),))},
        load_balancers={"lb1": lb},
        port_groups={"uplinks": PortGroup("uplinks", ("r1.uplink", "r2.uplink"), stateful=True)},
    )


def all_objects(topo: Topology) -> list:
    return [o for attr in ("hosts", "bridges", "routers", "chains", "load_balancers", "port_groups")
            for o in getattr(topo, attr).values()]


def test_put_get_delete_every_kind(store):
    for obj in all_objects(sample_topology()):
        kind = topo_store.kind_of(obj)
        assert topo_store.put_object(store, obj) == "created"
        assert topo_store.put_object(store, obj) == "unchanged"
        back = topo_store.get_object(store, kind, obj.name)
        assert back == obj and type(back) is type(obj)
        assert obj.name in topo_store.list_names(store, kind)
    assert topo_store.list_objects(store, "chain").keys() == {"r1-in", "more", ".."}
    assert topo_store.delete_object(store, "chain", "..") is True
    assert topo_store.delete_object(store, "chain", "..") is False
    with pytest.raises(NoNode):
        topo_store.get_object(store, "chain", "..")


def test_records_keep_exact_types(store):
    topo = sample_topology()
    topo_store.put_object(store, topo.bridges["tenant"])
    topo_store.put_object(store, topo.chains["r1-in"])
    bridge = topo_store.get_object(store, "bridge", "tenant")
    assert all(isinstance(k, tuple) and all(isinstance(x, int) for x in k) for k in bridge.mac_table)
    chain = topo_store.get_object(store, "chain", "r1-in")
    cond = chain.rules[2].match.conditions
    assert isinstance(cond[0].value, frozenset) and isinstance(cond[2].value, tuple)
    assert isinstance(chain.rules, tuple) and isinstance(chain.rules[1].targets, tuple)
    assert isinstance(chain.rules[1].match.conditions[2].value, tuple)
    topo_store.put_object(store, topo.routers["r1"])
    router = topo_store.get_object(store, "router", "r1")
    six = router.ports["uplink"].addresses6
    assert isinstance(six, tuple) and all(type(a) is tuple for a in six) and six[0][0] > 2**64
    assert all(isinstance(k, int) and isinstance(v, int) for k, v in router.nd_table.items())


def test_bad_record_is_a_typed_error(store):
    store.create(topo_store.object_path("host", "h"), b"{not json")
    with pytest.raises(topo_store.BadRecord, match="/topology/hosts/h"):
        topo_store.get_object(store, "host", "h")
    with pytest.raises(ValueError):
        topo_store.object_path("switch", "x")


def test_write_topology_is_a_diff(store, store_factory):
    topo = sample_topology()
    n_records = len(all_objects(topo)) + 3                 # + three tunnel keys
    first = topo_store.write_topology(store, topo)
    assert first == {"created": n_records, "updated": 0, "deleted": 0, "unchanged": 0}
    assert topo_store.write_topology(store, topo)["unchanged"] == n_records
    assert topo_store.read_topology(store_factory()) == topo
    assert topo_store.read_tunnel_keys(store) == {"tenant.vm1": 1, "tenant.vm2": 2, "r1.uplink": 3}

    bridge = topo.bridges["tenant"]
    edited = replace(topo, bridges={"tenant": replace(bridge, outbound_filter="more")},
                     chains={k: v for k, v in topo.chains.items() if k != ".."},
                     hosts={**topo.hosts, "host-c": Host("host-c", 3)})
    counts = topo_store.write_topology(store, edited)
    assert counts == {"created": 1, "updated": 1, "deleted": 1, "unchanged": n_records - 2}
    assert topo_store.read_topology(store) == edited
    assert topo_store.write_topology(store, Topology())["deleted"] == n_records
    assert topo_store.read_topology(store) == Topology()


# -- URIs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("uri", [
    "", "memory:/", "redis://x", "zk://", "zk://host", "zk://h:notaport/r", "zk://h:99999", "zk://h:1/a//b",
    "zk://h:1/r?bogus=1", "zk://h:1/r?op_timeout=fast", "zk://h:1/r?op_timeout=-1", "memory://n?x=1", 5,
])
def test_bad_uri(uri):
    with pytest.raises(BadStoreUri):
        open_store(uri)


def test_memory_uri_named_backends_are_shared():
    a, b, other = open_store("memory://uri-test/app"), open_store("memory://uri-test"), open_store("memory://")
    try:
        a.create("/x", b"1")
        assert b.get("/app/x") == (b"1", 0)
        assert other.exists("/app/x") is None
        assert a.session_id != b.session_id
    finally:
        for s in (a, b, other):
            s.close()
        drop_backend("uri-test")


@pytest.mark.zk
def test_zk_uri_creates_root(zk_server, zk_chroot, zk_client):
    s = open_store(f"zk://{zk_server.hosts}{zk_chroot}/deep?session_timeout=4&op_timeout=5")
    try:
        s.create("/x", b"1")
        assert zk_client.get(f"{zk_chroot}/deep/x")[0] == b"1"
        assert s.children("/") == ["x"]
    finally:
        s.close()


def test_zk_uri_unreachable_is_store_unavailable():
    from tests.zkharness import free_ports

    with pytest.raises(StoreUnavailable):
        open_store(f"zk://127.0.0.1:{free_ports(1)[0]}/r?connect_timeout=0.5")
