"""The PPO objective: Chapter 5, "PPO".

With the probability ratio ``ratio = exp(logp_new - logp_old)`` = pi(a|s) / pi_old(a|s),
the clipped surrogate (eq. 5.3, Schulman et al. 2017, eq. 7) is::

    L_clip = E[ min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps) * A) ]

and we *minimise* its negative. Diagnostics use two estimators of KL(pi_old || pi_new)
from samples a ~ pi_old (Schulman, "Approximating KL divergence", 2020)::

    k1 = -log r                (unbiased, high variance, can be negative)
    k3 = (r - 1) - log r       (unbiased, always >= 0)
"""
from __future__ import annotations

import warnings

import torch

__all__ = ["clipped_surrogate_loss", "value_loss", "entropy_bonus", "approx_kl", "kl_k1", "kl_k3",
           "normalize_advantages"]


def kl_k1(logp_new: torch.Tensor, logp_old: torch.Tensor) -> torch.Tensor:
    """k1 estimate of KL(pi_old || pi_new) from samples of pi_old: mean of -log r (eq. 5.6, k1)."""
    return (logp_old - logp_new).mean()


def kl_k3(logp_new: torch.Tensor, logp_old: torch.Tensor) -> torch.Tensor:
    """k3 estimate of KL(pi_old || pi_new): mean of (r - 1) - log r, never negative (eq. 5.6, k3)."""
    log_ratio = logp_new - logp_old
    return (torch.expm1(log_ratio) - log_ratio).mean()


def approx_kl(logp_new: torch.Tensor, logp_old: torch.Tensor) -> dict[str, torch.Tensor]:
    """The k1 and k3 estimators of KL(pi_old || pi_new), averaged (eq. 5.6)."""
    return {"approx_kl_k1": kl_k1(logp_new, logp_old), "approx_kl_k3": kl_k3(logp_new, logp_old)}


def clipped_surrogate_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative clipped surrogate objective (eq. 5.3) and its diagnostics.

    Returns ``(loss, info)`` with ``info`` holding ``clip_fraction`` (eq. 5.7: share of samples whose
    ratio left [1 - clip_eps, 1 + clip_eps]) and the k1 / k3 KL estimates; all detached.
    """
    if not clip_eps > 0:
        raise ValueError(f"clip_eps={clip_eps!r} must be > 0")
    ratio = torch.exp(logp_new - logp_old)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    loss = -torch.min(unclipped, clipped).mean()
    with torch.no_grad():
        info = approx_kl(logp_new, logp_old)
        info["clip_fraction"] = ((ratio - 1.0).abs() > clip_eps).float().mean()
    return loss, info


def value_loss(
    values: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor | None = None,
    vf_clip: float | None = None,
    *,
    clip_eps: float | None = None,
) -> torch.Tensor:
    """Half mean squared error to the returns (eq. 4.2), optionally clipped (eq. 6.1).

    With ``old_values`` and ``vf_clip`` given (``PPOConfig.vf_clip``; None: no clipping), the new
    value may move at most ``vf_clip`` from the old one before the loss stops rewarding it::

        L_V = 0.5 * E[ max((V - R)^2, (V_old + clip(V - V_old, -vf_clip, vf_clip) - R)^2) ]

    ``clip_eps`` is the deprecated old name of ``vf_clip``.
    """
    if clip_eps is not None:                   # the old name, for one release (no import: this module stays pure)
        warnings.warn("value_loss(clip_eps=) is deprecated: use vf_clip=", DeprecationWarning, stacklevel=2)
        if vf_clip is not None:
            raise TypeError("value_loss got both clip_eps (deprecated) and vf_clip; pass only vf_clip")
        vf_clip = clip_eps
    unclipped = (values - returns) ** 2
    if old_values is None or vf_clip is None:
        return 0.5 * unclipped.mean()
    if not vf_clip > 0:
        raise ValueError(f"vf_clip={vf_clip!r} is invalid: allowed values are None or a number > 0")
    v_clipped = old_values + torch.clamp(values - old_values, -vf_clip, vf_clip)
    return 0.5 * torch.max(unclipped, (v_clipped - returns) ** 2).mean()


def entropy_bonus(entropy: torch.Tensor) -> torch.Tensor:
    """Mean policy entropy H[pi(.|s)] over the batch; the loss subtracts ``ent_coef`` times it."""
    return entropy.mean()


def normalize_advantages(advantages: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Whiten advantages over the whole minibatch (all axes): (A - mean) / (std + eps)."""
    return (advantages - advantages.mean()) / (advantages.std(unbiased=False) + eps)
