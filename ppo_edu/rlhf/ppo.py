"""RLHF with PPO (Chapter 10), built on the same ``compute_gae`` and losses as CartPole.

One iteration: sample responses to a batch of prompts; score each with the reward model; shape
per-token rewards with a KL penalty to the frozen reference (eq. 10.1)::

    r_t = -beta * (log pi(a_t|s_t) - log pi_ref(a_t|s_t))   for every response token t
    r_T += score(prompt, response)                          on the last token T

then GAE over tokens (gamma = 1), whitened advantages, and several epochs of clipped policy and
value minibatch updates. ``beta`` is fixed or adapted toward a target KL (Ziegler et al. 2019,
eq. 10.2): ``beta <- beta * (1 + clip((KL - target) / target, -0.2, 0.2) * n / horizon)``, for a batch
of n samples (the paper's gain K_beta is folded into the horizon).

Details from "The N Implementation Details of RLHF with PPO" (Huang et al. 2024) and TRL:
dropout off; log-probs at the sampling temperature; plain sampling; left padding with position
ids; a penalty on the score of a sample that never produced the end token.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, Literal

import torch

from .. import distributed
from ..gae import compute_gae
from ..losses import clipped_surrogate_loss, value_loss
from .data import check_tokenizer
from .policy import Critic, PolicyWithValue, Samples, encode_prompts, response_logprobs, sample

__all__ = ["RLHFConfig", "FixedKLController", "AdaptiveKLController", "shaped_rewards", "token_gae",
           "masked_mean", "masked_whiten", "check_scores", "PromptSampler", "PPORLHF"]


@dataclass(frozen=True)
class RLHFConfig:
    """Every knob of PPO-RLHF; validated at construction."""
    batch_size: int = 64            #: prompts (samples) per iteration
    max_new_tokens: int = 24        #: response length limit
    temperature: float = 1.0        #: sampling temperature, also used in every log-prob
    epochs: int = 4                 #: PPO epochs over each batch
    minibatches: int = 4            #: minibatches per epoch
    lr: float = 3e-4                #: Adam learning rate
    clip_eps: float = 0.2           #: policy ratio clip
    value_clip_eps: float = 0.2     #: value clip (0 turns value clipping off)
    vf_coef: float = 0.1            #: weight of the value loss
    gamma: float = 1.0              #: discount over tokens
    lam: float = 0.95               #: GAE lambda over tokens
    kl_coef: float = 0.05           #: beta, the KL penalty coefficient (initial value if adaptive)
    adaptive_kl: bool = False       #: adapt beta toward target_kl
    target_kl: float = 3.0          #: adaptive controller target, nats per sample
    kl_horizon: int = 10_000        #: adaptive controller horizon, samples
    whiten_rewards: bool = False    #: scale shaped rewards to unit std (no mean shift)
    whiten_advantages: bool = True  #: whiten advantages over the batch's real tokens
    missing_eos_penalty: float = 1.0  #: subtracted from the score of a sample without the end token
    critic: Literal["shared", "separate"] = "shared"  #: value head on the policy trunk, or its own model
    max_grad_norm: float = 1.0      #: gradient-norm clip

    def __post_init__(self):
        _require("batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1")
        _require("minibatches", self.minibatches, 1 <= self.minibatches <= self.batch_size
                 and self.batch_size % self.minibatches == 0, f"a divisor of batch_size={self.batch_size}")
        for name in ("max_new_tokens", "epochs", "kl_horizon"):
            _require(name, getattr(self, name), getattr(self, name) >= 1, "an integer >= 1")
        for name in ("temperature", "lr", "clip_eps", "target_kl", "max_grad_norm"):
            _require(name, getattr(self, name), getattr(self, name) > 0, "> 0")
        for name in ("gamma", "lam"):
            _require(name, getattr(self, name), 0 < getattr(self, name) <= 1, "in (0, 1]")
        for name in ("kl_coef", "vf_coef", "value_clip_eps", "missing_eos_penalty"):
            _require(name, getattr(self, name), getattr(self, name) >= 0, ">= 0")
        _require("critic", self.critic, self.critic in ("shared", "separate"), "'shared' or 'separate'")

    def replace(self, **changes) -> "RLHFConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _require(name, value, ok, allowed):
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid: must be {allowed}")


# ---------------------------------------------------------------- KL controllers (eq. 10.2)
class FixedKLController:
    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, kl: float, n_samples: int) -> None:
        pass


class AdaptiveKLController:
    """Proportional control of beta toward ``target`` nats per sample (Ziegler et al. 2019)."""

    def __init__(self, kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, kl: float, n_samples: int) -> None:
        error = min(max((kl - self.target) / self.target, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon


# ---------------------------------------------------------------- pure maths
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the real tokens (``mask`` = 1); pads come out as 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def shaped_rewards(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                   kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards of eq. 10.1 and the per-token KL estimate (k1), both ``(B, R)``, 0 on pads."""
    kl = (logp - ref_logp) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(1) - 1).clamp(min=0).long()                      # (B,) index of the last real token
    rewards[torch.arange(len(score), device=score.device), last] += score
    return rewards, kl


