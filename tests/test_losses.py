"""The PPO objective: clipped surrogate, KL estimators, value loss, advantage whitening."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ppo_edu.losses import (approx_kl, clipped_surrogate_loss, entropy_bonus, normalize_advantages,
                            value_loss)


def t64(x):
    return torch.as_tensor(np.asarray(x, np.float64))


# ---------------------------------------------------------------- clipped surrogate
def test_identical_policies(rng):
    logp = t64(rng.normal(size=32))
    adv = t64(rng.normal(size=32))
    loss, info = clipped_surrogate_loss(logp, logp.clone(), adv, 0.2)
    torch.testing.assert_close(loss, -adv.mean(), rtol=0, atol=1e-15)
    assert info["clip_fraction"].item() == 0.0
    assert info["approx_kl_k1"].item() == 0.0
    assert info["approx_kl_k3"].item() == 0.0


def test_hand_computed_values():
    eps = 0.2
    r = torch.tensor([1.1, 1.5, 0.5, 1.5, 0.5], dtype=torch.float64)
    a = torch.tensor([2.0, 1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    # per-sample min(rA, clip(r)A): 2.2 | min(1.5, 1.2)=1.2 | min(-0.5, -0.8)=-0.8
    #                               | min(-1.5, -1.2)=-1.5 | min(0.5, 0.8)=0.5     -> sum 1.6
    loss, info = clipped_surrogate_loss(torch.log(r), torch.zeros(5, dtype=torch.float64), a, eps)
    assert loss.item() == pytest.approx(-1.6 / 5, abs=1e-12)
    assert info["clip_fraction"].item() == pytest.approx(4 / 5)  # all but the 1.1


def test_gradient_is_zero_on_the_clipped_side_and_minus_rA_over_B_inside():
    eps, B = 0.2, 8
    ratio = torch.tensor([1.5, 2.0, 0.5, 0.3, 1.1, 0.9, 1.5, 0.5], dtype=torch.float64)
    adv = torch.tensor([1.0, 3.0, -1.0, -2.0, 1.5, -0.7, -1.0, 1.0], dtype=torch.float64)
    #  clipped, no gradient:  r > 1+eps & A > 0  (0, 1);  r < 1-eps & A < 0  (2, 3)
    #  inside the range:      (4, 5)
    #  outside but unclipped (the pessimistic side): r > 1+eps & A < 0 (6); r < 1-eps & A > 0 (7)
    logp_old = torch.tensor([-1.0, -0.3, -2.0, -0.1, -1.2, -0.5, -0.9, -1.5], dtype=torch.float64)
    logp_new = (logp_old + torch.log(ratio)).requires_grad_(True)
    loss, info = clipped_surrogate_loss(logp_new, logp_old, adv, eps)
    (grad,) = torch.autograd.grad(loss, logp_new)
    assert torch.all(grad[:4] == 0.0)
    expected = -ratio * adv / B
    torch.testing.assert_close(grad[4:], expected[4:], rtol=1e-12, atol=0)
    assert torch.all(grad[4:] != 0.0)
    assert info["clip_fraction"].item() == pytest.approx(6 / 8)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-30, 30, allow_nan=False), min_size=1, max_size=20))
def test_k3_is_never_negative(log_ratios):
    lr = t64(log_ratios)
    for i in range(len(lr)):  # per sample, not just on average
        k = approx_kl(lr[i:i + 1], torch.zeros(1, dtype=torch.float64))
        assert k["approx_kl_k3"].item() >= 0.0
        assert k["approx_kl_k3"].item() == pytest.approx(math.expm1(log_ratios[i]) - log_ratios[i],
                                                          rel=1e-9, abs=1e-12)


def test_kl_estimators_are_unbiased_for_categoricals():
    gen = torch.Generator().manual_seed(0)
    old = torch.distributions.Categorical(logits=torch.tensor([2.0, 1.0, -1.0, 0.5, -2.0]))
    new = torch.distributions.Categorical(logits=torch.zeros(5))  # uniform
    true_kl = torch.distributions.kl_divergence(old, new).item()       # KL(old || new)
    reverse = torch.distributions.kl_divergence(new, old).item()       # the wrong direction
    by_hand = (old.probs * (old.probs.log() - new.probs.log())).sum().item()
    assert true_kl == pytest.approx(by_hand, rel=1e-6)
    assert abs(true_kl - reverse) > 0.2  # so the test can tell the directions apart
    a = torch.multinomial(old.probs, 200_000, replacement=True, generator=gen)  # a ~ pi_old
    _, info = clipped_surrogate_loss(new.log_prob(a), old.log_prob(a), torch.zeros(len(a)), 0.2)
    assert info["approx_kl_k3"].item() == pytest.approx(true_kl, abs=0.02)
    assert info["approx_kl_k1"].item() == pytest.approx(true_kl, abs=0.02)


def naive_surrogate(lnew, lold, adv, eps):
    total, clipped_count = 0.0, 0
    for ln, lo, a in zip(lnew, lold, adv):
        r = math.exp(ln - lo)
        rc = min(max(r, 1 - eps), 1 + eps)
        total += min(r * a, rc * a)
        clipped_count += abs(r - 1) > eps
    n = len(adv)
    return -total / n, clipped_count / n


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 30), st.floats(0.01, 0.5), st.integers(0, 2**32 - 1))
def test_surrogate_matches_naive(B, eps, seed):
    rng = np.random.default_rng(seed)
    lold = rng.normal(-1.0, 0.5, B)
    lnew = lold + rng.normal(0, 0.4, B)
    adv = rng.normal(0, 2, B)
    loss, info = clipped_surrogate_loss(t64(lnew), t64(lold), t64(adv), eps)
    exp_loss, exp_cf = naive_surrogate(lnew, lold, adv, eps)
    assert loss.item() == pytest.approx(exp_loss, rel=1e-9, abs=1e-12)
    assert info["clip_fraction"].item() == pytest.approx(exp_cf, abs=1e-6)  # a float32 share
    lr = lnew - lold
    assert info["approx_kl_k1"].item() == pytest.approx(float(np.mean(-lr)), rel=1e-9, abs=1e-12)
    assert info["approx_kl_k3"].item() == pytest.approx(float(np.mean(np.expm1(lr) - lr)), rel=1e-9, abs=1e-12)


def test_info_is_detached():
    lnew = torch.zeros(4, requires_grad=True)
    _, info = clipped_surrogate_loss(lnew, torch.full((4,), -0.5), torch.ones(4), 0.2)
    assert all(not v.requires_grad for v in info.values())


def test_surrogate_rejects_nonpositive_clip():
    with pytest.raises(ValueError, match="clip_eps"):
        clipped_surrogate_loss(torch.zeros(2), torch.zeros(2), torch.ones(2), 0.0)


# ---------------------------------------------------------------- value loss
def test_value_loss_unclipped(rng):
    v, R = rng.normal(size=50), rng.normal(size=50)
    got = value_loss(t64(v), t64(R)).item()
    assert got == pytest.approx(0.5 * np.mean((v - R) ** 2), rel=1e-12)
    # old_values without clip_eps (or clip_eps without old_values) means unclipped
    assert value_loss(t64(v), t64(R), t64(v + 5.0), None).item() == pytest.approx(got, rel=1e-12)
    assert value_loss(t64(v), t64(R), None, 0.2).item() == pytest.approx(got, rel=1e-12)


def naive_clipped_value_loss(v, R, v_old, eps):
    total = 0.0
    for vi, ri, oi in zip(v, R, v_old):
        vc = oi + min(max(vi - oi, -eps), eps)
        total += max((vi - ri) ** 2, (vc - ri) ** 2)
    return 0.5 * total / len(v)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.floats(0.01, 1.0), st.integers(0, 2**32 - 1))
def test_value_loss_clipped_matches_naive(B, eps, seed):
    rng = np.random.default_rng(seed)
    v_old = rng.normal(size=B)
    v = v_old + rng.normal(0, 0.5, B)
    R = rng.normal(size=B)
    got = value_loss(t64(v), t64(R), t64(v_old), eps).item()
    assert got == pytest.approx(naive_clipped_value_loss(v, R, v_old, eps), rel=1e-9, abs=1e-12)


def test_value_loss_clipped_by_hand():
    # v_old = 0, v = 1, R = 0.5, eps = 0.2: unclipped (0.5)^2 = 0.25; clipped v = 0.2 -> (0.3)^2 = 0.09
    # v_old = 0, v = 1, R = 2,   eps = 0.2: unclipped 1; clipped (1.8)^2 = 3.24 (the max wins)
    got = value_loss(t64([1.0, 1.0]), t64([0.5, 2.0]), t64([0.0, 0.0]), 0.2).item()
    assert got == pytest.approx(0.5 * (0.25 + 3.24) / 2, rel=1e-12)


def test_value_loss_clipped_equals_unclipped_when_old_equals_new(rng):
    v, R = rng.normal(size=40), rng.normal(size=40)
    assert value_loss(t64(v), t64(R), t64(v), 0.2).item() == pytest.approx(
        value_loss(t64(v), t64(R)).item(), rel=1e-12)


def test_value_loss_rejects_nonpositive_clip():
    with pytest.raises(ValueError, match=r"vf_clip=-0.1 is invalid: allowed values are None or a number > 0"):
        value_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), -0.1)


def test_value_loss_old_clip_eps_keyword_still_works_with_a_warning(rng):
    v, R, v_old = (t64(rng.normal(size=20)) for _ in range(3))
    with pytest.warns(DeprecationWarning, match=r"value_loss\(clip_eps=\) is deprecated: use vf_clip="):
        old = value_loss(v, R, v_old, clip_eps=0.2)
    assert old.item() == value_loss(v, R, v_old, vf_clip=0.2).item()
    with pytest.raises(TypeError, match="both clip_eps"), pytest.warns(DeprecationWarning):
        value_loss(v, R, v_old, clip_eps=0.2, vf_clip=0.2)


# ---------------------------------------------------------------- entropy, whitening
def test_entropy_bonus_is_mean(rng):
    h = rng.random(17)
    assert entropy_bonus(t64(h)).item() == pytest.approx(h.mean(), rel=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 200), st.floats(-100, 100), st.floats(0.1, 100), st.integers(0, 2**32 - 1))
def test_normalize_advantages_whitens(B, loc, scale, seed):
    a = np.random.default_rng(seed).normal(loc, scale, B)
    out = normalize_advantages(t64(a)).numpy()
    assert out.mean() == pytest.approx(0.0, abs=1e-9)
    # population std 1, up to the eps=1e-8 guard in the denominator
    assert out.std() == pytest.approx(1.0, abs=1e-8 / a.std() + 1e-9)
    np.testing.assert_allclose(out, (a - a.mean()) / (a.std() + 1e-8), rtol=1e-9, atol=1e-9)


def test_normalize_advantages_uses_all_axes(rng):
    a = t64(rng.normal(3.0, 2.0, (16, 4)))
    out = normalize_advantages(a)
    assert out.shape == a.shape
    assert out.mean().item() == pytest.approx(0.0, abs=1e-9)
    assert out.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-6)
