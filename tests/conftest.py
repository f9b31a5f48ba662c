"""Shared test set-up: one torch thread (small tensors; fast and deterministic on slow CPUs)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def obs_space4():
    from gymnasium import spaces

    return spaces.Box(-np.inf, np.inf, (4,), np.float32)


@pytest.fixture
def obs_space3():
    from gymnasium import spaces

    return spaces.Box(-np.inf, np.inf, (3,), np.float32)
