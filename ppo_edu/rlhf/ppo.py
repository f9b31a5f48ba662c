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
import time
from dataclasses import dataclass
from typing import Callable, Literal

import torch

from .. import config as C
from .. import distributed
from ..gae import compute_gae
from ..losses import clipped_surrogate_loss, value_loss
from .policy import Critic, PolicyWithValue, Samples, response_logprobs
from .trainer import (AdaptiveKLController, FixedKLController, LMTrainer, PromptSampler, check_scores,
                      clip_grad_norm_, kl_controller, trim)

__all__ = ["RLHFConfig", "FixedKLController", "AdaptiveKLController", "shaped_rewards", "token_gae",
           "masked_mean", "masked_whiten", "update_kl", "check_scores", "PromptSampler", "trim", "PPORLHF"]


@C.renamed_fields(epochs="n_epochs", minibatches="n_minibatches", target_kl="adaptive_kl_target",
                  value_clip_eps=("vf_clip", lambda v: v or None, lambda v: v or 0.0))
@dataclass(frozen=True)
class RLHFConfig:
    """Every knob of PPO-RLHF; validated at construction."""
    batch_size: int = 64            #: prompts (samples) per iteration
    max_new_tokens: int = 24        #: response length limit
    temperature: float = 1.0        #: sampling temperature, also used in every log-prob
    n_epochs: int = 4               #: PPO epochs over each batch
    n_minibatches: int = 4          #: minibatches per epoch
    lr: float = 3e-4                #: Adam learning rate
    clip_eps: float = 0.2           #: policy ratio clip
    vf_clip: float | None = 0.2     #: value-clipping range (None: no value clipping)
    vf_coef: float = 0.1            #: weight of the value loss
    gamma: float = 1.0              #: discount over tokens
    lam: float = 0.95               #: GAE lambda over tokens
    kl_coef: float = 0.05           #: beta, the KL penalty coefficient (initial value if adaptive)
    adaptive_kl: bool = False       #: adapt beta toward adaptive_kl_target
    adaptive_kl_target: float = 3.0  #: the adaptive controller's target KL, nats per sample
    kl_horizon: int = 10_000        #: adaptive controller horizon, samples
    whiten_rewards: bool = False    #: scale shaped rewards to unit std (no mean shift)
    whiten_advantages: bool = True  #: whiten advantages over the batch's real tokens
    missing_eos_penalty: float = 1.0  #: subtracted from the score of a sample without the end token
    critic: Literal["shared", "separate"] = "shared"  #: value head on the policy trunk, or its own model
    max_grad_norm: float = 1.0      #: gradient-norm clip
    max_update_kl: float | None = None  #: end the epochs once a minibatch's exact KL(pi || pi_old) per token exceeds this
    ref_kl_coef: float = 0.0        #: weight of eq. 10.5's loss term, the exact KL(pi || pi_ref) per token

    def __post_init__(self):
        C.integers(self, "batch_size", "max_new_tokens", "n_epochs", "n_minibatches", "kl_horizon")
        C.divides(self, "n_minibatches", self.batch_size, "batch_size")
        C.numbers(self, C.POSITIVE, "temperature", "lr", "clip_eps", "adaptive_kl_target", "max_grad_norm")
        C.numbers(self, C.UNIT_INTERVAL, "gamma", "lam")
        C.numbers(self, C.NON_NEGATIVE, "kl_coef", "vf_coef", "missing_eos_penalty", "ref_kl_coef")
        C.optional_numbers(self, C.POSITIVE, "vf_clip", "max_update_kl")
        C.choice(self, "critic", ("shared", "separate"))

    def replace(self, **changes) -> "RLHFConfig":
        """A copy with some fields changed (validated again)."""
        return C.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


def update_kl(logp_all: torch.Tensor, logp_all_old: torch.Tensor) -> torch.Tensor:
    """Exact KL(pi || pi_old) per state, summed over the vocabulary and averaged over the states:
    ``(N, V)`` log-probs in, a scalar out. Unlike the sampled k1/k3 estimates it also sees probability
    that moved onto tokens the batch never sampled."""
    return (logp_all.exp() * (logp_all - logp_all_old)).sum(-1).mean()


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


