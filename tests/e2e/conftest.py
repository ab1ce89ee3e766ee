"""Fixtures of the end-to-end tests (network namespaces; root and Linux tools required).

- ``e2e_ready``       session scope: checks root and the tools (ip, ping, nc, ethtool); FAILS with what is
                      missing and how to install it (never skips).
- ``netns_factory``   function scope: a tests.e2e.netns.NetnsFactory; everything it made (namespaces, veths,
                      TAPs, processes) is removed after the test.
- ``dp_threads``      function scope: ``start(dp, on_miss)`` runs a datapath in a DatapathThread; stopped
                      and the datapath closed after the test.
- ``zk_store``        function scope: a ``zk://`` store URI on the session ZooKeeper server, fresh chroot.
- ``real_agents``     function scope: ``start(host, topology_text=None, **cfg)`` starts an Agent with the real
                      datapath (tests.e2e.agents.start_agent); ``start.net`` is the test's tunnel network;
                      every agent is stopped after the test.

Every test module here carries ``pytestmark = pytest.mark.e2e`` (``pytest -m e2e`` selects them).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.agents import Net, start_agent
from tests.e2e.netns import DatapathThread, E2eError, NetnsFactory, check_prerequisites


@pytest.fixture(scope="session")
def e2e_ready() -> None:
    try:
        check_prerequisites()
    except E2eError as e:
        pytest.fail(f"cannot run e2e tests: {e}", pytrace=False)


@pytest.fixture
def netns_factory(e2e_ready) -> Iterator[NetnsFactory]:
    f = NetnsFactory()
    yield f
    f.close()


@pytest.fixture
def dp_threads() -> Iterator:
    started: list[DatapathThread] = []

    def start(dp, on_miss=None) -> DatapathThread:
        t = DatapathThread(dp, on_miss).start()
        started.append(t)
        return t

    yield start
    errors = []
    for t in started:
        try:
            t.stop()
        except E2eError as e:
            errors.append(str(e))
        finally:
            t.dp.close()
    if errors:
        pytest.fail("; ".join(errors))


@pytest.fixture
def zk_store(zk_server, zk_chroot) -> str:
    return f"zk://{zk_server.hosts}{zk_chroot}"


@pytest.fixture
def real_agents(zk_store, tmp_path):
    started = []
    net = Net()

    def start(host: str, topology_text: str | None = None, **kw):
        path = None
        if topology_text is not None:
            path = tmp_path / f"topo-{len(started)}.yaml"
            path.write_text(topology_text)
        a = start_agent(zk_store, host, net, tmp_path, str(path) if path else None, **kw)
        started.append(a)
        return a

    start.net = net
    yield start
    for a in started:
        a.stop()
