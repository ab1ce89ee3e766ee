"""Plots of bench results (matplotlib, Agg backend: no display needed).

``plot_results(results, path)``: panel 1 is the setup-latency CDF of every run (log-x, µs) with the floors
marked (ZMQ round trip p50, simulation p50, their sum, the p50 target 1.5 × sum, the 2 ms p99 target); when
there are several runs (a --workers sweep) panel 2 is setups/s against workers.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _cdf(ax, samples, label, **kw) -> None:
    a = np.sort(np.asarray(samples, dtype=float))
    if a.size == 0:
        return
    ax.plot(a, np.arange(1, a.size + 1) / a.size, label=label, **kw)


def plot_results(results: list[dict], path: str) -> None:
    sweep = len(results) > 1
    fig, axes = plt.subplots(1, 2 if sweep else 1, figsize=(13 if sweep else 8, 5), squeeze=False)
    ax = axes[0][0]
    for r in results:
        _cdf(ax, r.get("_samples_us", []), f"{r['scenario']} w={r['workers']}: {r['setups_per_s']:,.0f} setups/s")
    first = results[0]
    _cdf(ax, first.get("_unloaded_us", []), "unloaded probe (1 flow/ms)", linestyle=":", color="k")
    f = first["floor"]
    rtt, sim = f["zmq_rtt_us_p50"], f["simulation_us_p50"]
    marks = [(rtt, "ZMQ RTT p50", "tab:gray", "--"), (sim, "simulation p50", "tab:olive", "--"),
             (rtt + sim, "RTT + simulation", "tab:brown", "-."), (1.5 * (rtt + sim), "p50 target", "tab:red", ":"),
             (2000.0, "p99 target 2 ms", "tab:purple", ":")]
    for x, label, color, style in marks:
        if x > 0:
            ax.axvline(x, color=color, linestyle=style, linewidth=1, label=f"{label} ({x:,.0f} µs)")
    ax.set_xscale("log")
    ax.set_xlabel("flow setup latency (µs, upcall emitted → flow installed)")
    ax.set_ylabel("fraction of upcalls")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"shardnet bench — {first['scenario']}, {first['flows']:,} flows")
    if sweep:
        ax2 = axes[0][1]
        ws = [r["workers"] for r in results]
        ax2.plot(ws, [r["setups_per_s"] for r in results], marker="o", label="setups/s")
        ceil = [r.get("cpu", {}).get("dispatcher_ceiling_setups_per_s") for r in results]
        if any(ceil):
            ax2.plot(ws, [c or np.nan for c in ceil], marker="x", linestyle="--",
                     label="dispatcher ceiling (1 / its CPU per upcall)")
        ax2.set_xlabel("workers")
        ax2.set_ylabel("flow setups per second")
        ax2.set_xticks(ws)
        ax2.set_ylim(bottom=0)
        ax2.grid(True, alpha=0.3)
        ax2.legend(fontsize=8)
        ax2.set_title("setups/s against workers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
