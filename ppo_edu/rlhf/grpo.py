"""GRPO: Group Relative Policy Optimization (Chapter 11; Shao et al. 2024, DeepSeekMath).

No value model. For each prompt, draw a group of G samples, score them, and use the score's
z-value inside its group as the advantage of every token of that sample (eq. 11.1)::

    A_i = (score_i - mean(score_group)) / (std(score_group) + eps)

The KL to the reference moves from the reward into the loss, estimated per token with k3
(eq. 11.2), which is never negative::

    loss = -mean_t min(ratio_t A, clip(ratio_t) A) + beta * mean_t k3_t,
    k3_t = exp(logp_ref - logp) - (logp_ref - logp) - 1

Means run over all real tokens of the batch (token-level averaging).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .. import distributed
from ..losses import clipped_surrogate_loss, kl_k3
from .policy import Samples, response_logprobs, sample
from .ppo import _require, check_scores, probe_reward_fn, run_steps, setup_lm_trainer, trim

__all__ = ["GRPOConfig", "group_advantages", "grpo_loss", "GRPO"]


@dataclass(frozen=True)
class GRPOConfig:
    """Every knob of GRPO; validated at construction."""
    prompts_per_step: int = 16      #: distinct prompts per step
    group_size: int = 4             #: samples per prompt (G); prompts_per_step * G samples per step
    max_new_tokens: int = 24        #: response length limit
    temperature: float = 1.0        #: sampling temperature, also used in every log-prob
    epochs: int = 1                 #: passes over each batch (1 with 1 minibatch: ratio is 1, clipping inactive)
    minibatches: int = 1            #: minibatches per epoch
    lr: float = 3e-4                #: Adam learning rate
    clip_eps: float = 0.2           #: policy ratio clip
    beta: float = 0.04              #: weight of the k3 KL to the reference in the loss
    missing_eos_penalty: float = 1.0  #: subtracted from the score of a sample without the end token
    max_grad_norm: float = 1.0      #: gradient-norm clip

    def __post_init__(self):
        for name in ("prompts_per_step", "max_new_tokens", "epochs", "minibatches"):
            _require(name, getattr(self, name), getattr(self, name) >= 1, "an integer >= 1")
        _require("group_size", self.group_size, self.group_size >= 2, "an integer >= 2 (a group needs a spread)")
        _require("minibatches", self.minibatches, self.batch_size % self.minibatches == 0,
                 f"a divisor of prompts_per_step * group_size = {self.batch_size}")
        for name in ("temperature", "lr", "clip_eps", "max_grad_norm"):
            _require(name, getattr(self, name), getattr(self, name) > 0, "> 0")
        for name in ("beta", "missing_eos_penalty"):
            _require(name, getattr(self, name), getattr(self, name) >= 0, ">= 0")

    @property
    def batch_size(self) -> int:
        return self.prompts_per_step * self.group_size

    def replace(self, **changes) -> "GRPOConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def group_advantages(scores: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """Eq. 11.1 for ``scores`` laid out as consecutive groups of ``group_size``: ``(B,)`` -> ``(B,)``."""
    if scores.ndim != 1 or len(scores) % group_size:
        raise ValueError(f"scores of shape {tuple(scores.shape)} do not split into groups of {group_size}")
    g = scores.view(-1, group_size)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + eps)).view(-1)


def grpo_loss(logp: torch.Tensor, logp_old: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_eps: float, beta: float) -> tuple[torch.Tensor, dict]:
    """Eq. 11.2 over the real tokens. ``logp``, ``logp_old``, ``ref_logp``, ``mask``: ``(B, R)``;
    ``advantages``: ``(B,)``, one per sample."""
    m = mask.bool()
    adv_tok = advantages[:, None].expand_as(logp)                    # (B, R): the sample's advantage
    pg_loss, info = clipped_surrogate_loss(logp[m], logp_old[m], adv_tok[m], clip_eps)
    kl = kl_k3(ref_logp[m], logp[m])                                  # KL(pi || pi_ref) from samples of pi
    info["kl_k3"] = kl.detach()
    return pg_loss + beta * kl, info


class GRPO:
    """GRPO on a causal LM (Chapter 11). ``reward_fn(samples) -> (B,)``; ``policy`` is trained in place."""

    def __init__(self, policy, tok, prompts: list[str], reward_fn: Callable[[Samples], torch.Tensor],
                 config: GRPOConfig | None = None, ref=None, seed: int = 0):
        self.cfg = cfg = config or GRPOConfig()
        setup_lm_trainer(self, policy, tok, prompts, reward_fn, ref, seed)
        self.model = policy.eval()                                    # eval: no dropout
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, eps=1e-5)
        probe_reward_fn(self)

    def step(self) -> dict:
        cfg, t0 = self.cfg, time.perf_counter()
        # --- collect: G samples per prompt, scored; group-relative advantages
        q, m = self.prompts.draw(cfg.prompts_per_step)
        q, m = q.repeat_interleave(cfg.group_size, 0), m.repeat_interleave(cfg.group_size, 0)
        s = trim(sample(self.model, q, m, cfg.max_new_tokens, self.prompts.eos_id, self.prompts.pad_id,
                        cfg.temperature, self.gen))
        t_gen = time.perf_counter()
        mask = s.response_mask.float()
        with torch.no_grad():
            raw = check_scores(self.reward_fn(s), len(mask))
            adv = group_advantages(raw - cfg.missing_eos_penalty * (~s.ended).float(), cfg.group_size)
            ref_logp = response_logprobs(self.ref, s, cfg.temperature)["logp"]
            # pi_old is needed once any update precedes a minibatch (several epochs or minibatches)
            several = cfg.epochs * cfg.minibatches > 1
            logp_old = response_logprobs(self.model, s, cfg.temperature)["logp"] if several else None
        t_score = time.perf_counter()
        # --- update
        sums, n, size = {}, 0, cfg.batch_size // cfg.minibatches
        for _ in range(cfg.epochs):
            order = torch.randperm(cfg.batch_size, generator=torch.Generator().manual_seed(self.seed + self.iteration))
            for k in range(cfg.minibatches):
                idx = order[k * size:(k + 1) * size].to(self.device)
                mb = trim(s.index(idx))                                # (b, w): only this minibatch's width
                w = mb.response.shape[1]
                info = self._minibatch(mb, mask[idx, :w], None if logp_old is None else logp_old[idx, :w],
                                       ref_logp[idx, :w], adv[idx])
                for key, v in info.items():
                    sums[key] = sums.get(key, 0.0) + v
                n += 1
        stats = {k: v / n for k, v in sums.items()}
        stats.update(iteration=self.iteration, score=raw.mean().item(), response_len=mask.sum(1).mean().item(),
                     ended=s.ended.float().mean().item(), time_generate=t_gen - t0, time_score=t_score - t_gen,
                     time_update=time.perf_counter() - t_score, time_iter=time.perf_counter() - t0)
        self.iteration += 1
        self.last_samples = s
        return stats

    def _minibatch(self, s: Samples, mask, logp_old, ref_logp, adv) -> dict:
        out = response_logprobs(self.model, s, self.cfg.temperature)
        logp = out["logp"]
        old = logp.detach() if logp_old is None else logp_old         # one epoch: pi_old is pi itself
        loss, info = grpo_loss(logp, old, ref_logp, adv, mask, self.cfg.clip_eps, self.cfg.beta)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"GRPO step {self.iteration}: loss is {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_grads_(self.model.parameters())            # data-parallel: mean over ranks
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        kl_seq = ((logp.detach() - ref_logp) * mask).sum(1).mean()     # k1 per sample, comparable to PPO's
        return {"loss": loss.item(), "kl_k3": info["kl_k3"].item(), "kl": kl_seq.item(),
                "clip_fraction": info["clip_fraction"].item()}

    def train(self, steps: int, callback: Callable[[dict], None] | None = None, progress_bar: bool = True,
              tensorboard_log=None) -> list[dict]:
        """Run ``steps`` GRPO steps; ``callback(stats)`` after each; returns all stats (also written
        to TensorBoard under ``tensorboard_log/GRPO_<k>`` when given)."""
        return run_steps(self, steps, callback, progress_bar, "GRPO", "step", "loss", tensorboard_log)
