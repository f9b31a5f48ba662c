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


def raw_env_throughput(env_id: str, n_envs: int, steps: int = 20_000) -> float:
    """Environment steps per second of the vectorised env alone, random actions: the ceiling."""
    from ppo_edu.rollout import make_vec_env

    env = make_vec_env(env_id, n_envs)
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(64)]
    t0 = time.perf_counter()
    for i in range(steps // n_envs):
        env.step(actions[i % 64])
    return steps / (time.perf_counter() - t0)
