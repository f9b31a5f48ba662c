"""Checks for students' implementations, against the library's own reference functions.

``check_compute_gae(my_gae)`` calls ``my_gae`` and :func:`ppo_edu.gae.compute_gae` on the same
inputs: hand-made edge cases first (smallest first: one step, one env, an episode that ends
mid-rollout, truncation, float64), then seeded random ones. It returns a :class:`CheckResult`
with ``.passed`` and ``.message``, shown as a coloured box in Jupyter.

On a failure the message shows the smallest failing input, the expected and the received
values, and a hint. Hints come from a catalogue of known mistakes, each written as a buggy
variant of the reference: when the student's output equals a variant's output on the failing
input, that variant's hint is the diagnosis ("you bootstrapped through a terminal state").

A student function that raises, runs too long, returns the wrong shape, dtype or a NaN,
modifies its input, or (for losses) is not differentiable, gets a message saying so; the
check itself never raises.
"""
from __future__ import annotations

import html
import inspect
import signal
import threading
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import distributions as D
from .gae import compute_gae, discounted_returns
from .losses import clipped_surrogate_loss, kl_k1, kl_k3, normalize_advantages, value_loss
from .normalization import merge_moments
from .rlhf.grpo import group_advantages as grpo_group_advantages
from .rlhf.ppo import shaped_rewards as ppo_shaped_rewards
from .rlhf.ppo import token_gae as ppo_token_gae
from .rlhf.reward import bradley_terry_loss as reward_bradley_terry_loss

__all__ = ["CheckResult", "CHECKS", "check_discounted_returns", "check_compute_gae", "check_gae",
           "check_normalize_advantages", "check_clipped_surrogate_loss", "check_value_loss",
           "check_categorical_entropy", "check_categorical_log_prob", "check_gaussian_log_prob",
           "check_gaussian_entropy", "check_kl_k1", "check_kl_k3", "check_merge_moments",
           "check_running_mean_std", "check_shaped_rewards", "check_token_gae", "check_group_advantages",
           "check_bradley_terry_loss"]

TIMEOUT_S = 10.0


# ----------------------------------------------------------------------------- results
@dataclass
class CheckResult:
    """Outcome of one check: ``bool(result)`` is ``result.passed``."""

    name: str
    passed: bool
    message: str
    cases_run: int = 0

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        mark = "PASSED" if self.passed else "FAILED"
        return f"{self.name}: {mark}\n{self.message}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        colour, mark = ("#e6f4ea", "&#10004; passed") if self.passed else ("#fce8e6", "&#10008; failed")
        return (f'<div style="background:{colour};padding:8px;border-radius:4px">'
                f"<b>{html.escape(self.name)}</b>: {mark}<pre style='white-space:pre-wrap'>"
                f"{html.escape(self.message)}</pre></div>")

    def assert_passed(self) -> None:
        """Raise ``AssertionError`` with the full message unless the check passed (for graders)."""
        if not self.passed:
            raise AssertionError(str(self))


@dataclass
class Case:
    label: str
    inputs: dict
    size: int = 0


@dataclass
class Hint:
    text: str
    buggy: Callable  # a known mistake, same signature as the reference


@dataclass
class Spec:
    name: str
    reference: Callable
    cases: Callable[[], list]  # builds fresh Case objects
    hints: list = field(default_factory=list)
    grad_wrt: tuple = ()        # inputs whose gradient must match (losses)
    first_output_only: bool = False  # reference returns (loss, info): compare the loss
    default_hint: str = ""


# ----------------------------------------------------------------------------- harness
class _Timeout(BaseException):  # not an Exception: a student's `except Exception` cannot swallow it
    pass


def _call_with_timeout(fn, args, seconds):
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        return fn(*args)

    def on_alarm(signum, frame):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.5)  # and again every 0.5 s until it lands
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _clone(inputs: dict, grad_wrt=()) -> dict:
    out = {}
    for k, v in inputs.items():
        if torch.is_tensor(v):
            v = v.detach().clone()
            if k in grad_wrt:
                v.requires_grad_(True)
        elif isinstance(v, np.ndarray):
            v = v.copy()
        out[k] = v
    return out


def _as_outputs(value, first_only: bool):
    """Normalise a function's return value to a tuple of tensors (keeping autograd)."""
    if first_only and isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
        value = value[0]
    items = value if isinstance(value, tuple) else (value,)
    out = []
    for x in items:
        if torch.is_tensor(x):
            out.append(x)
        elif isinstance(x, (np.ndarray, np.generic, float, int)) and not isinstance(x, bool):
            out.append(torch.as_tensor(np.asarray(x)))
        else:
            raise TypeError(f"returned a {type(x).__name__}; expected a torch tensor")
    return tuple(out)


def _fmt(x) -> str:
    if isinstance(x, tuple):
        return "".join(f"\n  [{i}] {_fmt(v)}" for i, v in enumerate(x))
    if torch.is_tensor(x):
        a = x.detach().cpu().numpy()
        if a.size <= 24:  # small: one line, nested lists
            return str(a.tolist() if a.dtype == bool else np.round(a.astype(np.float64), 4).tolist())
        return np.array2string(a, precision=4, max_line_width=90, threshold=40)
    return repr(x)


def _fmt_inputs(inputs: dict) -> str:
    return "\n".join(f"  {k} = {_fmt(v)}" for k, v in inputs.items())


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """float64 results must agree to 1e-7 relative; float32 ones (and integers) to 1e-4."""
    rtol, atol = (1e-7, 1e-9) if (a.dtype == torch.float64 and b.dtype == torch.float64) else (1e-4, 1e-5)
    a, b = a.detach().double(), b.detach().double()
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=False))


def _same_outputs(got, want) -> bool:
    return len(got) == len(want) and all(_close(g, w) for g, w in zip(got, want))


def _diagnose(spec: Spec, case: Case, got) -> str:
    for hint in spec.hints:
        try:
            buggy = _as_outputs(hint.buggy(**_clone(case.inputs)), spec.first_output_only)
        except Exception:  # a hint variant may not apply to this case
            continue
        if _same_outputs(got, buggy):
            return hint.text
    return spec.default_hint or "compare your code with the equation in the chapter, line by line."


