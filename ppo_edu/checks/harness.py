"""The checking harness: run a student's function and the library's reference on the same inputs.

A :class:`Spec` names a reference function, its cases (hand-made edge cases first, then seeded
random ones) and its :class:`Hint` catalogue: known mistakes, each written as a buggy variant of
the reference. :func:`run_check` calls the student's function on every case, smallest first, and
stops at the first disagreement with a message that shows the input, the expected and received
values, the largest difference, and the hint whose variant reproduces the student's output.

A student function that raises, runs too long, returns the wrong shape or a NaN, modifies its
input, or (for losses) is not differentiable, gets a message saying so; the check never raises.
"""
from __future__ import annotations

import contextvars
import html
import inspect
import signal
import threading
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

TIMEOUT_S = 10.0
#: the reference function of the check now running (read by the grader, ``ppo_edu.coursework``, to
#: tell whether a student's function calls the very reference it is checked against)
ACTIVE_REFERENCE: contextvars.ContextVar = contextvars.ContextVar("ppo_edu_active_reference", default=None)


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


def _tolerance(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(rtol, atol) for the less precise of two results. Both float64: 1e-5, which a correct answer
    built with float32 masks (``done.float()``, as most PPO code does) reaches and any real mistake
    misses by orders of magnitude; float32 (and integers): 1e-4 / 1e-5; float16 / bfloat16: 1e-2."""
    low = {torch.float16, torch.bfloat16}
    if a.dtype in low or b.dtype in low:
        return 1e-2, 1e-3
    if a.dtype == torch.float64 and b.dtype == torch.float64:
        return 1e-5, 1e-5
    return 1e-4, 1e-5


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    rtol, atol = _tolerance(a, b)
    a, b = a.detach().double(), b.detach().double()
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=False))


def _same_outputs(got, want) -> bool:
    return len(got) == len(want) and all(_close(g, w) for g, w in zip(got, want))


def _difference(got, want) -> str:
    """The largest absolute and relative differences and the dtypes, output by output."""
    lines = []
    for i, (g, w) in enumerate(zip(got, want)):
        if g.shape != w.shape or _close(g, w):
            continue
        diff = (g.detach().double() - w.detach().double()).abs()
        rel = diff / w.detach().double().abs().clamp_min(1e-12)
        rtol, atol = _tolerance(g, w)
        tag = f"output [{i}]: " if len(want) > 1 else ""
        lines.append(f"{tag}largest difference {diff.max().item():.3g} (absolute), {rel.max().item():.3g} "
                     f"(relative); allowed {atol:g} + {rtol:g} * |expected|; dtypes: expected {w.dtype}, "
                     f"received {g.dtype}")
    return "\n".join(lines)


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
        frame = traceback.extract_tb(err.__traceback__)[-1]
        lineno, line = getattr(err, "student_where", None) or (frame.lineno, frame.line)  # graded: from the sandbox
        return _failure(spec, case, f"Your function raised {type(err).__name__}: {err}\n"
                                    f"  at line {lineno}: {line}")
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
        if e.is_floating_point() and not torch.isfinite(g).all() and torch.isfinite(e).all():
            return _failure(spec, case, f"{tag} contains NaN or inf.", expected, got,
                            "look for log(0), exp of a large number, or 0/0; "
                            "log_softmax and logsumexp are the stable forms.")
    if not _same_outputs(got, expected):
        return _failure(spec, case, "Values differ: " + _difference(got, expected), expected, got,
                        _diagnose(spec, case, got))
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
                            hint=_diagnose_grad(spec, case, name, have, got))
    return None


def _diagnose_grad(spec: Spec, case: Case, name: str, have: torch.Tensor, got) -> str:
    """The hint whose variant gives the student's loss value *and* gradient on this case."""
    for hint in spec.hints:
        inputs = _clone(case.inputs, spec.grad_wrt)
        try:
            outs = _as_outputs(hint.buggy(**inputs), spec.first_output_only)
            (grad,) = torch.autograd.grad(outs[0], inputs[name], allow_unused=True)
        except Exception:
            continue
        if grad is not None and _close(have, grad) and _close(got[0], outs[0]):
            return hint.text
    return ("a clamp or min/max that blocks (or lets through) the wrong gradient, or a missing "
            "stop-gradient (.detach()) on a target.")


def run_check(spec: Spec, fn: Callable, timeout: float = TIMEOUT_S) -> CheckResult:
    """Run ``fn`` against ``spec`` on every case, smallest first; stop at the first failure."""
    name = f"check_{spec.name}"
    if not callable(fn):
        return CheckResult(name, False, f"expected a function, got {type(fn).__name__}")
    cases = sorted(spec.cases(), key=lambda c: c.size)
    token = ACTIVE_REFERENCE.set(spec.reference)
    try:
        for i, case in enumerate(cases):
            message = _check_one(spec, fn, case, timeout)
            if message is not None:
                return CheckResult(name, False, message, i + 1)
    finally:
        ACTIVE_REFERENCE.reset(token)
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


def make_check(spec: Spec):
    """The public ``check_<name>(student_fn, timeout=10)`` function for ``spec``."""
    def check(student_fn: Callable, timeout: float = TIMEOUT_S) -> CheckResult:
        return run_check(spec, student_fn, timeout)

    ref = f"{spec.reference.__module__}.{spec.reference.__name__}"
    check.__name__ = check.__qualname__ = f"check_{spec.name}"
    check.__doc__ = (f"Check ``student_fn`` against :func:`{ref}` (same signature and return value) on "
                     "hand-made edge cases and seeded random inputs; returns a :class:`CheckResult`.")
    check.spec = spec
    return check
