"""A hand-written forward and backward pass for ppo_edu's MLP actor-critic, in NumPy.

Why it exists (Chapter 12 measures it): a PPO minibatch on CartPole is 256 x 4 numbers
through two 64-64 MLPs. At that size PyTorch's per-operation overhead (autograd graph,
dispatch, optimiser bookkeeping) costs several times the arithmetic, so ``PPO``'s default
engine (:class:`ppo_edu.engines.NumpyEngine`, ``PPOConfig.backend="numpy"``) runs the update
with this module, and :class:`ppo_edu.engines.TorchEngine` (``backend="torch"``) is the readable
reference built on :mod:`ppo_edu.losses`. Both engines act with :class:`NumpyActorCritic`. Tests
check that one update with either engine gives the same parameters.

Everything works on *views*: the NumPy arrays share memory with the ``torch`` parameters
of :class:`~ppo_edu.networks.ActorCritic`, which :class:`FlatParams` packs into one buffer,
so the module stays the single source of truth for saving, loading and evaluation.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .distributions import gaussian_log_prob
from .networks import ActorCritic

__all__ = ["FlatParams", "NumpyActorCritic", "Adam"]


class FlatParams:
    """Re-home every parameter of ``module`` into one contiguous float32 buffer.

    ``self.data`` and ``self.grad`` are flat NumPy arrays; each parameter becomes a view of
    ``data`` (and its ``.grad`` a view of ``grad``), so one vector operation updates them all.
    """

    def __init__(self, module: nn.Module):
        params = list(module.parameters())
        total = sum(p.numel() for p in params)
        flat = torch.zeros(total, dtype=torch.float32)
        flat_grad = torch.zeros(total, dtype=torch.float32)
        offset = 0
        self.views: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for p in params:
            n = p.numel()
            flat[offset:offset + n].copy_(p.detach().reshape(-1))
            p.data = flat[offset:offset + n].view_as(p)
            p.grad = flat_grad[offset:offset + n].view_as(p)
            self.views[id(p)] = (p.data.numpy(), p.grad.numpy())
            offset += n
        self._keep = (flat, flat_grad)  # the torch owners of the memory
        self.data, self.grad = flat.numpy(), flat_grad.numpy()

    def of(self, p: nn.Parameter) -> tuple[np.ndarray, np.ndarray]:
        """(value, grad) NumPy views of one parameter."""
        return self.views[id(p)]


_ONES: dict[int, np.ndarray] = {}


def _ones(n: int) -> np.ndarray:
    """A cached vector of ones: ``ones @ g`` sums a batch faster than ``g.sum(0)``."""
    if n not in _ONES:
        _ONES[n] = np.ones(n, np.float32)
    return _ONES[n]


def _row_reduce(ufunc, x: np.ndarray) -> np.ndarray:
    """``ufunc.reduce(x, axis=1)`` of a ``(B, A)`` array, one column at a time when ``A`` is small:
    NumPy sets up a reduction over a short last axis in ~5 us at B = 256, a column operation in
    ~1 us. Below 8 terms NumPy sums left to right too, so the result is the same bit for bit."""
    if x.shape[1] >= 8:
        return ufunc.reduce(x, axis=1)
    out = x[:, 0].copy()
    for j in range(1, x.shape[1]):
        ufunc(out, x[:, j], out=out)
    return out


class _Dense:
    """One MLP as a list of (W, b, dW, db) views; W is (out, in) as in ``nn.Linear``."""

    def __init__(self, seq: nn.Module, flat: FlatParams):
        linears = [m for m in seq.modules() if isinstance(m, nn.Linear)]
        self.layers = [(flat.of(m.weight)[0], flat.of(m.bias)[0], flat.of(m.weight)[1], flat.of(m.bias)[1])
                       for m in linears]  # (W, b, dW, db)
        self.ends_with_activation = isinstance(list(seq.children())[-1], nn.Tanh) if len(
            list(seq.children())) else False

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        acts = [x]  # inputs of each layer; hidden ones are tanh outputs
        n = len(self.layers)
        for i, (w, b, _, _) in enumerate(self.layers):
            z = x @ w.T  # (B, out)
            z += b
            # np.tanh in place: on NumPy 2.x it is the fastest tanh here (Chapter 12, "tanh, measured")
            x = np.tanh(z, out=z) if (i < n - 1 or self.ends_with_activation) else z
            acts.append(x)
        return x, acts

    def backward(self, g: np.ndarray, acts: list[np.ndarray], need_input_grad: bool = False):
        """Accumulate dL/dW, dL/db given dL/d(output) ``g``; return dL/d(input) if asked.
        ``acts`` (from :meth:`forward`) is used up: its hidden activations are overwritten."""
        n = len(self.layers)
        ones = _ones(len(g))
        for i in reversed(range(n)):
            w, _, dw, db = self.layers[i]
            if i < n - 1 or self.ends_with_activation:
                y = acts[i + 1]  # no longer needed after this: tanh'(z) = 1 - tanh(z)^2 overwrites it
                np.multiply(y, y, out=y)
                np.subtract(1.0, y, out=y)
                g = np.multiply(g, y, out=y)
            dw += g.T @ acts[i]  # (out, in)
            db += ones @ g       # sum over the batch
            if i > 0 or need_input_grad:
                # a one-unit layer (the critic's head): its input gradient is an outer product,
                # which broadcasting computes in half the time of a matmul with inner size 1
                g = g * w if len(w) == 1 else g @ w
        return g if need_input_grad else None


class NumpyActorCritic:
    """Forward passes, log-probs and hand-derived gradients of the PPO loss for an ActorCritic."""

    def __init__(self, model: ActorCritic, flat: FlatParams):
        self.model, self.discrete, self.shared = model, model.discrete, model.shared
        self.trunk = _Dense(model.trunk, flat) if model.shared else None
        self.actor = _Dense(model.actor, flat)
        self.critic = _Dense(model.critic, flat)
        if not self.discrete:
            self.log_std, self.dlog_std = flat.of(model.log_std)

    # ---- inference -------------------------------------------------------------------
    def _features(self, obs):
        if self.trunk is None:
            return obs, obs, None
        h, cache = self.trunk.forward(obs)
        return h, h, cache

    def value(self, obs: np.ndarray) -> np.ndarray:
        return self.critic.forward(self._features(obs)[1])[0][:, 0]

    def act(self, obs: np.ndarray, rng: np.random.Generator, deterministic: bool = False,
            with_value: bool = True):
        """Sample actions; returns ``(actions, logp, values)`` as NumPy arrays.

        ``with_value=False`` skips the critic and returns ``values=None``: the rollout then
        evaluates V on all its observations in one batched pass, which is cheaper.
        """
        h_pi, h_v, _ = self._features(obs)
        out, _ = self.actor.forward(h_pi)
        values = self.critic.forward(h_v)[0][:, 0] if with_value else None
        if self.discrete:
            logp_all = out - _row_reduce(np.maximum, out)[:, None]
            logp_all -= np.log(np.exp(logp_all).sum(1, keepdims=True))
            if deterministic:
                actions = logp_all.argmax(1)
            else:  # inverse-CDF sampling: one uniform per row
                cdf = np.exp(logp_all).cumsum(1)
                u = rng.random((len(out), 1)) * cdf[:, -1:]
                # the cdf never falls, so cdf < u holds for the first `action` columns: count them, leaving
                # out the last column, which keeps the action at most A - 1 whatever the rounding
                actions = (cdf[:, :-1] < u).sum(1)
            logp = logp_all[np.arange(len(out)), actions]
            return actions, logp.astype(np.float32), values
        std = np.exp(self.log_std)
        actions = out if deterministic else out + std * rng.standard_normal(out.shape).astype(np.float32)
        return actions.astype(np.float32), gaussian_log_prob(out, self.log_std, actions).astype(np.float32), values

    # ---- the loss and its gradient ----------------------------------------------------
    def loss_and_grad(self, obs, actions, logp_old, advantages, returns, old_values, *,
                      clip_eps: float, vf_clip: float | None, ent_coef: float, vf_coef: float) -> dict:
        """Accumulate d(loss)/d(params) into the flat grad buffer and return diagnostics.

        loss = L_pg - ent_coef * H + vf_coef * L_V, exactly as the torch backend computes it
        from :func:`ppo_edu.losses.clipped_surrogate_loss` and :func:`ppo_edu.losses.value_loss`.
        """
        B = len(obs)
        h_pi, h_v, trunk_cache = self._features(obs)
        out, actor_cache = self.actor.forward(h_pi)
        v_out, critic_cache = self.critic.forward(h_v)
        values = v_out[:, 0]
        # -- policy: log-probs, entropy and their derivatives w.r.t. the actor's output
        if self.discrete:
            z = out - _row_reduce(np.maximum, out)[:, None]
            logp_all = z - np.log(_row_reduce(np.add, np.exp(z)))[:, None]  # (B, A)
            probs = np.exp(logp_all)
            taken = (np.arange(B), actions.astype(np.int64, copy=False))
            logp = logp_all[taken]
            entropy = -_row_reduce(np.add, probs * logp_all)  # (B,)
            dlogp_dout = -probs
            dlogp_dout[taken] += 1.0  # onehot(a) - softmax
            dent_dout = -probs * (logp_all + entropy[:, None])
        else:
            # eq. 7.1 written with the variance, whose pieces the gradient reuses; it rounds differently
            # from distributions.gaussian_log_prob (same value to ~1e-7), and results stay as they were
            inv_var = np.exp(-2.0 * self.log_std)
            diff = actions - out
            logp = -0.5 * (diff * diff * inv_var).sum(1) - self.log_std.sum() - 0.5 * np.log(
                2 * np.pi) * out.shape[1]
            entropy = np.full(B, self.log_std.sum() + 0.5 * out.shape[1] * (1.0 + np.log(2 * np.pi)),
                              dtype=np.float32)
            dlogp_dout = diff * inv_var
        # -- clipped surrogate (eq. 5.3): gradient flows only where the unclipped term is the min
        log_ratio = logp - logp_old
        ratio = np.exp(log_ratio)
        surr1 = ratio * advantages
        surr2 = np.minimum(np.maximum(ratio, 1 - clip_eps), 1 + clip_eps) * advantages
        active = surr1 <= surr2
        pg_loss = -np.where(active, surr1, surr2).sum() / B
        g_logp = np.where(active, surr1, 0.0) * (-1.0 / B)  # dL/dlogp = -ratio * A / B where active
        # -- value loss (eq. 4.2 / 6.1)
        err = values - returns
        if vf_clip is None:
            v_loss = 0.5 * np.dot(err, err) / B
            g_v = err / B
        else:
            dv = values - old_values
            err_c = old_values + np.clip(dv, -vf_clip, vf_clip) - returns
            use_unclipped = err * err >= err_c * err_c
            v_loss = 0.5 * np.maximum(err * err, err_c * err_c).sum() / B
            g_v = np.where(use_unclipped, err, err_c * (np.abs(dv) < vf_clip)) / B
        # -- backpropagate into the actor and critic
        g_out = g_logp[:, None] * dlogp_dout
        if self.discrete:
            g_out -= (ent_coef / B) * dent_dout
        else:
            g_logstd = (g_logp[:, None] * (diff * diff * inv_var - 1.0)).sum(0) - ent_coef
            self.dlog_std += g_logstd
        shared = self.trunk is not None
        g_h_pi = self.actor.backward(g_out.astype(np.float32), actor_cache, shared)
        g_h_v = self.critic.backward((vf_coef * g_v)[:, None].astype(np.float32), critic_cache, shared)
        if self.trunk is not None:
            self.trunk.backward(g_h_pi + g_h_v, trunk_cache)
        sum_log_ratio = log_ratio.sum()
        return {"policy_loss": float(pg_loss), "value_loss": float(v_loss),
                "entropy": float(entropy.sum()) / B,
                "approx_kl_k1": -float(sum_log_ratio) / B,
                "approx_kl_k3": float((ratio - 1.0).sum() - sum_log_ratio) / B,
                "clip_fraction": float(np.count_nonzero(np.abs(ratio - 1.0) > clip_eps)) / B}


class Adam:
    """Adam (Kingma & Ba 2015) on one flat parameter vector, step for step as ``torch.optim.Adam``."""

    def __init__(self, params: np.ndarray, lr: float, betas=(0.9, 0.999), eps: float = 1e-5):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = np.zeros_like(params)
        self.v = np.zeros_like(params)
        self.t = 0
        # scratch vectors, so a step allocates nothing; the denominator is float64, as it always was
        self._work = (np.empty_like(params), np.empty(params.shape, np.float64))

    def step(self, grad: np.ndarray) -> None:
        """m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
        params -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""
        b1, b2 = self.betas
        self.t += 1
        a, denom = self._work
        self.m *= b1
        self.m += np.multiply(grad, 1 - b1, out=a)
        self.v *= b2
        np.multiply(grad, 1 - b2, out=a)
        self.v += np.multiply(a, grad, out=a)
        np.divide(np.sqrt(self.v, out=a), np.sqrt(1 - b2 ** self.t), out=denom)
        denom += self.eps
        step = np.multiply(self.m, self.lr / (1 - b1 ** self.t), out=a)
        self.params -= np.divide(step, denom, out=denom)
