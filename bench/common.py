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


class Ceiling:
    """The vectorised env alone (the ceiling of training throughput), measured in slices *between*
    training iterations: each ``measure()`` steps a separate copy with the same ``n_envs`` with random
    actions for at least ``seconds`` (and 32 calls). A measurement taken once after a run missed the
    machine's drift during it (on this VM the env alone moved between 210k and 414k steps/s within an
    hour); slices spread over the run see the same machine that training saw. Each slice starts with
    cold caches: on CartPole slices of 32 calls (1.5 ms) read 7% slower than a long loop, which
    flatters the ratio, and slices of 256 calls (13 ms) within 3% of it."""

    def __init__(self, env_id: str, n_envs: int, seed: int, seconds: float = 0.01):
        from ppo_edu.throughput import random_action_env

        self.env, self.actions = random_action_env(env_id, n_envs, seed)
        self.n_envs, self.slice = n_envs, seconds
        self.steps, self.seconds, self.i = 0, 0.0, 0

    def measure(self) -> float:
        """One slice; returns its seconds (the caller keeps them out of training time)."""
        t0 = now = time.perf_counter()
        calls = 0
        while calls < 32 or now - t0 < self.slice:
            self.env.step(self.actions[self.i % 64])
            self.i, calls, now = self.i + 1, calls + 1, time.perf_counter()
        self.seconds += now - t0
        self.steps += calls * self.n_envs
        return now - t0

    def steps_per_second(self) -> float:
        return self.steps / self.seconds


class EvalClock:
    """Evaluates every ``every`` env steps and measures the :class:`Ceiling` once per call (once per
    training iteration); accumulates the time of both so it can be excluded from training time."""

    def __init__(self, predict, env_id, every, n_episodes, seed, n_envs):
        self.predict, self.env_id, self.every, self.n, self.seed = predict, env_id, every, n_episodes, seed
        self.next_at, self.eval_time, self.points = every, 0.0, []  # (steps, train_seconds, mean)
        self.ceiling = Ceiling(env_id, n_envs, seed)
        self.start = time.perf_counter()

    def maybe_eval(self, steps: int) -> None:
        self.eval_time += self.ceiling.measure()
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


def _medians(runs, threshold):
    """(solved count, median seconds to solve, median steps to solve, median train seconds, whole budget)."""
    ok = [h for h in (solved_at(r["points"], threshold) for r in runs) if h is not None]
    t = statistics.median(h[1] for h in ok) if ok else float("nan")
    s = statistics.median(h[0] for h in ok) if ok else float("nan")
    return len(ok), t, s, statistics.median(r["train_seconds"] for r in runs)


def report(results: dict, threshold: float, budget: int, peer: str = "SB3-Zoo") -> None:
    """Print solve rate, median time and steps to solve, and the ratios peer / each ppo_edu run."""
    print(f"\n{'run':13s} {'solved':>8s} {'median s to solve':>18s} {'median steps to solve':>22s} "
          f"{'median train s (full budget)':>29s}")
    med = {}
    for lib, runs in results.items():
        n_ok, t, s, full = med[lib] = _medians(runs, threshold)
        print(f"{lib:13s} {n_ok:>4d}/{len(runs):<3d} {t:>18.2f} {s:>22.0f} {full:>29.2f}")
    if peer not in med:
        return
    for lib, what in (("ppo_edu-Zoo", "engine ratio, equal settings"), ("ppo_edu", "headline, default preset")):
        if lib in med:
            (_, a, _, fa), (_, b, _, fb) = med[lib], med[peer]
            print(f"\nratio {peer} / {lib} ({what}), median wall time to solve: {b / a:.2f}x")
            print(f"ratio {peer} / {lib}, median training time for the whole {budget}-step budget: {fb / fa:.2f}x")



def run_ppo_edu(env_id, config, seed, budget, every, n_eval):
    """Train ppo_edu with ``config``, evaluating on the side."""
    from ppo_edu import PPO

    agent = PPO(env_id, config, seed=seed)
    clock = EvalClock(lambda o: agent.predict(o)[0], env_id, every, n_eval, 1000 * seed, config.n_envs)
    agent.learn(budget, callback=lambda a, row: clock.maybe_eval(a.num_timesteps))
    return {"points": clock.points, "train_seconds": time.perf_counter() - clock.start - clock.eval_time,
            "n_envs": config.n_envs, "raw_env_sps": clock.ceiling.steps_per_second()}


