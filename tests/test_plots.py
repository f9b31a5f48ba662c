"""The run figures: learning_curve.png gives approx KL its own axis; rlhf.png names the preset
and seed, titles its panels, shows the reference's score and the fresh-sample results."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ppo_edu.plotting import diagnostics_axes, save_run_plot  # noqa: E402
from ppo_edu.rlhf.plots import plot_rlhf_run, running_mean  # noqa: E402

ROWS = [{"env_steps": 256 * (i + 1), "episodic_return": 10.0 + i, "approx_kl": 0.004 + 0.001 * i,
         "clip_fraction": 0.1 + 0.02 * i} for i in range(6)]


def test_approx_kl_has_its_own_axis_scaled_to_it():
    fig, ax = plt.subplots()
    kl_ax = diagnostics_axes(ax, [r["env_steps"] for r in ROWS], ROWS)
    (kl_line,) = kl_ax.get_lines()
    np.testing.assert_allclose(kl_line.get_ydata(), [r["approx_kl"] for r in ROWS])
    assert [line.get_label() for line in ax.get_lines()] == ["clip fraction (left)"]
    lo, hi = kl_ax.get_ylim()
    assert hi < 0.02 and hi - lo < 0.02            # KL spans its axis instead of lying flat at 0
    assert "KL" in kl_ax.get_ylabel() and "clip" in ax.get_ylabel()
    plt.close(fig)


def test_save_run_plot_writes_a_png(tmp_path):
    save_run_plot(ROWS, tmp_path / "c.png", "PPO on CartPole-v1, seed 0")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def _hist(final, n=20, key_scale=1.0):
    return [{"iteration": i, "score": key_scale * i / n, "gold": final * i / n, "kl": 0.1 * i} for i in range(n)]


SUMMARY = {"preset": "micro", "seed": 3, "eval_samples": 32, "before": {"gold": 0.1, "rm": 0.0, "ended": 0.9},
           "ppo": {"gold": 0.5, "rm": 1.0, "kl": 2.0}, "grpo": {"gold": 0.28, "rm": 0.6, "kl": 1.5}}


def test_rlhf_figure_names_preset_seed_panels_baseline_and_fresh_samples():
    fig = plot_rlhf_run({"ppo": _hist(0.4), "grpo": _hist(-0.19)}, summary=SUMMARY)
    assert "micro" in fig._suptitle.get_text() and "seed 3" in fig._suptitle.get_text()
    assert "32 fresh samples" in fig._suptitle.get_text()
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["reward-model score", "gold score (simulated human rater)", "KL to the reference"]
    gold_ax = fig.axes[1]
    labels = {line.get_label(): line for line in gold_ax.get_lines()}
    assert labels["reference (before RLHF)"].get_ydata()[0] == pytest.approx(0.1)
    fresh = labels["GRPO, fresh samples after training"]
    assert fresh.get_ydata()[0] == pytest.approx(0.28) and fresh.get_xdata()[0] == 19
    assert "GRPO, per batch (running mean)" in labels
    plt.close(fig)


def test_rlhf_figure_without_a_summary_keeps_the_old_call_working(tmp_path):
    plot_rlhf_run({"PPO": _hist(0.4)}, tmp_path / "r.png", title="PPO-RLHF on cpu-tiny")
    assert (tmp_path / "r.png").stat().st_size > 5000


def test_running_mean_by_hand():
    np.testing.assert_allclose(running_mean([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(running_mean([5], 3), [5])
