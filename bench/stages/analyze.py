import collections
import glob
import sys

ev = collections.defaultdict(dict)
wfl = {}
wakes = {}
for f in glob.glob((sys.argv[1] if len(sys.argv) > 1 else "/tmp/exp/lat") + "/*"):
    pid = f.rsplit("/", 1)[1]
    rows = [l.split() for l in open(f)]
    flushes = [int(t) for tag, s, t in rows if tag == "wflush"]
    wk = [int(t) for tag, s, t in rows if tag in ("wwake", "dpoll")]
    for tag, s, t in rows:
        s, t = int(s), int(t)
        if tag in ("wflush", "wwake", "dpoll"):
            continue
        if tag == "dq":
            continue
        ev[s][tag] = t
        if tag == "wans":
            import bisect

            i = bisect.bisect_left(flushes, t)
            ev[s]["wflush"] = flushes[i] if i < len(flushes) else None
            j = bisect.bisect_right(wk, ev[s]["wrecv"]) - 1
            ev[s]["wwake"] = wk[j]
# dq lines: "dq <sent_ns> <t>" recorded before answered; map via order: dans then dq
for f in glob.glob((sys.argv[1] if len(sys.argv) > 1 else "/tmp/exp/lat") + "/*"):
    rows = [l.split() for l in open(f)]
    for a, b in zip(rows, rows[1:], strict=False):
        if a[0] == "dans" and b[0] == "dq":
            ev[int(a[1])]["dq"] = int(b[1])
seqs = sorted(
    s
    for s, e in ev.items()
    if all(k in e and e[k] for k in ("dq", "dsent", "wrecv", "wans", "wflush", "dans", "dexec"))
)
# isolated setups: no other dq within 2 ms
dqs = [ev[s]["dq"] for s in seqs]
iso = [
    s
    for i, s in enumerate(seqs)
    if (i == 0 or dqs[i] - dqs[i - 1] > 2e6) and (i == len(seqs) - 1 or dqs[i + 1] - dqs[i] > 2e6)
]
print(len(seqs), "setups", len(iso), "isolated")
stages = [
    ("dq", "dsent"),
    ("dsent", "wwake"),
    ("wwake", "wrecv"),
    ("wrecv", "wans"),
    ("wans", "wflush"),
    ("wflush", "dans"),
    ("dans", "dexec"),
    ("dq", "dexec"),
]
for grp, ss in (("isolated", iso), ("all", seqs)):
    print(grp)
    for a, b in stages:
        v = sorted((ev[s][b] - ev[s][a]) / 1000 for s in ss)
        print(f"  {a:>6}->{b:<6} p50 {v[len(v) // 2]:8.1f}  p90 {v[int(len(v) * 0.9)]:8.1f}")
