"""Two update engines behind one interface (Chapters 5 and 12).

:class:`TorchEngine` (``backend="torch"``) is the readable reference: the loss from
:mod:`ppo_edu.losses`, autograd, ``torch.optim.Adam``. :class:`NumpyEngine` (``backend="numpy"``,
the default) computes the same step with a hand-derived gradient, faster on small MLPs. ``PPO``
builds one with :func:`make_engine` and talks only to the :class:`Engine` interface.
"""
from __future__ import annotations

from .base import Engine, check_finite
from .numpy_engine import NumpyEngine
from .torch_engine import TorchEngine

__all__ = ["Engine", "NumpyEngine", "TorchEngine", "ENGINES", "make_engine", "check_finite"]

ENGINES: dict[str, type[Engine]] = {"numpy": NumpyEngine, "torch": TorchEngine}


def make_engine(model, config) -> Engine:
    """The engine ``config.backend`` names, owning ``model``'s parameters."""
    return ENGINES[config.backend](model, config)
