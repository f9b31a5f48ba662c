"""GRPO: Group Relative Policy Optimization (Chapter 11; Shao et al. 2024, DeepSeekMath).

No value model. For each prompt, draw a group of G samples, score them, and use the score's
z-value inside its group as the advantage of every token of that sample (eq. 11.1)::

    A_i = (score_i - mean(score_group)) / (std(score_group) + eps)

The KL to the reference moves from the reward into the loss, estimated per token with k3
(eq. 11.2), which is never negative::

    loss = -mean_t min(ratio_t A, clip(ratio_t) A) + beta * mean_t k3_t,   (beta: ``kl_coef``)
    k3_t = exp(logp_ref - logp) - (logp_ref - logp) - 1

Means run over all real tokens of the batch (token-level averaging). beta is fixed, or adapted
toward a target KL by Chapter 10's controller (eq. 10.2, ``adaptive_kl``).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .. import config as C
from .. import distributed
from ..losses import clipped_surrogate_loss, kl_k3
from .policy import Samples, response_logprobs
from .trainer import LMTrainer, clip_grad_norm_, kl_controller

__all__ = ["GRPOConfig", "group_advantages", "grpo_loss", "GRPO"]


@C.renamed_fields(epochs="n_epochs", minibatches="n_minibatches", beta="kl_coef")
@dataclass(frozen=True)
class GRPOConfig:
    """Every knob of GRPO; validated at construction."""
    prompts_per_step: int = 16      #: distinct prompts per step
    group_size: int = 4             #: samples per prompt (G); prompts_per_step * G samples per step
    max_new_tokens: int = 24        #: response length limit
    temperature: float = 1.0        #: sampling temperature, also used in every log-prob
    n_epochs: int = 1               #: passes over each batch (1 with 1 minibatch: ratio is 1, clipping inactive)
    n_minibatches: int = 1          #: minibatches per epoch
    lr: float = 3e-4                #: Adam learning rate
    clip_eps: float = 0.2           #: policy ratio clip
    kl_coef: float = 0.04           #: beta, the weight of the k3 KL to the reference in the loss (eq. 11.2)
    adaptive_kl: bool = False       #: adapt beta toward adaptive_kl_target (eq. 10.2), as PPO-RLHF can
    adaptive_kl_target: float = 3.0  #: the adaptive controller's target KL, nats per sample
    kl_horizon: int = 10_000        #: adaptive controller horizon, samples
    missing_eos_penalty: float = 1.0  #: subtracted from the score of a sample without the end token
    max_grad_norm: float = 1.0      #: gradient-norm clip

    def __post_init__(self):
        C.integers(self, "prompts_per_step", "max_new_tokens", "n_epochs", "n_minibatches", "kl_horizon")
        C.integers(self, "group_size", low=2)                          # a group of one has no spread
        C.divides(self, "n_minibatches", self.batch_size, "prompts_per_step * group_size")
        C.numbers(self, C.POSITIVE, "temperature", "lr", "clip_eps", "max_grad_norm", "adaptive_kl_target")
        C.numbers(self, C.NON_NEGATIVE, "kl_coef", "missing_eos_penalty")

    @property
    def batch_size(self) -> int:
        return self.prompts_per_step * self.group_size

    def replace(self, **changes) -> "GRPOConfig":
        """A copy with some fields changed (validated again)."""
        return C.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def group_advantages(scores: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """Eq. 11.1 for ``scores`` laid out as consecutive groups of ``group_size``: ``(B,)`` -> ``(B,)``."""
    if scores.ndim != 1 or len(scores) % group_size:
        raise ValueError(f"scores of shape {tuple(scores.shape)} do not split into groups of {group_size}")
    g = scores.view(-1, group_size)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + eps)).view(-1)


@C.renamed_kwargs(beta="kl_coef")
def grpo_loss(logp: torch.Tensor, logp_old: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_eps: float, kl_coef: float) -> tuple[torch.Tensor, dict]:
    """Eq. 11.2 over the real tokens. ``logp``, ``logp_old``, ``ref_logp``, ``mask``: ``(B, R)``;
    ``advantages``: ``(B,)``, one per sample."""
    m = mask.bool()
    adv_tok = advantages[:, None].expand_as(logp)                    # (B, R): the sample's advantage
    pg_loss, info = clipped_surrogate_loss(logp[m], logp_old[m], adv_tok[m], clip_eps)
    kl = kl_k3(ref_logp[m], logp[m])                                  # KL(pi || pi_ref) from samples of pi
    info["kl_k3"] = kl.detach()
    return pg_loss + kl_coef * kl, info


class GRPO(LMTrainer):
    """GRPO on a causal LM (Chapter 11). ``reward_fn(samples) -> (B,)``; ``policy`` is trained in place."""

    name, unit, finite_key = "GRPO", "step", "loss"

    def __init__(self, policy, tok, prompts: list[str], reward_fn: Callable[[Samples], torch.Tensor],
                 config: GRPOConfig | None = None, ref=None, seed: int = 0):
        super().__init__(policy, tok, prompts, reward_fn, config or GRPOConfig(), ref, seed)

    def build(self, policy) -> None:
        """The policy itself (no value model), Adam over it, and beta's controller (fixed unless ``adaptive_kl``)."""
        cfg = self.cfg
        self.model = policy.eval()                                    # eval: no dropout
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, eps=1e-5, fused=True)
        self.kl_ctl = kl_controller(cfg)

    def step(self) -> dict:
        """Collect G samples per prompt, group-relative advantages (eq. 11.1), update on eq. 11.2."""
        cfg, t0 = self.cfg, time.perf_counter()
        # --- collect: G samples per prompt, scored; group-relative advantages
        q, m = self.prompts.draw(cfg.prompts_per_step)
        s = self.generate(q.repeat_interleave(cfg.group_size, 0), m.repeat_interleave(cfg.group_size, 0))
        t_gen = time.perf_counter()
        mask = s.response_mask.float()
        with torch.no_grad():
            raw, score = self.score(s)
            adv = group_advantages(score, cfg.group_size)
            ref_logp = response_logprobs(self.ref, s, cfg.temperature)["logp"]
            # pi_old is needed once any update precedes a minibatch (several epochs or minibatches)
            several = cfg.n_epochs * cfg.n_minibatches > 1
            logp_old = response_logprobs(self.model, s, cfg.temperature)["logp"] if several else None
        t_score = time.perf_counter()
        # --- update
        stats = self.update(s, mask, logp_old=logp_old, ref_logp=ref_logp, adv=adv)
        stats.update(iteration=self.iteration, score=raw.mean().item(), response_len=mask.sum(1).mean().item(),
                     ended=s.ended.float().mean().item(), time_generate=t_gen - t0, time_score=t_score - t_gen,
                     time_update=time.perf_counter() - t_score, time_iter=time.perf_counter() - t0)
        if cfg.adaptive_kl:                                           # eq. 10.2 on the batch's KL (k1 per sample)
            stats["kl_coef"] = self.kl_ctl.value
            self.kl_ctl.update(self._mean_over_ranks(torch.tensor(stats["kl"])), cfg.batch_size)
        self.iteration += 1
        self.last_samples = s
        return stats

    def minibatch_order(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.iteration)).to(self.device)

    def minibatch_step(self, s: Samples, mask, logp_old, ref_logp, adv) -> dict:
        """One gradient step on eq. 11.2 for a minibatch; ``logp_old=None`` means pi_old is pi itself."""
        out = response_logprobs(self.model, s, self.cfg.temperature)
        logp = out["logp"]
        old = logp.detach() if logp_old is None else logp_old         # one epoch: pi_old is pi itself
        loss, info = grpo_loss(logp, old, ref_logp, adv, mask, self.cfg.clip_eps, self.kl_ctl.value)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"GRPO step {self.iteration}: loss is {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_grads_(self.model.parameters())            # data-parallel: mean over ranks
        clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        kl_seq = ((logp.detach() - ref_logp) * mask).sum(1).mean()     # k1 per sample, comparable to PPO's
        return {"loss": loss.item(), "kl_k3": info["kl_k3"].item(), "kl": kl_seq.item(),
                "clip_fraction": info["clip_fraction"].item()}

    _minibatch = minibatch_step    # the old private name; use minibatch_step

    def train(self, steps: int, callback: Callable[[dict], None] | None = None, progress_bar: bool = True,
              tensorboard_log=None) -> list[dict]:
        """Run ``steps`` GRPO steps; ``callback(stats)`` after each; returns all stats (also written
        to TensorBoard under ``tensorboard_log/GRPO_<k>`` when given)."""
        return self.run(steps, callback, progress_bar, tensorboard_log)