def _failure(spec, case, text, expected=None, got=None, hint=None) -> str:
    parts = [f"Case: {case.label}", f"Input:\n{_fmt_inputs(case.inputs)}", text]
    if expected is not None:
        parts.append(f"Expected: {_fmt(expected if len(expected) > 1 else expected[0])}")
    if got is not None:
        parts.append(f"Received: {_fmt(got if len(got) > 1 else got[0])}")
    if hint:
        parts.append(f"Hint: {hint}")
    return "\n".join(parts)


def _positional(spec: Spec, inputs: dict) -> list:
    """The inputs in the reference's parameter order: students may name their parameters freely."""
    names = [n for n in inspect.signature(spec.reference).parameters if n in inputs]
    return [inputs[n] for n in names]


def _check_one(spec: Spec, fn: Callable, case: Case, timeout: float) -> str | None:
    """None if ``fn`` agrees with the reference on ``case``, else the failure message."""
    ref_in = _clone(case.inputs, spec.grad_wrt)
    expected = _as_outputs(spec.reference(**ref_in), spec.first_output_only)
    stu_in = _clone(case.inputs, spec.grad_wrt)
    try:
        raw = _call_with_timeout(fn, _positional(spec, stu_in), timeout)
    except _Timeout:
        return _failure(spec, case, f"Your function ran for more than {timeout:g} s (an infinite loop?).")
    except Exception as err:  # the student's error, reported, never raised
        where = traceback.extract_tb(err.__traceback__)[-1]
        return _failure(spec, case, f"Your function raised {type(err).__name__}: {err}\n"
                                    f"  at line {where.lineno}: {where.line}")
    for k, v in case.inputs.items():
        if torch.is_tensor(v) and not torch.equal(stu_in[k].detach(), v):
            return _failure(spec, case, f"Your function modified its input `{k}` in place; work on a copy.")
    loss_like = raw[0] if (spec.first_output_only and isinstance(raw, tuple) and raw) else raw
    if spec.grad_wrt and not torch.is_tensor(loss_like) and isinstance(loss_like, (float, int, np.ndarray, np.generic)):
        return _failure(spec, case, f"Your loss is a {type(loss_like).__name__}, not a torch tensor, so it is not "
                                    f"differentiable with respect to `{spec.grad_wrt[0]}`: did you call .item() "
                                    "or use NumPy inside?")
    try:
        got = _as_outputs(raw, spec.first_output_only)
    except TypeError as err:
        return _failure(spec, case, f"Your function {err}.")
    if len(got) != len(expected):
        return _failure(spec, case, f"Your function returned {len(got)} value(s); expected {len(expected)}.")
    for i, (g, e) in enumerate(zip(got, expected)):
        tag = f"output {i}" if len(expected) > 1 else "the output"
        if tuple(g.shape) != tuple(e.shape):
            return _failure(spec, case, f"Shape of {tag} is {tuple(g.shape)}; expected {tuple(e.shape)}.",
                            expected, got, _diagnose(spec, case, got))
        if e.is_floating_point() and g.dtype != e.dtype:
            return _failure(spec, case, f"dtype of {tag} is {g.dtype}; expected {e.dtype} "
                                        "(keep the dtype of the inputs).")
        if e.is_floating_point() and not torch.isfinite(g).all() and torch.isfinite(e).all():
            return _failure(spec, case, f"{tag} contains NaN or inf.", expected, got,
                            "look for log(0), exp of a large number, or 0/0; "
                            "log_softmax and logsumexp are the stable forms.")
    if not _same_outputs(got, expected):
        return _failure(spec, case, "Values differ.", expected, got, _diagnose(spec, case, got))
    return _check_grads(spec, case, ref_in, expected, stu_in, got)


def _check_grads(spec, case, ref_in, expected, stu_in, got) -> str | None:
    for name in spec.grad_wrt:
        (want,) = torch.autograd.grad(expected[0], ref_in[name], allow_unused=True)
        if not got[0].requires_grad:
            return _failure(spec, case, f"Your loss is not differentiable with respect to `{name}`: "
                                        "did you call .detach(), .item(), or use NumPy inside?")
        (have,) = torch.autograd.grad(got[0], stu_in[name], allow_unused=True)
        want = torch.zeros_like(ref_in[name]) if want is None else want
        have = torch.zeros_like(stu_in[name]) if have is None else have
        if not _close(have, want):
            return _failure(spec, case, f"The loss value is right but its gradient with respect to `{name}` "
                                        f"is not.\nExpected gradient: {_fmt(want)}\nReceived gradient: {_fmt(have)}",
                            hint=_diagnose_grad(spec, case, name, have))
    return None


def _diagnose_grad(spec: Spec, case: Case, name: str, have: torch.Tensor) -> str:
    for hint in spec.hints:
        inputs = _clone(case.inputs, spec.grad_wrt)
        try:
            out = _as_outputs(hint.buggy(**inputs), spec.first_output_only)[0]
            (grad,) = torch.autograd.grad(out, inputs[name], allow_unused=True)
        except Exception:
            continue
        if grad is not None and _close(have, grad):
            return hint.text
    return ("a clamp or min/max that blocks (or lets through) the wrong gradient, or a missing "
            "stop-gradient (.detach()) on a target.")


def run_check(spec: Spec, fn: Callable, timeout: float = TIMEOUT_S) -> CheckResult:
    """Run ``fn`` against ``spec`` on every case, smallest first; stop at the first failure."""
    name = f"check_{spec.name}"
    if not callable(fn):
        return CheckResult(name, False, f"expected a function, got {type(fn).__name__}")
    cases = sorted(spec.cases(), key=lambda c: c.size)
    for i, case in enumerate(cases):
        message = _check_one(spec, fn, case, timeout)
        if message is not None:
            return CheckResult(name, False, message, i + 1)
    return CheckResult(name, True, f"All {len(cases)} cases agree with ppo_edu's reference "
                                   f"{spec.reference.__module__}.{spec.reference.__name__}.", len(cases))


