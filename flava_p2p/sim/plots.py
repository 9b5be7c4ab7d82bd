"""PNG plots of simulation results (matplotlib, headless Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def plot_accuracy(runs: Sequence[tuple[str, list[dict[str, Any]]]], path: Path) -> Path:
    """Honest mean (solid) and worst (dashed) held-out accuracy over virtual time, per run."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, records in runs:
        t = [r["t"] for r in records if r.get("honest_mean_acc") is not None]
        mean = [r["honest_mean_acc"] for r in records if r.get("honest_mean_acc") is not None]
        worst = [r["honest_worst_acc"] for r in records if r.get("honest_mean_acc") is not None]
        (line,) = ax.plot(t, mean, label=f"{label} (mean)")
        ax.plot(t, worst, linestyle="--", color=line.get_color(), alpha=0.7)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("held-out accuracy (honest nodes)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="solid: mean, dashed: worst", title_fontsize=8)
    return _save(fig, path)


def plot_arrival(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Continuous learning: accuracy over time (top) against the clips that have arrived and
    the clips whose privacy budget is spent (bottom), plus the worst clip's ε."""
    rows = [r for r in records if r.get("data") and r.get("honest_mean_acc") is not None]
    t = [r["t"] for r in rows]
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax.plot(t, [r["honest_mean_acc"] for r in rows], label="honest mean")
    ax.plot(t, [r["honest_worst_acc"] for r in rows], "--", label="honest worst")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    bx.plot(t, [r["data"]["clips_present"] for r in rows], label="clips arrived")
    bx.plot(t, [r["data"]["clips_retired"] for r in rows], label="clips retired (budget spent)")
    bx.set_ylabel("clips (all nodes)")
    bx.set_xlabel("virtual time (s)")
    bx.grid(alpha=0.3)
    eps = [r.get("epsilon_max") for r in rows]
    if any(e is not None for e in eps):
        ex = bx.twinx()
        ex.plot(t, [e or 0.0 for e in eps], color="tab:red", alpha=0.6, label="worst clip ε")
        ex.set_ylabel("worst clip ε", color="tab:red")
        ex.set_ylim(bottom=0)
    bx.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def plot_privacy(points: Sequence[tuple[float | None, float, float]], path: Path) -> Path:
    """Final honest accuracy (mean and worst) against the example-level ε target (∞ = no DP)."""
    finite = sorted((e, m, w) for e, m, w in points if e is not None)
    inf = [(m, w) for e, m, w in points if e is None]
    fig, ax = plt.subplots(figsize=(6, 4))
    if finite:
        ax.plot([p[0] for p in finite], [p[1] for p in finite], "o-", label="mean")
        ax.plot([p[0] for p in finite], [p[2] for p in finite], "s--", label="worst")
    for m, w in inf:
        ax.axhline(m, color="grey", linestyle=":", label=f"no DP (mean {m:.2f})")
        ax.axhline(w, color="grey", linestyle="-.", alpha=0.5, label=f"no DP (worst {w:.2f})")
    ax.set_xscale("log")
    if finite:  # tick exactly at the ε values swept, in plain numbers
        ax.set_xticks([p[0] for p in finite], [f"{p[0]:g}" for p in finite])
        ax.minorticks_off()
    ax.set_xlabel("example-level ε (δ = 1e-5), log scale")
    return _save_accuracy_axes(fig, ax, path)


def plot_nodes(points: Sequence[tuple[int, float | None, float, float]], path: Path) -> Path:
    """Final honest accuracy (mean solid, worst dashed) against the number of nodes, one
    colour per example-level ε target (∞ = no DP)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    targets = sorted({e for _, e, _, _ in points}, key=lambda e: (e is None, e or 0.0))
    for k, eps in enumerate(targets):
        pts = sorted((n, m, w) for n, e, m, w in points if e == eps)
        label = "no DP" if eps is None else f"ε = {eps:g}"
        colour = f"C{k}"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=colour, label=f"{label} mean")
        ax.plot([p[0] for p in pts], [p[2] for p in pts], "s--", color=colour, alpha=0.6,
                label=f"{label} worst")  # fmt: skip
    ns = sorted({n for n, _, _, _ in points})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("nodes (same clips per node)")
    return _save_accuracy_axes(fig, ax, path)


def _save_accuracy_axes(fig: Figure, ax: Axes, path: Path) -> Path:
    """Finish an accuracy-against-x figure (y in [0, 1], grid, legend) and write it."""
    ax.set_ylabel("final held-out accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    """Lay out, write at 120 dpi and release the figure (pyplot keeps figures until closed)."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_heatmap(
    rows: Sequence[str], cols: Sequence[str], values: dict[tuple[str, str], float], path: Path
) -> Path:
    """Attack (rows) × defence (columns) heatmap of worst honest accuracy."""
    import numpy as np

    grid = np.array([[values.get((r, c), np.nan) for c in cols] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(1.3 * len(cols) + 2, 0.6 * len(rows) + 1.8))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for (r, c), v in np.ndenumerate(grid):
        if not np.isnan(v):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k")
    ax.set_xlabel("defence (merging rule; screens on unless marked)")
    ax.set_ylabel("attack")
    fig.colorbar(im, ax=ax, label="worst honest accuracy")
    return _save(fig, path)
