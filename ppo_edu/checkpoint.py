"""Checkpoints that cannot lose work and cannot run code.

Writes go to a temporary file in the target folder, are flushed to disk, then renamed over
the target (``os.replace`` is atomic on POSIX and Windows): a crash mid-write leaves the
previous checkpoint intact; the file gets the mode the umask gives any new file (not the
0600 of a temporary file). Reads use ``torch.load(weights_only=True)``, which unpickles
only tensors and plain containers, so a tampered file cannot execute code.

:func:`env_state` and :func:`restore_env_state` snapshot an environment's own state (NumPy
arrays, numbers, random generators) as plain containers, so that a resumed run continues
every episode exactly where the interrupted one stopped.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

__all__ = ["atomic_save", "atomic_write_text", "safe_load", "CheckpointError", "FORMAT", "file_mode",
           "env_state", "restore_env_state"]

FORMAT = "ppo_edu.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, tampered with, or not a ppo_edu checkpoint."""


def _atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, file_mode())  # mkstemp's 0600 would hide the file from the group
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the process's umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_save(obj: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` to exactly ``path``, atomically."""
    return _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to exactly ``path``, atomically."""
    return _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def safe_load(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict:
    """Load a checkpoint written by :func:`atomic_save`, checking its format and keys."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (or is not a file)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad CRC, forbidden pickle global, ...
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated, corrupt or not safe to load "
                              f"(only tensors and plain containers are accepted): {err}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a {FORMAT} file")
    missing = [k for k in required if k not in obj]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks the fields {missing}")
    return obj


# ---------------------------------------------------------------------------- environment state
_SCALARS = (bool, int, float, str, type(None))


def _chain(env) -> list[tuple[str, object]]:
    """(path, object) for a vector env, its sub-environments and every wrapper inside them."""
    out, todo = [], [("", env)]
    while todo:
        path, obj = todo.pop(0)
        out.append((path, obj))
        if hasattr(obj, "env"):
            todo.append((f"{path}.env", obj.env))
        for i, sub in enumerate(getattr(obj, "envs", None) or []):
            todo.append((f"{path}.envs[{i}]", sub))
    return out


def _pack(value):
    if isinstance(value, np.random.Generator):
        return {"rng": value.bit_generator.state}
    if isinstance(value, (np.ndarray, np.generic)) and np.asarray(value).dtype.kind in "biuf":
        arr = np.asarray(value)
        return {"array": torch.from_numpy(arr.copy()), "scalar": isinstance(value, np.generic)}
    if isinstance(value, _SCALARS):
        return {"py": value}
    return None  # spaces, specs, render surfaces...: configuration, not state


def env_state(env) -> dict:
    """Everything that changes while ``env`` runs (arrays, numbers, random generators) of the env,
    its sub-environments and wrappers, as plain containers that ``torch.load(weights_only=True)`` reads."""
    state = {}
    for path, obj in _chain(env):
        packed = {k: _pack(v) for k, v in vars(obj).items() if k not in ("env", "envs")}
        state[path] = {k: v for k, v in packed.items() if v is not None}
    return state


def _unpack(old, packed):
    if "rng" in packed:
        rng = old if isinstance(old, np.random.Generator) else np.random.default_rng()
        rng.bit_generator.state = packed["rng"]
        return rng
    if "array" in packed:
        arr = packed["array"].numpy().copy()
        return arr[()] if packed["scalar"] else arr
    return packed["py"]


def restore_env_state(env, state: dict) -> None:
    """Put back a snapshot taken by :func:`env_state` on an env built the same way."""
    objects = dict(_chain(env))
    if set(objects) != set(state):
        raise CheckpointError(f"the saved environment state has the parts {sorted(state)} but this environment "
                              f"has {sorted(objects)}: it was built differently")
    for path, attrs in state.items():
        obj = objects[path]
        for k, packed in attrs.items():
            setattr(obj, k, _unpack(getattr(obj, k, None), packed))