class PPORLHF(LMTrainer):
    """PPO on a causal LM with a KL penalty to a frozen reference (Chapter 10).

    ``reward_fn(samples) -> (B,)`` scores whole samples (the reward model, normalised).
    ``policy`` is trained in place; ``ref`` defaults to a frozen copy of it."""

    name, unit, finite_key = "PPO-RLHF", "it", "kl"

    def __init__(self, policy, tok, prompts: list[str], reward_fn: Callable[[Samples], torch.Tensor],
                 config: RLHFConfig | None = None, ref=None, seed: int = 0):
        super().__init__(policy, tok, prompts, reward_fn, config or RLHFConfig(), ref, seed)

    def build(self, policy) -> None:
        """The policy with a value head (or a separate critic), Adam over both, and the KL controller."""
        cfg = self.cfg
        self.model = PolicyWithValue(policy).to(self.device).eval()  # eval: no dropout
        if cfg.critic == "separate":                  # the critic's own head; the shared one stays untrained
            self.critic = Critic(copy.deepcopy(policy.transformer)).to(self.device).eval()
            params = list(policy.parameters()) + list(self.critic.parameters())
        else:
            self.critic, params = None, list(self.model.parameters())
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=1e-5, fused=True)
        self.kl_ctl = kl_controller(cfg)

    # ------------------------------------------------------------ one iteration
    def step(self) -> dict:
        """Collect, shape the rewards (eq. 10.1), GAE over tokens, update, control beta (eq. 10.2)."""
        cfg, t0 = self.cfg, time.perf_counter()
        # --- collect: sample, score, log-probs of policy and reference
        s = self.generate(*self.prompts.draw(cfg.batch_size))
        t_gen = time.perf_counter()
        mask = s.response_mask.float()
        with torch.no_grad():
            old = response_logprobs(self.model, s, cfg.temperature, with_dist=cfg.max_update_kl is not None)
            values = self.critic(s) if self.critic else old["values"]
            ref = response_logprobs(self.ref, s, cfg.temperature, with_dist=cfg.ref_kl_coef > 0)
            raw, score = self.score(s)
            # --- shape rewards, GAE over tokens
            rewards, kl = shaped_rewards(score, old["logp"], ref["logp"], mask, self.kl_ctl.value)
            if cfg.whiten_rewards:
                rewards = masked_whiten(rewards, mask, shift_mean=False)
            adv, returns = token_gae(rewards, values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                adv = masked_whiten(adv, mask)
        t_score = time.perf_counter()
        # --- update: epochs of minibatches
        stats = self.update(s, mask, logp_old=old["logp"], values_old=values, adv=adv, returns=returns,
                            dist_old=old.get("logp_all"), dist_ref=ref.get("logp_all"))
        if cfg.max_update_kl is not None:
            stats.update(n_minibatch_steps=self.last_update_steps, early_stop=self.last_update_stopped)
        kl_seq = self._mean_over_ranks(kl.sum(1).mean())
        stats.update(iteration=self.iteration, score=raw.mean().item(), kl=kl_seq, kl_coef=self.kl_ctl.value,
                     non_score_reward=(-self.kl_ctl.value * kl).sum(1).mean().item(),
                     response_len=mask.sum(1).mean().item(), ended=s.ended.float().mean().item(),
                     time_generate=t_gen - t0, time_score=t_score - t_gen,
                     time_update=time.perf_counter() - t_score, time_iter=time.perf_counter() - t0)
        self.kl_ctl.update(kl_seq, cfg.batch_size)
        self.iteration += 1
        self.last_samples, self.last_kl = s, kl     # the batch and its per-token k1 (B, R), for callbacks
        return stats

    def minibatch_order(self, n: int) -> torch.Tensor:
        if self.device.type != "cpu":
            return torch.randperm(n, generator=self.gen, device=self.device)
        return torch.randperm(n, generator=self.gen)

    def minibatch_step(self, s: Samples, mask, logp_old, values_old, adv, returns, dist_old=None,
                       dist_ref=None) -> dict:
        """One gradient step on a minibatch of ``(b, w)`` tokens: Chapter 5's clipped surrogate (eq. 5.3) and
        Chapter 6's clipped value loss (eq. 6.1), both over the real tokens (``mask``). With ``dist_old``,
        pi_old's log-probs of the whole vocabulary ``(b, w, V)``, it also reports ``update_kl``; with
        ``dist_ref``, the reference's, it adds ``ref_kl_coef`` times the exact KL(pi || pi_ref) (eq. 10.5)."""
        cfg, m = self.cfg, mask.bool()
        out = response_logprobs(self.model, s, cfg.temperature, with_entropy=True,
                                with_dist="real" if dist_old is not None or dist_ref is not None else False)
        values = self.critic(s) if self.critic else out["values"]
        pg_loss, info = clipped_surrogate_loss(out["logp"][m], logp_old[m], adv[m], cfg.clip_eps)
        vf_loss = value_loss(values[m], returns[m], values_old[m], cfg.vf_clip)
        loss = pg_loss + cfg.vf_coef * vf_loss
        logp_all = out.get("logp_all")                                # (n, V) at the real tokens
        if dist_ref is not None:
            ref_kl = update_kl(logp_all, dist_ref[m])                   # the same sum over the vocabulary, to pi_ref
            loss = loss + cfg.ref_kl_coef * ref_kl
        if not torch.isfinite(loss):
            raise FloatingPointError(f"iteration {self.iteration}: loss is {loss.item()} "
                                     f"(policy {pg_loss.item()}, value {vf_loss.item()})")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = self.optimizer.param_groups[0]["params"]
        distributed.average_grads_(params)                             # data-parallel: mean over ranks
        clip_grad_norm_(params, cfg.max_grad_norm)
        self.optimizer.step()
        stats = {"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(),
                 "entropy": out["entropy"][m].mean().item(), "approx_kl": info["approx_kl_k3"].item(),
                 "clip_fraction": info["clip_fraction"].item()}
        if dist_ref is not None:
            stats["ref_kl"] = ref_kl.item()
        if dist_old is not None:
            stats["update_kl"] = update_kl(logp_all.detach(), dist_old[m]).item()
        return stats

    def stop_early(self, info: dict) -> bool:
        """End the epochs once the minibatch's exact KL to pi_old (before its step), averaged over ranks,
        exceeds ``max_update_kl``."""
        limit = self.cfg.max_update_kl
        return limit is not None and self._mean_over_ranks(torch.tensor(info["update_kl"])) > limit

    _minibatch = minibatch_step    # the old private name (book chapter 10 shows it); use minibatch_step

    # ------------------------------------------------------------ many iterations
    def train(self, iterations: int, callback: Callable[[dict], None] | None = None,
              progress_bar: bool = True, tensorboard_log=None) -> list[dict]:
        """Run ``iterations`` PPO iterations; ``callback(stats)`` after each; returns all stats
        (also written to TensorBoard under ``tensorboard_log/PPO_RLHF_<k>`` when given)."""
        return self.run(iterations, callback, progress_bar, tensorboard_log)
