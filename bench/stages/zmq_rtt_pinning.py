import multiprocessing as mp
import os
import sys
import time

import zmq


def _end(addr_in, addr_out, cpu):
    """One end: pinned to ``cpu`` (None: unpinned) before its context exists, so its I/O thread is pinned too;
    a PULL bound on ``addr_in`` and a PUSH connected to ``addr_out``."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    ctx = zmq.Context()
    i = ctx.socket(zmq.PULL)
    i.bind(addr_in)
    o = ctx.socket(zmq.PUSH)
    o.connect(addr_out)
    return i, o


def echo(addr_in, addr_out, cpu):
    i, o = _end(addr_in, addr_out, cpu)
    while True:
        msg = i.recv()
        if msg == b"q":
            break
        o.send(msg)


SPACING = float(sys.argv[1]) if len(sys.argv) > 1 else 0.005


def main(cpu_a, cpu_b, n=300, spacing=SPACING):
    import tempfile

    d = tempfile.mkdtemp()
    a_in = f"ipc://{d}/a"
    b_in = f"ipc://{d}/b"
    p = mp.Process(target=echo, args=(b_in, a_in, cpu_b))
    p.start()
    i, o = _end(a_in, b_in, cpu_a)
    time.sleep(0.3)
    o.send(b"x")
    i.recv()
    ts = []
    for _ in range(n):
        time.sleep(spacing)
        t = time.perf_counter_ns()
        o.send(b"x" * 64)
        i.recv()
        ts.append((time.perf_counter_ns() - t) / 1000)
    o.send(b"q")
    p.join()
    ts.sort()
    return ts[len(ts) // 2], ts[int(len(ts) * 0.9)]


if __name__ == "__main__":
    for a, b in [(None, None), (0, 1), (0, 0), (1, 0), (None, None), (0, 1), (0, 0)]:
        print(a, b, [f"{x:.0f}" for x in main(a, b)], flush=True)
