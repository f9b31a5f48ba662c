"""RunningMeanStd: chunked updates equal the moments of the concatenation."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppo_edu.normalization import RunningMeanStd

chunks = st.lists(st.integers(1, 40), min_size=1, max_size=8)


def data(seed: int, sizes: list[int], dim: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    loc, scale = rng.uniform(-5, 5, dim), rng.uniform(0.1, 10, dim)
    return [loc + scale * rng.normal(size=(n, dim)) for n in sizes]


@settings(max_examples=80, deadline=None)
@given(chunks, st.integers(0, 2**32 - 1))
def test_chunked_updates_equal_moments_of_concatenation(sizes, seed):
    parts = data(seed, sizes)
    x = np.concatenate(parts)
    # without the prior count the merge is exact
    rms = RunningMeanStd((3,), epsilon=0.0)
    for p in parts:
        rms.update(p)
    assert rms.count == pytest.approx(len(x))
    np.testing.assert_allclose(rms.mean, x.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(rms.var, x.var(0), rtol=1e-9, atol=1e-9)


@settings(max_examples=80, deadline=None)
@given(chunks, st.integers(0, 2**32 - 1))
def test_default_prior_is_a_pseudo_sample_of_mean_0_var_1(sizes, seed):
    parts = data(seed, sizes)
    x = np.concatenate(parts)
    eps = 1e-4
    rms = RunningMeanStd((3,))
    for p in parts:
        rms.update(p)
    n, m, v = len(x), x.mean(0), x.var(0)
    assert rms.count == pytest.approx(n + eps, rel=1e-12)
    # merging the prior (count eps, mean 0, var 1) with the data in one step:
    np.testing.assert_allclose(rms.mean, m * n / (n + eps), rtol=1e-9, atol=1e-12)
    exact_var = (eps * 1.0 + n * v + m ** 2 * eps * n / (n + eps)) / (n + eps)
    np.testing.assert_allclose(rms.var, exact_var, rtol=1e-9, atol=1e-12)
    # ... which is np.mean / np.var up to the tiny prior
    np.testing.assert_allclose(rms.mean, m, rtol=1e-3, atol=1e-3)
    assert np.all(np.abs(rms.var - v) <= 1e-3 * v + 1e-3 * (1 + m ** 2) / n)


def test_scalar_shape_and_single_rows():
    rms = RunningMeanStd((), epsilon=0.0)
    xs = np.array([1.0, 4.0, -2.0, 7.0])
    for value in xs:
        rms.update(np.array([value]))
    assert rms.mean == pytest.approx(xs.mean())
    assert rms.var == pytest.approx(xs.var())


def test_normalize(rng):
    rms = RunningMeanStd((2,))
    rms.update(rng.normal([3.0, -1.0], [2.0, 0.5], (500, 2)))
    x = rng.normal(size=(7, 2)) * 50
    out = rms.normalize(x, clip=5.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.clip((x - rms.mean) / np.sqrt(rms.var + 1e-8), -5, 5), rtol=1e-6)
    assert np.abs(out).max() == pytest.approx(5.0)


def test_state_dict_round_trip(rng):
    a = RunningMeanStd((3,))
    for n in (5, 17, 1):
        a.update(rng.normal(size=(n, 3)))
    state = a.state_dict()
    b = RunningMeanStd((3,))
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.mean, a.mean)
    np.testing.assert_array_equal(b.var, a.var)
    assert b.count == a.count
    # the state is a snapshot: editing it does not touch a, updating a does not touch it
    a_var, saved_var = a.var.copy(), state["var"].copy()
    state["var"][:] += 1.0
    np.testing.assert_array_equal(a.var, a_var)
    state["var"][:] = saved_var
    saved_mean = state["mean"].copy()
    a.update(rng.normal(size=(4, 3)) + 10)
    np.testing.assert_array_equal(state["mean"], saved_mean)
    # and the restored one keeps merging identically
    batch = rng.normal(size=(9, 3))
    c = RunningMeanStd((3,))
    c.load_state_dict(state)
    b.update(batch)
    c.update(batch)
    np.testing.assert_array_equal(b.mean, c.mean)
    np.testing.assert_array_equal(b.var, c.var)
    assert b.count == c.count == pytest.approx(state["count"] + 9)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3000), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**32 - 1))
def test_mean_std_is_numpys_bit_for_bit(n, dtype, seed):
    """The fast whitening statistics change no result: the same values and dtype as x.mean(), x.std()."""
    from ppo_edu.normalization import mean_std

    rng = np.random.default_rng(seed)
    x = (rng.normal(rng.uniform(-50, 50), rng.uniform(0.01, 100), n)).astype(dtype)
    mean, std = mean_std(x)
    assert mean == x.mean() and std == x.std()
    assert mean.dtype == x.mean().dtype and std.dtype == x.std().dtype
