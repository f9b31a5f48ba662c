"""The autograd update engine (``PPOConfig.backend="torch"``): the readable reference, Chapter 5.

One minibatch step is the PPO loss of Chapter 5 written with :mod:`ppo_edu.losses`,

    L = L_clip(theta) - c_ent * H[pi_theta] + c_V * L_V(theta)            (eqs. 5.3, 4.2)

then ``loss.backward()``, gradient-norm clipping (eq. 6.3) and ``torch.optim.Adam``. The
NumPy engine (:mod:`ppo_edu.engines.numpy_engine`) computes the same step by hand, faster.
"""
from __future__ import annotations

import copy

import torch

from ..losses import clipped_surrogate_loss, entropy_bonus, value_loss
from .base import Engine, check_finite

__all__ = ["TorchEngine"]


class TorchEngine(Engine):
    """``model.evaluate``, :mod:`ppo_edu.losses`, autograd and ``torch.optim.Adam``."""

    def __init__(self, model, config):
        super().__init__(model, config)
        self.optimizer = torch.optim.Adam(model.parameters(), config.lr, eps=config.adam_eps)

    def update_minibatch(self, obs, actions, logp_old, adv, returns, old_values, *, lr, clip_eps) -> dict:
        """One gradient step of the PPO loss on one minibatch; returns its diagnostics."""
        cfg, t = self.config, torch.as_tensor
        # -- the loss (eq. 5.3 policy, eq. 4.2 value, optionally clipped: eq. 6.1)
        logp, entropy, values = self.model.evaluate(t(obs), t(actions))
        pg_loss, info = clipped_surrogate_loss(logp, t(logp_old), t(adv), clip_eps)
        v_loss = (value_loss(values, t(returns), t(old_values), cfg.vf_clip) if cfg.vf_clip
                  else value_loss(values, t(returns)))
        ent = entropy_bonus(entropy)
        loss = pg_loss - cfg.ent_coef * ent + cfg.vf_coef * v_loss
        info = {k: float(v) for k, v in info.items()}
        info.update(policy_loss=pg_loss.item(), value_loss=v_loss.item(), entropy=ent.item())
        check_finite(info)
        # -- the gradient. set_to_none=False zeroes each p.grad in place, so it stays a view of
        # self.flat.grad and backward() accumulates into the flat buffer. The default
        # zero_grad() sets p.grad = None: backward() then makes new tensors, flat.grad stays 0,
        # and average_gradients() would average zeros while each rank stepped on its own
        # gradient, so the ranks drift apart (tests/test_engines.py guards this).
        self.optimizer.zero_grad(set_to_none=False)
        loss.backward()
        self.average_gradients()  # data-parallel: mean gradient over ranks
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm or float("inf"))
        info["grad_norm"] = float(norm)
        # -- the step
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        return info

    def state_dict(self) -> dict:
        return {"torch": copy.deepcopy(self.optimizer.state_dict())}  # a snapshot, as the NumPy engine's

    def load_state_dict(self, state: dict) -> None:
        if "torch" not in state:
            return
        try:
            self.optimizer.load_state_dict(state["torch"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise ValueError(f"optimiser state does not match the network: {err}") from None
        shapes = [(tuple(self.optimizer.state[p]["exp_avg"].shape), tuple(p.shape))
                  for p in self.model.parameters() if p in self.optimizer.state]
        if any(a != b for a, b in shapes):
            raise ValueError("optimiser state has moments of the wrong shape for the network")
