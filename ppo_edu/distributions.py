"""Log-probabilities and entropies of the two policy families, as pure functions (Chapters 4
and 7). ``ActorCritic`` uses ``torch.distributions``; tests check these agree. The Gaussian
log-prob takes torch tensors or NumPy arrays: the NumPy engine (``fastmlp``) acts with it.
Two places compute eq. 7.1 their own way and keep it, because each rounding is part of a
training path's exact numbers: ``ActorCritic`` (torch's ``Normal``, the torch engine's loss) and
``NumpyActorCritic.loss_and_grad`` (written with the variance its gradient reuses).

Categorical over logits z (eq. 4.1)::

    log pi(a) = z_a - logsumexp(z),         H = -sum_a pi(a) log pi(a)

Diagonal Gaussian with mean mu and log standard deviation log_sigma (eq. 7.1, 7.2)::

    log pi(a) = sum_d [ -(a_d - mu_d)^2 / (2 sigma_d^2) - log sigma_d - log(2 pi) / 2 ]
    H         = sum_d [ log sigma_d + (1 + log(2 pi)) / 2 ]
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["categorical_log_prob", "categorical_entropy", "gaussian_log_prob", "gaussian_entropy"]

LOG_2PI = math.log(2.0 * math.pi)


def categorical_log_prob(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log pi(a|s) for logits ``(B, A)`` and integer actions ``(B,)`` -> ``(B,)``."""
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    return log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H[pi(.|s)] for logits ``(B, A)`` -> ``(B,)``."""
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    return -(log_probs.exp() * log_probs).sum(-1)


def gaussian_log_prob(mean, log_std, actions):
    """log N(a; mu, sigma^2) summed over action dims (eq. 7.1): mean/actions ``(B, D)``, log_std ``(D,)``
    -> ``(B,)``; torch tensors or NumPy arrays (then all three NumPy)."""
    exp = torch.exp if isinstance(mean, torch.Tensor) else np.exp
    z = (actions - mean) * exp(-log_std)                              # (B, D) standardised actions
    return -0.5 * (z * z).sum(-1) - log_std.sum(-1) - 0.5 * LOG_2PI * mean.shape[-1]


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy of a diagonal Gaussian, summed over dims: log_std ``(D,)`` or ``(B, D)`` -> scalar or ``(B,)``."""
    return (log_std + 0.5 * (1.0 + LOG_2PI)).sum(-1)
