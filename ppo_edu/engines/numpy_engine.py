"""The NumPy update engine (``PPOConfig.backend="numpy"``, the default): Chapter 12.

The same PPO update as :mod:`ppo_edu.engines.torch_engine`, with the gradient derived by hand
(:meth:`ppo_edu.fastmlp.NumpyActorCritic.loss_and_grad`) and Adam on one flat vector
(:class:`ppo_edu.fastmlp.Adam`): for 64-unit MLPs on a CPU, PyTorch's per-operation overhead
costs more than the arithmetic. ``tests/test_ppo.py`` checks that both engines give the same
parameters.
"""
from __future__ import annotations

import numpy as np
import torch

from ..fastmlp import Adam
from .base import Engine, check_finite

__all__ = ["NumpyEngine"]


class NumpyEngine(Engine):
    """Hand-derived gradients and a flat-vector Adam on the views :class:`Engine` sets up."""

    def __init__(self, model, config):
        super().__init__(model, config)
        self.optimizer = Adam(self.flat.data, config.lr, eps=config.adam_eps)

    def update_minibatch(self, obs, actions, logp_old, adv, returns, old_values, *, lr, clip_eps) -> dict:
        """One gradient step on one minibatch; returns its diagnostics."""
        cfg = self.config
        self.flat.grad.fill(0.0)
        info = self.fast.loss_and_grad(obs, actions, logp_old, adv, returns, old_values,
                                       clip_eps=clip_eps, vf_clip=cfg.vf_clip, ent_coef=cfg.ent_coef,
                                       vf_coef=cfg.vf_coef)
        check_finite(info)
        self.average_gradients()  # data-parallel: mean gradient over ranks
        info["grad_norm"] = float(np.sqrt(np.dot(self.flat.grad, self.flat.grad)))
        if cfg.max_grad_norm is not None:  # eq. 6.3: rescale the whole gradient to norm <= max_grad_norm
            self.flat.grad *= min(1.0, cfg.max_grad_norm / (info["grad_norm"] + 1e-6))
        self.optimizer.lr = lr
        self.optimizer.step(self.flat.grad)
        return info

    def state_dict(self) -> dict:
        opt = self.optimizer
        return {"m": torch.from_numpy(opt.m.copy()), "v": torch.from_numpy(opt.v.copy()), "t": opt.t}

    def load_state_dict(self, state: dict) -> None:
        if "m" not in state:
            return
        n = self.flat.data.shape
        for k in ("m", "v"):
            if tuple(state[k].shape) != n:
                raise ValueError(f"optimiser state {k} has shape {tuple(state[k].shape)}, but the network has "
                                 f"{n[0]} parameters")
        self.optimizer.m[:], self.optimizer.v[:], self.optimizer.t = state["m"].numpy(), state["v"].numpy(), state["t"]
