"""ppo_edu vs Stable-Baselines3 PPO on CartPole-v1 with the RL-Zoo tuned hyperparameters.

Both: 8 envs x 32 steps (batch 256, one minibatch), 20 epochs, gamma 0.98, lambda 0.8,
lr 1e-3 and clip 0.2 both decayed linearly, no entropy bonus, 64-64 tanh MLPs, one thread.
Runs alternate between the libraries, seed by seed. Every 5k env steps each agent is
evaluated greedily on 20 fresh episodes, outside the training clock. "Solved" = the
evaluation mean reaches 475 and stays >= 475 at every later evaluation up to the budget.

    python bench/cartpole.py [--seeds 5] [--budget 100000]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(__file__))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import EvalClock, raw_env_throughput, report  # noqa: E402

ENV, THRESHOLD = "CartPole-v1", 475.0


def run_ppo_edu(seed, budget, every, n_eval):
    from ppo_edu import PPO, preset

    agent = PPO(ENV, preset(ENV)[0], seed=seed)
    clock = EvalClock(lambda o: agent.predict(o)[0], ENV, every, n_eval, 1000 * seed)
    agent.learn(budget, callback=lambda a, row: clock.maybe_eval(a.num_timesteps))
    return {"points": clock.points, "train_seconds": time.perf_counter() - clock.start - clock.eval_time}


def run_sb3(seed, budget, every, n_eval):
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env(ENV, n_envs=8, seed=seed)
    linear = lambda v: (lambda progress: progress * v)  # noqa: E731
    model = SB3PPO("MlpPolicy", env, n_steps=32, batch_size=256, n_epochs=20, gamma=0.98, gae_lambda=0.8,
                   ent_coef=0.0, learning_rate=linear(1e-3), clip_range=linear(0.2), seed=seed, device="cpu")
    clock = EvalClock(lambda o: model.predict(o, deterministic=True)[0], ENV, every, n_eval, 1000 * seed)

    class Every(BaseCallback):
        def _on_rollout_end(self) -> None:
            clock.maybe_eval(self.num_timesteps)

        def _on_step(self) -> bool:
            return True

    clock.start = time.perf_counter()
    model.learn(budget, callback=Every())
    return {"points": clock.points, "train_seconds": time.perf_counter() - clock.start - clock.eval_time}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--budget", type=int, default=100_000)
    p.add_argument("--every", type=int, default=5_000)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--only", choices=["ppo_edu", "SB3"], default=None, help="run one library only")
    args = p.parse_args()
    torch.set_num_threads(1)
    runners = {"ppo_edu": run_ppo_edu, "SB3": run_sb3}
    if args.only:
        runners = {args.only: runners[args.only]}
    results = {lib: [] for lib in runners}
    for seed in range(args.seeds):
        for lib, fn in runners.items():  # alternate, so drift in machine load hits both
            r = fn(seed, args.budget, args.every, args.eval_episodes)
            results[lib].append(r)
            evals = " ".join(f"{m:.0f}" for _, _, m in r["points"])
            print(f"seed {seed} {lib:8s} train {r['train_seconds']:6.2f} s | evals every {args.every}: {evals}",
                  flush=True)
    report(results, THRESHOLD, args.budget)
    raw = raw_env_throughput(ENV, 8)
    for lib, runs in results.items():
        sps = np.median([args.budget / r["train_seconds"] for r in runs])
        print(f"{lib}: {sps:,.0f} env steps/s while training = {sps / raw:.1%} of the vectorised env alone "
              f"({raw:,.0f} steps/s, 8 envs, random actions)")


if __name__ == "__main__":
    main()