# ----------------------------------------------------------------------------- input helpers
def _rng(seed):
    return torch.Generator().manual_seed(seed)


def _randn(shape, seed, dtype=torch.float32):
    return torch.randn(shape, generator=_rng(seed), dtype=dtype)


def _flags(shape, p, seed):
    return torch.rand(shape, generator=_rng(seed)) < p


def _t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


# ----------------------------------------------------------------------------- returns and GAE
def _returns_cases():
    cases = [
        Case("one step", dict(rewards=_t([[2.0]]), dones=_t([[0.0]]), gamma=0.9), 1),
        Case("one env, three steps, no episode end", dict(rewards=_t([[1.0], [2.0], [3.0]]),
                                                          dones=_t([[0.0], [0.0], [0.0]]), gamma=0.5), 3),
        Case("one env, the episode ends after step 1", dict(rewards=_t([[1.0], [2.0], [3.0], [4.0]]),
                                                             dones=_t([[0.0], [1.0], [0.0], [0.0]]), gamma=0.5), 4),
        Case("float64, two envs", dict(rewards=_randn((5, 2), 1, torch.float64),
                                       dones=_flags((5, 2), 0.3, 2).double(), gamma=0.99), 10),
    ]
    for seed in range(3):
        cases.append(Case(f"random (T=12, N=3), seed {seed}", dict(
            rewards=_randn((12, 3), 10 + seed), dones=_flags((12, 3), 0.2, 20 + seed).float(), gamma=0.95), 36))
    return cases


def _returns_ignore_dones(rewards, dones, gamma):
    return discounted_returns(rewards, torch.zeros_like(dones), gamma)


def _returns_forward(rewards, dones, gamma):
    out, run = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in range(len(rewards)):
        run = rewards[t] + gamma * run
        out[t] = run
        run = run * (1 - dones[t])
    return out


def _returns_no_gamma(rewards, dones, gamma):
    return discounted_returns(rewards, dones, 1.0)


def _returns_off_by_one(rewards, dones, gamma):
    shifted = torch.cat([dones[1:], torch.zeros_like(dones[:1])])
    return discounted_returns(rewards, shifted, gamma)


RETURNS = Spec("discounted_returns", discounted_returns, _returns_cases, [
    Hint("the return flows across an episode boundary: multiply the future part by (1 - done_t).",
         _returns_ignore_dones),
    Hint("you accumulated forwards from the start of the episode; G_t sums the rewards from t to the "
         "episode's end, so iterate t backwards.", _returns_forward),
    Hint("no discount: G_t = r_t + gamma * (1 - done_t) * G_{t+1}.", _returns_no_gamma),
    Hint("off by one: the done flag of step t cuts the return after r_t (use done_t, not done_{t+1}).",
         _returns_off_by_one),
    Hint("the reward of step t itself is not discounted: G_t = r_t + gamma * (1 - done_t) * G_{t+1}, "
         "not gamma * (r_t + ...).", lambda rewards, dones, gamma: gamma * discounted_returns(rewards, dones, gamma)),
])


def _gae_case(label, T, N, seed, p_term=0.15, p_trunc=0.1, dtype=torch.float32, gamma=0.99, lam=0.95):
    term = _flags((T, N), p_term, seed + 1)
    trunc = _flags((T, N), p_trunc, seed + 2) & ~term
    return Case(label, dict(rewards=_randn((T, N), seed + 3, dtype), values=_randn((T, N), seed + 4, dtype),
                            next_values=_randn((T, N), seed + 5, dtype), terminated=term, truncated=trunc,
                            gamma=gamma, lam=lam), T * N)


def _gae_cases():
    f, tr = torch.zeros(3, 1, dtype=torch.bool), torch.tensor([[False], [True], [False]])
    base = dict(rewards=_t([[1.0], [1.0], [1.0]]), values=_t([[0.5], [0.4], [0.3]]),
                next_values=_t([[0.4], [2.0], [0.2]]), gamma=0.9, lam=0.8)
    return [
        Case("one step, one env", dict(rewards=_t([[1.0]]), values=_t([[0.5]]), next_values=_t([[2.0]]),
                                       terminated=torch.tensor([[False]]), truncated=torch.tensor([[False]]),
                                       gamma=0.9, lam=0.8), 1),
        Case("one env, the episode terminates at step 1", dict(base, terminated=tr, truncated=f), 3),
        Case("one env, the episode is truncated at step 1 (time limit: bootstrap from next_values)",
             dict(base, terminated=f, truncated=tr), 3),
        _gae_case("float64, two envs", 6, 2, 7, dtype=torch.float64),
        _gae_case("random (T=16, N=4)", 16, 4, 30),
        _gae_case("random (T=16, N=4), gamma=1, lam=1", 16, 4, 40, gamma=1.0, lam=1.0),
    ]


def _gae_bootstrap_terminal(rewards, values, next_values, terminated, truncated, gamma, lam):
    done = terminated | truncated
    return compute_gae(rewards, values, next_values, torch.zeros_like(done), done, gamma, lam)


def _gae_truncation_as_termination(rewards, values, next_values, terminated, truncated, gamma, lam):
    return compute_gae(rewards, values, next_values, terminated | truncated, torch.zeros_like(truncated), gamma, lam)


def _gae_recursion_through_truncation(rewards, values, next_values, terminated, truncated, gamma, lam):
    # delta bootstraps correctly, but the recursion only stops at termination
    adv, _ = compute_gae(rewards, values, next_values, terminated, torch.zeros_like(truncated), gamma, lam)
    return adv, adv + values


def _gae_no_lambda(rewards, values, next_values, terminated, truncated, gamma, lam):
    return compute_gae(rewards, values, next_values, terminated, truncated, gamma, 1.0)


