"""Actor-critic networks: Chapter 4, "Actor-critic".

The actor maps an observation to a distribution over actions: a categorical over logits
for ``Discrete`` spaces, a diagonal Gaussian ``N(mu(s), exp(log_std)^2)`` with a
state-independent ``log_std`` for ``Box`` spaces. The critic maps an observation to V(s).
By default they are separate MLPs (64-64, tanh); ``shared=True`` gives one trunk with two heads.
Orthogonal initialisation (Saxe et al. 2014) uses gain sqrt(2) for hidden layers, 0.01 for the
policy head (near-uniform first policy) and 1 for the value head.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.distributions import Categorical, Normal

from .distributions import gaussian_log_prob  # noqa: F401  (re-exported: chapter 7 imports it from here)

__all__ = ["ActorCritic", "layer_init", "mlp"]


def layer_init(layer: nn.Linear, gain: float = math.sqrt(2.0), bias: float = 0.0,
               orthogonal: bool = True) -> nn.Linear:
    """Orthogonal weights with the given gain and a constant bias (the PPO default)."""
    if orthogonal:
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.constant_(layer.bias, bias)
    return layer


def mlp(n_in: int, hidden: Sequence[int], n_out: int | None, out_gain: float,
        orthogonal: bool = True) -> nn.Sequential:
    """Linear-Tanh-...-Linear; with ``n_out=None`` the stack ends at the last hidden Tanh."""
    layers: list[nn.Module] = []
    sizes = [n_in, *hidden]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [layer_init(nn.Linear(a, b), orthogonal=orthogonal), nn.Tanh()]
    if n_out is not None:
        layers.append(layer_init(nn.Linear(sizes[-1], n_out), gain=out_gain, orthogonal=orthogonal))
    return nn.Sequential(*layers)


def _space_dims(observation_space, action_space) -> tuple[int, int, bool]:
    from gymnasium import spaces  # local: the pure modules stay importable without gymnasium

    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
        raise TypeError(f"observation space {observation_space} is not supported: "
                        "ppo_edu's MLP policies need a flat Box observation space")
    if isinstance(action_space, spaces.Discrete):
        return observation_space.shape[0], int(action_space.n), True
    if isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        return observation_space.shape[0], action_space.shape[0], False
    raise TypeError(f"action space {action_space} is not supported: use Discrete or a 1-D Box")


class ActorCritic(nn.Module):
    """Policy pi(a|s) and value V(s) for a Discrete or 1-D Box action space."""

    def __init__(self, observation_space, action_space, hidden: Sequence[int] = (64, 64),
                 shared: bool = False, orthogonal_init: bool = True, log_std_init: float = 0.0):
        super().__init__()
        obs_dim, act_dim, self.discrete = _space_dims(observation_space, action_space)
        self.obs_dim, self.act_dim, self.shared = obs_dim, act_dim, shared
        self.hidden = tuple(int(h) for h in hidden)
        if shared:
            self.trunk = mlp(obs_dim, self.hidden, None, 1.0, orthogonal_init)
            self.actor = layer_init(nn.Linear(self.hidden[-1], act_dim), 0.01, orthogonal=orthogonal_init)
            self.critic = layer_init(nn.Linear(self.hidden[-1], 1), 1.0, orthogonal=orthogonal_init)
        else:
            self.trunk = nn.Identity()
            self.actor = mlp(obs_dim, self.hidden, act_dim, 0.01, orthogonal_init)
            self.critic = mlp(obs_dim, self.hidden, 1, 1.0, orthogonal_init)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)))

    def distribution(self, obs: torch.Tensor) -> Categorical | Normal:
        """pi(.|s) for a batch of observations ``(B, obs_dim)``."""
        out = self.actor(self.trunk(obs))  # (B, act_dim)
        if self.discrete:  # argument validation off: it triples the cost on small batches
            return Categorical(logits=out, validate_args=False)
        return Normal(out, self.log_std.exp().expand_as(out), validate_args=False)

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(s) as ``(B,)``."""
        return self.critic(self.trunk(obs)).squeeze(-1)

    def _logp_entropy(self, dist, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.discrete:
            return dist.log_prob(actions.long()), dist.entropy()
        return dist.log_prob(actions).sum(-1), dist.entropy().sum(-1)  # independent dims add

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False):
        """Sample (or take the mode of) an action: returns ``(actions, logp, values)``."""
        dist = self.distribution(obs)
        if deterministic:
            actions = dist.probs.argmax(-1) if self.discrete else dist.mean
        else:
            actions = dist.sample()
        logp, _ = self._logp_entropy(dist, actions)
        return actions, logp, self.get_value(obs)

    def evaluate(self, obs: torch.Tensor, actions: torch.Tensor):
        """log pi(a|s), entropy H[pi(.|s)] and V(s) for stored actions, all ``(B,)``."""
        dist = self.distribution(obs)
        logp, entropy = self._logp_entropy(dist, actions)
        return logp, entropy, self.get_value(obs)