def token_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """GAE over the tokens of each response with ``compute_gae``: ``(B, R)`` in, ``(B, R)`` out.

    Token t's next value is V(s_{t+1}); the last real token is terminal (the episode ends), and
    pads after it carry no reward, no value and no advantage."""
    values = values * mask
    nxt = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    last = (mask.sum(1, keepdim=True) - 1).clamp(min=0)
    pos = torch.arange(mask.shape[1], device=mask.device)[None]
    terminated = (pos >= last).float()                                # last real token and pads after it
    adv, ret = compute_gae((rewards * mask).T, values.T, nxt.T, terminated.T, torch.zeros_like(terminated.T),
                           gamma, lam)                                # compute_gae wants (T, N) = (R, B)
    return adv.T * mask, ret.T * mask


def check_scores(scores, batch: int) -> torch.Tensor:
    """Raise a clear error unless a reward function gave ``batch`` finite numbers."""
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"reward_fn must return a torch.Tensor of shape ({batch},); got {type(scores).__name__}")
    if tuple(scores.shape) != (batch,):
        raise ValueError(f"reward_fn returned shape {tuple(scores.shape)}; expected ({batch},), one score per sample")
    bad = (~torch.isfinite(scores)).nonzero().flatten()
    if len(bad):
        raise ValueError(f"reward_fn returned non-finite scores (NaN or inf) at rows {bad[:8].tolist()}: "
                         f"{scores[bad[:8]].tolist()}")
    return scores.float()