def _gae_loop(rewards, values, next_values, terminated, truncated, gamma, lam, delta_gamma=None):
    """A plain loop; ``delta_gamma`` replaces gamma inside the TD residual only."""
    g = gamma if delta_gamma is None else delta_gamma
    adv, run = torch.zeros_like(values), torch.zeros_like(values[0])
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + g * (~terminated[t]).to(values.dtype) * next_values[t] - values[t]
        run = delta + gamma * lam * (~(terminated[t] | truncated[t])).to(values.dtype) * run
        adv[t] = run
    return adv, adv + values


def _gae_next_row_values(rewards, values, next_values, terminated, truncated, gamma, lam):
    shifted = torch.cat([values[1:], next_values[-1:]])
    return compute_gae(rewards, values, shifted, terminated, truncated, gamma, lam)


def _gae_returns_without_values(rewards, values, next_values, terminated, truncated, gamma, lam):
    adv, _ = compute_gae(rewards, values, next_values, terminated, truncated, gamma, lam)
    return adv, adv


GAE = Spec("compute_gae", compute_gae, _gae_cases, [
    Hint("you bootstrapped through a terminal state: delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) "
         "- V(s_t); after termination there is no future value.", _gae_bootstrap_terminal),
    Hint("truncation treated as termination: a time limit is not a terminal state, so a truncated step still "
         "bootstraps from next_values (only the recursion stops).", _gae_truncation_as_termination),
    Hint("the recursion must stop at truncation too: A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1} with "
         "done_t = terminated_t or truncated_t (the next row is a new episode).", _gae_recursion_through_truncation),
    Hint("lambda is missing from the recursion: A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}.",
         _gae_no_lambda),
    Hint("the returns are the value targets: returns = advantages + values.", _gae_returns_without_values),
    Hint("bootstrap from next_values[t], the value of the observation that really followed step t; values[t + 1] "
         "is the next row, which after a time limit is the reset observation of a new episode.", _gae_next_row_values),
    Hint("gamma is missing from the TD residual: delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t).",
         lambda **kw: _gae_loop(**kw, delta_gamma=1.0)),
])


# ----------------------------------------------------------------------------- advantages and losses
def _adv_cases():
    return [Case("four values", dict(advantages=_t([1.0, 2.0, 3.0, 6.0])), 4),
            Case("float64 (T=5, N=3): normalise over all elements", dict(advantages=_randn((5, 3), 3, torch.float64) * 3 + 1), 15),
            Case("random batch of 64", dict(advantages=_randn((64,), 4) * 5 - 2), 64),
            Case("all advantages equal (std 0: the 1e-8 keeps it finite)", dict(advantages=torch.full((6,), 2.5)), 6)]


ADV = Spec("normalize_advantages", normalize_advantages, _adv_cases, [
    Hint("normalised over the wrong axis: whiten over all elements of the batch, not per column.",
         lambda advantages: (advantages - advantages.mean(0)) / (advantages.std(0, unbiased=False) + 1e-8)),
    Hint("normalised over the wrong axis: whiten over all elements of the batch, not per row.",
         lambda advantages: (advantages - advantages.mean(-1, keepdim=True))
         / (advantages.std(-1, unbiased=False, keepdim=True) + 1e-8)),
    Hint("torch.std is unbiased (divides by n - 1) by default; the reference uses the population std "
         "(unbiased=False).", lambda advantages: (advantages - advantages.mean()) / (advantages.std() + 1e-8)),
    Hint("subtract the mean before dividing by the std.", lambda advantages: advantages / (advantages.std(unbiased=False) + 1e-8)),
    Hint("divide by the standard deviation, not the variance.",
         lambda advantages: (advantages - advantages.mean()) / (advantages.var(unbiased=False) + 1e-8)),
])


def _surrogate_cases():
    logp_old = _t([-0.7, -0.7, -0.7, -0.7, -0.7, -0.7])
    ratios = _t([0.5, 0.9, 1.1, 1.5, 1.5, 0.5])
    adv = _t([2.0, 0.5, -1.5, 1.0, -0.7, -2.0])
    return [
        Case("ratio = 1 (first epoch): the loss is -mean(A)", dict(logp_new=_t([-0.5, -1.2]), logp_old=_t([-0.5, -1.2]),
                                                                  advantages=_t([1.0, -2.0]), clip_eps=0.2), 2),
        Case("ratios inside and outside [1 - eps, 1 + eps], both signs of A",
             dict(logp_new=logp_old + ratios.log(), logp_old=logp_old, advantages=adv, clip_eps=0.2), 6),
        Case("random batch of 32, clip_eps=0.1", dict(logp_new=_randn((32,), 5) * 0.3 - 1, logp_old=_randn((32,), 6) * 0.3 - 1,
                                                       advantages=_randn((32,), 7), clip_eps=0.1), 32),
    ]


def _surr(logp_new, logp_old, advantages, clip_eps, combine=torch.min, sign=-1.0):
    ratio = torch.exp(logp_new - logp_old)
    return sign * combine(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages).mean()


SURROGATE = Spec("clipped_surrogate_loss", clipped_surrogate_loss, _surrogate_cases, [
    Hint("max where min belongs: PPO keeps the pessimistic (smaller) of the two surrogates.",
         lambda **kw: _surr(**kw, combine=torch.max)),
    Hint("sign error: return the loss to minimise, -mean(min(r A, clip(r) A)), not the objective.",
         lambda **kw: _surr(**kw, sign=1.0)),
    Hint("clip the probability ratio, not the advantage.",
         lambda logp_new, logp_old, advantages, clip_eps: -torch.min(
             torch.exp(logp_new - logp_old) * advantages,
             torch.exp(logp_new - logp_old) * advantages.clamp(1 - clip_eps, 1 + clip_eps)).mean()),
    Hint("the ratio is exp(logp_new - logp_old), not a quotient of log-probabilities.",
         lambda logp_new, logp_old, advantages, clip_eps: _surr(torch.log(logp_new / logp_old), 0.0 * logp_old,
                                                                advantages, clip_eps)),
    Hint("without the min, the clipped term alone has zero gradient where the policy got worse: "
         "take min(r A, clip(r) A).", lambda logp_new, logp_old, advantages, clip_eps: -(
             torch.exp(logp_new - logp_old).clamp(1 - clip_eps, 1 + clip_eps) * advantages).mean()),
    Hint("no clipping: without clip(r, 1 - eps, 1 + eps) nothing keeps the new policy near the old one.",
         lambda logp_new, logp_old, advantages, clip_eps: -(torch.exp(logp_new - logp_old) * advantages).mean()),
    Hint("the ratio is exp(logp_new - logp_old): you used the log-ratio itself.",
         lambda logp_new, logp_old, advantages, clip_eps: _surr(torch.log(logp_new - logp_old), 0.0 * logp_old,
                                                                advantages, clip_eps)),
    Hint("average over the batch (mean), do not sum.", lambda **kw: _surr(**kw) * len(kw["advantages"])),
], grad_wrt=("logp_new",), first_output_only=True)


