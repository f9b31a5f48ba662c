"""The hand-written NumPy engine must agree with autograd on ppo_edu.losses."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from ppo_edu.fastmlp import Adam, FlatParams, NumpyActorCritic
from ppo_edu.losses import clipped_surrogate_loss, entropy_bonus, value_loss
from ppo_edu.networks import ActorCritic

OBS = spaces.Box(-np.inf, np.inf, (3,), np.float32)
SPACES = {"discrete": spaces.Discrete(2), "box": spaces.Box(-2.0, 2.0, (1,), np.float32)}
CLIP, ENT, VF = 0.2, 0.01, 0.5
KEYS = ["policy_loss", "value_loss", "entropy", "approx_kl_k1", "approx_kl_k3", "clip_fraction"]


def build(kind: str, shared: bool, seed: int):
    torch.manual_seed(seed)
    model = ActorCritic(OBS, SPACES[kind], shared=shared)
    flat = FlatParams(model)
    # step away from the initial point (near-uniform policy, log_std = 0) so every term matters
    rng = np.random.default_rng(seed)
    flat.data += rng.normal(0, 0.1, flat.data.shape).astype(np.float32)
    if kind == "box":
        flat.of(model.log_std)[0][:] = rng.uniform(-0.6, 0.4, 1)
    return model, flat, NumpyActorCritic(model, flat)


def minibatch(model: ActorCritic, seed: int, B: int = 64):
    rng = np.random.default_rng(seed + 1000)
    obs = rng.normal(0, 1.5, (B, 3)).astype(np.float32)
    with torch.no_grad():
        if model.discrete:
            actions = rng.integers(0, 2, B)
        else:
            actions, _, _ = model.act(torch.from_numpy(obs))
            actions = actions.numpy()
        logp, _, values = model.evaluate(torch.from_numpy(obs), torch.as_tensor(actions))
    logp, values = logp.numpy(), values.numpy()
    # logp_old near the current logp, with a quarter of the samples far outside the clip range
    shift = rng.normal(0, 0.05, B)
    far = rng.random(B) < 0.25
    shift[far] = rng.choice([-1.0, 1.0], far.sum()) * rng.uniform(0.4, 1.5, far.sum())
    logp_old = (logp + shift).astype(np.float32)
    advantages = rng.normal(0, 1, B).astype(np.float32)
    returns = (values + rng.normal(0, 1, B)).astype(np.float32)
    old_values = (values + rng.normal(0, 0.3, B)).astype(np.float32)  # some inside +-0.2, some out
    return obs, actions, logp_old, advantages, returns, old_values


def autograd_reference(model, obs, actions, logp_old, adv, returns, old_values, vf_clip):
    t = torch.as_tensor
    logp, entropy, values = model.evaluate(t(obs), t(actions))
    pg, info = clipped_surrogate_loss(logp, t(logp_old), t(adv), CLIP)
    vl = value_loss(values, t(returns), t(old_values), vf_clip) if vf_clip else value_loss(values, t(returns))
    ent = entropy_bonus(entropy)
    loss = pg - ENT * ent + VF * vl
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params)
    diag = {k: float(v) for k, v in info.items()}
    diag.update(policy_loss=pg.item(), value_loss=vl.item(), entropy=ent.item())
    return dict(zip(params, grads)), diag


CASES = [(kind, shared, vf_clip) for kind in ("discrete", "box") for shared in (False, True)
         for vf_clip in (None, 0.2)]


@pytest.mark.parametrize("kind,shared,vf_clip", CASES,
                         ids=[f"{k}-{'shared' if s else 'separate'}-vfclip{v}" for k, s, v in CASES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_and_grad_match_autograd(kind, shared, vf_clip, seed):
    model, flat, fast = build(kind, shared, seed)
    batch = minibatch(model, seed)
    obs, actions, logp_old, adv, returns, old_values = batch
    flat.grad.fill(0.0)
    info = fast.loss_and_grad(obs, actions, logp_old, adv, returns, old_values,
                              clip_eps=CLIP, vf_clip=vf_clip, ent_coef=ENT, vf_coef=VF)
    ref_grads, ref_info = autograd_reference(model, *batch, vf_clip)

    # the minibatch exercises every branch
    assert 0.1 < ref_info["clip_fraction"] < 0.5
    for k in KEYS:
        assert info[k] == pytest.approx(ref_info[k], rel=1e-4, abs=1e-6), k

    assert np.abs(flat.grad).max() > 0
    for name, p in model.named_parameters():
        got = p.grad.numpy()                      # a view of flat.grad
        ref = ref_grads[p].numpy()
        scale = float(np.abs(ref).max())
        assert scale > 0, name
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * scale, err_msg=name)
    # the per-parameter views tile the flat buffer
    np.testing.assert_array_equal(np.concatenate([p.grad.numpy().ravel() for p in model.parameters()]),
                                  flat.grad)


def test_loss_and_grad_accumulates():
    model, flat, fast = build("box", True, 3)
    batch = minibatch(model, 3)
    kw = dict(clip_eps=CLIP, vf_clip=0.2, ent_coef=ENT, vf_coef=VF)
    flat.grad.fill(0.0)
    fast.loss_and_grad(*batch, **kw)
    once = flat.grad.copy()
    fast.loss_and_grad(*batch, **kw)
    np.testing.assert_allclose(flat.grad, 2 * once, rtol=1e-6, atol=1e-9)


def test_flat_params_share_memory_with_the_model():
    model, flat, _ = build("discrete", False, 4)
    first = next(model.parameters())
    flat.data[0] = 123.0
    assert first.view(-1)[0].item() == 123.0
    with torch.no_grad():
        first.view(-1)[1] = -7.0
    assert flat.data[1] == -7.0
    assert flat.data.size == sum(p.numel() for p in model.parameters())


def test_adam_matches_torch():
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=50).astype(np.float32)
    ours = x0.copy()
    opt = Adam(ours, lr=1e-2, eps=1e-5)
    p = torch.nn.Parameter(torch.from_numpy(x0.copy()))
    ref = torch.optim.Adam([p], lr=1e-2, eps=1e-5)
    scales = np.logspace(-6, 1, 50).astype(np.float32)  # tiny gradients exercise eps
    for _ in range(10):
        g = (rng.normal(size=50) * scales).astype(np.float32)
        opt.step(g)
        p.grad = torch.from_numpy(g.copy())
        ref.step()
    assert np.abs(ours - x0).max() > 0.05  # it moved
    np.testing.assert_allclose(ours, p.detach().numpy(), rtol=0, atol=1e-6)
    assert opt.t == 10


def test_adam_updates_the_model_in_place():
    model, flat, _ = build("discrete", False, 5)
    before = [p.detach().clone() for p in model.parameters()]
    opt = Adam(flat.data, lr=1e-3)
    opt.step(np.ones_like(flat.data))
    for b, p in zip(before, model.parameters()):
        # the first Adam step moves every parameter by lr * g / (|g| + eps') = ~lr
        torch.testing.assert_close(p.detach(), b - 1e-3, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["discrete", "box"])
@pytest.mark.parametrize("shared", [False, True])
def test_numpy_act_matches_model(kind, shared):
    model, flat, fast = build(kind, shared, 6)
    obs = np.random.default_rng(6).normal(0, 1.5, (200, 3)).astype(np.float32)
    rng = np.random.default_rng(0)
    actions, logp, values = fast.act(obs, rng)
    t_obs = torch.from_numpy(obs)
    with torch.no_grad():
        ref_logp, _, ref_values = model.evaluate(t_obs, torch.as_tensor(actions))
        dist = model.distribution(t_obs)
    assert logp.shape == values.shape == (200,)
    assert actions.shape == ((200,) if kind == "discrete" else (200, 1))
    np.testing.assert_allclose(logp, ref_logp.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(values, ref_values.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast.value(obs), ref_values.numpy(), rtol=1e-5, atol=1e-5)
    det, det_logp, _ = fast.act(obs, rng, deterministic=True)
    if kind == "discrete":
        np.testing.assert_array_equal(det, dist.probs.argmax(-1).numpy())
        assert len(np.unique(actions)) == 2
    else:
        np.testing.assert_allclose(det, dist.mean.numpy(), rtol=1e-5, atol=1e-6)
        assert np.abs(actions - det).max() > 0.1  # sampling is not the mean
    with torch.no_grad():
        np.testing.assert_allclose(det_logp, model.evaluate(t_obs, torch.as_tensor(det))[0].numpy(),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["discrete", "box"])
def test_numpy_act_samples_follow_the_policy(kind):
    model, _, fast = build(kind, False, 7)
    obs = np.repeat(np.array([[0.5, -1.0, 2.0]], np.float32), 20_000, 0)
    actions, _, _ = fast.act(obs, np.random.default_rng(1))
    with torch.no_grad():
        dist = model.distribution(torch.from_numpy(obs[:1]))
    if kind == "discrete":
        freq = np.bincount(actions, minlength=2) / len(actions)
        np.testing.assert_allclose(freq, dist.probs[0].numpy(), atol=0.02)
    else:
        assert actions.mean() == pytest.approx(dist.mean.item(), abs=0.03)
        assert actions.std() == pytest.approx(dist.stddev.item(), rel=0.03)
