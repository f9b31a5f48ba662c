"""Run under torchrun by tests/test_distributed.py (not collected by pytest itself)."""
import sys
from pathlib import Path

import numpy as np
import torch

from ppo_edu import PPO, PPOConfig, distributed
from ppo_edu.rollout import RolloutBuffer

CFG = PPOConfig(n_envs=4, n_steps=16, n_epochs=2, n_minibatches=1)


def synthetic_buffer(agent, n_envs, seed=0):
    """A fixed rollout of T x n_envs CartPole-shaped data, the same on every rank."""
    rng = np.random.default_rng(seed)
    T = CFG.n_steps
    buf = RolloutBuffer.empty(T, n_envs, 4, (), np.int64)
    buf.obs[:] = rng.standard_normal(buf.obs.shape).astype(np.float32)
    buf.actions[:] = rng.integers(0, 2, buf.actions.shape)
    with torch.no_grad():
        logp, _, _ = agent.model.evaluate(torch.from_numpy(buf.obs.reshape(-1, 4)), torch.from_numpy(buf.actions.reshape(-1)))
    buf.logp[:] = (logp.numpy().reshape(T, n_envs) + rng.normal(0, 0.05, (T, n_envs))).astype(np.float32)
    buf.values[:] = rng.standard_normal((T, n_envs)).astype(np.float32)
    adv = rng.standard_normal((T, n_envs)).astype(np.float32)
    return buf, adv, (adv + buf.values).astype(np.float32)


def split(buf, adv, ret, rank, n):
    cols = slice(rank * n, (rank + 1) * n)
    part = RolloutBuffer(*(getattr(buf, f)[:, cols] for f in buf.__dataclass_fields__))
    return part, adv[:, cols], ret[:, cols]


def main(mode, out):
    out = Path(out)
    if mode == "fail":
        from ppo_edu.train import run

        def fail(agent, row):
            if agent.dist.rank == 1 and agent.n_updates == 4:
                raise RuntimeError("injected failure on rank 1")

        sys.exit(run(["CartPole-v1", "--timesteps", "40960", "--out", str(out), "--save-every", "2",
                      "--no-progress", "--n-envs", "4", "--n-steps", "32", "--n-epochs", "1"], extra_callback=fail))
    d = distributed.init()
    if mode == "rlhf":
        rlhf(out, d)
        return
    if mode == "train":
        agent = PPO("CartPole-v1", CFG, seed=0).learn(2048)
    elif mode == "update":
        agent = PPO("CartPole-v1", CFG.replace(backend=sys.argv[3]), seed=0)
        buf, adv, ret = synthetic_buffer(agent, CFG.n_envs * d.world_size)
        agent.update(*split(buf, adv, ret, d.rank, CFG.n_envs), lr=1e-3, clip_eps=0.2)
    np.save(out / f"params_rank{d.rank}.npy", agent.flat.data)
    distributed.shutdown()


def rlhf(out, d):
    """PPO-RLHF then GRPO on the micro assets (rank 0 builds them in ``out/cache``)."""
    import copy

    from ppo_edu.rlhf.grpo import GRPO
    from ppo_edu.rlhf.pipeline import PRESETS, RewardModelScorer, load_assets
    from ppo_edu.rlhf.ppo import PPORLHF

    torch.set_num_threads(1)
    a = load_assets("micro", 0, "rm", progress_bar=False, device="cpu", cache_dir=out / "cache")
    policy = copy.deepcopy(a.policy)
    ppo = PPORLHF(policy, a.tok, a.prompts, RewardModelScorer(a.reward_model), PRESETS["micro"].ppo, ref=a.policy)
    ppo.train(2, progress_bar=False)
    first_batch = ppo.last_samples.response.numpy()
    GRPO(policy, a.tok, a.prompts, RewardModelScorer(a.reward_model), PRESETS["micro"].grpo,
         ref=a.policy).train(2, progress_bar=False)
    flat = torch.cat([p.detach().reshape(-1) for p in ppo.model.parameters()]).numpy()
    np.save(out / f"params_rank{d.rank}.npy", flat)
    np.save(out / f"responses_rank{d.rank}.npy", first_batch)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
