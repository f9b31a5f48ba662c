"""Collecting experience from gymnasium 1.x vector environments: Chapter 4, "Actor-critic".

gymnasium 1.x vector environments reset a finished sub-environment automatically, in one
of two ways (``env.metadata["autoreset_mode"]``):

* ``NEXT_STEP`` (the default, and the fast built-in ``CartPoleVectorEnv``): the step that
  ends an episode returns the *final* observation; the **next** call to ``step`` ignores
  the action, resets that sub-environment and returns the reset observation with reward 0.
  That step is not a transition of the MDP: we keep it in the buffer with ``valid=False``
  so that nothing learns from it.
* ``SAME_STEP``: the ending step already returns the reset observation, and the true final
  observation is in ``info["final_obs"]``. We bootstrap a truncated episode from it.

Either way ``next_values[t]`` is V of the observation that really followed step t, which
is what :func:`ppo_edu.gae.compute_gae` needs. Code written for gymnasium 0.29 runs on 1.x
without error but, in NEXT_STEP mode, learns from the fake reset transitions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from .normalization import RewardScaler, RunningMeanStd

__all__ = ["make_vec_env", "as_vec_env", "env_form", "env_name", "RolloutBuffer", "RolloutCollector"]


def make_vec_env(env_id: str, n_envs: int, **env_kwargs) -> gym.vector.VectorEnv:
    """A vector env: the environment's own batched implementation when it registers one
    (``vector_entry_point``, e.g. CartPole at >100k steps/s), else a ``SyncVectorEnv``
    in ``SAME_STEP`` autoreset mode."""
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as err:
        raise ValueError(f"env_id={env_id!r} is not a registered gymnasium environment ({err})") from None
    if spec.vector_entry_point is not None and not env_kwargs.get("render_mode"):
        return gym.make_vec(env_id, num_envs=n_envs, vectorization_mode="vector_entry_point", **env_kwargs)
    return gym.make_vec(env_id, num_envs=n_envs, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}, **env_kwargs)


def env_form(env) -> str:
    """Which form of env this is: ``"id"``, ``"vector"``, ``"instance"`` or ``"factory"`` (an Env
    class or any other callable); a TypeError naming the allowed forms for anything else."""
    if isinstance(env, str):
        return "id"
    if isinstance(env, gym.vector.VectorEnv):
        return "vector"
    if isinstance(env, gym.Env):
        return "instance"
    if callable(env):
        return "factory"
    raise TypeError(f"env={env!r} is not an environment: allowed are an env id (str), a gymnasium.Env "
                    "instance, a gymnasium.Env class, a callable returning one, or a gymnasium VectorEnv")


def as_vec_env(env, n_envs: int) -> gym.vector.VectorEnv:
    """The vector env that PPO trains or evaluates on, from any of the forms users pass
    (as Stable-Baselines3 accepts them):

    * an environment id (``"CartPole-v1"``): ``n_envs`` copies, via :func:`make_vec_env`;
    * a ``gym.Env`` subclass or a callable returning a ``gym.Env``: ``n_envs`` copies in a
      ``SyncVectorEnv`` (``SAME_STEP`` autoreset); a callable may also return a ``VectorEnv``;
    * a ``gym.Env`` instance: that one environment (``num_envs`` is 1);
    * a ``gym.vector.VectorEnv``: itself, unchanged.
    """
    form = env_form(env)
    if form == "id":
        return make_vec_env(env, n_envs)
    if form == "vector":
        return env
    if form == "instance":
        return _sync([lambda: env])
    factory = env
    first = factory()
    if isinstance(first, gym.vector.VectorEnv):
        return first
    if not isinstance(first, gym.Env):
        raise TypeError(f"env factory {env!r} returned {type(first).__name__}, not a gymnasium.Env")
    return _sync([lambda: first] + [factory] * (n_envs - 1))


def _sync(fns) -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)


def env_name(env) -> str | None:
    """The registered id of ``env`` in any of the forms :func:`as_vec_env` takes, else None."""
    if isinstance(env, str):
        return env
    spec = getattr(env, "spec", None)
    return getattr(spec, "id", None)


@dataclass
class RolloutBuffer:
    """One rollout of ``T`` steps from ``N`` environments; every array is ``(T, N, ...)``."""

    obs: np.ndarray          # (T, N, obs_dim) observations the policy saw (normalised if enabled)
    actions: np.ndarray      # (T, N) or (T, N, act_dim)
    logp: np.ndarray         # (T, N) log pi_old(a_t | s_t)
    values: np.ndarray       # (T, N) V_old(s_t)
    rewards: np.ndarray      # (T, N) (scaled if reward normalisation is on)
    terminated: np.ndarray   # (T, N) bool
    truncated: np.ndarray    # (T, N) bool
    valid: np.ndarray        # (T, N) bool: False for NEXT_STEP reset steps
    next_values: np.ndarray  # (T, N) V(s_{t+1}) of the true next observation

    @classmethod
    def empty(cls, T: int, N: int, obs_dim: int, act_shape: tuple, act_dtype) -> "RolloutBuffer":
        f = lambda: np.zeros((T, N), np.float32)  # noqa: E731
        b = lambda: np.zeros((T, N), bool)  # noqa: E731
        return cls(np.zeros((T, N, obs_dim), np.float32), np.zeros((T, N, *act_shape), act_dtype),
                   f(), f(), f(), b(), b(), np.ones((T, N), bool), f())


@dataclass
class RolloutCollector:
    """Steps a vector env with a policy and fills :class:`RolloutBuffer` objects.

    ``act_fn(obs) -> (actions, logp, values)`` and ``value_fn(obs) -> values`` take
    normalised observations ``(N, obs_dim)``. An ``act_fn`` may return ``values=None``: V is
    then computed for the whole rollout in one batched ``value_fn`` call at the end. Finished episodes' undiscounted returns and
    lengths (raw rewards) accumulate in ``episode_returns`` / ``episode_lengths``.
    """

    env: gym.vector.VectorEnv
    seed: int | None = None
    obs_rms: RunningMeanStd | None = None
    reward_scaler: RewardScaler | None = None
    action_low: np.ndarray | None = None   # Box actions are clipped to the bounds when stepping
    action_high: np.ndarray | None = None
    episode_returns: list = field(default_factory=list)
    episode_lengths: list = field(default_factory=list)

    def __post_init__(self):
        mode = self.env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(f"autoreset_mode={mode} is not supported: use NEXT_STEP or SAME_STEP")
        self.same_step = mode == AutoresetMode.SAME_STEP
        self.n_envs = self.env.num_envs
        self.obs, _ = self.env.reset(seed=self.seed)
        self.prev_done = np.zeros(self.n_envs, bool)
        self.ep_ret = np.zeros(self.n_envs)
        self.ep_len = np.zeros(self.n_envs, np.int64)
        self.total_steps = 0  # valid environment steps

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, np.float32)
        return obs if self.obs_rms is None else self.obs_rms.normalize(obs)

    def collect(self, buf: RolloutBuffer, act_fn: Callable, value_fn: Callable) -> RolloutBuffer:
        T = buf.rewards.shape[0]
        final_values: dict[tuple[int, int], float] = {}
        for t in range(T):
            # -- act on the current observation
            if self.obs_rms is not None:
                self.obs_rms.update(self.obs[~self.prev_done] if self.prev_done.any() else self.obs)
            obs_n = self.normalize(self.obs)
            actions, logp, values = act_fn(obs_n)
            env_actions = actions if self.action_low is None else np.clip(actions, self.action_low, self.action_high)
            next_obs, rewards, terminated, truncated, info = self.env.step(env_actions)
            valid = np.ones(self.n_envs, bool) if self.same_step else ~self.prev_done
            done = np.logical_or(terminated, truncated)
            # -- store; NEXT_STEP reset steps are kept but marked invalid
            buf.obs[t], buf.actions[t], buf.logp[t] = obs_n, actions, logp
            if values is not None:
                buf.values[t] = values
            batched_values = values is None
            raw = np.asarray(rewards, np.float64) * valid
            buf.rewards[t] = raw if self.reward_scaler is None else self.reward_scaler(raw, done & valid)
            buf.terminated[t], buf.truncated[t], buf.valid[t] = terminated & valid, truncated & valid, valid
            # -- SAME_STEP: bootstrap from the true final observation, not the reset one
            if self.same_step and done.any():
                idx = np.flatnonzero(done)
                final = np.stack([info["final_obs"][i] for i in idx])
                for i, v in zip(idx, value_fn(self.normalize(final))):
                    final_values[(t, i)] = v
            self._track_episodes(raw, done & valid, valid)
            self.prev_done = done if not self.same_step else np.zeros(self.n_envs, bool)
            self.obs = next_obs
        if batched_values:  # V(s_t) for every step in one pass
            buf.values[:] = value_fn(buf.obs.reshape(T * self.n_envs, -1)).reshape(T, self.n_envs)
        # -- V(s_{t+1}): the next row's value, the last row's from the current observation
        buf.next_values[:-1] = buf.values[1:]
        buf.next_values[-1] = value_fn(self.normalize(self.obs))
        for (t, i), v in final_values.items():
            buf.next_values[t, i] = v
        return buf

    def _track_episodes(self, raw_rewards, done, valid) -> None:
        self.ep_ret += raw_rewards
        self.ep_len += valid
        self.total_steps += int(np.count_nonzero(valid))
        for i in np.flatnonzero(done) if done.any() else ():
            self.episode_returns.append(float(self.ep_ret[i]))
            self.episode_lengths.append(int(self.ep_len[i]))
            self.ep_ret[i], self.ep_len[i] = 0.0, 0
