"""The two update engines behind one interface (ppo_edu.engines)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from ppo_edu import PPOConfig, distributed
from ppo_edu.engines import Engine, NumpyEngine, TorchEngine, make_engine
from ppo_edu.networks import ActorCritic

OBS = spaces.Box(-np.inf, np.inf, (4,), np.float32)
CFG = PPOConfig(n_envs=4, n_steps=32, n_epochs=2, n_minibatches=2, ent_coef=0.01)


def engine(backend: str, seed: int = 0) -> Engine:
    torch.manual_seed(seed)
    return make_engine(ActorCritic(OBS, spaces.Discrete(2)), CFG.replace(backend=backend))


def minibatch(B: int = 64, seed: int = 0):
    """(obs, actions, logp_old, adv, returns, old_values) shaped like a CartPole minibatch."""
    rng = np.random.default_rng(seed)
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    return (f32(rng.standard_normal((B, 4))), rng.integers(0, 2, B), f32(np.full(B, np.log(0.5))),
            f32(rng.standard_normal(B)), f32(rng.standard_normal(B)), np.zeros(B, np.float32))


def test_make_engine_builds_the_engine_the_backend_names():
    assert type(engine("numpy")) is NumpyEngine and type(engine("torch")) is TorchEngine


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_gradient_averaging_sees_the_gradient_and_the_step_uses_the_average(monkeypatch, backend):
    """Data-parallel training averages ``flat.grad`` and steps on the result. Stand in for two
    ranks whose gradients cancel: averaging must see this rank's (non-zero) gradient, and the
    step must then move nothing. The torch engine passes only because ``zero_grad(set_to_none=False)``
    keeps every ``p.grad`` a view of ``flat.grad``: with a plain ``zero_grad()``, backward() writes
    fresh tensors, averaging sees zeros, and the step uses this rank's own gradient."""
    seen = []

    def cancelling_ranks(x):
        seen.append(float(np.abs(np.asarray(x)).sum()))
        x[...] = 0.0

    e = engine(backend)
    before = e.flat.data.copy()
    monkeypatch.setattr(distributed, "average_", cancelling_ranks)
    for seed in range(2):  # the second step starts from gradients the first one left behind
        info = e.update_minibatch(*minibatch(seed=seed), lr=1e-2, clip_eps=0.2)
        assert seen[-1] > 0 and info["grad_norm"] == 0.0
    np.testing.assert_array_equal(e.flat.data, before)
    for p in e.model.parameters():  # each parameter's gradient is still a view of the flat buffer
        assert np.shares_memory(p.grad.numpy(), e.flat.grad)


def test_both_engines_take_the_same_step_and_act_alike():
    a, b = engine("numpy"), engine("torch")
    ia = a.update_minibatch(*minibatch(), lr=1e-3, clip_eps=0.2)
    ib = b.update_minibatch(*minibatch(), lr=1e-3, clip_eps=0.2)
    np.testing.assert_allclose(a.flat.data, b.flat.data, atol=1e-6)
    assert ia.keys() == ib.keys() and ia["policy_loss"] == pytest.approx(ib["policy_loss"], rel=1e-5)
    obs = minibatch()[0]
    acts = [e.act(obs, np.random.default_rng(3))[0] for e in (a, b)]
    np.testing.assert_array_equal(*acts)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_optimiser_state_round_trips_and_the_other_engines_state_is_ignored(backend):
    e = engine(backend)
    e.update_minibatch(*minibatch(), lr=1e-3, clip_eps=0.2)
    fresh = engine(backend)
    fresh.flat.data[:] = e.flat.data  # what PPO.load does: the weights, then the optimiser's state
    fresh.load_state_dict(e.state_dict())
    for f in (e, fresh):
        f.update_minibatch(*minibatch(seed=1), lr=1e-3, clip_eps=0.2)
    np.testing.assert_array_equal(fresh.flat.data, e.flat.data)
    other = engine("torch" if backend == "numpy" else "numpy")
    other.load_state_dict(e.state_dict())  # a checkpoint of the other engine: the optimiser starts afresh
    state = other.state_dict()
    assert state["t"] == 0 if "t" in state else state["torch"]["state"] == {}


def test_a_non_finite_loss_stops_before_the_step():
    e = engine("torch")
    before = e.flat.data.copy()
    obs, act, logp, adv, ret, val = minibatch()
    with pytest.raises(FloatingPointError, match=r"value_loss is (nan|inf)"):
        e.update_minibatch(obs, act, logp, adv, np.full_like(ret, np.inf), val, lr=1e-3, clip_eps=0.2)
    np.testing.assert_array_equal(e.flat.data, before)