def run_sb3(env_id, seed, budget, every, n_eval, n_envs, normalize=False, **ppo_kwargs):
    """Train Stable-Baselines3's PPO with the given hyperparameters, evaluating on the side.
    ``normalize=True`` wraps the envs in VecNormalize (observations and rewards), as the Zoo does."""
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    if normalize:
        env = VecNormalize(env, gamma=ppo_kwargs.get("gamma", 0.99))
    model = SB3PPO("MlpPolicy", env, seed=seed, device="cpu", **ppo_kwargs)
    scale = env.normalize_obs if normalize else (lambda o: o)
    clock = EvalClock(lambda o: model.predict(scale(o), deterministic=True)[0], env_id, every, n_eval,
                      1000 * seed, n_envs)

    class Every(BaseCallback):
        def _on_rollout_end(self) -> None:
            clock.maybe_eval(self.num_timesteps)

        def _on_step(self) -> bool:
            return True

    clock.start = time.perf_counter()
    model.learn(budget, callback=Every())
    return {"points": clock.points, "train_seconds": time.perf_counter() - clock.start - clock.eval_time,
            "n_envs": n_envs, "raw_env_sps": clock.ceiling.steps_per_second()}


def linear(v):
    """SB3's linear schedule: progress_remaining goes 1 -> 0."""
    return lambda progress: progress * v


def main(env_id, threshold, sb3_n_envs, sb3_kwargs, doc, budget, every, eval_episodes=20):
    """Three runs per seed, alternating: SB3 with the RL-Zoo settings ("SB3-Zoo"), ppo_edu with
    the same settings (``RL_ZOO[env_id]``, "ppo_edu-Zoo": the engine ratio) and ppo_edu with its
    default preset (``PRESETS[env_id]``, "ppo_edu": the headline ratio)."""
    import argparse

    import torch

    from ppo_edu.ppo import PRESETS, RL_ZOO

    runs = ("SB3-Zoo", "ppo_edu-Zoo", "ppo_edu")
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--budget", type=int, default=budget)
    p.add_argument("--every", type=int, default=every)
    p.add_argument("--eval-episodes", type=int, default=eval_episodes)
    p.add_argument("--only", choices=runs, nargs="+", default=None, help="run some of the three only")
    args = p.parse_args()
    torch.set_num_threads(1)
    runners = {"SB3-Zoo": lambda s: run_sb3(env_id, s, args.budget, args.every, args.eval_episodes,
                                            sb3_n_envs, **sb3_kwargs),
               "ppo_edu-Zoo": lambda s: run_ppo_edu(env_id, RL_ZOO[env_id][0], s, args.budget, args.every,
                                                    args.eval_episodes),
               "ppo_edu": lambda s: run_ppo_edu(env_id, PRESETS[env_id][0], s, args.budget, args.every,
                                                args.eval_episodes)}
    if RL_ZOO[env_id][0] == PRESETS[env_id][0]:
        del runners["ppo_edu-Zoo"]  # the default preset is the Zoo's: one run says both
        print(f"ppo_edu's default preset for {env_id} is the RL-Zoo one: its ratio is both the engine and "
              "the headline ratio")
    runners = {k: v for k, v in runners.items() if not args.only or k in args.only}
    results = {lib: [] for lib in runners}
    for seed in range(args.seeds):
        for lib, fn in runners.items():  # alternate, so drift in machine load hits all alike
            r = fn(seed)
            results[lib].append(r)
            evals = " ".join(f"{m:.0f}" for _, _, m in r["points"])
            print(f"seed {seed} {lib:11s} train {r['train_seconds']:6.2f} s | evals every {args.every}: {evals}",
                  flush=True)
    report(results, threshold, args.budget)
    print_throughput(results, args.budget)


def print_throughput(results, budget):
    """Env steps/s while training against the vectorised env alone with the same n_envs, measured in
    slices between the same run's iterations (:class:`Ceiling`): medians over the runs."""
    for lib, runs in results.items():
        sps = np.median([budget / r["train_seconds"] for r in runs])
        raw = np.median([r["raw_env_sps"] for r in runs])
        ratio = np.median([r["raw_env_sps"] * r["train_seconds"] / budget for r in runs])
        print(f"{lib}: {sps:,.0f} env steps/s while training; the vectorised env alone: {raw:,.0f} steps/s "
              f"({runs[0]['n_envs']} envs, random actions); median ratio {ratio:.1f}x")
