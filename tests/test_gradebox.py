"""The grader's wire format: what crosses from the student's process is data, never code."""
import base64

import numpy as np
import pytest
import torch

from ppo_edu.gradebox import Unencodable, check_limits, decode, encode


@pytest.mark.parametrize("value", [
    torch.tensor(0.5, dtype=torch.float64), torch.zeros(3, 0), torch.tensor([[True, False]]),
    torch.arange(6).reshape(2, 3), (torch.ones(2), {"clip_fraction": 0.25, "kl": torch.tensor(0.1)}),
    [1, 2.5, None, "text", (np.float32(1.5), np.arange(3))], torch.tensor([1.0, 2.0], dtype=torch.bfloat16)])
def test_round_trip_keeps_values_shapes_and_dtypes(value):
    back = decode(encode(value))
    flat_a, flat_b = _flatten(value), _flatten(back)
    assert len(flat_a) == len(flat_b)
    for a, b in zip(flat_a, flat_b):
        assert type(a) is type(b)
        if torch.is_tensor(a):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        elif isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b)
        else:
            assert a == b


def _flatten(x):
    if isinstance(x, (tuple, list)):
        return [y for v in x for y in _flatten(v)]
    if isinstance(x, dict):
        return [y for v in x.values() for y in _flatten(v)]
    return [x]


def test_gradient_requests_travel_with_the_tensor():
    back = decode(encode(torch.ones(2, requires_grad=True)))
    assert back.requires_grad and back.is_leaf


def test_objects_are_not_sent_and_object_dtypes_are_refused():
    class Anything:
        def __eq__(self, other):
            return True

    with pytest.raises(Unencodable):
        encode(Anything())
    with pytest.raises(Unencodable):
        encode(np.array([Anything()], dtype=object))
    evil = {"t": "ndarray", "np": "object", "shape": [1], "data": base64.b64encode(b"\0" * 8).decode()}
    with pytest.raises(ValueError, match="not allowed"):
        decode(evil)


@pytest.mark.parametrize("value", [0, -5, float("nan"), float("inf"), "10"])
def test_limits_must_be_finite_and_positive(value):
    with pytest.raises(ValueError, match="--notebook-timeout must be a finite number > 0"):
        check_limits(notebook_timeout=value)


def test_a_protected_folder_that_holds_the_package_shows_only_the_package():
    from pathlib import Path

    import ppo_edu
    from ppo_edu.gradebox import bwrap_command

    package = Path(ppo_edu.__file__).resolve().parent
    args = bwrap_command([package.parent])  # e.g. --out grades.csv in the repository's root
    hide = args.index("--tmpfs", args.index(str(package.parent)) - 1)
    assert args[hide + 1] == str(package.parent)
    rebinds = [i for i in range(len(args) - 2) if args[i] == "--ro-bind" and args[i + 1] == str(package)]
    assert rebinds and rebinds[-1] > hide  # shown again on top of the empty folder
    assert not any(args[i] == "--ro-bind" and args[i + 1] == str(package.parent) for i in range(len(args) - 1))


LOSSES = '''import torch

def surrogate(logp_new, logp_old, advantages, clip_eps):
    ratio = torch.exp(logp_new - logp_old)
    return -torch.min(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages).mean()

def surrogate_item(logp_new, logp_old, advantages, clip_eps):
    return surrogate(logp_new, logp_old, advantages, clip_eps).item()

def surrogate_inverted(logp_new, logp_old, advantages, clip_eps):
    return surrogate(logp_old, logp_new, advantages, clip_eps)

def normalize_in_place(advantages):
    advantages -= advantages.mean()
    return advantages / (advantages.std(unbiased=False) + 1e-8)
'''


def test_checks_see_gradients_and_in_place_changes_through_the_sandbox():
    from ppo_edu.checks import check_clipped_surrogate_loss, check_normalize_advantages
    from ppo_edu.gradebox import Box, Limits, sandbox_available

    box = Box(Limits(cell_s=60), [], sandboxed=sandbox_available() is None)
    try:
        box.start()
        assert box.run_cell(LOSSES) is None
        ns = {}
        box.bind(ns, ["surrogate", "surrogate_item", "surrogate_inverted", "normalize_in_place"])
        assert check_clipped_surrogate_loss(ns["surrogate"]).passed
        assert "not differentiable" in check_clipped_surrogate_loss(ns["surrogate_item"]).message
        inverted = check_clipped_surrogate_loss(ns["surrogate_inverted"]).message
        assert "gradient" in inverted and "the ratio is inverted" in inverted
        assert "modified its input `advantages` in place" in check_normalize_advantages(ns["normalize_in_place"]).message
        assert box.reference_hits == set()
    finally:
        box.close()


def test_the_student_has_no_capabilities_in_the_sandbox():
    import subprocess
    import sys

    from ppo_edu.gradebox import bwrap_command, sandbox_available

    if sandbox_available() is not None:
        pytest.skip(f"no sandbox: {sandbox_available()}")
    code = ("import os, subprocess; print(open('/proc/self/status').read().split('CapEff:')[1].split()[0]); "
            "print(subprocess.run(['mount', '-o', 'remount,rw', '/'], capture_output=True).returncode)")
    out = subprocess.run(bwrap_command([]) + [sys.executable, "-c", code], capture_output=True, text=True)
    cap_eff, mount_rc = out.stdout.split()
    assert int(cap_eff, 16) == 0 and mount_rc != "0"
