"""Figures for the RLHF chapters: reward, gold score and KL over training.

Two kinds of number meet in one run and can disagree. The lines are *per-batch* values: the
samples a trainer drew for that iteration (64 for PPO on cpu-tiny, 16 for GRPO), so they are
noisy, and they are drawn with a running mean. ``summary.json`` instead scores *fresh samples*
drawn after training (``eval_samples`` of them, the same prompts for the reference): the
markers at the right end. The dashed line is the reference policy (before RLHF) on fresh samples.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_rlhf_run", "running_mean"]

PANELS = (("score", "rm", "reward-model score", "score (std units of the reference's scores)"),
          ("gold", "gold", "gold score (simulated human rater)", "VADER compound, -1 to 1"),
          ("kl", "kl", "KL to the reference", "nats per sample"))


def running_mean(y, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    c = np.cumsum(np.insert(np.asarray(y, float), 0, 0.0))
    i = np.arange(1, len(y) + 1)
    return (c[i] - c[np.maximum(i - window, 0)]) / np.minimum(i, window)


def plot_rlhf_run(histories: dict[str, list[dict]], path: str | Path | None = None, title: str | None = None,
                  summary: dict | None = None):
    """Reward-model score, gold score and KL per iteration for each trainer; with ``summary``
    (``run_pipeline``'s) also the reference's scores and the fresh-sample results after
    training, and a title naming the preset and seed. Saved to ``path`` if given."""
    import matplotlib.pyplot as plt

    summary = summary or {}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, s_key, panel, ylabel) in zip(axes, PANELS):
        for name, hist in histories.items():
            rows = [h for h in hist if key in h]
            x, y = [h["iteration"] for h in rows], [h[key] for h in rows]
            raw, = ax.plot(x, y, alpha=0.25, lw=0.8)
            ax.plot(x, running_mean(y, max(1, len(y) // 10)), color=raw.get_color(),
                    label=f"{name.upper()}, per batch (running mean)")
            if name in summary and x:
                ax.plot([x[-1]], [summary[name][s_key]], "o", color=raw.get_color(), ms=7,
                        label=f"{name.upper()}, fresh samples after training")
        before = summary.get("before", {}).get(s_key, 0.0 if key == "kl" else None)
        if before is not None and summary:
            ax.axhline(before, color="0.4", ls="--", lw=1, label="reference (before RLHF)")
        ax.set(title=panel, xlabel="iteration (PPO) / step (GRPO)", ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title or _title(summary))
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=80)
        plt.close(fig)
    return fig


def _title(summary: dict) -> str:
    if "preset" not in summary:
        return "RLHF: per-batch values during training"
    n = summary.get("eval_samples")
    fresh = f"{n} fresh samples" if n else "fresh samples"
    return (f"RLHF, preset {summary['preset']}, seed {summary['seed']}: lines are per-batch values "
            f"(noisy), dots score {fresh} after training (summary.json)")