def _vloss_cases():
    # values 0, 1: clipping makes the error larger (max keeps it); value 4: clipping makes it smaller
    v, r, o = _t([1.0, 2.0, 0.0, -1.0, 0.5]), _t([1.5, 0.0, 0.3, -1.0, 1.5]), _t([0.5, 2.5, 0.1, -1.25, 1.4])
    return [
        Case("unclipped, one value", dict(values=_t([2.5]), returns=_t([1.0])), 1),
        Case("unclipped, four values", dict(values=v, returns=r), 4),
        Case("clipped with clip_eps=0.2 (some values moved further than 0.2)",
             dict(values=v, returns=r, old_values=o, clip_eps=0.2), 5),
        Case("random batch of 32, clipped with clip_eps=0.5", dict(values=_randn((32,), 8), returns=_randn((32,), 9),
                                                                    old_values=_randn((32,), 10), clip_eps=0.5), 33),
    ]


def _vloss_variant(values, returns, old_values=None, clip_eps=None, half=0.5, combine=torch.max, absolute=False):
    err = (values - returns).abs() if absolute else (values - returns) ** 2
    if old_values is None or clip_eps is None:
        return half * err.mean()
    clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    err_c = (clipped - returns).abs() if absolute else (clipped - returns) ** 2
    return half * combine(err, err_c).mean()


VALUE = Spec("value_loss", value_loss, _vloss_cases, [
    Hint("the value loss is 0.5 * mean((V - R)^2): the 0.5 is missing.", lambda **kw: _vloss_variant(**kw, half=1.0)),
    Hint("min where max belongs: value clipping keeps the larger (pessimistic) of the two errors.",
         lambda **kw: _vloss_variant(**kw, combine=torch.min)),
    Hint("clip the change V - V_old to [-eps, eps] around the old value, not V itself.",
         lambda values, returns, old_values=None, clip_eps=None: 0.5 * torch.max(
             (values - returns) ** 2, (values.clamp(-clip_eps, clip_eps) - returns) ** 2).mean()
         if clip_eps is not None else 0.5 * ((values - returns) ** 2).mean()),
    Hint("squared error, not absolute error.", lambda **kw: _vloss_variant(**kw, absolute=True)),
    Hint("squared error, not absolute error.", lambda **kw: 2 * _vloss_variant(**kw, absolute=True)),
    Hint("with old_values and clip_eps given, the loss must clip V around the old value V_old (clipping around "
         "the returns changes nothing under the max): 0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) "
         "- R)^2)).",
         lambda values, returns, old_values=None, clip_eps=None: 0.5 * ((values - returns) ** 2).mean()),
], grad_wrt=("values",))


# ----------------------------------------------------------------------------- distributions
def _logits_cases():
    return [Case("one state, two actions", dict(logits=_t([[0.0, 1.0]])), 2),
            Case("large logits (overflow test: use logsumexp / log_softmax)", dict(logits=_t([[1000.0, 0.0, -5.0]])), 3),
            Case("float64, batch of 4, 3 actions", dict(logits=_randn((4, 3), 11, torch.float64) * 2), 12),
            Case("random batch of 16, 5 actions", dict(logits=_randn((16, 5), 12) * 3), 80)]


def _naive_log_softmax(logits):
    return torch.log(torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True))


ENTROPY_CAT = Spec("categorical_entropy", D.categorical_entropy, _logits_cases, [
    Hint("sign error: H = -sum_a pi(a) log pi(a) is never negative.", lambda logits: -D.categorical_entropy(logits)),
    Hint("summed over the batch instead of over actions: the entropy has one value per state (sum over the last axis).",
         lambda logits: D.categorical_entropy(logits).sum()),
    Hint("summed over the batch instead of over actions: the entropy has one value per state (sum over the last axis).",
         lambda logits: -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(0)),
    Hint("sum over the actions, do not average: H = -sum_a pi(a) log pi(a).",
         lambda logits: D.categorical_entropy(logits) / logits.shape[-1]),
    Hint("use the probabilities pi(a) = softmax(logits), not the logits, as weights.",
         lambda logits: -(logits * torch.log_softmax(logits, -1)).sum(-1)),
], default_hint="H = -sum_a pi(a) log pi(a) with log pi = log_softmax(logits).")


def _cat_logp_cases():
    return [Case("one state", dict(logits=_t([[0.0, 1.0]]), actions=torch.tensor([1])), 2),
            Case("large logits (overflow test)", dict(logits=_t([[1000.0, 0.0, -5.0]]), actions=torch.tensor([1])), 3),
            Case("float64, batch of 4", dict(logits=_randn((4, 3), 13, torch.float64), actions=torch.tensor([0, 2, 1, 2])), 12),
            Case("random batch of 16", dict(logits=_randn((16, 5), 14) * 2,
                                            actions=torch.randint(0, 5, (16,), generator=_rng(15))), 80)]


CAT_LOGP = Spec("categorical_log_prob", D.categorical_log_prob, _cat_logp_cases, [
    Hint("you returned the raw logit of the action; subtract logsumexp(logits) to normalise.",
         lambda logits, actions: logits.gather(-1, actions.long()[:, None]).squeeze(-1)),
    Hint("you returned the probability, not its logarithm.",
         lambda logits, actions: D.categorical_log_prob(logits, actions).exp()),
    Hint("pick one entry per row, log_probs[arange(B), actions]; log_probs[:, actions] makes a (B, B) matrix.",
         lambda logits, actions: torch.log_softmax(logits, -1)[:, actions.long()]),
    Hint("normalise over the actions (the last axis), not over the batch.",
         lambda logits, actions: torch.log_softmax(logits, 0).gather(-1, actions.long()[:, None]).squeeze(-1)),
])


