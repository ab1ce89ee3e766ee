import os
import sys
import time


def work():
    d = {}
    for i in range(300):
        d[(i, i * 7)] = str(i)
    return sum(len(v) for v in d.values())


def measure(mode, n=200, spacing=0.005):
    a, b = [], []
    for _ in range(n):
        if mode == "sleep":
            time.sleep(spacing)
        elif mode == "spin":
            e = time.perf_counter() + spacing
            while time.perf_counter() < e:
                pass
        t = time.perf_counter_ns()
        work()
        t1 = time.perf_counter_ns()
        work()
        t2 = time.perf_counter_ns()
        a.append((t1 - t) / 1000)
        b.append((t2 - t1) / 1000)
    a.sort()
    b.sort()
    return round(a[n // 2]), round(b[n // 2])


os.sched_setaffinity(0, {int(sys.argv[1])})
for mode in ["none", "sleep", "spin"] * 2:
    print(mode, measure(mode))
