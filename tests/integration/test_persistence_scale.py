"""Persistence at scale, in process: 500k flow-state entries in a worker are snapshotted page by page, written
to the state file in chunks and restored into a fresh worker, every message through the real codec and under
the sockets' 4 MiB cap.  The workers are real ``Worker`` objects driven directly; the "service" is a queue of
asks answered one at a time, as the service thread answers them (no recursion, one page in flight per worker).
"""

from __future__ import annotations

import itertools
from concurrent.futures import Future

from backchannel import messages as m
from backchannel.codec import decode, encode
from backchannel.sockets import MAX_MSG_SIZE
from engine.config import AgentConfig
from engine.persistence import Persistence
from engine.statefile import CHUNK, read_chunks
from topology.store.leases import StoreNatAllocator
from topology.store.uri import open_store
from workers.simulation.state import StateEntry
from workers.worker import Worker, WorkerConfig

N = 500_000
SNAT = 2_000                                     # of them SNAT bindings, in blocks the restore claims again
NOW = 100.0


def _worker(i: int = 0, n: int = 1) -> Worker:
    return Worker(WorkerConfig(index=i, n_workers=n, runtime_dir="/nonexistent", max_flow_state=N + 10))


def _fill(w: Worker) -> set:
    fs = w.state.flow_state
    for i in range(N - SNAT):
        key = (0x0A000000 + i % 50_000, 0xCB007100 + i // 50_000, 6, 1024 + i % 60_000, 443, "r1")
        fs[("conntrack", key)] = StateEntry("conntrack", key, None, NOW, 60.0)
    for i in range(SNAT):                       # rev_snat: key dst = the translated address and port
        port = 5000 + i
        key = (0xCB007150, 0xC6336464, 6, 443, port, "r1")
        fs[("rev_snat", key)] = StateEntry("rev_snat", key, (0x0A000002, 30000 + i), NOW, 60.0)
    assert len(fs) == N
    return {(e.kind, tuple(e.key), e.value) for e in fs.values()}


def _wire(msg) -> tuple:
    """``msg`` through the codec, as it would cross a socket: under the cap."""
    data = encode(msg)
    assert len(data) < MAX_MSG_SIZE // 2, f"{type(msg).__name__} of {len(data)} bytes"
    return decode(data)


class Asks:
    """The service's ``ask`` for in-process workers: queued, answered one by one by ``run``."""

    def __init__(self, workers: list[Worker]):
        self.workers, self.queue, self.req = workers, [], itertools.count(1)
        self.pages = 0

    def __call__(self, targets, make_msg, timeout=None) -> Future:
        fut = Future()
        self.queue.append((list(targets), make_msg, fut))
        return fut

    def run(self) -> None:
        while self.queue:
            targets, make_msg, fut = self.queue.pop(0)
            answers = {}
            for t in targets:
                w = self.workers[t]
                w.handle(_wire(make_msg(next(self.req))), NOW)
                [ans] = [x for x in w.out_sup if type(x) is m.Answer]
                w.out_sup.clear()
                answers[t] = _wire(ans).body
                self.pages += 1
            fut.set_result(answers)


def test_500k_entries_snapshot_in_pages_and_restore_in_chunks(tmp_path):
    store = open_store(f"memory://persist-{tmp_path.name}")
    alloc = StoreNatAllocator(store, "host-a")
    cfg = AgentConfig(workers=1, host="host-a", state_file=str(tmp_path / "a.state"), max_flow_state=N + 10)
    counters: dict = {}
    p = Persistence(cfg, counters, alloc)
    w = _worker()
    saved = _fill(w)
    asks = Asks([w])
    done = Future()
    p.snapshot(asks, then=done)
    asks.run()
    assert done.result(0) is True
    assert counters["supervisor_state_snapshots"] == 1 and counters["supervisor_state_snapshot_entries"] == N
    assert asks.pages >= N // m.MAX_STATE_PAGE                   # paged: no answer held the whole shard
    chunks = read_chunks(cfg.state_path())
    assert len(chunks) == -(-N // CHUNK) and max(map(len, chunks)) < MAX_MSG_SIZE // 2

    fresh = _worker()
    sent = []

    def send(i, msg):
        msg = _wire(msg)
        sent.append(type(msg))
        fresh.handle(msg, NOW)

    assert p.restore(send) == N
    restored = {(e.kind, tuple(e.key), e.value) for e in fresh.state.flow_state.values()}
    assert restored == saved
    assert sent.count(m.FlowStateBatch) == len(chunks)
    # the SNAT blocks of the restored bindings were claimed again (once each) and granted to the worker
    granted = [x for x in sent if x is m.LeaseGranted]
    assert len(granted) == len({(5000 + i) // 64 for i in range(SNAT)})
    assert sorted(k[2] for k in alloc.held_by(cfg.lease_owner(0))) == sorted({(5000 + i) // 64 * 64
                                                                              for i in range(SNAT)})
    store.close()


def test_a_page_skips_entries_gone_since_the_dump_started_and_a_dump_survives_new_entries():
    w = _worker()
    fs = w.state.flow_state
    for i in range(10_000):
        key = (1, 2, 6, i, 80, "b")
        fs[("conntrack", key)] = StateEntry("conntrack", key, None, NOW, 60.0)
    first = w.state_page(0, 4096, NOW)
    assert first["total"] == 10_000 and len(first["entries"]) == 4096 and first["cursor"]
    for i in range(5000, 6000):                  # expired meanwhile
        del fs[("conntrack", (1, 2, 6, i, 80, "b"))]
    for i in range(20_000, 20_100):              # new meanwhile: the next snapshot has them
        key = (1, 2, 6, i, 80, "b")
        fs[("conntrack", key)] = StateEntry("conntrack", key, None, NOW, 60.0)
    rest, cursor = [], first["cursor"]
    while cursor:
        page = w.state_page(cursor, 4096, NOW)
        rest.extend(page["entries"])
        cursor = page["cursor"]
    ports = [e[1][3] for e in first["entries"] + rest]
    assert len(ports) == len(set(ports)) == 9000 and not any(5000 <= p < 6000 for p in ports)
    assert w.state_page(first["cursor"], 10, NOW) == {"error": f"unknown or expired dump cursor {first['cursor']}"}


def test_one_dump_state_answer_refuses_a_shard_too_big_for_one_message():
    w = _worker()
    fs = w.state.flow_state
    for i in range(m.DUMP_STATE_MAX + 1):
        key = (1, 2, 6, i % 65536, i // 65536, "b")
        fs[("conntrack", key)] = StateEntry("conntrack", key, None, NOW, 60.0)
    w.handle(m.DumpState(5), NOW)
    [ans] = w.out_sup
    assert "error" in ans.body and ans.body["total"] == m.DUMP_STATE_MAX + 1


def test_a_state_transfer_goes_out_a_few_chunks_per_loop_turn_and_whole():
    from workers.worker import STATE_CHUNK, STATE_CHUNKS_PER_TURN

    w = _worker()
    n = 20_000
    fs = w.state.flow_state
    for i in range(n):
        key = (1, 2, 17, i % 65536, 53 + i // 65536, "b")
        fs[("conntrack", key)] = StateEntry("conntrack", key, None, NOW, 60.0)
    w.handle(m.StateRequest("host-b", "b.p1"), NOW)
    assert not w.out_dp and w.background                 # nothing sent inside the handler
    sent, turns = [], 0
    while w.background:
        w.housekeeping(NOW)
        turns += 1
        batch = [x for x in w.out_dp if type(x) is m.StateToHosts]
        w.out_dp.clear()
        assert len(batch) <= STATE_CHUNKS_PER_TURN and all(x.hosts == ("host-b",) for x in batch)
        sent.extend(e.key for x in batch for e in decode(_wire(x).payload).entries)
    assert turns == -(-n // (STATE_CHUNK * STATE_CHUNKS_PER_TURN))
    assert len(sent) == len(set(sent)) == n
