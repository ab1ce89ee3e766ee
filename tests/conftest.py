"""Root conftest: ZooKeeper fixtures and a few generic helpers, shared by every test directory.

ZooKeeper (real servers from tests/zkharness.py, 127.0.0.1, free ports, private temp dirs):

- ``zk_server``    session scope: one standalone server (``.hosts`` = "127.0.0.1:PORT").
- ``zk_ensemble``  module scope: a 3-node ensemble for fault tests (``.nodes``, ``.leader()``,
                   ``.stop_node(n)``, ``.restart_node(n)``); stopped and removed after the module.
- ``zk_client``    session scope: a raw kazoo client on ``zk_server`` for setup/inspection/cleanup.
- ``zk_chroot``    function scope: a fresh path ``/t/<uuid>`` (not created), deleted with its subtree after.
  No Java or no ZooKeeper jar makes these fixtures FAIL with the reason (never skip: a CI without ZooKeeper
  must be red).  Tests that do not request them never start Java.

Stores (topology.store), one contract run on both implementations:

- ``store_uri``      parametrized ["memory", "zk"]: a URI on a fresh private root (``memory://<uuid>`` or
                     ``zk://HOST:PORT/t/<uuid>``); the zk variant carries ``@pytest.mark.zk``.
- ``store_factory``  opens another handle (another session: "another agent") on ``store_uri``; every handle
                     is closed at teardown.
- ``store``          the first handle.

Helpers: ``wait_until(predicate, timeout=10)`` fixture (polls; fails the test with a message on timeout) and
``expire_session(store)`` fixture (forces a session expiry on either store kind).

Hypothesis profiles (``HYPOTHESIS_PROFILE``; tests that set ``max_examples`` themselves keep theirs): the property
suites that take their example count from the profile (tests/fuzz/test_handlers_fuzz.py,
tests/fuzz/test_simulation_fuzz.py) run ``shardnet`` (bounded: a few seconds each) in ``make test`` and
``fuzz`` (many more examples) in ``make fuzz``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.zkharness import ZkCluster, ZkHarnessError, expire_kazoo_session

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("shardnet", max_examples=60, deadline=None, suppress_health_check=_SLOW_OK)
settings.register_profile("fuzz", max_examples=3000, deadline=None, suppress_health_check=_SLOW_OK)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "shardnet"))


def _start_cluster(size: int) -> ZkCluster:
    try:
        return ZkCluster(size).start()
    except ZkHarnessError as e:
        pytest.fail(f"cannot start ZooKeeper for this test: {e}", pytrace=False)


@pytest.fixture(scope="session")
def zk_server() -> Iterator[ZkCluster]:
    cluster = _start_cluster(1)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def zk_ensemble() -> Iterator[ZkCluster]:
    cluster = _start_cluster(3)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def zk_client(zk_server: ZkCluster):
    from kazoo.client import KazooClient

    client = KazooClient(hosts=zk_server.hosts, timeout=10.0)
    client.start(timeout=10)
    yield client
    client.stop()
    client.close()


@pytest.fixture
def zk_chroot(zk_client) -> Iterator[str]:
    path = f"/t/{uuid.uuid4().hex}"
    yield path
    if zk_client.connected:
        zk_client.delete(path, recursive=True)


@pytest.fixture(params=["memory", pytest.param("zk", marks=pytest.mark.zk)])
def store_uri(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "memory":
        from topology.store.memory import drop_backend

        name = f"test-{uuid.uuid4().hex}"
        yield f"memory://{name}"
        drop_backend(name)
    else:
        server = request.getfixturevalue("zk_server")
        chroot = request.getfixturevalue("zk_chroot")
        yield f"zk://{server.hosts}{chroot}"


@pytest.fixture
def store_factory(store_uri: str) -> Iterator[Callable]:
    from topology.store.uri import open_store

    opened = []

    def make():
        s = open_store(store_uri)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def store(store_factory: Callable):
    return store_factory()


@pytest.fixture
def wait_until() -> Callable:
    def wait(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.01)

    return wait


@pytest.fixture
def expire_session() -> Callable:
    """``expire_session(store)``: the store's session expires (ephemerals gone, LOST then CONNECTED)."""

    def expire(store) -> None:
        from topology.store.memory import MemoryStore

        if isinstance(store, MemoryStore):
            store.expire_session()
        else:
            expire_kazoo_session(store.client, store.hosts)

    return expire
