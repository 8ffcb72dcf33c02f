"""Plots of replay results (matplotlib is an optional extra: `pip install cxlsim[plot]`).

Every function returns notes for the user; without matplotlib it returns one note and draws
nothing. Nothing here computes results: it draws what replay.py measured.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

MISSING = "plots skipped: matplotlib is not installed (pip install 'cxlsim[plot]')"



def _save(fig, ax, path) -> str:
    """Finish a figure the same way everywhere (grid, tight layout, 120 dpi) and close it."""
    import matplotlib.pyplot as plt
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name

def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def _cdf(ax, values, label):
    v = np.sort(values[~np.isnan(values)]) / 1e3
    if len(v):
        ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=label)


def replay_plots(result, out: Path) -> list[str]:
    plt = _pyplot()
    if plt is None:
        return [MISSING]
    made = []
    fig, ax = plt.subplots(figsize=(6, 4))
    _cdf(ax, result.table["ttft_ms"], result.summary["config"]["policy"])
    ax.set_xscale("log")
    ax.set(xlabel="TTFT (s)", ylabel="fraction of requests", title="TTFT CDF")
    made.append(_save(fig, ax, out / "ttft_cdf.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for h, occ in enumerate(result.occupancy):
        if not occ:
            continue
        arr = np.array(occ, dtype=np.float64)
        # a host samples its own tiers; a multi-host run's shared pool is not among them
        for i, name in enumerate(result.tier_names[: arr.shape[1] - 1]):
            label = name if len(result.occupancy) == 1 else f"host{h} {name}"
            ax.step(arr[:, 0] / 1e9, arr[:, i + 1] / 2**30, where="post", label=label)
    ax.set(xlabel="time (s)", ylabel="KV bytes held (GiB)", title="Tier occupancy")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    made.append(_save(fig, ax, out / "tier_occupancy.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    span = result.summary["makespan_s"]
    bins = max(1, min(200, int(span)))
    edges = np.linspace(0, span, bins + 1)
    bw = _link_bandwidths(result)
    for res, (t, b) in sorted(result.transfers.items()):
        if not len(t) or res not in bw:
            continue
        per_bin, _ = np.histogram(t / 1e9, bins=edges, weights=b)
        width = edges[1] - edges[0]
        ax.plot(edges[:-1], per_bin / (bw[res] * 1e9 * width), label=res.removeprefix("link "))
    ax.set(xlabel="time (s)", ylabel="utilisation (bytes started / capacity)",
           title="KV link utilisation")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no KV transfers", ha="center", transform=ax.transAxes)
    made.append(_save(fig, ax, out / "link_utilization.png"))
    return [f"plots: {', '.join(made)}"]


def _link_bandwidths(result) -> dict:
    """GB/s of each link resource, from the replay's topology (bytes_moved names)."""
    return result.link_gbps


def compare_plot(results, labels, out: Path) -> list[str]:
    plt = _pyplot()
    if plt is None:
        return [MISSING]
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for res, label in zip(results, labels):
        _cdf(ax, res.table["ttft_ms"], label)
    ax.set_xscale("log")
    ax.set(xlabel="TTFT (s)", ylabel="fraction of requests", title="TTFT CDF by run")
    ax.legend(fontsize=8)
    _save(fig, ax, out / "compare_ttft_cdf.png")
    return [f"plot: {out / 'compare_ttft_cdf.png'}"]