class PromptSampler:
    """Encodes every prompt once (clear errors for empty or too-long ones) and draws seeded batches."""

    def __init__(self, tok, prompts: list[str], max_positions: int, max_new_tokens: int, seed: int, device):
        check_tokenizer(tok)
        self.ids, self.mask = encode_prompts(tok, list(prompts), max_positions, max_new_tokens, device)
        self.gen = torch.Generator().manual_seed(seed)
        self.eos_id, self.pad_id = tok.eos_token_id, tok.pad_token_id

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n prompts with replacement, left padding trimmed to the longest drawn: ``(n, P)`` each."""
        rows = torch.randint(len(self.ids), (n,), generator=self.gen).to(self.ids.device)
        ids, mask = self.ids[rows], self.mask[rows]
        keep = int(mask.sum(1).max())
        return ids[:, -keep:], mask[:, -keep:]


def trim(s: Samples) -> Samples:
    """Drop columns that are padding in every row: the prompts' common left padding and the responses'
    common right padding (a minibatch of short samples then costs less; results are unchanged)."""
    width = max(1, int(s.response_mask.sum(1).max()))
    keep = int(s.query_mask.sum(1).max())
    return Samples(s.query[:, -keep:], s.query_mask[:, -keep:], s.response[:, :width], s.response_mask[:, :width],
                   s.ended)


def setup_lm_trainer(trainer, policy, tok, prompts, reward_fn, ref, seed: int) -> None:
    """What PPO-RLHF and GRPO share: device, rank, seeded prompt sampler and sampling generator,
    a frozen reference (a copy of ``policy`` unless given), and ``policy`` set trainable."""
    trainer.reward_fn, trainer.seed = reward_fn, seed
    trainer.device = next(policy.parameters()).device
    trainer.dist = distributed.info()       # under torchrun: own prompts and samples per rank, mean gradients
    rank_seed = seed + 1000 * trainer.dist.rank
    trainer.prompts = PromptSampler(tok, prompts, policy.config.n_positions, trainer.cfg.max_new_tokens, rank_seed,
                                    trainer.device)
    trainer.ref = (ref if ref is not None else copy.deepcopy(policy)).eval().requires_grad_(False)
    policy.requires_grad_(True)
    trainer.gen = torch.Generator(device=trainer.device).manual_seed(rank_seed)
    trainer.iteration = 0


def probe_reward_fn(trainer) -> None:
    """Call reward_fn on two short samples now, so a broken one fails before any training."""
    q, m = trainer.prompts.draw(2)
    s = sample(trainer.model, q, m, 2, trainer.prompts.eos_id, trainer.prompts.pad_id, trainer.cfg.temperature,
               torch.Generator(device=trainer.device).manual_seed(trainer.seed + 1))
    check_scores(trainer.reward_fn(s), 2)


class PPORLHF:
    """PPO on a causal LM with a KL penalty to a frozen reference (Chapter 10).

    ``reward_fn(samples) -> (B,)`` scores whole samples (the reward model, normalised).
    ``policy`` is trained in place; ``ref`` defaults to a frozen copy of it."""

    def __init__(self, policy, tok, prompts: list[str], reward_fn: Callable[[Samples], torch.Tensor],
                 config: RLHFConfig | None = None, ref=None, seed: int = 0):
        self.cfg = cfg = config or RLHFConfig()
        self.tok = tok
        setup_lm_trainer(self, policy, tok, prompts, reward_fn, ref, seed)
        self.model = PolicyWithValue(policy).to(self.device).eval()  # eval: no dropout
        if cfg.critic == "separate":                  # the critic's own head; the shared one stays untrained
            self.critic = Critic(copy.deepcopy(policy.transformer)).to(self.device).eval()
            params = list(policy.parameters()) + list(self.critic.parameters())
        else:
            self.critic, params = None, list(self.model.parameters())
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=1e-5)
        self.kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon) if cfg.adaptive_kl \
            else FixedKLController(cfg.kl_coef)
        probe_reward_fn(self)

    # ------------------------------------------------------------ one iteration
    def step(self) -> dict:
        cfg, t0 = self.cfg, time.perf_counter()
        # --- collect: sample, score, log-probs of policy and reference
        q, m = self.prompts.draw(cfg.batch_size)
        s = trim(sample(self.model, q, m, cfg.max_new_tokens, self.prompts.eos_id, self.prompts.pad_id,
                        cfg.temperature, self.gen))
        t_gen = time.perf_counter()
        mask = s.response_mask.float()
        with torch.no_grad():
            old = response_logprobs(self.model, s, cfg.temperature)
            values = self.critic(s) if self.critic else old["values"]
            ref_logp = response_logprobs(self.ref, s, cfg.temperature)["logp"]
            raw = check_scores(self.reward_fn(s), len(mask))
            score = raw - cfg.missing_eos_penalty * (~s.ended).float()
            # --- shape rewards, GAE over tokens
            rewards, kl = shaped_rewards(score, old["logp"], ref_logp, mask, self.kl_ctl.value)
            if cfg.whiten_rewards:
                rewards = masked_whiten(rewards, mask, shift_mean=False)
            adv, returns = token_gae(rewards, values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                adv = masked_whiten(adv, mask)
        t_score = time.perf_counter()
        # --- update: epochs of minibatches
        stats = self._update(s, mask, old["logp"], values, adv, returns)
        kl_seq = self._mean_over_ranks(kl.sum(1).mean())
        stats.update(iteration=self.iteration, score=raw.mean().item(), kl=kl_seq, kl_coef=self.kl_ctl.value,
                     non_score_reward=(-self.kl_ctl.value * kl).sum(1).mean().item(),
                     response_len=mask.sum(1).mean().item(), ended=s.ended.float().mean().item(),
                     time_generate=t_gen - t0, time_score=t_score - t_gen,
                     time_update=time.perf_counter() - t_score, time_iter=time.perf_counter() - t0)
        self.kl_ctl.update(kl_seq, cfg.batch_size)
        self.iteration += 1
        self.last_samples = s
        return stats

    def _update(self, s: Samples, mask, logp_old, values_old, adv, returns) -> dict:
        cfg, B = self.cfg, len(mask)
        size, sums, n = B // cfg.minibatches, {}, 0
        for _ in range(cfg.epochs):
            order = torch.randperm(B, generator=self.gen, device=self.device) if self.device.type != "cpu" \
                else torch.randperm(B, generator=self.gen)
            for k in range(cfg.minibatches):
                idx = order[k * size:(k + 1) * size]
                mb = trim(s.index(idx))                                # (b, w): only this minibatch's width
                w = mb.response.shape[1]
                info = self._minibatch(mb, mask[idx, :w].bool(), logp_old[idx, :w], values_old[idx, :w],
                                       adv[idx, :w], returns[idx, :w])
                for key, v in info.items():
                    sums[key] = sums.get(key, 0.0) + v
                n += 1
        return {k: v / n for k, v in sums.items()}

    def _minibatch(self, s: Samples, m, logp_old, values_old, adv, returns) -> dict:
        cfg = self.cfg
        out = response_logprobs(self.model, s, cfg.temperature, with_entropy=True)
        values = self.critic(s) if self.critic else out["values"]
        pg_loss, info = clipped_surrogate_loss(out["logp"][m], logp_old[m], adv[m], cfg.clip_eps)
        vf_loss = value_loss(values[m], returns[m], values_old[m], cfg.value_clip_eps or None)
        loss = pg_loss + cfg.vf_coef * vf_loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"iteration {self.iteration}: loss is {loss.item()} "
                                     f"(policy {pg_loss.item()}, value {vf_loss.item()})")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = self.optimizer.param_groups[0]["params"]
        distributed.average_grads_(params)                             # data-parallel: mean over ranks
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        self.optimizer.step()
        return {"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(),
                "entropy": out["entropy"][m].mean().item(), "approx_kl": info["approx_kl_k3"].item(),
                "clip_fraction": info["clip_fraction"].item()}

    def _mean_over_ranks(self, x: torch.Tensor) -> float:
        """The mean of a scalar over ranks, so every rank's KL controller sees the same KL."""
        x = x.detach().reshape(1).clone()
        distributed.average_(x)
        return x.item()

    # ------------------------------------------------------------ many iterations
    def train(self, iterations: int, callback: Callable[[dict], None] | None = None,
              progress_bar: bool = True, tensorboard_log=None) -> list[dict]:
        """Run ``iterations`` PPO iterations; ``callback(stats)`` after each; returns all stats
        (also written to TensorBoard under ``tensorboard_log/PPO_RLHF_<k>`` when given)."""
        return run_steps(self, iterations, callback, progress_bar, "PPO-RLHF", "it", "kl", tensorboard_log)


