"""Live hosts, port bindings and session recovery (topology.store.registry, topology.store.session)."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from packet.addr import ip2int, mac2int
from topology.loader import load_topology
from topology.store.registry import (
    Binding,
    BindingWatcher,
    HostAlreadyRegistered,
    HostWatcher,
    LiveHost,
    all_bindings,
    binding_of,
    live_hosts,
    port_by_tunnel_key,
    register_host,
    unregister_host,
    write_bindings,
)
from topology.store.session import OwnedEntries
from topology.store.tables import MacTable
from topology.store.topo import read_tunnel_keys, write_topology

DEMO_TOPOLOGY = Path(__file__).resolve().parents[2] / "engine" / "demo" / "demo.yaml"
A_IP, B_IP = ip2int("127.0.0.11"), ip2int("127.0.0.12")
MAC = mac2int("02:00:00:00:00:01")


class Log:
    def __init__(self):
        self.items, self.lock = [], threading.Lock()

    def __call__(self, *args):
        with self.lock:
            self.items.append(args)

    def seen(self, *args) -> bool:
        with self.lock:
            return args in self.items


def test_hosts_register_watch_and_vanish(store_factory, wait_until):
    a, b, c = store_factory(), store_factory(), store_factory()
    log = Log()
    watcher = HostWatcher(c, log)
    assert register_host(a, "host-a", A_IP) == LiveHost("host-a", A_IP, a.session_id)
    register_host(b, "host-b", B_IP)
    assert live_hosts(c) == {"host-a": LiveHost("host-a", A_IP, a.session_id),
                             "host-b": LiveHost("host-b", B_IP, b.session_id)}
    wait_until(lambda: set(watcher.hosts()) == {"host-a", "host-b"}, what="the watcher to see both hosts")
    assert log.seen("host-a", None, LiveHost("host-a", A_IP, a.session_id))
    with pytest.raises(HostAlreadyRegistered):
        register_host(b, "host-a", B_IP)                  # another live agent holds the name
    assert register_host(a, "host-a", A_IP).session == a.session_id      # our own: idempotent
    a.close()                                             # agent A dies: its host node goes
    wait_until(lambda: set(watcher.hosts()) == {"host-b"}, what="host-a to vanish")
    assert log.seen("host-a", LiveHost("host-a", A_IP, a.session_id), None)
    unregister_host(b, "host-b")
    assert live_hosts(c) == {}
    with pytest.raises(ValueError):
        register_host(c, "host-c", -1)


def test_bindings_from_the_topology(store_factory, wait_until):
    store, other = store_factory(), store_factory()
    topo = load_topology(DEMO_TOPOLOGY)
    write_topology(store, topo)
    counts = write_bindings(store, topo)
    bound = {pid: p for pid, p in topo.all_ports().items() if p.exterior and p.host}
    assert counts == {"created": len(bound), "updated": 0, "deleted": 0, "unchanged": 0}
    vm1 = topo.port("tenant.vm1")
    assert binding_of(other, "tenant.vm1") == Binding("tenant.vm1", "host-a", "tap-vm1", vm1.tunnel_key)
    assert binding_of(other, "tenant.up") is None            # interior: never bound
    assert set(all_bindings(other)) == set(bound)
    assert port_by_tunnel_key(other, vm1.tunnel_key) == "tenant.vm1"
    keys = read_tunnel_keys(other)
    assert all(port_by_tunnel_key(keys, k) == pid for pid, k in keys.items())
    assert port_by_tunnel_key(keys, 0xABCDE) is None
    assert write_bindings(store, topo)["unchanged"] == len(bound)
    # an edit: vm2 moves to host-a, vm1 is unbound
    log = Log()
    watcher = BindingWatcher(other, log)
    assert watcher.binding("tenant.vm1") is not None
    tenant = topo.bridges["tenant"]
    ports = dict(tenant.ports)
    ports["vm1"] = replace(ports["vm1"], host=None, interface=None)
    ports["vm2"] = replace(ports["vm2"], host="host-a", interface="tap-x")
    edited = replace(topo, bridges={**topo.bridges, "tenant": replace(tenant, ports=ports)})
    counts = write_bindings(store, edited)
    assert (counts["deleted"], counts["updated"]) == (1, 1)
    wait_until(lambda: watcher.binding("tenant.vm1") is None and watcher.binding("tenant.vm2").host == "host-a",
               what="the binding watcher to follow the edit")
    assert log.seen("tenant.vm1", Binding("tenant.vm1", "host-a", "tap-vm1", vm1.tunnel_key), None)
    vm2_key = topo.port("tenant.vm2").tunnel_key
    assert watcher.by_tunnel_key(vm2_key) == Binding("tenant.vm2", "host-a", "tap-x", vm2_key)


def test_session_loss_recreates_host_node_and_owned_entries(store_factory, expire_session, wait_until):
    a, b = store_factory(), store_factory()
    owned = OwnedEntries(a)
    register_host(a, "host-a", A_IP, owned=owned)
    mac_a = MacTable(a, "tenant", "host-a", owned=owned)
    mac_a.learn(MAC, "tenant.vm1", now=1.0)
    mac_b = MacTable(b, "tenant", "host-b")
    wait_until(lambda: mac_b.lookup(MAC) == "tenant.vm1")
    old_session = a.session_id
    states = Log()
    a.add_state_listener(states)
    expire_session(a)
    wait_until(lambda: a.session_id != old_session, what="a new session")
    wait_until(lambda: owned.counters["session_recreated"] == 2, what="host node and MAC entry re-created")
    assert live_hosts(b) == {"host-a": LiveHost("host-a", A_IP, a.session_id)}   # with the new session id
    wait_until(lambda: mac_b.lookup(MAC) == "tenant.vm1")
    assert mac_a.owned_keys() == {(0, MAC)}
    assert owned.counters["session_conflicts"] == 0
    wait_until(lambda: ("connected",) in [(s[0].value,) for s in states.items])
    assert [s[0].value for s in states.items if s[0].value != "suspended"][:2] == ["lost", "connected"]
    # the re-created nodes are ephemerals of the new session: they go when it ends
    a.close()
    wait_until(lambda: mac_b.lookup(MAC) is None and live_hosts(b) == {})
