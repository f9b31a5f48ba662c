"""Data-parallel PPO with ``torch.distributed``: Chapter 12, "Throughput and scale".

Every process (rank) steps its own vectorised environments with its own seed, computes the
gradient of the PPO loss on its own minibatch, and the gradients are **averaged** across
ranks before the optimiser step (``all_reduce``). All ranks start from the same parameters
(rank 0's, broadcast) and apply the same averaged update, so they stay identical. Advantage
whitening uses the *global* mean and std of the minibatch, so one update with K ranks of N
envs equals one update of a single process with K*N envs on the same data. Rank 0 alone logs,
evaluates and writes checkpoints.

Launch with ``torchrun --nproc_per_node=K -m ppo_edu.train ENV_ID`` (or ``ppo-edu train
ENV_ID --nproc K``). Backend: gloo on CPU, nccl when CUDA is available.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DistInfo", "init", "info", "average_", "average_grads_", "barrier", "broadcast_", "global_mean_std",
           "shutdown"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def info() -> DistInfo:
    """This process's rank and the world size (``DistInfo(0, 1)`` when not distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return DistInfo()


def init(backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return info()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    torch.distributed.init_process_group(backend=backend)
    return info()


def shutdown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _as_tensor(x) -> torch.Tensor:
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else x  # shares memory: in-place works


def average_(x) -> None:
    """Replace ``x`` (a NumPy array or tensor) by its mean over all ranks, in place."""
    d = info()
    if not d.enabled:
        return
    t = _as_tensor(x)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    t.div_(d.world_size)


def average_grads_(params) -> None:
    """Average the ``.grad`` of ``params`` over all ranks with one all_reduce (missing grads count as 0)."""
    if not info().enabled:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    average_(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p))
        offset += n


def barrier() -> None:
    if info().enabled:
        torch.distributed.barrier()


def broadcast_(x, src: int = 0) -> None:
    """Overwrite ``x`` on every rank with rank ``src``'s values, in place."""
    if info().enabled:
        torch.distributed.broadcast(_as_tensor(x), src=src)


def global_mean_std(x: np.ndarray) -> tuple[float, float]:
    """Mean and population std of ``x`` concatenated over all ranks (equal or unequal sizes)."""
    moments = torch.tensor([x.size, float(x.sum()), float(np.square(x, dtype=np.float64).sum())], dtype=torch.float64)
    if info().enabled:
        torch.distributed.all_reduce(moments, op=torch.distributed.ReduceOp.SUM)
    n, s, ss = moments.tolist()
    mean = s / n
    return mean, max(ss / n - mean * mean, 0.0) ** 0.5