def run_steps(trainer, n: int, callback, progress_bar: bool, desc: str, unit: str, finite_key: str,
              tensorboard_log=None) -> list[dict]:
    """``n`` calls of ``trainer.step()`` with a progress bar (rank 0 only), stopping on a non-finite
    ``stats[finite_key]``; ``callback(stats)`` after each step; each row to TensorBoard (rank 0)
    when ``tensorboard_log`` is a folder. Shared by PPO-RLHF and GRPO."""
    from ..progress import progress
    from ..tblog import tb_writer

    history = []
    tb = tb_writer(tensorboard_log, desc.replace("-", "_"), step_key="iteration") \
        if tensorboard_log is not None and trainer.dist.is_main else None
    with progress(n, progress_bar and trainer.dist.is_main, desc=desc, unit=unit) as bar:
        for _ in range(n):
            stats = trainer.step()
            if not math.isfinite(stats[finite_key]):
                raise FloatingPointError(f"{desc} iteration {stats['iteration']}: {finite_key} is {stats[finite_key]}")
            if callback is not None:
                callback(stats)
            history.append(stats)
            if tb is not None:
                tb.log(stats)
            bar.update(1)
            bar.set_postfix(score=f"{stats['score']:.2f}", kl=f"{stats['kl']:.2f}", refresh=False)
    if tb is not None:
        tb.close()
    return history
