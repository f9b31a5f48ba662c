"""What ``PPO`` asks of an update engine (Chapters 5 and 12).

An engine owns the network's parameters in one flat buffer, acts with them, and turns one
minibatch into one optimiser step. ``PPO`` runs the algorithm around it (rollouts, GAE,
epochs, minibatches, advantage whitening, KL early stop) and calls only the methods below.

Both engines act with the same NumPy forward pass (:class:`~ppo_edu.fastmlp.NumpyActorCritic`
on views of the torch parameters): sampling a rollout is not what the engines differ in, and
sharing it keeps the two backends' rollouts draw for draw the same.
"""
from __future__ import annotations

import math

import numpy as np

from .. import distributed
from ..fastmlp import FlatParams, NumpyActorCritic

__all__ = ["Engine", "check_finite"]


class Engine:
    """The interface: ``act``, ``value``, ``update_minibatch``, ``state_dict``, ``load_state_dict``.

    ``self.flat.data`` holds every parameter and ``self.flat.grad`` every gradient, as one
    float32 vector each; the torch parameters of ``model`` (and their ``.grad``) are views of
    them, so ``model`` stays the one source of truth for saving, loading and evaluation.
    """

    def __init__(self, model, config):
        self.model, self.config = model, config
        self.flat = FlatParams(model)                 # one buffer: data and grad
        self.fast = NumpyActorCritic(model, self.flat)  # the forward pass both engines act with

    # ---- acting ------------------------------------------------------------------------
    def act(self, obs: np.ndarray, rng: np.random.Generator, deterministic: bool = False,
            with_value: bool = True):
        """``(actions, logp, values)`` for a batch of observations ``(B, obs_dim)``."""
        return self.fast.act(obs, rng, deterministic=deterministic, with_value=with_value)

    def value(self, obs: np.ndarray) -> np.ndarray:
        """V(s) for a batch of observations: ``(B,)``."""
        return self.fast.value(obs)

    # ---- learning ----------------------------------------------------------------------
    def update_minibatch(self, obs, actions, logp_old, adv, returns, old_values, *,
                         lr: float, clip_eps: float) -> dict:
        """One gradient step of the PPO loss on one minibatch; returns its diagnostics
        (``policy_loss``, ``value_loss``, ``entropy``, ``approx_kl_k1``, ``approx_kl_k3``,
        ``clip_fraction``, ``grad_norm``)."""
        raise NotImplementedError

    def average_gradients(self) -> None:
        """Data-parallel training: replace ``flat.grad`` by its mean over all ranks (a no-op in
        one process). Every parameter's gradient is a view of ``flat.grad``, so one all_reduce
        averages them all."""
        distributed.average_(self.flat.grad)

    # ---- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The optimiser's state, as tensors (what ``PPO.save`` writes under ``"optimizer"``)."""
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        """Put back what :meth:`state_dict` returned; a ValueError says what does not fit.
        A state written by the other engine is ignored (the optimiser starts afresh)."""
        raise NotImplementedError


def check_finite(info: dict) -> None:
    """A non-finite loss, caught before the optimiser step turns every weight into NaN."""
    for k in ("policy_loss", "value_loss", "entropy"):
        if not math.isfinite(info[k]):
            raise FloatingPointError(f"{k} is {info[k]} (not finite); try a lower lr, norm_obs=True or "
                                     "norm_reward=True")
