"""Figures for the RLHF chapters: reward, gold score and KL over training."""
from __future__ import annotations

from pathlib import Path

__all__ = ["plot_rlhf_run"]


def plot_rlhf_run(histories: dict[str, list[dict]], path: str | Path | None = None, title: str = "RLHF"):
    """Reward-model score, gold (VADER) score and KL per iteration for each trainer; saved if ``path``."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    panels = (("score", "reward-model score (std units)"), ("gold", "gold score (VADER compound)"),
              ("kl", "KL to reference (nats / sample)"))
    for ax, (key, label) in zip(axes, panels):
        for name, hist in histories.items():
            rows = [h for h in hist if key in h]
            ax.plot([h["iteration"] for h in rows], [h[key] for h in rows], label=name.upper())
        ax.set_xlabel("iteration")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=80)
        plt.close(fig)
    return fig
