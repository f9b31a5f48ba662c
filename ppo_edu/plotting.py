"""Learning curves: mean over seeds with a shaded band (Chapters 5 and 6).

Different seeds log at different env steps, so each run is interpolated onto one common
grid before averaging. Figures have a title, labelled axes with units, and a legend.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["curve_band", "plot_learning_curves", "save_run_plot", "diagnostics_axes"]


def curve_band(runs: Sequence[Sequence[dict]], x: str = "env_steps", y: str = "episodic_return",
               n_points: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(grid, mean, std)`` of ``y`` over runs, each a list of metric rows, on a common ``x`` grid.

    The grid spans the range that *every* run covers, so no run is extrapolated.
    """
    series = []
    for rows in runs:
        xs = np.array([r[x] for r in rows], float)
        ys = np.array([r[y] for r in rows], float)
        keep = np.isfinite(ys)
        if keep.sum() < 1:
            raise ValueError(f"a run has no finite {y!r} values to plot")
        series.append((xs[keep], ys[keep]))
    lo = max(s[0][0] for s in series)
    hi = min(s[0][-1] for s in series)
    grid = np.linspace(lo, hi, n_points) if hi > lo else np.array([lo])
    stack = np.stack([np.interp(grid, xs, ys) for xs, ys in series])
    return grid, stack.mean(0), stack.std(0)


def plot_learning_curves(curves: Mapping[str, Sequence[Sequence[dict]]], x: str = "env_steps",
                         y: str = "episodic_return", ax=None, title: str | None = None,
                         ylabel: str = "episodic return (undiscounted)"):
    """One line per label: the mean over its runs, with a +-1 std band; returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6), dpi=80)
    for label, runs in curves.items():
        grid, mean, std = curve_band(runs, x, y)
        line, = ax.plot(grid, mean, label=f"{label} (n={len(runs)})")
        ax.fill_between(grid, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("environment steps" if x == "env_steps" else x)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{y} vs {x} (mean ± 1 std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return ax


def save_run_plot(rows: Sequence[dict], path, title: str) -> None:
    """The learning curve of one run to a PNG: episodic return; approx KL and clip fraction
    each on its own y-axis (KL is ~0.01 where the clip fraction is ~0.1)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.5, 3.4), dpi=80)
    steps = [r["env_steps"] for r in rows]
    ax1.plot(steps, [r["episodic_return"] for r in rows], label="mean of last 20 episodes")
    ax1.set(xlabel="environment steps", ylabel="episodic return", title=title)
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    diagnostics_axes(ax2, steps, rows)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def diagnostics_axes(ax, steps, rows):
    """Clip fraction on ``ax`` (left axis) and approx KL on a twin axis (right); returns the twin."""
    kl_ax = ax.twinx()
    clip, = ax.plot(steps, [r["clip_fraction"] for r in rows], color="C1", label="clip fraction (left)")
    kl, = kl_ax.plot(steps, [r["approx_kl"] for r in rows], color="C2", label="approx KL, k3 (right)")
    ax.set(xlabel="environment steps", ylabel="clip fraction", title="update diagnostics")
    kl_ax.set_ylabel("approx KL (nats)")
    ax.yaxis.label.set_color(clip.get_color())
    kl_ax.yaxis.label.set_color(kl.get_color())
    ax.legend(handles=[clip, kl], fontsize=8)
    ax.grid(alpha=0.3)
    return kl_ax
