"""The plot of ``shardnet bench --datapath real`` (matplotlib, Agg backend: no display needed).

``plot_real(res, path)``: panel 1 is loss against offered rate (every step of every system, the searched
ones included); panel 2 the wire-to-wire latency CDFs, first packet (solid) and cached (dashed) of each
system, with the floors marked (ZMQ round trip p50 at the probe spacing, AF_PACKET echo p50); panel 3 the
TCP connect CDFs.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _cdf(ax, samples, label, **kw) -> None:
    a = np.sort(np.asarray(samples, dtype=float))
    if a.size:
        ax.plot(a, np.arange(1, a.size + 1) / a.size, label=label, **kw)


def plot_real(res: dict, path: str) -> None:
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(18, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, s) in enumerate(res["systems"].items()):
        c = colors[i % len(colors)]
        steps = sorted(s["rates"], key=lambda st: st["rate"])
        ax1.plot([st["offered_pps"] for st in steps], [100 * st["loss"] for st in steps], "o-", color=c,
                 label=f"{name} (sustained {'≥' if s['sustained']['at_least'] else ''}{s['sustained']['rate']:,}/s)")
        lat = s["latency"]
        _cdf(ax2, lat.get("_first_us", []), f"{name} first", color=c)
        _cdf(ax2, lat.get("_cached_us", []), f"{name} cached", color=c, linestyle="--")
        _cdf(ax3, s["tcp_connect"].get("_samples_us", []), name, color=c)
    ax1.set_xlabel("offered new 5-tuples/s")
    ax1.set_ylabel("loss %")
    ax1.set_title(f"{res['pipeline']}: loss vs offered rate")
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=8)
    fl = res.get("floors") or {}
    if fl:
        ax2.axvline(fl["zmq_rtt_us"]["p50"], color="grey", linestyle=":", label="ZMQ rtt p50 (floor)")
        if fl["afpacket_echo_us"]["p50"]:
            ax2.axvline(fl["afpacket_echo_us"]["p50"], color="black", linestyle=":", label="AF_PACKET echo p50")
    for ax, title in ((ax2, "wire to wire, first packet vs cached"), (ax3, "TCP connect")):
        ax.set_xscale("log")
        ax.set_xlabel("µs")
        ax.set_ylabel("fraction")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
