"""ActorCritic: distributions, acting, initialisation and space checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.distributions import Categorical, Normal

from ppo_edu.networks import ActorCritic, gaussian_log_prob

DISCRETE = spaces.Discrete(3)
BOX = spaces.Box(-1.0, 1.0, (2,), np.float32)


def linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def manual_mlp(layers: list[nn.Linear], x: torch.Tensor, last_activation: bool = False) -> torch.Tensor:
    """tanh(W x + b) through every layer, the last one linear unless asked otherwise."""
    for i, layer in enumerate(layers):
        x = x @ layer.weight.T + layer.bias
        if i < len(layers) - 1 or last_activation:
            x = torch.tanh(x)
    return x


def heads(model: ActorCritic, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(policy output, value) computed from the weights by hand."""
    if model.shared:
        h = manual_mlp(linears(model.trunk), obs, last_activation=True)
        return manual_mlp([model.actor], h), manual_mlp([model.critic], h)[:, 0]
    return manual_mlp(linears(model.actor), obs), manual_mlp(linears(model.critic), obs)[:, 0]


def perturb(model: nn.Module, seed: int = 0) -> None:
    """Move away from the near-uniform initial policy so the checks have something to see."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("shared", [False, True])
def test_discrete_evaluate_matches_categorical(obs_space4, shared):
    torch.manual_seed(0)
    model = ActorCritic(obs_space4, DISCRETE, shared=shared)
    perturb(model)
    obs = torch.randn(16, 4)
    actions = torch.randint(0, 3, (16,))
    logp, ent, value = model.evaluate(obs, actions)
    logits, v = heads(model, obs)
    dist = Categorical(logits=logits)
    torch.testing.assert_close(logp, dist.log_prob(actions))
    torch.testing.assert_close(ent, dist.entropy())
    torch.testing.assert_close(value, v)
    # and from first principles: log softmax, -sum p log p
    log_sm = logits - torch.logsumexp(logits, -1, keepdim=True)
    torch.testing.assert_close(logp, log_sm[torch.arange(16), actions])
    torch.testing.assert_close(ent, -(log_sm.exp() * log_sm).sum(-1))
    assert logp.shape == ent.shape == value.shape == (16,)
    assert ent.std() > 1e-3  # state-dependent: the perturbation worked


@pytest.mark.parametrize("shared", [False, True])
def test_box_evaluate_matches_normal(obs_space4, shared):
    torch.manual_seed(1)
    model = ActorCritic(obs_space4, BOX, shared=shared)
    perturb(model)
    with torch.no_grad():
        model.log_std.copy_(torch.tensor([-0.7, 0.4]))
    obs = torch.randn(16, 4)
    actions = torch.randn(16, 2)
    logp, ent, value = model.evaluate(obs, actions)
    mean, v = heads(model, obs)
    std = torch.tensor([-0.7, 0.4]).exp()
    dist = Normal(mean, std.expand_as(mean))
    torch.testing.assert_close(logp, dist.log_prob(actions).sum(-1))
    torch.testing.assert_close(ent, dist.entropy().sum(-1))
    torch.testing.assert_close(value, v)
    # closed form entropy: sum_i (0.5 + 0.5 log 2 pi + log sigma_i), the same for every state
    closed = 2 * (0.5 + 0.5 * math.log(2 * math.pi)) + (-0.7 + 0.4)
    torch.testing.assert_close(ent, torch.full((16,), closed))
    assert logp.shape == ent.shape == value.shape == (16,)


def test_act_shapes_and_consistency_discrete(obs_space4):
    torch.manual_seed(2)
    model = ActorCritic(obs_space4, DISCRETE)
    perturb(model)
    obs = torch.randn(10, 4)
    actions, logp, values = model.act(obs)
    assert actions.shape == (10,) and logp.shape == (10,) and values.shape == (10,)
    assert set(actions.tolist()) <= {0, 1, 2}
    logp2, _, values2 = model.evaluate(obs, actions)
    torch.testing.assert_close(logp, logp2)
    torch.testing.assert_close(values, values2)
    det, det_logp, _ = model.act(obs, deterministic=True)
    logits, _ = heads(model, obs)
    assert torch.equal(det, logits.argmax(-1))
    torch.testing.assert_close(det_logp, model.evaluate(obs, det)[0])
    assert not logp.requires_grad


def test_act_samples_follow_the_policy(obs_space4):
    torch.manual_seed(3)
    model = ActorCritic(obs_space4, DISCRETE)
    perturb(model)
    obs = torch.randn(1, 4).expand(20_000, 4)
    actions, _, _ = model.act(obs)
    freq = torch.bincount(actions, minlength=3).double() / len(actions)
    probs = model.distribution(obs[:1]).probs[0].double()
    torch.testing.assert_close(freq, probs, rtol=0, atol=0.02)


def test_act_shapes_and_consistency_box(obs_space4):
    torch.manual_seed(4)
    model = ActorCritic(obs_space4, BOX)
    perturb(model)
    obs = torch.randn(10, 4)
    actions, logp, values = model.act(obs)
    assert actions.shape == (10, 2) and logp.shape == (10,) and values.shape == (10,)
    torch.testing.assert_close(logp, model.evaluate(obs, actions)[0])
    det, _, _ = model.act(obs, deterministic=True)
    mean, _ = heads(model, obs)
    torch.testing.assert_close(det, mean)
    assert not torch.allclose(actions, det)  # sampling is not the mean


def assert_orthogonal(w: torch.Tensor, gain: float) -> None:
    w = w.detach().double()
    rows, cols = w.shape
    gram = w @ w.T if rows <= cols else w.T @ w
    torch.testing.assert_close(gram, gain ** 2 * torch.eye(min(rows, cols), dtype=torch.float64),
                               rtol=0, atol=1e-5 * max(gain ** 2, 1e-2))


@pytest.mark.parametrize("act_space", [DISCRETE, BOX], ids=["discrete", "box"])
def test_orthogonal_init_separate(obs_space4, act_space):
    torch.manual_seed(5)
    model = ActorCritic(obs_space4, act_space)
    actor, critic = linears(model.actor), linears(model.critic)
    n_out = 3 if act_space is DISCRETE else 2
    assert [tuple(layer.weight.shape) for layer in actor] == [(64, 4), (64, 64), (n_out, 64)]
    assert [tuple(layer.weight.shape) for layer in critic] == [(64, 4), (64, 64), (1, 64)]
    for layer in actor[:-1] + critic[:-1]:
        assert_orthogonal(layer.weight, math.sqrt(2))
    assert_orthogonal(actor[-1].weight, 0.01)
    assert_orthogonal(critic[-1].weight, 1.0)
    for layer in actor + critic:
        assert torch.all(layer.bias == 0)
    if act_space is BOX:
        assert torch.all(model.log_std == 0)


def test_orthogonal_init_shared(obs_space4):
    torch.manual_seed(6)
    model = ActorCritic(obs_space4, DISCRETE, shared=True)
    trunk = linears(model.trunk)
    assert [tuple(layer.weight.shape) for layer in trunk] == [(64, 4), (64, 64)]
    for layer in trunk:
        assert_orthogonal(layer.weight, math.sqrt(2))
    assert_orthogonal(model.actor.weight, 0.01)
    assert_orthogonal(model.critic.weight, 1.0)
    # one trunk: fewer parameters than two separate MLPs
    separate = ActorCritic(obs_space4, DISCRETE, shared=False)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(model) == (4 * 64 + 64) + (64 * 64 + 64) + (64 * 3 + 3) + (64 + 1)
    assert n(model) < n(separate)


def test_initial_policy_is_near_uniform(obs_space4):
    torch.manual_seed(7)
    model = ActorCritic(obs_space4, DISCRETE)
    probs = model.distribution(torch.randn(32, 4)).probs
    torch.testing.assert_close(probs, torch.full_like(probs, 1 / 3), rtol=0, atol=0.05)


@pytest.mark.parametrize("space", [spaces.MultiBinary(3),
                                   spaces.Dict({"a": spaces.Discrete(2)}),
                                   spaces.Box(-1, 1, (2, 2))], ids=["multibinary", "dict", "box2d"])
def test_unsupported_action_space_raises(obs_space4, space):
    with pytest.raises(TypeError, match="action space .* not supported"):
        ActorCritic(obs_space4, space)


def test_unsupported_observation_space_raises():
    with pytest.raises(TypeError, match="observation space .* not supported"):
        ActorCritic(spaces.Discrete(5), DISCRETE)


def test_shared_network_trains(obs_space4):
    """shared=True: gradients of both heads reach the one trunk."""
    torch.manual_seed(8)
    model = ActorCritic(obs_space4, BOX, shared=True)
    obs = torch.randn(8, 4)
    logp, ent, value = model.evaluate(obs, torch.randn(8, 2))
    assert logp.shape == ent.shape == value.shape == (8,)
    first = linears(model.trunk)[0].weight
    (g_pi,) = torch.autograd.grad(logp.sum(), first, retain_graph=True)
    (g_v,) = torch.autograd.grad(value.sum(), first)
    assert g_pi.abs().sum() > 0 and g_v.abs().sum() > 0


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 16), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_gaussian_log_prob_numpy(B, d, seed):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(B, d))
    log_std = rng.uniform(-2, 1, d)
    actions = mean + rng.normal(0, 2, (B, d))
    got = gaussian_log_prob(mean, log_std, actions)
    ref = Normal(torch.from_numpy(mean), torch.from_numpy(np.exp(log_std)).expand(B, d)).log_prob(
        torch.from_numpy(actions)).sum(-1).numpy()
    assert got.shape == (B,)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)


def test_one_gaussian_log_prob_for_torch_and_numpy():
    """networks re-exports distributions' function; NumPy and torch inputs give the same numbers."""
    from ppo_edu import distributions, fastmlp, networks

    assert networks.gaussian_log_prob is distributions.gaussian_log_prob is fastmlp.gaussian_log_prob
    rng = np.random.default_rng(3)
    mean, log_std, actions = rng.normal(size=(6, 3)), rng.normal(size=3), rng.normal(size=(6, 3))
    got_np = distributions.gaussian_log_prob(mean, log_std, actions)
    got_t = distributions.gaussian_log_prob(*(torch.from_numpy(x) for x in (mean, log_std, actions)))
    assert isinstance(got_np, np.ndarray) and got_np.shape == (6,)
    np.testing.assert_array_equal(got_np, got_t.numpy())