def _gauss_cases():
    return [Case("one action dim", dict(mean=_t([[0.0]]), log_std=_t([0.0]), actions=_t([[1.0]])), 1),
            Case("two dims, sigma != 1", dict(mean=_t([[0.5, -1.0]]), log_std=_t([0.3, -0.7]), actions=_t([[1.0, -1.5]])), 2),
            Case("float64, batch of 4, 3 dims", dict(mean=_randn((4, 3), 16, torch.float64),
                                                     log_std=_randn((3,), 17, torch.float64) * 0.5,
                                                     actions=_randn((4, 3), 18, torch.float64)), 12),
            Case("random batch of 16, 2 dims", dict(mean=_randn((16, 2), 19), log_std=_randn((2,), 20) * 0.5,
                                                    actions=_randn((16, 2), 21) * 2), 32)]


def _gauss_variant(mean, log_std, actions, use_var=False, with_norm=True, summed=True):
    scale = torch.exp(2 * log_std) if use_var else torch.exp(log_std)
    lp = -0.5 * ((actions - mean) / scale) ** 2 - (log_std if with_norm else 0.0) - 0.5 * D.LOG_2PI
    return lp.sum(-1) if summed else lp


GAUSS_LOGP = Spec("gaussian_log_prob", D.gaussian_log_prob, _gauss_cases, [
    Hint("independent action dimensions: sum the per-dimension log-probs over the last axis.",
         lambda **kw: _gauss_variant(**kw, summed=False)),
    Hint("the normaliser -log sigma is missing from each dimension's log-density.",
         lambda **kw: _gauss_variant(**kw, with_norm=False)),
    Hint("divide (a - mu) by sigma = exp(log_std), not by the variance.", lambda **kw: _gauss_variant(**kw, use_var=True)),
    Hint("the constant -log(2 pi) / 2 per dimension is missing.",
         lambda mean, log_std, actions: D.gaussian_log_prob(mean, log_std, actions) + 0.5 * D.LOG_2PI * mean.shape[-1]),
    Hint("divide the squared error by 2 sigma^2, not 2 sigma.",
         lambda mean, log_std, actions: (-((actions - mean) ** 2) / (2 * log_std.exp()) - log_std
                                         - 0.5 * D.LOG_2PI).sum(-1)),
])


def _gauss_ent_cases():
    return [Case("one dim, sigma = 1", dict(log_std=_t([0.0])), 1),
            Case("three dims", dict(log_std=_t([0.5, -1.0, 0.1])), 3),
            Case("float64, four dims", dict(log_std=_randn((4,), 22, torch.float64)), 4)]


GAUSS_ENT = Spec("gaussian_entropy", D.gaussian_entropy, _gauss_ent_cases, [
    Hint("sum the per-dimension entropies over the last axis.", lambda log_std: log_std + 0.5 * (1 + D.LOG_2PI)),
    Hint("the entropy grows with log sigma, not sigma: H = sum_d log sigma_d + (1 + log 2 pi) / 2.",
         lambda log_std: (log_std.exp() + 0.5 * (1 + D.LOG_2PI)).sum(-1)),
    Hint("the constant is (1 + log 2 pi) / 2 per dimension.", lambda log_std: (log_std + 0.5 * D.LOG_2PI).sum(-1)),
    Hint("the half is missing: H = sum_d (1/2) log(2 pi e sigma_d^2).", lambda log_std: 2 * D.gaussian_entropy(log_std)),
])


# ----------------------------------------------------------------------------- KL and moments
def _kl_cases():
    return [Case("identical policies: both estimates are 0", dict(logp_new=_t([-0.5, -1.0]), logp_old=_t([-0.5, -1.0])), 2),
            Case("three samples", dict(logp_new=_t([-0.2, -1.5, -0.9]), logp_old=_t([-0.4, -1.0, -0.9])), 3),
            Case("float64 batch of 8", dict(logp_new=_randn((8,), 23, torch.float64) * 0.2 - 1,
                                            logp_old=_randn((8,), 24, torch.float64) * 0.2 - 1), 8)]


KL1 = Spec("kl_k1", kl_k1, _kl_cases, [
    Hint("sign: k1 = -log r = log pi_old(a) - log pi_new(a) for a sampled from pi_old.",
         lambda logp_new, logp_old: (logp_new - logp_old).mean()),
    Hint("average over the samples (mean), do not sum.", lambda logp_new, logp_old: (logp_old - logp_new).sum()),
    Hint("k1 = log pi_old(a) - log pi_new(a): subtract the log-probabilities, do not divide them.",
         lambda logp_new, logp_old: (-torch.log(logp_new / logp_old)).mean()),
])
KL3 = Spec("kl_k3", kl_k3, _kl_cases, [
    Hint("k3 = (r - 1) - log r with r = pi_new / pi_old; you used the inverse ratio.",
         lambda logp_new, logp_old: kl_k3(logp_old, logp_new)),
    Hint("the -1 is missing: k3 = (r - 1) - log r, which is 0 when r = 1.",
         lambda logp_new, logp_old: (torch.exp(logp_new - logp_old) - (logp_new - logp_old)).mean()),
    Hint("average over the samples (mean), do not sum.",
         lambda logp_new, logp_old: (torch.expm1(logp_new - logp_old) - (logp_new - logp_old)).sum()),
    Hint("k3 = (r - 1) - log r: subtract the log-ratio, do not add it.",
         lambda logp_new, logp_old: (torch.expm1(logp_new - logp_old) + (logp_new - logp_old)).mean()),
])


