import multiprocessing as mp
import os
import select
import socket
import sys
import time


def echo(s, cpu):
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    while True:
        select.select([s], [], [])  # block like a poll loop
        m = s.recv(2048)
        if m == b"q":
            break
        s.send(m)


def main(cpu_a, cpu_b, n=300, spacing=0.005):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    p = mp.Process(target=echo, args=(b, cpu_b))
    p.start()
    if cpu_a is not None:
        os.sched_setaffinity(0, {cpu_a})
    time.sleep(0.3)
    a.send(b"x")
    a.recv(100)
    ts = []
    for _ in range(n):
        time.sleep(spacing)
        t = time.perf_counter_ns()
        a.send(b"x" * 64)
        select.select([a], [], [])
        a.recv(2048)
        ts.append((time.perf_counter_ns() - t) / 1000)
    a.send(b"q")
    p.join()
    ts.sort()
    return ts[len(ts) // 2], ts[int(len(ts) * 0.9)]


if __name__ == "__main__":
    sp = float(sys.argv[1]) if len(sys.argv) > 1 else 0.005
    for a, b in [(None, None), (0, 1), (0, 0), (None, None), (0, 1), (0, 0)]:
        print(a, b, [f"{x:.0f}" for x in main(a, b, spacing=sp)], flush=True)
