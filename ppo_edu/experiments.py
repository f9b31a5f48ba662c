"""Many seeds of many configurations: the runner Chapters 6 and 7 use for ablations.

``train_seeds("CartPole-v1", {"preset": {}, "norm_adv=False": {"norm_adv": False}}, seeds=range(3),
timesteps=50_000)`` trains the env's preset with each change on each seed and returns
``{label: [(history, greedy_return), ...one per seed]}``. Independent runs share the CPU cores through
a forked process pool where the platform can fork; every run is seeded, so the results are the same
whichever process ran it, and the same as running them one after another.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from contextlib import nullcontext
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable

from ppo_edu.ppo import PPO, PPOConfig, preset
from ppo_edu.progress import progress

__all__ = ["train_seeds", "change_label"]


def change_label(changes: dict) -> str:
    """``"n_epochs=4, vf_clip=0.2"`` for a dict of config changes; ``"preset"`` for none."""
    return ", ".join(f"{k}={v}" for k, v in changes.items()) or "preset"


def _run(job) -> tuple:
    """Train one (config, seed); return its history and one evaluation return per ``deterministic`` flag."""
    env_id, config, seed, timesteps, callback, evaluations, n_eval = job
    agent = PPO(env_id, config, seed=seed).learn(timesteps, callback=callback)
    return (agent.history, *(agent.evaluate(n_eval, deterministic=d)[0] for d in evaluations))


def _pool_size(workers: int | None, n_jobs: int) -> int:
    if "fork" not in mp.get_all_start_methods():
        return 1
    return max(1, min(workers or os.cpu_count() or 1, n_jobs))


def train_seeds(env_id: str, changes: dict[str, dict], seeds: Iterable[int], timesteps: int, *,
                base: PPOConfig | None = None, callback: Callable | None = None,
                evaluations: tuple[bool, ...] = (True,), n_eval: int = 10, workers: int | None = 2,
                progress_bar: bool = True) -> dict[str, list[tuple]]:
    """Train ``base`` (default: the env's preset) with each ``{label: changes}`` on every seed.

    Returns ``{label: [(history, *returns) for each seed]}``, where ``returns`` holds one mean evaluation
    return over ``n_eval`` episodes per flag of ``evaluations`` (``True``: greedy, ``False``: sampled).
    ``callback(agent, row)`` is handed to ``PPO.learn``. One progress bar counts finished runs.
    """
    base = preset(env_id)[0] if base is None else base
    seeds = list(seeds)
    jobs = [(env_id, base.replace(**c), s, timesteps, callback, tuple(evaluations), n_eval)
            for c in changes.values() for s in seeds]
    n_pool, results = _pool_size(workers, len(jobs)), []
    pool = ProcessPoolExecutor(n_pool, mp_context=mp.get_context("fork")) if n_pool > 1 else nullcontext()
    with pool, progress(len(jobs), progress_bar, desc=f"{env_id}, {len(jobs)} runs", unit="run") as bar:
        for result in (pool.map(_run, jobs) if n_pool > 1 else map(_run, jobs)):
            results.append(result)
            bar.update(1)
    n = len(seeds)
    return {label: results[i * n:(i + 1) * n] for i, label in enumerate(changes)}
