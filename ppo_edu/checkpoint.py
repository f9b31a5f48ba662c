"""Checkpoints that cannot lose work and cannot run code.

Writes go to a temporary file in the target folder, are flushed to disk, then renamed over
the target (``os.replace`` is atomic on POSIX and Windows): a crash mid-write leaves the
previous checkpoint intact. Reads use ``torch.load(weights_only=True)``, which unpickles
only tensors and plain containers, so a tampered file cannot execute code.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

__all__ = ["atomic_save", "atomic_write_text", "safe_load", "CheckpointError", "FORMAT"]

FORMAT = "ppo_edu.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, tampered with, or not a ppo_edu checkpoint."""


def _atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
