"""Running statistics for observation and reward normalisation: Chapter 7, "Continuous control".

``RunningMeanStd`` merges batch moments into running ones with the parallel algorithm of
Chan, Golub and LeVeque (1979)::

    delta = mean_b - mean;  n' = n + n_b
    mean' = mean + delta * n_b / n'
    M2'   = var * n + var_b * n_b + delta^2 * n * n_b / n'      and var' = M2' / n'
"""
from __future__ import annotations

import numpy as np

__all__ = ["RunningMeanStd", "RewardScaler", "merge_moments", "mean_std"]


def mean_std(x: np.ndarray):
    """``(x.mean(), x.std())`` of a 1-d array, bit for bit, in about a third of the time: the same
    sums and divisions without ``np.std``'s per-call overhead (it costs ~10 us, as much as the
    arithmetic on a PPO minibatch of advantages). ``tests/test_normalization.py`` checks equality."""
    n = x.size
    mean = np.add.reduce(x) / n
    d = x - mean
    np.multiply(d, d, out=d)
    return mean, np.sqrt(np.add.reduce(d) / n)


def merge_moments(mean, var, count, batch_mean, batch_var, batch_count):
    """Merge running (mean, var, count) with a batch's moments; returns the new triple.

    Population variances throughout (``np.var`` with ``ddof=0``).
    """
    delta = batch_mean - mean
    total = count + batch_count
    new_mean = mean + delta * batch_count / total
    m2 = var * count + batch_var * batch_count + delta ** 2 * count * batch_count / total
    return new_mean, m2 / total, total


class RunningMeanStd:
    """Mean and (population) variance of everything seen so far, per feature."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = float(epsilon)  # a tiny prior count keeps the first update well defined

    def update(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch, np.float64)
        self.update_from_moments(batch.mean(0), batch.var(0), batch.shape[0])

    def update_from_moments(self, batch_mean, batch_var, batch_count: int) -> None:
        self.mean, self.var, self.count = merge_moments(self.mean, self.var, self.count,
                                                        batch_mean, batch_var, batch_count)

    def normalize(self, x: np.ndarray, clip: float = 10.0) -> np.ndarray:
        return np.clip((x - self.mean) / np.sqrt(self.var + 1e-8), -clip, clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean = np.array(state["mean"], np.float64)  # a copy, never shared
        self.var = np.array(state["var"], np.float64)
        self.count = float(state["count"])


class RewardScaler:
    """Divide rewards by the running std of the discounted return (no mean shift).

    Keeps reward scale near 1 whatever the environment, which is what the value loss and
    the default learning rate assume. The return accumulator restarts at each episode end.
    """

    def __init__(self, n_envs: int, gamma: float, clip: float = 10.0):
        self.rms, self.gamma, self.clip = RunningMeanStd(()), gamma, clip
        self.ret = np.zeros(n_envs, np.float64)

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        self.ret = self.ret * self.gamma + rewards
        self.rms.update(self.ret)
        self.ret[dones] = 0.0
        return np.clip(rewards / np.sqrt(self.rms.var + 1e-8), -self.clip, self.clip).astype(np.float32)
