"""Throughput measurements that Chapter 12 and ``bench/scaling.py`` share: environment steps per
second of a vector env alone (the ceiling) and of PPO training on one process."""
from __future__ import annotations

import time

__all__ = ["random_action_env", "raw_env_throughput", "ppo_throughput"]


def random_action_env(env_id: str, n_envs: int, seed: int = 0):
    """``(env, actions)``: ``make_vec_env(env_id, n_envs)`` reset with ``seed``, and 64 random actions
    drawn ahead to cycle through (drawing one per step would time the action sampler too)."""
    from ppo_edu.rollout import make_vec_env

    env = make_vec_env(env_id, n_envs)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env, [env.action_space.sample() for _ in range(64)]


def raw_env_throughput(env_id: str, n_envs: int, steps: int = 20_000) -> float:
    """Environment steps per second of ``make_vec_env(env_id, n_envs)`` alone, random actions."""
    env, actions = random_action_env(env_id, n_envs)
    t0 = time.perf_counter()
    for i in range(steps // n_envs):
        env.step(actions[i % 64])
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


def ppo_throughput(env_id: str, steps: int, seed: int = 0, warmup: int = 1024, config=None) -> float:
    """Environment steps per second of ``PPO(env_id, config).learn(steps)`` after a warm-up of
    ``warmup`` steps (first calls import modules and allocate memory); ``config`` defaults to the
    env's preset."""
    from ppo_edu.ppo import PPO, preset

    agent = PPO(env_id, config or preset(env_id)[0], seed=seed)
    agent.learn(warmup)
    t0 = time.perf_counter()
    agent.learn(steps)
    return steps / (time.perf_counter() - t0)
