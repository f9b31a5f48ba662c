"""Metrics rows to TensorBoard, for users who watch training there (Stable-Baselines3's
``tensorboard_log=``). Needs the optional ``tensorboard`` package:
``pip install -c constraints.txt -e ".[tensorboard]"``.

Each writer gets a fresh run folder ``<log_dir>/<prefix>_<k>`` (k = 1, 2, ...), so runs sit
side by side in ``tensorboard --logdir <log_dir>``. Every numeric field of a row becomes a
scalar tagged ``<group>/<field>``, at the row's step (env steps for PPO, the iteration for RLHF).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

__all__ = ["TensorBoardLog", "tb_writer"]

INSTALL_HINT = 'pip install -c constraints.txt -e ".[tensorboard]"'


class TensorBoardLog:
    """A thin wrapper of ``torch.utils.tensorboard.SummaryWriter`` that writes metrics rows."""

    def __init__(self, run_dir: Path, group: str, step_key: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError(f"tensorboard_log={str(run_dir.parent)!r} needs the tensorboard package, "
                              f"which is not installed: {INSTALL_HINT}") from None
        self.run_dir, self.group, self.step_key = run_dir, group, step_key
        self.writer = SummaryWriter(log_dir=str(run_dir))

    def log(self, row: dict) -> None:
        """Every finite number of ``row`` (bools as 0/1) as a scalar at ``row[step_key]``."""
        step = int(row[self.step_key])
        for key, value in row.items():
            if key != self.step_key and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"{self.group}/{key}", float(value), step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def tb_writer(log_dir, prefix: str, group: str | None = None, step_key: str = "env_steps") -> TensorBoardLog:
    """A :class:`TensorBoardLog` in the next free ``<log_dir>/<prefix>_<k>`` folder."""
    if not isinstance(log_dir, (str, Path)) or not str(log_dir):
        raise ValueError(f"tensorboard_log={log_dir!r} is invalid: allowed values are None or a folder path")
    root = Path(log_dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"tensorboard_log={str(log_dir)!r} is a file: allowed values are None or a folder path")
    taken = [int(m.group(1)) for p in (root.iterdir() if root.exists() else [])
             if (m := re.fullmatch(re.escape(prefix) + r"_(\d+)", p.name))]
    return TensorBoardLog(root / f"{prefix}_{max(taken, default=0) + 1}", group or prefix.lower(), step_key)