def _moments_cases():
    d = torch.float64
    return [Case("scalar statistics", dict(mean=_t(0.0, d), var=_t(1.0, d), count=_t(1.0, d), batch_mean=_t(2.0, d),
                                           batch_var=_t(0.5, d), batch_count=_t(3.0, d)), 1),
            Case("three features", dict(mean=_t([0.0, 1.0, -1.0], d), var=_t([1.0, 2.0, 0.5], d), count=_t(10.0, d),
                                        batch_mean=_t([1.0, 1.0, 0.0], d), batch_var=_t([0.2, 2.0, 1.0], d),
                                        batch_count=_t(5.0, d)), 3)]


MOMENTS = Spec("merge_moments", merge_moments, _moments_cases, [
    Hint("the variance of a merged set also carries the spread between the two means: add "
         "delta^2 * n * n_b / (n + n_b) before dividing by the total count.",
         lambda mean, var, count, batch_mean, batch_var, batch_count: (
             mean + (batch_mean - mean) * batch_count / (count + batch_count),
             (var * count + batch_var * batch_count) / (count + batch_count), count + batch_count)),
    Hint("weights swapped: the new mean moves towards the batch mean by n_b / (n + n_b).",
         lambda mean, var, count, batch_mean, batch_var, batch_count: merge_moments(
             mean, var, batch_count, batch_mean, batch_var, count)),
    Hint("weights swapped: the new mean moves towards the batch mean by n_b / (n + n_b).",
         lambda mean, var, count, batch_mean, batch_var, batch_count: (
             mean + (batch_mean - mean) * count / (count + batch_count),
             *merge_moments(mean, var, count, batch_mean, batch_var, batch_count)[1:])),
    Hint("population variance: divide M2 by n + n_b, not n + n_b - 1.",
         lambda mean, var, count, batch_mean, batch_var, batch_count: (lambda m, v, n: (m, v * n / (n - 1), n))(
             *merge_moments(mean, var, count, batch_mean, batch_var, batch_count))),
    Hint("the count must grow by the batch size: return n + n_b.",
         lambda mean, var, count, batch_mean, batch_var, batch_count: merge_moments(
             mean, var, count, batch_mean, batch_var, batch_count)[:2] + (count,)),
])


# ----------------------------------------------------------------------------- RLHF (Chapters 9-11)
def _seq_mask(lengths, width):
    return (torch.arange(width)[None] < _t(lengths)[:, None]).float()


def _shaping_cases():
    m = _seq_mask([3, 1, 4], 4)
    return [
        Case("one sample of 2 tokens", dict(score=_t([1.0]), logp=_t([[-1.0, -2.0]]), ref_logp=_t([[-1.5, -1.0]]),
                                             mask=_t([[1.0, 1.0]]), kl_coef=0.1), 2),
        Case("3 samples of lengths 3, 1, 4 (padded to 4)",
             dict(score=_t([0.5, -1.0, 2.0]), logp=_randn((3, 4), 21) - 2, ref_logp=_randn((3, 4), 22) - 2, mask=m,
                  kl_coef=0.2), 12),
        Case("random batch of 16 x 10, kl_coef=0.05",
             dict(score=_randn((16,), 23), logp=_randn((16, 10), 24) - 3, ref_logp=_randn((16, 10), 25) - 3,
                  mask=_seq_mask(torch.randint(1, 11, (16,), generator=_rng(26)).tolist(), 10), kl_coef=0.05), 160),
    ]


def _shaping_variant(score, logp, ref_logp, mask, kl_coef, where="last", sign=1.0, use_mask=True, coef=True):
    kl = sign * (logp - ref_logp) * (mask if use_mask else 1.0)
    rewards = -(kl_coef if coef else 1.0) * kl
    if where == "every":
        rewards = rewards + score[:, None] * mask
    else:
        col = torch.full_like(score, mask.shape[1] - 1).long() if where == "column" else (mask.sum(1) - 1).long()
        rewards[torch.arange(len(score)), col] += score
    return rewards, kl


SHAPING = Spec("shaped_rewards", ppo_shaped_rewards, _shaping_cases, [
    Hint("the score belongs on the last real token of each response only, not on every token.",
         lambda **kw: _shaping_variant(**kw, where="every")),
    Hint("the score goes on the last *real* token (mask.sum(1) - 1), not the last column: shorter responses are padded.",
         lambda **kw: _shaping_variant(**kw, where="column")),
    Hint("KL sign: the per-token estimate is log pi(a_t|s_t) - log pi_ref(a_t|s_t), and the reward is minus beta times it.",
         lambda **kw: _shaping_variant(**kw, sign=-1.0)),
    Hint("multiply the KL by the mask: padding after the end token carries no KL and no reward.",
         lambda **kw: _shaping_variant(**kw, use_mask=False)),
    Hint("the KL penalty is scaled by kl_coef (beta).", lambda **kw: _shaping_variant(**kw, coef=False)),
])


def _token_gae_cases():
    return [
        Case("one response of 3 tokens, gamma 1", dict(rewards=_t([[0.0, 0.0, 1.0]]), values=_t([[0.5, 0.2, 0.8]]),
                                                      mask=_t([[1.0, 1.0, 1.0]]), gamma=1.0, lam=0.95), 3),
        Case("lengths 2 and 4 (padded), values on pads must not leak",
             dict(rewards=_randn((2, 4), 31), values=_randn((2, 4), 32), mask=_seq_mask([2, 4], 4), gamma=1.0,
                  lam=0.9), 8),
        Case("random batch of 8 x 12, gamma 0.99",
             dict(rewards=_randn((8, 12), 33), values=_randn((8, 12), 34),
                  mask=_seq_mask(torch.randint(1, 13, (8,), generator=_rng(35)).tolist(), 12), gamma=0.99, lam=0.95),
             96),
    ]


def _token_gae_loop(rewards, values, mask, gamma, lam, mask_values=True, terminal=True, lam_on=True, add_values=True):
    B, R = rewards.shape
    adv = torch.zeros_like(rewards)
    v = values * mask if mask_values else values
    for i in range(B):
        n, run = int(mask[i].sum()), 0.0
        last = n if terminal else R
        for t in reversed(range(last)):
            nxt = v[i, t + 1] if t + 1 < (n if terminal else R) else 0.0
            delta = rewards[i, t] * mask[i, t] + gamma * nxt - v[i, t]
            run = delta + gamma * (lam if lam_on else 1.0) * run
            adv[i, t] = run
    adv = adv * mask
    return adv, (adv + v) * mask if add_values else adv


