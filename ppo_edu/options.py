"""Checking what a user typed before any work starts: the one validation layer of ``ppo-edu``.

Every check either passes or raises :class:`OptionError` with one line that names the option,
the value given and what is allowed; the CLI prints it and exits with status 2, before it has
trained anything or written any file. The argparse ``type=`` factories here (:func:`integer`,
:func:`number`, :func:`layer_sizes`, ...) turn a bad value into that same one line.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

__all__ = ["OptionError", "Parser", "integer", "number", "optional_number", "layer_sizes", "check_device",
           "check_out_dir", "check_cache_dir", "available_memory", "check_memory", "ppo_memory_bytes",
           "far_from_presets", "SEED_MAX"]

SEED_MAX = 2**32 - 1  # NumPy and gymnasium seeds are 32-bit here


class OptionError(ValueError):
    """A value the user gave is not allowed; the message names the option, the value and the range."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``PROG: error: ...``, with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _int(text: str) -> int:
    """``"100000"``, ``"100_000"`` and ``"1e5"`` are integers; ``"1.7"`` and ``"nan"`` are not."""
    try:
        return int(text)
    except ValueError:
        pass
    value = float(text)  # ValueError for words
    if not math.isfinite(value) or value != int(value):
        raise ValueError(text)
    return int(value)


def integer(lo: int, hi: int | None = None):
    """argparse ``type=``: an integer in ``[lo, hi]``."""
    allowed = f"integers from {lo} to {hi}" if hi is not None else f"integers >= {lo}"

    def parse(text: str) -> int:
        try:
            value = _int(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer: allowed values are {allowed}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{text} is out of range: allowed values are {allowed}")
        return value
    parse.__name__ = "integer"
    return parse


def number(lo: float = -math.inf, hi: float = math.inf):
    """argparse ``type=``: a finite number in ``[lo, hi]``."""
    allowed = "finite numbers" + ("" if (lo, hi) == (-math.inf, math.inf) else f" from {lo:g} to {hi:g}")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number: allowed values are {allowed}") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text} is not allowed: allowed values are {allowed}")
        return value
    parse.__name__ = "number"
    return parse


def optional_number(text: str) -> float | None:
    """argparse ``type=``: ``none`` or a finite number."""
    if text.lower() in ("none", "null", "off"):
        return None
    return number()(text)


def layer_sizes(max_size: int = 4096, max_layers: int = 16):
    """argparse ``type=``: hidden layer sizes, written ``64``, ``64,64`` or ``[64, 64]``."""
    allowed = f"1 to {max_layers} integer layer sizes from 1 to {max_size}, e.g. 64,64 or [64, 64]"

    def parse(text: str) -> tuple[int, ...]:
        parts = [p.strip() for p in text.strip().strip("[]()").split(",") if p.strip()]
        try:
            sizes = tuple(_int(p) for p in parts)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers: allowed values are "
                                             f"{allowed}") from None
        if not 1 <= len(sizes) <= max_layers or not all(1 <= s <= max_size for s in sizes):
            raise argparse.ArgumentTypeError(f"{text} is not allowed: allowed values are {allowed}")
        return sizes
    parse.__name__ = "layer sizes"
    return parse


# ---------------------------------------------------------------------------- devices and folders
def check_device(device: str) -> str:
    """``auto``, ``cpu``, or ``cuda``/``cuda:N`` when that GPU exists."""
    import torch

    allowed = "auto, cpu, cuda or cuda:N"
    if device in ("auto", "cpu"):
        return device
    if device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise OptionError(f"--device {device!r} is unknown: allowed values are {allowed}")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device[5:]) if ":" in device else 0
    if index >= n:
        raise OptionError(f"--device {device}: this machine has {n} CUDA GPU(s); use --device cpu or auto")
    return device


def _writable(path: Path) -> bool:
    """Whether ``path`` (a folder, existing or not) could be created and written: a probe file in
    its nearest existing folder, deleted at once (``os.access`` says yes to root on a read-only disk)."""
    import tempfile

    p = path.absolute()
    while not p.exists():
        p = p.parent
    try:
        with tempfile.TemporaryFile(dir=p):
            return True
    except OSError:
        return False


def check_out_dir(path: str | Path, option: str = "--out") -> Path:
    """A folder that is not a file and can be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OptionError(f"{option} {str(path)!r} is a file: allowed values are folders (new or existing)")
    if not _writable(path):
        raise OptionError(f"{option} {str(path)!r} cannot be written (permission denied): choose another folder")
    return path


def check_cache_dir(path: str | Path) -> Path:
    return check_out_dir(path, "--cache")


# ---------------------------------------------------------------------------- memory
def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def ppo_memory_bytes(config, obs_dim: int, act_dim: int) -> int:
    """A generous estimate of the memory ``PPO(env, config).learn(...)`` allocates.

    Parameters (weights, gradients, two Adam moments; a second copy for the torch engine),
    the rollout buffer and its flattened minibatch copies, a minibatch's activations and
    gradients through every layer, and about 20 kB per environment."""
    sizes = [obs_dim, *config.hidden]
    params = 2 * sum(a * b + b for a, b in zip(sizes, sizes[1:])) + config.hidden[-1] * (act_dim + 1)
    param_bytes = params * 4 * (4 if config.backend == "numpy" else 8)
    per_step = 4 * (obs_dim + act_dim + 10)
    rollout = 4 * config.batch_size * per_step
    activations = 8 * config.minibatch_size * 4 * sum(config.hidden) * 2
    return param_bytes + rollout + activations + 20_000 * config.n_envs


def check_memory(needed: int, what: str, hint: str) -> None:
    """Refuse a run that needs more than 80 % of the available memory."""
    free = available_memory()
    if free is not None and needed > 0.8 * free:
        raise OptionError(f"{what} needs about {needed / 2**30:.1f} GiB of memory but {free / 2**30:.1f} GiB "
                          f"is available: {hint}")


# ---------------------------------------------------------------------------- warnings
def far_from_presets(name: str, value, preset_values, factor: float = 10.0) -> str | None:
    """A one-line warning when a positive ``value`` is more than ``factor`` times outside the
    range of the (positive) values every preset uses, else None."""
    known = [v for v in preset_values if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0]
    if not known or not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        return None
    lo, hi = min(known), max(known)
    if lo / factor <= value <= hi * factor:
        return None
    return (f"warning: --{name.replace('_', '-')} {value:g} is far outside every preset "
            f"({lo:g} to {hi:g}); training may diverge or not learn")


def warn(prog: str, message: str) -> None:
    print(f"{prog}: {message}", file=sys.stderr)
