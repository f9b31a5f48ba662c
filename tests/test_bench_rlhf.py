"""bench/rlhf.py's arithmetic: the ratio lines and the quality comparison with TRL's frontier (the runs
themselves need TRL's bench-only venvs and minutes; these check what the bench concludes from them)."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_rlhf", Path(__file__).resolve().parents[1] / "bench" / "rlhf.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_gold_at_reads_the_frontier_linearly_between_the_points_around_a_kl():
    frontier = [(4.0, 0.9), (2.0, 0.8), (8.0, 0.95)]               # unsorted, as runs come
    assert bench.gold_at(frontier, 3.0) == pytest.approx(0.85)
    assert bench.gold_at(frontier, 6.0) == pytest.approx(0.925)
    assert bench.gold_at(frontier, 2.0) == pytest.approx(0.8)      # at a point
    assert bench.gold_at(frontier, 1.9) is None                     # outside: no extrapolation
    assert bench.gold_at(frontier, 8.5) is None
    assert bench.gold_at([(3.0, 0.7)], 3.0) is None                 # one point is no frontier


def runs(pairs):
    return [{"kl": k, "gold": g} for k, g in pairs]


def trl_runs(per_coef):
    """TRL's runs in the bench's order: every seed of the first coefficient, then the next coefficient."""
    return [{"kl_coef": c, **r} for c, seeds in per_coef for r in runs(seeds)]


TRL = trl_runs([(0.4, [(4.0, 0.90), (4.2, 0.88)]), (0.8, [(2.0, 0.80), (2.2, 0.82)])])


def test_versus_trl_reads_each_seed_on_its_own_frontier():
    # seed 0: TRL gives 0.85 at KL 3.0; seed 1: 0.85 at KL 3.2 -> ours 0.87 and 0.86: +0.015 on average
    line = bench.versus_trl("PPO", runs([(3.0, 0.87), (3.2, 0.86)]), TRL, seeds=2)
    assert "gold minus TRL's at the same KL +0.015" in line and line.endswith("equal or better")


def test_versus_trl_calls_a_small_shortfall_noise_and_a_large_one_worse():
    noisy = bench.versus_trl("PPO", runs([(3.0, 0.80), (3.2, 0.88)]), TRL, seeds=2)   # -0.05, +0.03
    assert "-0.010" in noisy and noisy.endswith("equal within noise (less than 2 standard errors)")
    worse = bench.versus_trl("PPO", runs([(3.0, 0.80), (3.2, 0.81)]), TRL, seeds=2)   # -0.05, -0.04
    assert worse.endswith("WORSE")


def test_versus_trl_asks_for_a_coefficient_when_a_run_is_outside_trls_kl_range():
    line = bench.versus_trl("PPO", runs([(3.0, 0.87), (5.0, 0.9)]), TRL, seeds=2)
    assert line.endswith("1 run(s) outside TRL's KL range: add a coefficient")


def test_ratio_lines_label_the_target_rows_and_the_equal_work_rows():
    med = {"ppo_edu PPO": 0.8, "ppo_edu PPO, all 16 steps": 1.0, "TRL PPO": 2.4}
    paired = {"ppo_edu PPO": [3.1, 2.9, 3.0], "ppo_edu PPO, all 16 steps": [2.5]}
    lines = bench.ratio_lines(med, paired)
    assert len(lines) == 2                                          # rows without numbers are left out
    assert lines[0].startswith("TRL PPO / ppo_edu PPO ") and "= 3.00x, paired 3.00x  (target >= 3)" in lines[0]
    assert "= 2.40x, paired 2.50x  (equal work: the engine alone)" in lines[1]


@pytest.mark.parametrize("text, want", [("0.4,0.8,1.6", [0.4, 0.8, 1.6]), (" 0.2 , 1", [0.2, 1.0]), ("", [])])
def test_kl_coefs_parses_a_comma_separated_list(text, want):
    assert bench.kl_coefs(text) == want


@pytest.mark.parametrize("text, why", [("0.2,x", "is not a comma-separated list of numbers"),
                                       ("0.4,0", "each coefficient must be > 0"), ("-1", "must be > 0")])
def test_kl_coefs_names_the_bad_value(text, why):
    with pytest.raises(argparse.ArgumentTypeError, match=why) as e:
        bench.kl_coefs(text)
    assert repr(text) in str(e.value)
