"""compute_gae and discounted_returns against hand-worked numbers and a naive loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ppo_edu.gae import compute_gae, discounted_returns


def col(*xs, dtype=torch.float64):
    """A (T, 1) tensor: one environment."""
    return torch.tensor(xs, dtype=dtype).reshape(-1, 1)


def flags(*xs):
    return torch.tensor(xs, dtype=torch.bool).reshape(-1, 1)


# One 3-step rollout shared by the hand-worked cases.
R = col(1.0, 2.0, 3.0)
V = col(0.5, 1.0, 1.5)
NV = col(1.0, 1.5, 2.0)  # V(s_{t+1}); inside an episode next_values[t] == values[t + 1]
G, L = 0.9, 0.8          # gamma * lam = 0.72
NO = flags(False, False, False)


def test_three_steps_by_hand():
    adv, ret = compute_gae(R, V, NV, NO, NO, G, L)
    # delta_2 = 3 + 0.9*2.0 - 1.5 = 3.3
    # delta_1 = 2 + 0.9*1.5 - 1.0 = 2.35
    # delta_0 = 1 + 0.9*1.0 - 0.5 = 1.4
    # A_2 = 3.3                        (last row: its TD residual alone)
    # A_1 = 2.35 + 0.72*3.3   = 4.726
    # A_0 = 1.4  + 0.72*4.726 = 4.80272
    torch.testing.assert_close(adv, col(4.80272, 4.726, 3.3), rtol=0, atol=1e-12)
    # returns = A + V = 5.30272, 5.726, 4.8
    torch.testing.assert_close(ret, col(5.30272, 5.726, 4.8), rtol=0, atol=1e-12)


def test_termination_mid_rollout_cuts_bootstrap_and_recursion():
    term = flags(False, True, False)
    nv = col(1.0, 100.0, 2.0)  # V of a terminal state must be ignored entirely
    adv, ret = compute_gae(R, V, nv, term, NO, G, L)
    # delta_2 = 3.3 (a new episode started at row 2)
    # delta_1 = 2 + 0 * 100 - 1.0 = 1.0        (no bootstrap)
    # A_1 = 1.0                                 (recursion cut: A_2 not added)
    # A_0 = 1.4 + 0.72*1.0 = 2.12
    torch.testing.assert_close(adv, col(2.12, 1.0, 3.3), rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, adv + V, rtol=0, atol=0)


def test_truncation_mid_rollout_bootstraps_but_cuts_recursion():
    trunc = flags(False, True, False)
    # next_values[1] is V of the true final observation (7.0), not of the reset one (values[2])
    nv = col(1.0, 7.0, 2.0)
    adv, _ = compute_gae(R, V, nv, NO, trunc, G, L)
    # delta_1 = 2 + 0.9*7.0 - 1.0 = 7.3          (bootstrapped)
    # A_1 = 7.3                                  (recursion cut)
    # A_0 = 1.4 + 0.72*7.3 = 6.656
    torch.testing.assert_close(adv, col(6.656, 7.3, 3.3), rtol=0, atol=1e-12)


def test_envs_are_independent():
    """Two columns: env 0 runs on, env 1 terminates at row 1; each equals its own 1-env result."""
    term = torch.cat([flags(False, False, False), flags(False, True, False)], 1)
    r, v, nv = (torch.cat([x, 2 * x], 1) for x in (R, V, NV))
    adv, _ = compute_gae(r, v, nv, term, torch.zeros_like(term), G, L)
    for j in range(2):
        a_j, _ = compute_gae(r[:, j:j + 1], v[:, j:j + 1], nv[:, j:j + 1], term[:, j:j + 1],
                             torch.zeros_like(term[:, j:j + 1]), G, L)
        torch.testing.assert_close(adv[:, j:j + 1], a_j, rtol=0, atol=0)
    assert not torch.allclose(adv[:, 0], adv[:, 1] / 2)  # the termination did change column 1


def test_lambda_zero_gives_one_step_td_errors(rng):
    T, N, gamma = 7, 3, 0.95
    r, v, nv = (torch.from_numpy(rng.normal(size=(T, N))) for _ in range(3))
    term = torch.from_numpy(rng.random((T, N)) < 0.3)
    trunc = torch.from_numpy(rng.random((T, N)) < 0.3)
    adv, ret = compute_gae(r, v, nv, term, trunc, gamma, 0.0)
    td = r + gamma * (~term).double() * nv - v
    torch.testing.assert_close(adv, td, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, td + v, rtol=0, atol=1e-12)


def test_lambda_one_gamma_one_is_monte_carlo_plus_bootstrap(rng):
    T, N = 6, 2
    r = torch.from_numpy(rng.normal(size=(T, N)))
    v_all = torch.from_numpy(rng.normal(size=(T + 1, N)))  # V(s_0) ... V(s_T)
    v, nv = v_all[:-1], v_all[1:]
    no = torch.zeros(T, N, dtype=torch.bool)
    adv, ret = compute_gae(r, v, nv, no, no, 1.0, 1.0)
    # A_t = sum_{k>=t} r_k + V(s_T) - V(s_t): the value terms telescope
    mc = torch.flip(torch.cumsum(torch.flip(r, [0]), 0), [0])
    torch.testing.assert_close(adv, mc + v_all[-1] - v, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, mc + v_all[-1], rtol=0, atol=1e-12)


def test_inputs_not_modified(rng):
    T, N = 5, 2
    xs = [torch.from_numpy(rng.normal(size=(T, N))) for _ in range(3)]
    term = torch.from_numpy(rng.random((T, N)) < 0.5)
    trunc = torch.from_numpy(rng.random((T, N)) < 0.5)
    copies = [x.clone() for x in (*xs, term, trunc)]
    compute_gae(*xs, term, trunc, 0.9, 0.9)
    for a, b in zip((*xs, term, trunc), copies):
        assert torch.equal(a, b)


def naive_gae(r, v, nv, term, trunc, gamma, lam):
    T, N = r.shape
    adv = np.zeros((T, N))
    for n in range(N):
        nxt = 0.0
        for t in range(T - 1, -1, -1):
            bootstrap = 0.0 if term[t, n] else gamma * nv[t, n]
            delta = r[t, n] + bootstrap - v[t, n]
            carry = 0.0 if (term[t, n] or trunc[t, n]) else gamma * lam * nxt
            nxt = delta + carry
            adv[t, n] = nxt
    return adv


floats = st.floats(-10, 10, allow_nan=False)
unit = st.floats(1e-3, 1.0)


@st.composite
def rollouts(draw):
    T = draw(st.integers(1, 20))
    N = draw(st.integers(1, 5))
    arr = lambda elem: np.array(draw(st.lists(elem, min_size=T * N, max_size=T * N))).reshape(T, N)  # noqa: E731
    return (arr(floats), arr(floats), arr(floats), arr(st.booleans()), arr(st.booleans()),
            draw(unit), draw(unit))


@settings(max_examples=80, deadline=None)
@given(rollouts())
def test_matches_naive_loop(case):
    r, v, nv, term, trunc, gamma, lam = case
    adv, ret = compute_gae(*(torch.from_numpy(x) for x in (r, v, nv, term, trunc)), gamma, lam)
    expected = naive_gae(r, v, nv, term, trunc, gamma, lam)
    np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ret.numpy(), expected + v, rtol=1e-6, atol=1e-6)


def naive_returns(r, d, gamma):
    out, g = np.zeros_like(r), np.zeros(r.shape[1:])
    for t in range(len(r) - 1, -1, -1):
        g = r[t] + gamma * np.where(d[t], 0.0, g)
        out[t] = g
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 20), st.integers(1, 4), st.floats(0.0, 1.0), st.booleans(), st.integers(0, 2**32 - 1))
def test_discounted_returns_matches_naive_loop(T, N, gamma, one_d, seed):
    rng = np.random.default_rng(seed)
    shape = (T,) if one_d else (T, N)
    r, d = rng.normal(size=shape), rng.random(shape) < 0.3
    got = discounted_returns(torch.from_numpy(r), torch.from_numpy(d), gamma)
    assert got.shape == r.shape
    np.testing.assert_allclose(got.numpy(), naive_returns(r, d, gamma), rtol=1e-9, atol=1e-9)


def test_discounted_returns_by_hand():
    r = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    d = torch.tensor([False, True, False, False])
    # G_3 = 1; G_2 = 1 + 0.5*1 = 1.5; G_1 = 1 (done); G_0 = 1 + 0.5*1 = 1.5
    torch.testing.assert_close(discounted_returns(r, d, 0.5),
                               torch.tensor([1.5, 1.0, 1.5, 1.0], dtype=torch.float64), rtol=0, atol=0)


def test_discounted_returns_rejects_bad_gamma():
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns(torch.ones(3), torch.zeros(3, dtype=torch.bool), 1.5)
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns(torch.ones(3), torch.zeros(3, dtype=torch.bool), -0.1)


def test_discounted_returns_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="rewards.*dones"):
        discounted_returns(torch.ones(3), torch.zeros(4, dtype=torch.bool), 0.9)


def test_compute_gae_rejects_bad_input():
    x, b = torch.ones(3, 2), torch.zeros(3, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="gamma"):
        compute_gae(x, x, x, b, b, 1.5, 0.9)
    with pytest.raises(ValueError, match="lam"):
        compute_gae(x, x, x, b, b, 0.9, 1.5)
    with pytest.raises(ValueError, match="next_values"):
        compute_gae(x, x, torch.ones(4, 2), b, b, 0.9, 0.9)
    with pytest.raises(ValueError, match=r"\(T, N\)"):
        compute_gae(torch.ones(3), torch.ones(3), torch.ones(3), b[:, 0], b[:, 0], 0.9, 0.9)
