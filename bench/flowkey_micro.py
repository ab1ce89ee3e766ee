"""Micro-benchmark of the datapath's per-packet key work: flow key, flow hash, flow-cache install and lookups
(exact match, a megaflow through its subtable, the EMC), and a cached-flow execution with a rewrite — on an
IPv4 TCP SYN, and on the same segment over IPv6 when the tree has the IPv6 flow-key slots.  Best of many
timeit repeats, ns per call.

    PYTHONPATH=. .venv/bin/python -m bench.flowkey_micro [--against OTHER_TREE] [--rounds N]

``--against`` alternates this measurement between this tree and OTHER_TREE (a subprocess with
PYTHONPATH=OTHER_TREE) ``--rounds`` times, so the drift of a shared machine hits both alike; the minimum and
median of the rounds are printed per call.  Written to see what the flow key's growth from 24 to 35 header
slots (the IPv6 seam) costs the IPv4 path.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import timeit

NUMBER = 20_000
REPEAT = 7


def measure() -> dict[str, float]:
    from engine.datapath.flowcache import FlowCache
    from packet.codec import build, parse
    from packet.flowkey import flow_key, normalized_flow_hash
    from packet.packet import Packet

    out: dict[str, float] = {}

    def run(prefix: str, p: Packet, rewrite_set: tuple) -> None:
        f = build(p)
        pkt = parse(f)
        key = flow_key(pkt, "br0.vm1")
        emitted = []
        cache = FlowCache(lambda *a: emitted.append(a), 1 << 20)
        keys = [flow_key(pkt._replace(tp_src=1024 + i), "br0.vm1") for i in range(NUMBER)]
        state = {"i": 0}

        def install() -> None:
            i = state["i"]
            state["i"] = i + 1
            cache.install(keys[i % NUMBER], (("output", "br0.vm2"),), 0, 0.0, 0.0, 0.0, (), i + 1)

        exact = FlowCache(lambda *a: None, 1 << 20)
        flow = exact.install(key, (*rewrite_set, ("output", "br0.vm2")), 0, 0.0, 0.0, 0.0, (), 1)
        mega = FlowCache(lambda *a: None, 1 << 20)
        mega.install(key, (("output", "br0.vm2"),), 0, 0.0, 0.0, 0.0, (), 1,
                     (("in_port", -1), ("eth_src", -1), ("eth_dst", -1)))
        other = flow_key(pkt._replace(tp_src=999), "br0.vm1")       # a new 5-tuple the megaflow matches
        emc = FlowCache(lambda *a: None, 1 << 20)
        emc.install(key, (("output", "br0.vm2"),), 0, 0.0, 0.0, 0.0, (), 1,
                    (("in_port", -1), ("eth_src", -1), ("eth_dst", -1)))
        emc.lookup(other, 0.0)                                        # now in the EMC
        calls = {
            "flow_key": lambda: flow_key(pkt, "br0.vm1"),
            "flow_hash": lambda: normalized_flow_hash(pkt),
            "install": install,
            "lookup_exact": lambda: exact.lookup(key, 0.0),
            "lookup_megaflow": lambda: mega.emc.clear() or mega.lookup(other, 0.0),
            "lookup_emc": lambda: emc.lookup(other, 0.0),
            "execute_rewrite": lambda: exact.execute(flow.compiled, f, pkt),
        }
        for name, c in calls.items():
            state["i"] = 0
            t = min(timeit.repeat(c, number=NUMBER, repeat=REPEAT)) / NUMBER * 1e9
            out[f"{prefix}_{name}"] = t
        out[f"{prefix}_key_slots"] = len(key) - 1

    base = dict(eth_src=0x020000010001, eth_dst=0x020000010002, proto=6, tp_src=40000, tp_dst=80, tcp_flags=2,
                tcp_seq=1, tcp_ack=0, tcp_window=64240)
    run("ipv4", Packet(ip_src=0x0A01000B, ip_dst=0x0A01000C, ttl=64, tos=0, ip_id=1, **base),
        (("set", "ip_dst", 0x0A01000D), ("set", "ttl", 63)))
    if "ipv6_src" in Packet._fields and "ipv6_src" in __import__("packet.packet").packet.FLOW_KEY_FIELDS:
        run("ipv6", Packet(eth_type=0x86DD, ipv6_src=0x20010DB8 << 96 | 0x11, ipv6_dst=0x20010DB8 << 96 | 0x12,
                           hop_limit=64, tclass=0, flow_label=0, **base),
            (("set", "ipv6_dst", 0x20010DB8 << 96 | 0x13), ("set", "hop_limit", 63)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", help="another source tree to alternate with")
    ap.add_argument("--rounds", type=int, default=5)
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
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--once"], cwd=tree,
                                 env={**os.environ, "PYTHONPATH": tree}, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout))
    for name, rs in runs.items():
        print(name, trees[name])
        for k in rs[0]:
            vals = sorted(r[k] for r in rs)
            print(f"  {k:22s} min {vals[0]:7.0f}   median {vals[len(vals) // 2]:7.0f}")


if __name__ == "__main__":
    main()
