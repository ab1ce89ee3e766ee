"""Micro-benchmark of the packet codec's hot calls: parse, build and rewrite of an IPv4 UDP frame (and of the
same datagram over IPv6 when the tree has the IPv6 codec), best of many timeit repeats.

    PYTHONPATH=. .venv/bin/python -m bench.codec_micro [--against OTHER_TREE] [--rounds N]

``--against`` runs this file's measurement in a subprocess with PYTHONPATH=OTHER_TREE, alternating with this
tree ``--rounds`` times, so the drift of a shared machine hits both alike; the minimum and the median of the
rounds are printed per call (ns).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import timeit

NUMBER = 50_000
REPEAT = 9


def measure() -> dict[str, float]:
    from packet.codec import build, parse, rewrite
    from packet.packet import Packet

    p = Packet(eth_src=0x020000000001, eth_dst=0x020000000002, ip_src=0x0A000001, ip_dst=0x0A000002, proto=17,
               ttl=64, tos=0, ip_id=1, tp_src=10000, tp_dst=53, payload=bytes(18))
    f = build(p)
    q = parse(f)
    new = q._replace(ip_src=0xB4000164, tp_src=9043, ttl=63)
    calls = {"ipv4_parse": lambda: parse(f), "ipv4_build": lambda: build(p),
             "ipv4_rewrite": lambda: rewrite(f, q, new)}
    if "ipv6_src" in Packet._fields:
        p6 = Packet(eth_src=0x020000000001, eth_dst=0x020000000002, eth_type=0x86DD, ipv6_src=0x20010DB8 << 96 | 1,
                    ipv6_dst=0x20010DB8 << 96 | 2, proto=17, hop_limit=64, tclass=0, flow_label=0, tp_src=10000,
                    tp_dst=53, payload=bytes(18))
        f6 = build(p6)
        q6 = parse(f6)
        new6 = q6._replace(ipv6_src=0x20010DB8 << 96 | 0x99, tp_src=9043, hop_limit=63)
        calls.update(ipv6_parse=lambda: parse(f6), ipv6_build=lambda: build(p6),
                     ipv6_rewrite=lambda: rewrite(f6, q6, new6))
    return {k: min(timeit.repeat(c, number=NUMBER, repeat=REPEAT)) / NUMBER * 1e9 for k, c in calls.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", help="another source tree to alternate with")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.once or not a.against:
        print(json.dumps(measure()))
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"this": here, "against": a.against}
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    for _ in range(a.rounds):
        for name, tree in trees.items():
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--once"],
                                 env={**os.environ, "PYTHONPATH": tree}, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout))
    for name, rs in runs.items():
        keys = rs[0].keys()
        print(name, trees[name])
        for k in keys:
            vals = sorted(r[k] for r in rs)
            print(f"  {k:14s} min {vals[0]:7.0f} ns   median {vals[len(vals) // 2]:7.0f} ns")


if __name__ == "__main__":
    main()
