"""Shared machinery for the side-by-side benchmarks: one greedy evaluator for both
libraries, an eval-every-k-steps schedule whose time is excluded from training time,
the "solved and stays solved" rule, and the printed comparison."""
from __future__ import annotations

import statistics
import time

import numpy as np


def greedy_eval(predict, env_id: str, n_episodes: int, seed: int) -> float:
    """Mean undiscounted return of ``predict(obs_batch) -> actions`` over fresh episodes."""
    from ppo_edu.rollout import make_vec_env

    env = make_vec_env(env_id, n_episodes)
    obs, _ = env.reset(seed=seed)
    totals, finished = np.zeros(n_episodes), np.zeros(n_episodes, bool)
    while not finished.all():
        obs, r, term, trunc, _ = env.step(predict(obs))
        totals += np.where(finished, 0.0, r)
        finished |= term | trunc
    env.close()
    return float(totals.mean())


class EvalClock:
    """Evaluates every ``every`` env steps; accumulates evaluation time so it can be excluded."""

    def __init__(self, predict, env_id, every, n_episodes, seed):
        self.predict, self.env_id, self.every, self.n, self.seed = predict, env_id, every, n_episodes, seed
        self.next_at, self.eval_time, self.points = every, 0.0, []  # (steps, train_seconds, mean)
        self.start = time.perf_counter()

    def maybe_eval(self, steps: int) -> None:
        while steps >= self.next_at:
            t0 = time.perf_counter()
            train_seconds = t0 - self.start - self.eval_time
            mean = greedy_eval(self.predict, self.env_id, self.n, self.seed + len(self.points))
            self.points.append((steps, train_seconds, mean))
            self.eval_time += time.perf_counter() - t0
            self.next_at += self.every


def solved_at(points, threshold):
    """First eval point from which every later eval is >= threshold, or None."""
    for i in range(len(points)):
        if all(p[2] >= threshold for p in points[i:]):
            return points[i]
    return None


def report(results: dict, threshold: float, budget: int, peer: str = "SB3") -> None:
    """Print solve rate, median time and steps to solve, and the ratio peer / ppo_edu."""
    print(f"\n{'library':10s} {'solved':>8s} {'median s to solve':>18s} {'median steps to solve':>22s} "
          f"{'median train s (full budget)':>29s}")
    med_time = {}
    for lib, runs in results.items():
        hits = [solved_at(r["points"], threshold) for r in runs]
        ok = [h for h in hits if h is not None]
        t = statistics.median(h[1] for h in ok) if ok else float("nan")
        s = statistics.median(h[0] for h in ok) if ok else float("nan")
        full = statistics.median(r["train_seconds"] for r in runs)
        med_time[lib] = (t, full)
        print(f"{lib:10s} {len(ok):>4d}/{len(runs):<3d} {t:>18.2f} {s:>22.0f} {full:>29.2f}")
    if "ppo_edu" in med_time and peer in med_time:
        (a, fa), (b, fb) = med_time["ppo_edu"], med_time[peer]
        print(f"\nratio {peer} / ppo_edu, median wall time to solve: {b / a:.2f}x")
        print(f"ratio {peer} / ppo_edu, median training time for the whole {budget}-step budget: {fb / fa:.2f}x")


from ppo_edu.throughput import raw_env_throughput  # noqa: E402  (the ceiling: the vector env alone)


def run_ppo_edu(env_id, seed, budget, every, n_eval):
    """Train ppo_edu with the env's preset, evaluating on the side."""
    from ppo_edu import PPO, preset

    agent = PPO(env_id, preset(env_id)[0], seed=seed)
    clock = EvalClock(lambda o: agent.predict(o)[0], env_id, every, n_eval, 1000 * seed)
    agent.learn(budget, callback=lambda a, row: clock.maybe_eval(a.num_timesteps))
    return {"points": clock.points, "train_seconds": time.perf_counter() - clock.start - clock.eval_time}


def run_sb3(env_id, seed, budget, every, n_eval, n_envs, **ppo_kwargs):
    """Train Stable-Baselines3's PPO with the given hyperparameters, evaluating on the side."""
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    model = SB3PPO("MlpPolicy", env, seed=seed, device="cpu", **ppo_kwargs)
    clock = EvalClock(lambda o: model.predict(o, deterministic=True)[0], env_id, every, n_eval, 1000 * seed)

    class Every(BaseCallback):
        def _on_rollout_end(self) -> None:
            clock.maybe_eval(self.num_timesteps)

        def _on_step(self) -> bool:
            return True

    clock.start = time.perf_counter()
    model.learn(budget, callback=Every())
    return {"points": clock.points, "train_seconds": time.perf_counter() - clock.start - clock.eval_time}


def linear(v):
    """SB3's linear schedule: progress_remaining goes 1 -> 0."""
    return lambda progress: progress * v


def main(env_id, threshold, sb3_n_envs, sb3_kwargs, doc, budget, every, eval_episodes=20):
    import argparse

    import torch

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--budget", type=int, default=budget)
    p.add_argument("--every", type=int, default=every)
    p.add_argument("--eval-episodes", type=int, default=eval_episodes)
    p.add_argument("--only", choices=["ppo_edu", "SB3"], default=None, help="run one library only")
    args = p.parse_args()
    torch.set_num_threads(1)
    runners = {"ppo_edu": lambda s: run_ppo_edu(env_id, s, args.budget, args.every, args.eval_episodes),
               "SB3": lambda s: run_sb3(env_id, s, args.budget, args.every, args.eval_episodes,
                                        sb3_n_envs, **sb3_kwargs)}
    if args.only:
        runners = {args.only: runners[args.only]}
    results = {lib: [] for lib in runners}
    for seed in range(args.seeds):
        for lib, fn in runners.items():  # alternate, so drift in machine load hits both
            r = fn(seed)
            results[lib].append(r)
            evals = " ".join(f"{m:.0f}" for _, _, m in r["points"])
            print(f"seed {seed} {lib:8s} train {r['train_seconds']:6.2f} s | evals every {args.every}: {evals}",
                  flush=True)
    report(results, threshold, args.budget)
    raw = raw_env_throughput(env_id, sb3_n_envs)
    for lib, runs in results.items():
        sps = np.median([args.budget / r["train_seconds"] for r in runs])
        print(f"{lib}: {sps:,.0f} env steps/s while training = {sps / raw:.1%} of the vectorised env alone "
              f"({raw:,.0f} steps/s, {sb3_n_envs} envs, random actions)")
