"""bench/common.py: the machinery behind the README's ratios. The peers (SB3, TRL) are not installed
here, so these tests cover what the ratios are computed from: the ceiling (the vectorised env
alone, timed in slices between iterations), the clock that keeps evaluation and ceiling time out of
training time, and the "solved and stays solved" rule."""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location("bench_common", Path(__file__).resolve().parents[1] / "bench" / "common.py")
_common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_common)
Ceiling, EvalClock, solved_at = _common.Ceiling, _common.EvalClock, _common.solved_at


def test_a_ceiling_slice_runs_at_least_its_time_and_32_calls():
    ceiling = Ceiling("CartPole-v1", 4, seed=0, seconds=0.02)
    ceiling.measure()
    assert ceiling.seconds >= 0.02 and ceiling.steps >= 32 * 4 and ceiling.steps % 4 == 0
    steps = ceiling.steps
    ceiling.measure()                                    # slices add up
    assert ceiling.steps > steps and ceiling.steps_per_second() == ceiling.steps / ceiling.seconds


def test_the_clock_keeps_ceiling_and_evaluation_time_out_of_training_time():
    calls = []

    def predict(obs):                                    # a greedy policy that always pushes left
        calls.append(len(obs))
        return np.zeros(len(obs), np.int64)

    clock = EvalClock(predict, "CartPole-v1", every=100, n_episodes=3, seed=0, n_envs=4)
    clock.ceiling.slice = 0.05
    t0 = time.perf_counter()
    clock.maybe_eval(50)                                 # before the first evaluation: the ceiling only
    assert clock.points == [] and calls == [] and clock.eval_time >= 0.05
    clock.maybe_eval(250)                                # two evaluations are due (at 100 and 200)
    assert [p[0] for p in clock.points] == [250, 250] and calls and all(n == 3 for n in calls)
    steps, train_seconds, mean = clock.points[0]
    assert 0 <= train_seconds < time.perf_counter() - t0 - 0.05   # the slices' time is not training time
    assert 5 <= mean <= 20                               # always left ends a CartPole episode in ~9 steps


@pytest.mark.parametrize("means, first", [([100, 500, 480, 475], 1), ([500, 400, 500], 2),
                                          ([500, 500], 0), ([100, 474], None)])
def test_solved_means_reached_and_never_lost(means, first):
    points = [(1000 * (i + 1), 0.1 * (i + 1), m) for i, m in enumerate(means)]
    hit = solved_at(points, 475)
    assert hit == (None if first is None else points[first])
