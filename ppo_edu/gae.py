"""Advantages and returns: Chapter 3, "Advantages and GAE".

Notation (all tensors are ``(T, N)``: time x environments):

* ``rewards[t]``      r_t, the reward received after the action at step t
* ``values[t]``       V(s_t)
* ``next_values[t]``  V(s_{t+1}) of the observation that *really* followed step t.
  For a truncated episode this is the final observation returned by the
  environment, not the reset observation of the next episode.
* ``terminated[t]``   the episode ended in a terminal state: no future reward
* ``truncated[t]``    the episode was cut by a time limit: the future exists,
  so we still bootstrap from V(s_{t+1}), but the next row belongs to a new episode

The TD residual (eq. 3.1) and the GAE recursion (eq. 3.2)::

    delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t)
    A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1},   done_t = terminated_t or truncated_t

and the value targets are ``returns = advantages + values`` (the lambda-return).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["compute_gae", "discounted_returns"]


def _check_shapes(**tensors: torch.Tensor) -> torch.Size:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(s != first for s in shapes.values()):
        raise ValueError(f"all inputs must share one (T, N) shape; got {shapes}")
    return torch.Size(first)


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (eq. 3.2), returning ``(advantages, returns)``.

    Termination cuts the bootstrap; termination *or* truncation cuts the recursion.
    The last row of the rollout has no successor inside the rollout, so its advantage
    is its TD residual alone (its bootstrap lives in ``next_values``).
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma={gamma!r} must be in [0, 1]")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam={lam!r} must be in [0, 1]")
    T, _ = _check_shapes(rewards=rewards, values=values, next_values=next_values,
                         terminated=terminated, truncated=truncated)
    not_terminal = 1.0 - terminated.to(values.dtype)  # (T, N)
    not_done = 1.0 - torch.logical_or(terminated.bool(), truncated.bool()).to(values.dtype)
    deltas = rewards + gamma * not_terminal * next_values - values  # (T, N), eq. 3.1
    decay = gamma * lam * not_done  # (T, N): what A_{t+1} is multiplied by
    # The recursion goes row by row, so it runs on NumPy copies: one torch operation on a row of
    # 16 numbers costs several times its NumPy twin (Chapter 12). Same float arithmetic, same result.
    d, c = (x.detach().cpu().numpy() for x in (deltas, decay))
    adv = np.zeros_like(d)
    running = np.zeros_like(d[0])  # A_{t+1}, (N,)
    for t in reversed(range(T)):
        running = d[t] + c[t] * running
        adv[t] = running
    advantages = torch.from_numpy(adv).to(values.device)
    return advantages, advantages + values


def discounted_returns(rewards: torch.Tensor, dones: torch.Tensor, gamma: float) -> torch.Tensor:
    """Reward-to-go G_t = r_t + gamma * (1 - done_t) * G_{t+1} (eq. 2.3), for REINFORCE.

    ``rewards`` and ``dones`` are ``(T, N)`` (or ``(T,)``); an episode still running at the
    end of the rollout is treated as ending there (no bootstrap).
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma={gamma!r} must be in [0, 1]")
    if rewards.shape != dones.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and dones {tuple(dones.shape)} must match")
    not_done = 1.0 - dones.to(rewards.dtype)
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * not_done[t] * running
        out[t] = running
    return out
