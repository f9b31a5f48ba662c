"""Memory accounting for PPO-RLHF and GRPO (Chapter 11), measured from the live tensors.

For each model of a trainer we add up the bytes of the tensors that really exist after a
training step: parameters, gradients, optimiser state (Adam keeps two moments per trained
parameter). Activations are the tensors autograd saves for the backward pass, counted with
``torch.autograd.graph.saved_tensors_hooks`` during one minibatch (each storage once): that is
what one minibatch holds at its peak, just before ``backward``. On a GPU the CUDA allocator's
peak over a whole iteration is reported too.
"""
from __future__ import annotations

import contextlib
import resource

import torch

__all__ = ["tensor_bytes", "SavedTensorCounter", "measure_trainer"]

MB = 2 ** 20


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (shared weights are counted once)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor):
            continue
        st = t.untyped_storage()
        key = (st.data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += st.nbytes()
    return total


class SavedTensorCounter:
    """Context manager: bytes of the distinct tensors autograd saves for backward inside it,
    leaving out the storages listed in ``exclude`` (the weights, already counted as parameters)."""

    def __init__(self, exclude: set | None = None):
        self.exclude, self.bytes, self._seen = exclude or set(), 0, set()

    def _pack(self, t: torch.Tensor):
        st = t.untyped_storage()
        key = (st.data_ptr(), t.device)
        if key not in self._seen and key not in self.exclude:
            self._seen.add(key)
            self.bytes += st.nbytes()
        return t

    def __enter__(self):
        self.bytes, self._seen = 0, set()
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def _optimizer_tensors(opt):
    for state in opt.state.values():
        yield from (v for v in state.values() if isinstance(v, torch.Tensor) and v.dim() > 0)


def measure_trainer(trainer, reward_model=None) -> dict:
    """Run one training step of a ``PPORLHF`` or ``GRPO`` trainer and account for its memory in MiB.
    Activations are counted inside each minibatch step through the trainer's ``minibatch_hook``.

    Returns ``{"models": {name: {"params", "grads", "optimizer"}}, "activations", "total",
    "cuda_peak" (None on CPU), "process_peak_rss"}``."""
    peak_act = [0]
    weights = {(p.untyped_storage().data_ptr(), p.device) for p in trainer.optimizer.param_groups[0]["params"]}

    @contextlib.contextmanager
    def counted():
        with SavedTensorCounter(exclude=weights) as c:
            yield
        peak_act[0] = max(peak_act[0], c.bytes)

    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with trainer.minibatch_hook(counted):
        trainer.step()
    models = {"policy": trainer.model, "reference": trainer.ref}
    if getattr(trainer, "critic", None) is not None:
        models["critic"] = trainer.critic
    if reward_model is not None:
        models["reward"] = reward_model
    opt_state = list(_optimizer_tensors(trainer.optimizer))
    trained = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    rows = {}
    for name, m in models.items():
        params = list(m.parameters())
        mine = [p for p in params if id(p) in trained]
        state = [v for p in mine for v in trainer.optimizer.state.get(p, {}).values()
                 if isinstance(v, torch.Tensor) and v.dim() > 0]
        rows[name] = {"params": tensor_bytes(params) / MB, "grads": tensor_bytes(p.grad for p in params) / MB,
                      "optimizer": tensor_bytes(state) / MB}
    total = sum(sum(r.values()) for r in rows.values()) + peak_act[0] / MB
    return {"models": rows, "activations": peak_act[0] / MB, "total": total,
            "optimizer_all": tensor_bytes(opt_state) / MB,
            "cuda_peak": torch.cuda.max_memory_allocated() / MB if cuda else None,
            "process_peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
