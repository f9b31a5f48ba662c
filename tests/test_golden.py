"""The refactor safety net: for a fixed seed, the exact trained weights (and per-update
statistics) of short CartPole and Pendulum runs with each engine, and of two PPO-RLHF and two
GRPO steps on the micro preset.

A refactor that moves code must keep every digest here bit-identical. A change that is meant
to change the numbers regenerates them (``python tests/test_golden.py`` prints the current
values) and says why in its commit message. The digests are of float32/float64 bytes on this
platform's torch and NumPy: a different BLAS or CPU can change the last bits, so a mismatch on a
new machine is first checked by regenerating on the old code there.
"""
from __future__ import annotations

import copy
import hashlib
import math

import numpy as np
import pytest
import torch

from ppo_edu.ppo import PPO, PPOConfig

# ---------------------------------------------------------------- the runs
# short, but every phase runs: several updates, several epochs and minibatches, lr annealing,
# value clipping, KL early stop (never triggered at this threshold), shared and separate networks
CONTROL_RUNS = {
    "cartpole": ("CartPole-v1", dict(n_envs=2, n_steps=32, n_epochs=2, n_minibatches=2, vf_clip=0.2,
                                     ent_coef=0.01, target_kl=10.0), 192),
    "pendulum": ("Pendulum-v1", dict(n_envs=2, n_steps=32, n_epochs=2, n_minibatches=2, norm_obs=True,
                                     norm_reward=True, shared_network=True, ent_coef=0.01), 192),
}
TIME_KEYS = ("wall_time", "time_generate", "time_score", "time_update", "time_iter")


def digest(arrays) -> str:
    """sha256 of the concatenated bytes of ``arrays`` (tensors or NumPy arrays), in order."""
    h = hashlib.sha256()
    for a in arrays:
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def stats_digest(history: list[dict]) -> str:
    """sha256 of every number in the statistics rows, timings left out."""
    vals = [float(v) for row in history for k, v in sorted(row.items())
            if k not in TIME_KEYS and isinstance(v, (int, float, bool))]
    return digest([np.array([v if math.isfinite(v) else 0.0 for v in vals], np.float64)])


def control_run(name: str, backend: str) -> dict:
    env_id, cfg, steps = CONTROL_RUNS[name]
    agent = PPO(env_id, PPOConfig(backend=backend, **cfg), seed=3).learn(steps)
    return {"weights": digest(agent.model.state_dict().values()), "stats": stats_digest(agent.history)}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from ppo_edu.rlhf import pipeline

    return pipeline.load_assets("micro", 0, "rm", progress_bar=False, device="cpu",
                                cache_dir=tmp_path_factory.mktemp("golden-cache"))


def rlhf_run(assets, algo: str) -> dict:
    from ppo_edu.rlhf import pipeline
    from ppo_edu.rlhf.grpo import GRPO
    from ppo_edu.rlhf.ppo import PPORLHF

    p = pipeline.PRESETS["micro"]
    scorer = pipeline.RewardModelScorer(assets.reward_model)
    if algo == "ppo":
        cls, cfg = PPORLHF, p.ppo.replace(adaptive_kl=True, kl_horizon=100)
    elif algo == "ppo-separate":
        cls, cfg = PPORLHF, p.ppo.replace(critic="separate")
    else:
        cls, cfg = GRPO, p.grpo.replace(n_minibatches=2)
    torch.manual_seed(0)
    t = cls(copy.deepcopy(assets.policy), assets.tok, assets.prompts, scorer, cfg, ref=assets.policy, seed=0)
    history = t.train(2, progress_bar=False)
    params = [t.model.state_dict()[k] for k in sorted(t.model.state_dict())]
    if getattr(t, "critic", None) is not None:
        params += [t.critic.state_dict()[k] for k in sorted(t.critic.state_dict())]
    return {"weights": digest(params), "stats": stats_digest(history)}


# ---------------------------------------------------------------- the pinned values
EXPECTED = {
    'cartpole-numpy': {'weights': 'fad2004ea93bb06c', 'stats': '2c6af203d7e6b7c2'},
    'cartpole-torch': {'weights': '4ddfe015e4c28135', 'stats': 'f45cae430cd023fc'},
    'pendulum-numpy': {'weights': '4ab0e6523c52d07e', 'stats': '25f4de7119ab3230'},
    'pendulum-torch': {'weights': '2c9003c3731f159c', 'stats': '4a591bb8c89b3691'},
    'rlhf-ppo': {'weights': '9b7351f956679a52', 'stats': '1860863059c00d51'},
    'rlhf-ppo-separate': {'weights': 'bd1ad545005256d6', 'stats': '16b54d75434b175f'},
    'rlhf-grpo': {'weights': '1ee8b3dce18c9ae3', 'stats': 'e847b2e0008e97f5'},
}


@pytest.mark.parametrize("name", sorted(CONTROL_RUNS))
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_control_runs_are_bit_identical(name, backend):
    torch.set_num_threads(1)
    assert control_run(name, backend) == EXPECTED[f"{name}-{backend}"]


@pytest.mark.parametrize("algo", ["ppo", "ppo-separate", "grpo"])
def test_rlhf_steps_are_bit_identical(assets, algo):
    torch.set_num_threads(1)
    assert rlhf_run(assets, algo) == EXPECTED[f"rlhf-{algo}"]


if __name__ == "__main__":   # print the current values, to paste into EXPECTED
    import tempfile

    from ppo_edu.rlhf import pipeline

    torch.set_num_threads(1)
    out = {f"{n}-{b}": control_run(n, b) for n in sorted(CONTROL_RUNS) for b in ("numpy", "torch")}
    a = pipeline.load_assets("micro", 0, "rm", progress_bar=False, device="cpu", cache_dir=tempfile.mkdtemp())
    out.update({f"rlhf-{algo}": rlhf_run(a, algo) for algo in ("ppo", "ppo-separate", "grpo")})
    for k, v in out.items():
        print(f"    {k!r}: {v!r},")
