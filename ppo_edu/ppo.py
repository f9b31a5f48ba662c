"""Proximal Policy Optimization: Chapters 5 and 6.

``PPOConfig`` holds every implementation detail as a field (Chapter 6 ablates them one at a
time); ``PPO`` runs the loop: collect a rollout, compute GAE, then several epochs of
minibatch updates on the clipped surrogate (Schulman et al. 2017, Algorithm 1).
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Literal

import gymnasium as gym
import numpy as np
import torch

from . import checkpoint, distributed
from . import config as C
from .engines import Engine, make_engine
from .gae import compute_gae
from .networks import ActorCritic
from .normalization import RewardScaler, RunningMeanStd, mean_std
from .progress import progress as _progress
from .rollout import RolloutBuffer, RolloutCollector, as_vec_env, env_form, env_name
from .tblog import tb_writer

__all__ = ["PPOConfig", "PPO", "PRESETS", "RL_ZOO", "preset", "set_threads"]


@dataclass(frozen=True)
class PPOConfig:
    """Every knob of PPO. Defaults are CleanRL's / the paper's Atari-free MuJoCo-ish values."""

    n_envs: int = 8                 #: parallel environments N
    n_steps: int = 128              #: steps per env per rollout T; batch = N * T
    n_epochs: int = 4               #: passes over each batch (K in the paper)
    n_minibatches: int = 4          #: minibatches per epoch; must divide the batch
    lr: float = 2.5e-4              #: Adam learning rate
    anneal_lr: bool = True          #: decay lr linearly to 0 over the learn() call
    adam_eps: float = 1e-5          #: Adam epsilon (1e-5 as in the PPO baselines, not torch's 1e-8)
    gamma: float = 0.99             #: discount factor
    lam: float = 0.95               #: GAE lambda
    clip_eps: float = 0.2           #: policy clip range epsilon
    anneal_clip: bool = False       #: decay clip_eps linearly to 0 with the lr schedule
    vf_clip: float | None = None    #: value-clipping range (None: no value clipping)
    ent_coef: float = 0.0           #: entropy bonus coefficient
    vf_coef: float = 0.5            #: value loss coefficient
    max_grad_norm: float | None = 0.5  #: global gradient-norm clip (None: off)
    target_kl: float | None = None  #: stop the epochs early once the k3 KL of a minibatch exceeds this
    norm_adv: bool = True           #: whiten advantages per minibatch
    norm_obs: bool = False          #: normalise observations with running statistics
    norm_reward: bool = False       #: scale rewards by the running std of the discounted return
    hidden: tuple = (64, 64)        #: hidden layer sizes of the MLPs
    shared_network: bool = False    #: one trunk for actor and critic (default: separate networks)
    orthogonal_init: bool = True    #: orthogonal init with gains sqrt(2), 0.01 (policy), 1 (value)
    log_std_init: float = 0.0       #: initial log standard deviation of Gaussian policies
    backend: Literal["numpy", "torch"] = "numpy"  #: update engine: hand-derived NumPy or autograd
    threads: int = 1                #: torch intra-op threads (1 is fastest for small MLPs)

    def __post_init__(self):
        C.require(self, "hidden", all(C._is_int(h) for h in self.hidden), "positive integer layer sizes")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        C.integers(self, "n_envs", "n_steps", "n_epochs", "n_minibatches", "threads")
        C.numbers(self, C.POSITIVE, "lr", "clip_eps", "adam_eps")
        C.numbers(self, C.UNIT_INTERVAL, "gamma", "lam")
        C.numbers(self, C.NON_NEGATIVE, "ent_coef", "vf_coef")
        C.numbers(self, C.LOG_STD, "log_std_init")
        C.optional_numbers(self, C.POSITIVE, "vf_clip", "max_grad_norm", "target_kl")
        C.require(self, "hidden", bool(self.hidden) and min(self.hidden) >= 1, "one or more positive layer sizes")
        C.choice(self, "backend", ("numpy", "torch"))
        C.divides(self, "n_minibatches", self.batch_size, "the batch n_envs * n_steps")

    @property
    def batch_size(self) -> int:
        return self.n_envs * self.n_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.n_minibatches

    def replace(self, **changes) -> "PPOConfig":
        """A copy with some fields changed (validated again)."""
        return C.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d


# Tuned presets: what ``PPO(env_id)`` and ``ppo-edu train ENV_ID`` use, each chosen for training
# wall time to a stable solve against Stable-Baselines3 with the RL-Zoo settings (bench/*.py),
# over 6-20 seeds, one thread. CartPole: 16 envs x 64 steps, 4 epochs of 2 minibatches of 512,
# lr 1e-2 annealed: 8 gradient steps per 1024 env steps. On seeds 0-19 it solved 20 of 20 (median
# 31k env steps, 0.42 s), where 16 x 32 steps with 5 epochs of 2 x 256 at lr 5e-3 solved 19 of 20
# in fewer steps (25k) but no sooner (0.42 s), its 20 steps per 1024 costing 30% more time per env
# step; fewer, larger minibatches pay the fixed cost of a gradient step less often. Acrobot keeps the
# RL-Zoo discounts and normalisation with shorter rollouts (16 x 64 steps) and 4 minibatches of
# 256 at constant lr 1e-3. Pendulum: 8 envs x 512 steps, 10 epochs of 16 minibatches of 256,
# lr 2e-3, gamma 0.95 and scaled rewards (the Zoo's 4 x 1024, minibatches of 64 and gamma 0.9
# failed 1 seed in 5 without gSDE, and took longer on the others).
PRESETS: dict[str, tuple[PPOConfig, int]] = {
    "CartPole-v1": (PPOConfig(n_envs=16, n_steps=64, n_epochs=4, n_minibatches=2, lr=1e-2), 100_000),
    "Acrobot-v1": (PPOConfig(n_envs=16, n_steps=64, n_epochs=4, n_minibatches=4, lr=1e-3,
                             anneal_lr=False, gamma=0.99, lam=0.94, norm_obs=True, norm_reward=True), 200_000),
    "Pendulum-v1": (PPOConfig(n_envs=8, n_steps=512, n_epochs=10, n_minibatches=16, lr=2e-3,
                              gamma=0.95, lam=0.95, norm_obs=False, norm_reward=True), 200_000),
}

# The RL Baselines3 Zoo hyperparameters (rl-baselines3-zoo, hyperparams/ppo.yml) in PPOConfig's
# terms, kept so the benches can compare engines at equal settings. Pendulum's leaves out gSDE,
# which ppo_edu does not implement.
RL_ZOO: dict[str, tuple[PPOConfig, int]] = {
    "CartPole-v1": (PPOConfig(n_envs=8, n_steps=32, n_epochs=20, n_minibatches=1, lr=1e-3,
                              gamma=0.98, lam=0.8, anneal_clip=True, ent_coef=0.0), 100_000),
    "Acrobot-v1": (PPOConfig(n_envs=16, n_steps=256, n_epochs=4, n_minibatches=64, lr=3e-4,
                             anneal_lr=False, gamma=0.99, lam=0.94, norm_obs=True, norm_reward=True), 200_000),
    "Pendulum-v1": (PPOConfig(n_envs=4, n_steps=1024, n_epochs=10, n_minibatches=64, lr=1e-3,
                              gamma=0.9, lam=0.95, norm_obs=False, norm_reward=False), 200_000),
}


def preset(env_id: str) -> tuple[PPOConfig, int]:
    """``(config, total_timesteps)`` tuned for ``env_id``; the defaults for other envs, with a
    notice printed once per registered env (to stderr) saying so. ``RL_ZOO[env_id]`` holds the
    RL-Zoo settings instead."""
    if env_id not in PRESETS and env_id in gym.registry:
        _notify_no_preset(env_id)
    return PRESETS.get(env_id, (PPOConfig(), 200_000))


_NOTIFIED: set = set()  # envs already told that they have no preset


def _split(perm: np.ndarray, k: int) -> list[np.ndarray]:
    """``np.array_split(perm, k)`` as views, without its ~5 us of set-up: the first ``len % k``
    minibatches are one longer."""
    q, r = divmod(len(perm), k)
    bounds = [i * q + min(i, r) for i in range(k + 1)]
    return [perm[a:b] for a, b in zip(bounds, bounds[1:])]


def _notify_no_preset(name: str) -> None:
    if name not in _NOTIFIED:
        _NOTIFIED.add(name)
        print(f"ppo_edu: no tuned preset for {name!r}: using PPOConfig() defaults and 200000 steps. "
              f"Tuned presets ({', '.join(PRESETS)}) are in ppo_edu.PRESETS (ppo_edu/ppo.py); "
              "pass a PPOConfig to tune your own.", file=sys.stderr)


def _display_name(env) -> str:
    """A name for an env without a registered id (for messages)."""
    return getattr(env, "__name__", None) or type(getattr(env, "unwrapped", env)).__name__


class PPO:
    """PPO agent: ``PPO("CartPole-v1").learn(100_000)``, then ``predict``, ``evaluate``, ``save``.

    ``env`` takes the forms Stable-Baselines3 users pass: an environment id; a
    ``gymnasium.Env`` class or a callable returning an env (``config.n_envs`` copies are made);
    a ``gymnasium.Env`` instance (trained on alone: ``n_envs`` becomes 1, as in SB3); or a
    ``VectorEnv`` (its ``num_envs`` replaces ``config.n_envs``). Without ``config`` the tuned
    preset for the env's id is used (the defaults, with a one-time notice, for other envs).
    ``tensorboard_log`` is a folder: each ``learn`` row is also written there for TensorBoard
    (needs the ``tensorboard`` extra), in a new ``PPO_<k>`` run folder per agent.
    """

    def __init__(self, env, config: PPOConfig | None = None, seed: int = 0, tensorboard_log=None):
        form = env_form(env)  # TypeError for anything that is not an env
        self.env_id = env_name(env)
        if config is None:
            if self.env_id is None:
                _notify_no_preset(_display_name(env))
            config = preset(self.env_id)[0]
        if not isinstance(config, PPOConfig):
            raise TypeError(f"config must be a PPOConfig, got {type(config).__name__}")
        self._env_source = env if form in ("id", "factory") else None  # evaluate() rebuilds from it
        env = as_vec_env(env, config.n_envs)
        self.env_id = self.env_id or env_name(env)  # a factory's env may carry a registered id
        if env.num_envs != config.n_envs:
            config = config.replace(n_envs=env.num_envs)
        self._tb = tb_writer(tensorboard_log, "PPO") if tensorboard_log is not None else None
        self.config, self.seed, self.env = config, int(seed), env
        self.dist = distributed.info()  # rank and world size; (0, 1) outside torchrun
        set_threads(config.threads)
        torch.manual_seed(self.seed)  # the same initial weights on every rank
        self.model = ActorCritic(env.single_observation_space, env.single_action_space, config.hidden,
                                 config.shared_network, config.orthogonal_init, config.log_std_init)
        self._build_engine()
        distributed.broadcast_(self.engine.flat.data)
        # each rank samples with its own stream; rank 0 of 1 is the plain seed
        self.rng = np.random.default_rng(self.seed if not self.dist.enabled else [self.seed, self.dist.rank])
        obs_dim = self.model.obs_dim
        self.obs_rms = RunningMeanStd((obs_dim,)) if config.norm_obs else None
        self.num_timesteps, self.n_updates = 0, 0
        self.history: list[dict] = []  # one metrics row per update
        self._collector: RolloutCollector | None = None

    # ------------------------------------------------------------------ set-up
    def _build_engine(self) -> None:
        """The update engine ``config.backend`` names (:mod:`ppo_edu.engines`); it acts, computes
        the loss and its gradient, averages gradients over ranks, steps the optimiser and holds
        the optimiser's state. ``PPO`` talks to it only through the :class:`~ppo_edu.engines.Engine`
        interface."""
        self.engine: Engine = make_engine(self.model, self.config)

    @property
    def flat(self):
        """The engine's flat parameters: ``flat.data`` and ``flat.grad``, one vector each."""
        return self.engine.flat

    @property
    def fast(self):
        """The NumPy forward pass both engines act with (``fast.act``, ``fast.value``)."""
        return self.engine.fast

    @property
    def optimizer(self):
        """The engine's optimiser (:class:`ppo_edu.fastmlp.Adam` or ``torch.optim.Adam``)."""
        return self.engine.optimizer

    def _make_collector(self) -> RolloutCollector:
        space = self.env.single_action_space
        low = high = None
        if not self.model.discrete:
            low, high = space.low, space.high
        scaler = RewardScaler(self.env.num_envs, self.config.gamma) if self.config.norm_reward else None
        # env i of rank r gets seed + r * n_envs + i: K ranks x N envs tile the seeds of 1 x K*N envs
        env_seed = self.seed + self.dist.rank * self.env.num_envs
        return RolloutCollector(self.env, seed=env_seed, obs_rms=self.obs_rms, reward_scaler=scaler,
                                action_low=low, action_high=high)

    def _act(self, obs: np.ndarray):
        return self.engine.act(obs, self.rng, with_value=False)  # V is batched after the rollout

    # ------------------------------------------------------------------ training
    def learn(self, total_timesteps: int, callback: Callable | None = None, progress_bar: bool = False,
              reset_num_timesteps: bool = True) -> "PPO":
        """Train for ``total_timesteps`` environment steps (rounded up to whole rollouts; with
        torchrun, summed over all ranks).

        ``callback(agent, metrics)`` runs after every update with that update's metrics row;
        returning ``False`` stops training.

        As in Stable-Baselines3, ``reset_num_timesteps=True`` starts the step count at 0 and the
        lr and clip schedules over this call; ``False`` continues the count, and the schedules run
        over the whole budget (steps so far + ``total_timesteps``), so a second call, or a run
        resumed from a checkpoint, continues the decay where the last one stopped.
        """
        if not isinstance(total_timesteps, (int, np.integer)) or total_timesteps < 1:
            raise ValueError(f"total_timesteps={total_timesteps!r} is invalid: allowed values are integers >= 1")
        cfg = self.config
        if self._collector is None:
            self._collector = self._make_collector()
        world = self.dist.world_size
        n_updates = math.ceil(total_timesteps / (cfg.batch_size * world))
        if reset_num_timesteps:
            self.num_timesteps = 0
        # the schedules decay linearly to 0 at this step count
        self._schedule_end = self.num_timesteps + n_updates * cfg.batch_size * world
        act_shape = () if self.model.discrete else (self.model.act_dim,)
        buf = RolloutBuffer.empty(cfg.n_steps, cfg.n_envs, self.model.obs_dim, act_shape,
                                  np.int64 if self.model.discrete else np.float32)
        progress_bar = progress_bar and self.dist.is_main
        bar = _progress(total=n_updates * cfg.batch_size * world, enabled=progress_bar)
        start = time.perf_counter()
        for _ in range(n_updates):
            # -- schedules: linear decay to 0 at self._schedule_end steps (1 - u / U for update u of U)
            frac = 1.0 - self.num_timesteps / self._schedule_end
            lr = cfg.lr * frac if cfg.anneal_lr else cfg.lr
            clip_eps = cfg.clip_eps * frac if cfg.anneal_clip else cfg.clip_eps
            # -- phase 1: collect a rollout with the current policy
            self._collector.collect(buf, self._act, self.engine.value)
            self._check_env_outputs(buf)
            self.num_timesteps += cfg.batch_size * world
            # -- phase 2: advantages and returns (Chapter 3)
            advantages, returns = compute_gae(*(torch.from_numpy(x) for x in (
                buf.rewards, buf.values, buf.next_values, buf.terminated, buf.truncated)),
                gamma=cfg.gamma, lam=cfg.lam)
            # -- phase 3: K epochs of minibatch updates (Chapter 5)
            stats = self.update(buf, advantages.numpy(), returns.numpy(), lr, clip_eps)
            # -- phase 4: log
            self.n_updates += 1
            row = self._metrics_row(buf, returns.numpy(), stats, lr, clip_eps, time.perf_counter() - start)
            self.history.append(row)
            if self._tb is not None:
                self._tb.log(row)  # tensorboard_log=: the same row, as TensorBoard scalars
            bar.update(cfg.batch_size * world)
            if progress_bar:
                bar.set_postfix(ret=f"{row['episodic_return']:.1f}", kl=f"{row['approx_kl']:.3f}", refresh=False)
            if callback is not None and callback(self, row) is False:
                break
        bar.close()
        if self._tb is not None:
            self._tb.flush()
        return self

    @property
    def collector(self) -> RolloutCollector | None:
        """The rollout collector ``learn`` uses (None before the first ``learn``): phase 1."""
        return self._collector

    def update(self, buf: RolloutBuffer, advantages, returns, lr: float, clip_eps: float) -> dict:
        """Phase 3 of ``learn``: K epochs of minibatch steps (``engine.update_minibatch``) on one
        rollout ``buf`` with its ``advantages`` and ``returns`` ``(T, N)``; the mean diagnostics."""
        cfg = self.config
        idx = np.flatnonzero(buf.valid.reshape(-1))  # drop NEXT_STEP reset steps
        flat = lambda x: x.reshape(len(buf.valid.reshape(-1)), *x.shape[2:])[idx]  # noqa: E731
        b_obs, b_act, b_logp, b_val = flat(buf.obs), flat(buf.actions), flat(buf.logp), flat(buf.values)
        b_adv, b_ret = flat(advantages), flat(returns)
        n = len(idx)
        sums: dict[str, float] = {}
        count, stopped = 0, False
        full_batch = cfg.n_minibatches == 1  # order is irrelevant: skip shuffling and copying
        self._adv_stats = None  # (mean, std) of this rollout's full batch, once computed
        for epoch in range(cfg.n_epochs):
            batches = [slice(None)] if full_batch else _split(self.rng.permutation(n), cfg.n_minibatches)
            for mb in batches:
                adv = b_adv[mb]
                if len(adv) == 0:
                    continue
                if cfg.norm_adv:
                    adv = self.whiten_advantages(adv, cache=full_batch)
                args = (b_obs[mb], b_act[mb], b_logp[mb], adv.astype(np.float32, copy=False), b_ret[mb], b_val[mb])
                info = self._step(*args, lr=lr, clip_eps=clip_eps)
                for k, v in info.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                if cfg.target_kl is not None and self._mean_over_ranks(info["approx_kl_k3"]) > cfg.target_kl:
                    stopped = True
                    break
            if stopped:
                break
        out = {k: v / max(count, 1) for k, v in sums.items()}
        out.update(n_minibatch_steps=count, early_stop=stopped)
        return out

    def whiten_advantages(self, adv: np.ndarray, cache: bool = False) -> np.ndarray:
        """Advantage normalisation with global statistics when data-parallel (equal to one big
        batch). A full batch is the same every epoch, so its statistics are computed once."""
        if cache and self._adv_stats is not None:
            mean, std = self._adv_stats
        else:
            mean, std = distributed.global_mean_std(adv) if self.dist.enabled else mean_std(adv)
            self._adv_stats = (mean, std) if cache else None
        return (adv - mean) / (std + 1e-8)

    def _mean_over_ranks(self, value: float) -> float:
        """Every rank must take the same early-stop decision, or the next all_reduce hangs."""
        if not self.dist.enabled:
            return value
        t = np.array([value], np.float64)
        distributed.average_(t)
        return float(t[0])

    def _step(self, obs, actions, logp_old, adv, returns, old_values, *, lr, clip_eps) -> dict:
        """One gradient step on one minibatch, by the engine (``engine.update_minibatch``); returns
        its diagnostics. A non-finite loss stops training before the step, naming the update."""
        try:
            return self.engine.update_minibatch(obs, actions, logp_old, adv, returns, old_values,
                                                lr=lr, clip_eps=clip_eps)
        except FloatingPointError as err:
            raise FloatingPointError(f"update {self.n_updates + 1}: {err}") from None

    def _check_env_outputs(self, buf: RolloutBuffer) -> None:
        """A NaN or inf from the environment is the environment's fault, not the learning rate's:
        say so before the update turns it into a NaN loss."""
        c, where = self._collector, f"update {self.n_updates + 1}"
        name = self.env_id or type(self.env).__name__
        obs_ok = np.isfinite(buf.obs).all() and np.isfinite(c.obs).all() and (
            self.obs_rms is None or np.isfinite(self.obs_rms.var).all())
        if not obs_ok:
            raise FloatingPointError(f"{where}: the environment {name!r} returned a non-finite observation "
                                     "(NaN or inf); fix the environment (or wrap it to clip its observations)")
        scaler = c.reward_scaler
        reward_ok = np.isfinite(buf.rewards).all() and np.isfinite(c.ep_ret).all() and (
            scaler is None or np.isfinite(scaler.rms.var))
        if not reward_ok:
            raise FloatingPointError(f"{where}: the environment {name!r} returned a non-finite reward "
                                     "(NaN or inf); fix the environment's reward")

    def _metrics_row(self, buf, returns, stats, lr, clip_eps, wall) -> dict:
        valid = buf.valid
        y, v = returns[valid], buf.values[valid]
        var_y = float(np.var(y))
        explained = float("nan") if var_y == 0 else 1.0 - float(np.var(y - v)) / var_y
        recent = self._collector.episode_returns[-20:]
        return {"update": self.n_updates, "env_steps": self.num_timesteps, "wall_time": round(wall, 4),
                "episodic_return": float(np.mean(recent)) if recent else float("nan"),
                "episodes": len(self._collector.episode_returns),
                "policy_loss": stats.get("policy_loss", float("nan")),
                "value_loss": stats.get("value_loss", float("nan")),
                "entropy": stats.get("entropy", float("nan")),
                "approx_kl": stats.get("approx_kl_k3", float("nan")),
                "approx_kl_k1": stats.get("approx_kl_k1", float("nan")),
                "clip_fraction": stats.get("clip_fraction", float("nan")),
                "explained_variance": explained, "grad_norm": stats.get("grad_norm", float("nan")),
                "lr": lr, "clip_eps": clip_eps, "early_stop": bool(stats.get("early_stop", False))}

    # ------------------------------------------------------------------ acting
    def predict(self, obs, deterministic: bool = True):
        """Action(s) for one observation ``(obs_dim,)`` or a batch ``(B, obs_dim)``.

        Returns ``(action, None)`` like Stable-Baselines3 (the second item is the recurrent
        state, always ``None`` here). Observation normalisation uses the saved statistics.

        ``deterministic=True`` by default (SB3's default is False): the greedy action (argmax,
        or the Gaussian mean) is what evaluating or deploying a trained agent wants, and it
        matches ``evaluate``. Pass ``deterministic=False`` to sample from the policy.
        """
        obs = self._check_obs(obs)
        single = obs.ndim == 1
        batch = obs[None] if single else obs
        if self.obs_rms is not None:
            batch = self.obs_rms.normalize(batch)
        actions, _, _ = self.engine.act(batch, self.rng, deterministic=deterministic)
        if not self.model.discrete:
            space = self.env.single_action_space
            actions = np.clip(actions, space.low, space.high)
        return (actions[0] if single else actions), None

    def _check_obs(self, obs) -> np.ndarray:
        """``obs`` as a float32 array ``(obs_dim,)`` or ``(B, obs_dim)``, or a ValueError saying what is wrong."""
        want = f"(obs_dim,) = ({self.model.obs_dim},) or (batch, {self.model.obs_dim})"
        if obs is None:
            raise ValueError(f"predict(obs=None): obs must be an observation of shape {want}")
        try:
            obs = np.asarray(obs, np.float32)
        except (TypeError, ValueError) as err:
            raise ValueError(f"predict(obs={obs!r}): not an array of numbers ({err})") from None
        if obs.ndim not in (1, 2) or obs.shape[-1] != self.model.obs_dim:
            raise ValueError(f"obs has shape {obs.shape}; expected {want}")
        if not np.isfinite(obs).all():
            raise ValueError(f"obs contains NaN or inf at {np.argwhere(~np.isfinite(obs)).tolist()[:5]}: "
                             "a policy cannot act on it")
        return obs

    def evaluate(self, n_episodes: int = 20, deterministic: bool = True, seed: int = 10_000,
                 env=None, env_id: str | None = None) -> tuple[float, float]:
        """Mean and std of the undiscounted return over ``n_episodes`` fresh episodes.

        ``env`` takes the forms ``PPO(env)`` does; by default the env the agent was built
        from (its id, class or factory). An id, class or factory gives ``n_episodes`` copies
        side by side, one episode each; a given env instance or ``VectorEnv`` is used as it
        is, in rounds of one episode per sub-environment. Rewards are the raw ones.
        ``env_id=`` is the older spelling of ``env=`` for an id.
        """
        if isinstance(n_episodes, bool) or not isinstance(n_episodes, (int, np.integer)) or n_episodes < 1:
            raise ValueError(f"n_episodes={n_episodes!r} is invalid: allowed values are integers >= 1")
        source = next((e for e in (env, env_id, self._env_source, self.env_id) if e is not None), None)
        if source is None:
            raise ValueError("evaluate() needs env= (an env id, class, factory, instance or VectorEnv): this "
                             "agent was built from an env instance that has no registered id")
        vec = as_vec_env(source, n_episodes)
        owned = vec is not source and not isinstance(source, gym.Env)  # ours to close
        totals = []
        while len(totals) < n_episodes:
            totals += self._episodes(vec, seed + len(totals), deterministic)
        if owned:
            vec.close()
        totals = np.array(totals[:n_episodes])
        return float(totals.mean()), float(totals.std())

    def _episodes(self, env: gym.vector.VectorEnv, seed: int, deterministic: bool) -> list[float]:
        """One episode in each sub-environment of ``env``; their undiscounted returns."""
        obs, _ = env.reset(seed=seed)
        totals = np.zeros(env.num_envs)
        finished = np.zeros(env.num_envs, bool)
        while not finished.all():
            actions, _ = self.predict(obs, deterministic=deterministic)
            obs, rewards, term, trunc, _ = env.step(actions)
            totals += np.where(finished, 0.0, rewards)
            finished |= np.logical_or(term, trunc)
        return totals.tolist()

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Write the agent to exactly ``path``: config, weights, normalisation statistics, optimiser,
        and what a resumed run needs to continue exactly (random streams, the environments'
        state, the episode in progress, the metrics so far)."""
        space = self.env.single_action_space
        obs_space = self.env.single_observation_space
        state = {
            "format": checkpoint.FORMAT, "env_id": self.env_id, "seed": self.seed,
            "config": self.config.to_dict(), "num_timesteps": self.num_timesteps, "n_updates": self.n_updates,
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "obs_space": {"low": torch.as_tensor(obs_space.low), "high": torch.as_tensor(obs_space.high)},
            "action_space": ({"n": int(space.n)} if self.model.discrete else
                             {"low": torch.as_tensor(space.low), "high": torch.as_tensor(space.high)}),
            "obs_rms": None if self.obs_rms is None else {
                "mean": torch.as_tensor(self.obs_rms.mean), "var": torch.as_tensor(self.obs_rms.var),
                "count": self.obs_rms.count},
            "optimizer": self.engine.state_dict(),
            "resume": self._resume_state(),
            "history": list(self.history),
        }
        checkpoint.atomic_save(state, path)

    def _resume_state(self) -> dict:
        """Random streams and, once training has started, the collector: the environments' state,
        the observation each env is in, the returns of the episodes in progress, the reward scaler."""
        state = {"rng": self.rng.bit_generator.state}  # torch's generator is used only at construction
        c = self._collector
        if c is not None:
            scaler = c.reward_scaler
            state["collector"] = {
                "env": checkpoint.env_state(self.env), "obs": torch.as_tensor(np.array(c.obs)),
                "prev_done": torch.as_tensor(c.prev_done), "ep_ret": torch.as_tensor(c.ep_ret),
                "ep_len": torch.as_tensor(c.ep_len), "total_steps": c.total_steps,
                "episode_returns": list(c.episode_returns), "episode_lengths": list(c.episode_lengths),
                "scaler": None if scaler is None else {"mean": float(scaler.rms.mean), "var": float(scaler.rms.var),
                                                       "count": scaler.rms.count, "ret": torch.as_tensor(scaler.ret)}}
        return state

    def _restore_collector(self, state: dict) -> None:
        """Create the collector and put back the state :meth:`_resume_state` saved."""
        c = self._collector = self._make_collector()
        checkpoint.restore_env_state(self.env, state["env"])
        c.obs, c.prev_done = state["obs"].numpy().copy(), state["prev_done"].numpy().copy()
        c.ep_ret, c.ep_len = state["ep_ret"].numpy().copy(), state["ep_len"].numpy().copy()
        c.total_steps = int(state["total_steps"])
        c.episode_returns, c.episode_lengths = list(state["episode_returns"]), list(state["episode_lengths"])
        if state["scaler"] is not None and c.reward_scaler is not None:
            rs = state["scaler"]
            c.reward_scaler.rms.load_state_dict({"mean": rs["mean"], "var": rs["var"], "count": rs["count"]})
            c.reward_scaler.ret = rs["ret"].numpy().copy()

    @classmethod
    def load(cls, path, env=None) -> "PPO":
        """Rebuild an agent saved with :meth:`save`. The env is re-created from its saved id, or
        is ``env`` in any form ``PPO(env)`` takes (needed when the env is not registered).

        ``load(path).learn(n, reset_num_timesteps=False)`` continues training exactly where the
        saved agent stopped. Any damage to the file is a :class:`~ppo_edu.checkpoint.CheckpointError`."""
        state = checkpoint.safe_load(path, required=("config", "model", "env_id", "obs_rms", "num_timesteps"))
        bad = lambda what: checkpoint.CheckpointError(f"checkpoint {str(path)!r}: {what}")  # noqa: E731
        try:
            config = PPOConfig(**state["config"])
        except (TypeError, ValueError) as err:
            raise bad(f"has an invalid config: {err}") from None
        env = env if env is not None else state["env_id"]
        if env is None:
            raise ValueError(f"checkpoint {str(path)!r} has no registered env id: pass env= to PPO.load "
                             "(an env id, class, factory, instance or VectorEnv)")
        agent = cls(env, config, seed=state.get("seed", 0))
        try:
            agent.model.load_state_dict(state["model"])
        except (RuntimeError, TypeError, AttributeError) as err:
            raise bad(f"does not match the network: {err}") from None
        if not np.isfinite(agent.engine.flat.data).all():
            raise bad("its weights contain NaN or inf (the run that wrote it diverged)")
        agent._load_statistics(state, bad)
        try:
            agent.engine.load_state_dict(state.get("optimizer") or {})
        except ValueError as err:
            raise bad(str(err)) from None
        try:
            agent.num_timesteps, agent.n_updates = int(state["num_timesteps"]), int(state.get("n_updates", 0))
        except (TypeError, ValueError):
            raise bad(f"num_timesteps={state['num_timesteps']!r} is not an integer") from None
        agent.history = list(state.get("history") or [])
        resume = state.get("resume") or {}
        try:
            if "rng" in resume:
                agent.rng.bit_generator.state = resume["rng"]
            if "collector" in resume and env == state["env_id"]:
                agent._restore_collector(resume["collector"])
        except checkpoint.CheckpointError as err:
            raise bad(f"its environment state does not fit: {err}") from None
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
            raise bad(f"its resume state (random streams, environments) is damaged: {type(err).__name__}: {err}") \
                from None
        return agent

    def _load_statistics(self, state: dict, bad) -> None:
        if state["obs_rms"] is None:
            return
        rms = {k: (v.numpy() if torch.is_tensor(v) else v) for k, v in state["obs_rms"].items()}
        dim = self.model.obs_dim
        for k in ("mean", "var"):
            if np.shape(rms.get(k)) != (dim,):
                raise bad(f"observation statistics obs_rms.{k} have shape {np.shape(rms.get(k))}, "
                          f"but the environment's observations have ({dim},)")
            if not np.isfinite(rms[k]).all() or (k == "var" and (rms[k] < 0).any()):
                raise bad(f"observation statistics obs_rms.{k} contain NaN, inf or negative variances")
        self.obs_rms = RunningMeanStd((dim,))
        self.obs_rms.load_state_dict(rms)


def set_threads(n: int) -> None:
    """Use ``n`` threads in torch and in NumPy's BLAS. For 64-unit MLPs one thread is fastest:
    two threads on two busy cores were over 10x slower here (bench/cartpole.py)."""
    torch.set_num_threads(n)
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
