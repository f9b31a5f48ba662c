"""The RLHF trainers write their metrics rows to TensorBoard when asked (micro preset, seconds)."""
import copy

import pytest

from ppo_edu.rlhf import pipeline
from ppo_edu.rlhf.grpo import GRPO
from ppo_edu.rlhf.ppo import PPORLHF

tb = pytest.importorskip("tensorboard")


def _scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_rlhf_trainers_log_every_row_to_tensorboard(tmp_path):
    a = pipeline.load_assets("micro", 0, "rm", progress_bar=False, device="cpu", cache_dir=tmp_path / "cache")
    scorer = pipeline.RewardModelScorer(a.reward_model)
    preset = pipeline.PRESETS["micro"]
    cases = ((PPORLHF, preset.ppo, "PPO_RLHF_1", "ppo_rlhf"), (GRPO, preset.grpo, "GRPO_1", "grpo"))
    for cls, cfg, folder, group in cases:
        trainer = cls(copy.deepcopy(a.policy), a.tok, a.prompts, scorer, cfg, ref=a.policy)
        hist = trainer.train(2, progress_bar=False, tensorboard_log=tmp_path / "tb")
        scalars = _scalars(tmp_path / "tb" / folder)
        assert [s for s, _ in scalars[f"{group}/kl"]] == [0, 1]
        assert [v for _, v in scalars[f"{group}/score"]] == pytest.approx([h["score"] for h in hist], rel=1e-6)
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["GRPO_1", "PPO_RLHF_1"]