TOKEN_GAE = Spec("token_gae", ppo_token_gae, _token_gae_cases, [
    Hint("the last real token is terminal: do not bootstrap from (or run the recursion through) the padding after it.",
         lambda **kw: _token_gae_loop(**kw, terminal=False, mask_values=False)),
    Hint("lambda is missing from the recursion: A_t = delta_t + gamma * lam * A_{t+1}.",
         lambda **kw: _token_gae_loop(**kw, lam_on=False)),
    Hint("the returns are the value targets: returns = advantages + values.",
         lambda **kw: _token_gae_loop(**kw, add_values=False)),
])


def _group_cases():
    return [
        Case("one group of 4", dict(scores=_t([1.0, 0.0, 0.5, -0.5]), group_size=4), 4),
        Case("two groups of 2 with different means", dict(scores=_t([3.0, 1.0, -1.0, -2.0]), group_size=2), 4),
        Case("6 groups of 4 (random)", dict(scores=_randn((24,), 41) * 2 + 1, group_size=4), 24),
        Case("a group whose scores are all equal (std 0: eps keeps it finite)",
             dict(scores=_t([0.3, 0.3, 0.3, 1.0, 2.0, 0.0]), group_size=3), 6),
    ]


def _group_variant(scores, group_size, eps=1e-4, scope="group", unbiased=True, center=True, layout="rows"):
    g = scores.view(-1, group_size) if layout == "rows" else scores.view(group_size, -1).T
    if scope == "batch":
        g = scores.view(1, -1)
    mean = g.mean(1, keepdim=True) if center else 0.0
    out = (g - mean) / (g.std(1, keepdim=True, unbiased=unbiased) + eps)
    return out.T.reshape(-1) if layout == "strided" else out.reshape(-1)


GROUP = Spec("group_advantages", grpo_group_advantages, _group_cases, [
    Hint("normalise within each group of group_size consecutive samples, not over the whole batch.",
         lambda **kw: _group_variant(**kw, scope="batch")),
    Hint("groups are consecutive: samples [0, G) share a prompt, then [G, 2G) ... (view(-1, G), not view(G, -1)).",
         lambda **kw: _group_variant(**kw, layout="strided")),
    Hint("subtract the group mean before dividing by the group std.", lambda **kw: _group_variant(**kw, center=False)),
    Hint("the reference uses torch's default (unbiased, n - 1) std within each group.",
         lambda **kw: _group_variant(**kw, unbiased=False)),
])


def _bt_cases():
    return [
        Case("one pair", dict(r_chosen=_t([1.0]), r_rejected=_t([0.0])), 1),
        Case("pairs in both orders", dict(r_chosen=_t([2.0, -1.0, 0.0, 0.5]), r_rejected=_t([0.0, 1.0, 0.0, 3.0])), 4),
        Case("random batch of 32", dict(r_chosen=_randn((32,), 51) * 2, r_rejected=_randn((32,), 52) * 2), 32),
        Case("confident mistakes (differences of -120): needs a stable log-sigmoid",
             dict(r_chosen=_t([-60.0, 1.0]), r_rejected=_t([60.0, 0.0])), 2),
    ]


BT = Spec("bradley_terry_loss", reward_bradley_terry_loss, _bt_cases, [
    Hint("sign: the loss is -log sigmoid(r_chosen - r_rejected); you rewarded the rejected sample.",
         lambda r_chosen, r_rejected: -torch.nn.functional.logsigmoid(r_rejected - r_chosen).mean()),
    Hint("the Bradley-Terry likelihood needs the log-sigmoid of the difference, not the difference itself.",
         lambda r_chosen, r_rejected: -(r_chosen - r_rejected).mean()),
    Hint("average over pairs (mean), do not sum.",
         lambda r_chosen, r_rejected: -torch.nn.functional.logsigmoid(r_chosen - r_rejected).sum()),
], grad_wrt=("r_chosen",))


# ----------------------------------------------------------------------------- public checks
CHECKS: dict[str, Spec] = {s.name: s for s in (RETURNS, GAE, ADV, SURROGATE, VALUE, ENTROPY_CAT, CAT_LOGP,
                                                GAUSS_LOGP, GAUSS_ENT, KL1, KL3, MOMENTS, SHAPING,
                                                TOKEN_GAE, GROUP, BT)}


def _make_check(spec: Spec):
    def check(student_fn: Callable, timeout: float = TIMEOUT_S) -> CheckResult:
        return run_check(spec, student_fn, timeout)

    ref = f"{spec.reference.__module__}.{spec.reference.__name__}"
    check.__name__ = check.__qualname__ = f"check_{spec.name}"
    check.__doc__ = (f"Check ``student_fn`` against :func:`{ref}` (same signature and return value) on "
                     "hand-made edge cases and seeded random inputs; returns a :class:`CheckResult`.")
    return check


check_discounted_returns = _make_check(RETURNS)
check_compute_gae = check_gae = _make_check(GAE)
check_normalize_advantages = _make_check(ADV)
check_clipped_surrogate_loss = _make_check(SURROGATE)
check_value_loss = _make_check(VALUE)
check_categorical_entropy = _make_check(ENTROPY_CAT)
check_categorical_log_prob = _make_check(CAT_LOGP)
check_gaussian_log_prob = _make_check(GAUSS_LOGP)
check_gaussian_entropy = _make_check(GAUSS_ENT)
check_kl_k1 = _make_check(KL1)
check_kl_k3 = _make_check(KL3)
check_merge_moments = check_running_mean_std = _make_check(MOMENTS)
check_shaped_rewards = _make_check(SHAPING)
check_token_gae = _make_check(TOKEN_GAE)
check_group_advantages = _make_check(GROUP)
check_bradley_terry_loss = _make_check(BT)
