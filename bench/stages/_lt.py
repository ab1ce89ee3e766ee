import os
import time

_buf = []
_mono = time.monotonic_ns


def lt(tag, seq):
    _buf.append((tag, seq, _mono()))
    if len(_buf) >= 4000:
        flush()


def flush():
    with open(f"/tmp/exp/lat/{os.getpid()}", "a") as f:
        f.write("".join(f"{a} {b} {c}\n" for a, b, c in _buf))
    _buf.clear()
