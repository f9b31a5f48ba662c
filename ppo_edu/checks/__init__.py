"""Checks for students' implementations, against the library's own reference functions.

``check_compute_gae(my_gae)`` calls ``my_gae`` and :func:`ppo_edu.gae.compute_gae` on the same
inputs: hand-made edge cases first (smallest first: one step, one env, an episode that ends
mid-rollout, truncation, float64), then seeded random ones. It returns a :class:`CheckResult`
with ``.passed`` and ``.message``, shown as a coloured box in Jupyter.

On a failure the message shows the smallest failing input, the expected and the received
values with their largest difference, and a hint. Hints come from a catalogue of known mistakes,
each written as a buggy variant of the reference: when the student's output equals a variant's
output on the failing input, that variant's hint is the diagnosis ("you bootstrapped through a
terminal state").

One module per part of the book: :mod:`.harness` (running and comparing), :mod:`.rl` (Part I,
Chapters 2-7) and :mod:`.rlhf` (Part II, Chapters 9-11); every ``check_*`` is re-exported here.
"""
from __future__ import annotations

from .harness import TIMEOUT_S, Case, CheckResult, Hint, Spec, run_check
from .rl import (check_categorical_entropy, check_categorical_log_prob, check_clipped_surrogate_loss,
                 check_compute_gae, check_discounted_returns, check_gae, check_gaussian_entropy,
                 check_gaussian_log_prob, check_kl_k1, check_kl_k3, check_merge_moments,
                 check_normalize_advantages, check_running_mean_std, check_value_loss)
from .rl import SPECS as _PART1
from .rlhf import (check_bradley_terry_loss, check_group_advantages, check_shaped_rewards,
                   check_token_gae)
from .rlhf import SPECS as _PART2

__all__ = ["CheckResult", "CHECKS", "check_discounted_returns", "check_compute_gae", "check_gae",
           "check_normalize_advantages", "check_clipped_surrogate_loss", "check_value_loss",
           "check_categorical_entropy", "check_categorical_log_prob", "check_gaussian_log_prob",
           "check_gaussian_entropy", "check_kl_k1", "check_kl_k3", "check_merge_moments",
           "check_running_mean_std", "check_shaped_rewards", "check_token_gae", "check_group_advantages",
           "check_bradley_terry_loss", "run_check", "Spec", "Case", "Hint", "TIMEOUT_S"]

CHECKS: dict[str, Spec] = {s.name: s for s in _PART1 + _PART2}
