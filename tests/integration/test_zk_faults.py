"""ZkStore against a real 3-node ensemble under faults: leader loss, quorum loss and recovery.

Each test leaves every node running again (``finally``), so tests of the module can share the ensemble.
"""

from __future__ import annotations

import threading
import uuid

import pytest

from topology.store.base import ConnState, EventKind, StoreUnavailable
from topology.store.uri import open_store

pytestmark = pytest.mark.zk


class Recorder:
    def __init__(self):
        self.items: list = []
        self._cv = threading.Condition()

    def __call__(self, item) -> None:
        with self._cv:
            self.items.append(item)
            self._cv.notify_all()

    def wait(self, predicate, timeout: float = 20.0) -> list:
        with self._cv:
            if not self._cv.wait_for(lambda: bool(self.items) and predicate(self.items), timeout):
                pytest.fail(f"timed out; recorded {self.items!r}")
            return list(self.items)


@pytest.fixture
def ens_store(zk_ensemble):
    uri = f"zk://{zk_ensemble.hosts}/f/{uuid.uuid4().hex}?session_timeout=8&op_timeout=2"
    stores = [open_store(uri), open_store(uri)]
    yield stores
    for node in zk_ensemble.nodes:
        if not node.running:
            zk_ensemble.restart_node(node)
    for s in stores:
        s.close()


def test_leader_loss_is_ridden_over(zk_ensemble, ens_store):
    writer, reader = ens_store
    writer.create("/k", b"0")
    writer.create("/mine", b"", ephemeral=True)
    rec = Recorder()
    reader.watch_data("/k", rec)
    rec.wait(lambda ev: ev[0].value == b"0")
    leader = zk_ensemble.leader()
    assert leader is not None
    zk_ensemble.stop_node(leader, kill=True)
    try:
        for i in range(1, 6):                       # retried through the election, within op_timeout
            writer.set("/k", str(i).encode())
        rec.wait(lambda ev: ev[-1].value == b"5")
        assert reader.exists("/mine") is not None     # the session (and its ephemeral) survived
    finally:
        zk_ensemble.restart_node(leader)


def test_quorum_loss_then_recovery(zk_ensemble, ens_store):
    writer, reader = ens_store
    states = Recorder()
    reader.add_state_listener(states)
    rec = Recorder()
    reader.watch_children("/dir", rec)
    rec.wait(lambda ev: ev[0].children == ())
    down = zk_ensemble.nodes[:2]
    for node in down:
        zk_ensemble.stop_node(node, kill=True)
    try:
        states.wait(lambda s: ConnState.SUSPENDED in s)
        with pytest.raises(StoreUnavailable):
            reader.create("/dir/during", b"")
        with pytest.raises(StoreUnavailable):
            reader.get("/dir")
    finally:
        for node in down:
            zk_ensemble.restart_node(node)
    states.wait(lambda s: s[-1] is ConnState.CONNECTED)
    writer.create("/dir/after", b"")                  # the watch was re-armed after reconnecting
    events = rec.wait(lambda ev: "after" in ev[-1].children)
    assert all(e.kind is EventKind.CHILDREN for e in events)
    assert reader.counters["store_suspended"] >= 1
