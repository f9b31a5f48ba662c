"""What PPO-RLHF (Chapter 10) and GRPO (Chapter 11) share: the language-model trainer base.

``LMTrainer`` holds the plumbing: a frozen reference model, a seeded prompt sampler, sampling,
checking the reward function's scores, the epochs-of-minibatches loop, and the training loop
with its progress bar; and the KL controllers of eq. 10.2, which both trainers can use for beta.
A subclass builds its models and optimiser (``build``), collects and
scores a batch (``step``) and takes one gradient step on one minibatch (``minibatch_step``).
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Callable, ContextManager

import torch

from .. import distributed
from .data import check_tokenizer
from .policy import Samples, encode_prompts, sample

__all__ = ["check_scores", "PromptSampler", "trim", "clip_grad_norm_", "FixedKLController", "AdaptiveKLController",
           "kl_controller", "LMTrainer"]


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


def clip_grad_norm_(params, max_norm: float) -> torch.Tensor:
    """Scale the gradients down to a total norm of ``max_norm`` when they exceed it; returns the norm before.
    The same numbers as ``torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)``, bit for bit,
    less its multiply by exactly 1 when nothing is clipped: on cpu-tiny most PPO steps are not clipped,
    and that pass over every gradient was about 2% of the update."""
    params = [p for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
    if not bool(max_norm / (norm + 1e-6) >= 1):                       # also a NaN or inf norm, as torch's does
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
    return norm


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


def kl_controller(cfg):
    """beta's controller for a config with ``kl_coef``, ``adaptive_kl``, ``adaptive_kl_target`` and
    ``kl_horizon`` (``RLHFConfig`` and ``GRPOConfig``): adaptive (eq. 10.2) or fixed."""
    if cfg.adaptive_kl:
        return AdaptiveKLController(cfg.kl_coef, cfg.adaptive_kl_target, cfg.kl_horizon)
    return FixedKLController(cfg.kl_coef)


class LMTrainer:
    """The shared base of ``PPORLHF`` and ``GRPO``. ``reward_fn(samples) -> (B,)`` scores whole
    samples; ``policy`` is trained in place; ``ref`` defaults to a frozen copy of it.

    Subclasses set ``name``, ``unit`` and ``finite_key`` (the statistic that must stay finite),
    and implement ``build``, ``step`` and ``minibatch_step``."""

    name, unit, finite_key = "LM trainer", "step", "loss"

    def __init__(self, policy, tok, prompts: list[str], reward_fn: Callable[[Samples], torch.Tensor],
                 config, ref=None, seed: int = 0):
        self.cfg, self.tok, self.reward_fn, self.seed = config, tok, reward_fn, seed
        self.device = next(policy.parameters()).device
        self.dist = distributed.info()       # under torchrun: own prompts and samples per rank, mean gradients
        rank_seed = seed + 1000 * self.dist.rank
        self.prompts = PromptSampler(tok, prompts, policy.config.n_positions, config.max_new_tokens, rank_seed,
                                     self.device)
        self.ref = (ref if ref is not None else copy.deepcopy(policy)).eval().requires_grad_(False)
        policy.requires_grad_(True)
        self.gen = torch.Generator(device=self.device).manual_seed(rank_seed)
        self.iteration = 0
        self._minibatch_hooks: list[Callable[[], ContextManager]] = []
        self.build(policy)
        self.probe_reward_fn()

    def build(self, policy) -> None:
        """Set ``self.model`` (the module that samples), ``self.optimizer`` and anything else."""
        raise NotImplementedError

    # ------------------------------------------------------------ collect
    def generate(self, ids: torch.Tensor, mask: torch.Tensor) -> Samples:
        """Sample one response per prompt row at the configured temperature, trimmed."""
        cfg = self.cfg
        return trim(sample(self.model, ids, mask, cfg.max_new_tokens, self.prompts.eos_id, self.prompts.pad_id,
                           cfg.temperature, self.gen))

    def score(self, s: Samples) -> tuple[torch.Tensor, torch.Tensor]:
        """``(raw, penalised)`` scores ``(B,)``: the reward function's, then minus the missing-end-token penalty."""
        raw = check_scores(self.reward_fn(s), len(s.response))
        return raw, raw - self.cfg.missing_eos_penalty * (~s.ended).float()

    def probe_reward_fn(self) -> None:
        """Call reward_fn on two short samples now, so a broken one fails before any training."""
        q, m = self.prompts.draw(2)
        s = sample(self.model, q, m, 2, self.prompts.eos_id, self.prompts.pad_id, self.cfg.temperature,
                   torch.Generator(device=self.device).manual_seed(self.seed + 1))
        check_scores(self.reward_fn(s), 2)

    # ------------------------------------------------------------ update
    def step(self) -> dict:
        """One iteration: collect, score, update; returns its statistics."""
        raise NotImplementedError

    def minibatch_step(self, s: Samples, mask: torch.Tensor, **batch) -> dict:
        """One gradient step on one minibatch; returns its diagnostics as floats."""
        raise NotImplementedError

    def minibatch_order(self, n: int) -> torch.Tensor:
        """The order of the ``n`` samples in one epoch (a permutation on ``self.device``)."""
        raise NotImplementedError

    def update(self, s: Samples, mask: torch.Tensor, **batch: torch.Tensor | None) -> dict:
        """``n_epochs`` passes of ``n_minibatches`` shuffled minibatches over the batch ``s``; returns
        the diagnostics averaged over minibatch steps. ``batch`` holds per-token ``(B, R)`` or
        per-sample ``(B,)`` tensors (or None), cut to each minibatch's rows and width (``(B, R, V)`` ones too).
        The epochs end early when ``stop_early(info)`` says so."""
        cfg, B = self.cfg, len(mask)
        size, sums, n, stop = B // cfg.n_minibatches, {}, 0, False
        for _ in range(cfg.n_epochs):
            order = self.minibatch_order(B)
            for k in range(cfg.n_minibatches):
                idx = order[k * size:(k + 1) * size]
                mb = trim(s.index(idx))                                # (b, w): only this minibatch's width
                w = mb.response.shape[1]
                cut = {key: None if x is None else x[idx, :w] if x.dim() >= 2 else x[idx] for key, x in batch.items()}
                with contextlib.ExitStack() as hooks:
                    for hook in self._minibatch_hooks:
                        hooks.enter_context(hook())
                    info = self.minibatch_step(mb, mask[idx, :w], **cut)
                for key, v in info.items():
                    sums[key] = sums.get(key, 0.0) + v
                n += 1
                stop = self.stop_early(info)
                if stop:
                    break
            if stop:
                break
        self.last_update_steps, self.last_update_stopped = n, stop
        return {k: v / n for k, v in sums.items()}

    def stop_early(self, info: dict) -> bool:
        """Whether to end the epochs after a minibatch step with diagnostics ``info`` (never, here)."""
        return False

    @contextlib.contextmanager
    def minibatch_hook(self, hook: Callable[[], ContextManager]):
        """Inside this ``with`` block, every minibatch step runs inside ``with hook():`` (memory
        accounting uses it to count the tensors autograd saves)."""
        self._minibatch_hooks.append(hook)
        try:
            yield self
        finally:
            self._minibatch_hooks.remove(hook)

    def _mean_over_ranks(self, x: torch.Tensor) -> float:
        """The mean of a scalar over ranks, so every rank's KL controller sees the same KL."""
        x = x.detach().reshape(1).clone()
        distributed.average_(x)
        return x.item()

    # ------------------------------------------------------------ many iterations
    def run(self, n: int, callback: Callable[[dict], None] | None = None, progress_bar: bool = True,
            tensorboard_log=None) -> list[dict]:
        """``n`` calls of ``step()`` with a progress bar (rank 0 only), stopping on a non-finite
        ``stats[finite_key]``; ``callback(stats)`` after each step; each row to TensorBoard (rank 0)
        when ``tensorboard_log`` is a folder. Returns all statistics."""
        from ..progress import progress
        from ..tblog import tb_writer

        history = []
        tb = tb_writer(tensorboard_log, self.name.replace("-", "_"), step_key="iteration") \
            if tensorboard_log is not None and self.dist.is_main else None
        with progress(n, progress_bar and self.dist.is_main, desc=self.name, unit=self.unit) as bar:
            for _ in range(n):
                stats = self.step()
                value = stats[self.finite_key]
                if not math.isfinite(value):
                    raise FloatingPointError(f"{self.name} iteration {stats['iteration']}: "
                                             f"{self.finite_key} is {value}")
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
