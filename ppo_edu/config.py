"""What every config dataclass shares: validation with one message format, ``replace``, and
deprecated old field names.

Each config is a frozen dataclass whose ``__post_init__`` calls the checks below; a bad value
raises ``ValueError("PPOConfig.lr=-1 is invalid: allowed values are a number > 0")``, naming the
class, the field, the value and what is allowed. Renamed fields keep their old name for one
release through :func:`renamed_fields` (constructor keywords, ``replace`` and attribute reads
warn with a ``DeprecationWarning`` naming the new field).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from numbers import Integral
import warnings
from typing import Callable

__all__ = ["require", "integers", "numbers", "optional_numbers", "choice", "divides", "replace",
           "renamed_fields", "renamed_kwargs"]

POSITIVE = (lambda v: v > 0, "a number > 0")
NON_NEGATIVE = (lambda v: v >= 0, "a number >= 0")
UNIT_INTERVAL = (lambda v: 0 < v <= 1, "a number in (0, 1]")
LOG_STD = (lambda v: -20 <= v <= 5, "a number from -20 to 5 (a standard deviation from 2e-9 to 148)")


def require(cfg, name: str, ok: bool, allowed: str) -> None:
    """Raise the one-line error for ``cfg.name`` unless ``ok``."""
    if not ok:
        value = getattr(cfg, name)
        raise ValueError(f"{type(cfg).__name__}.{name}={value!r} is invalid: allowed values are {allowed}")


def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)    # NumPy integers count


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integers(cfg, *names: str, low: int = 1) -> None:
    """Each field is an integer >= ``low``."""
    for name in names:
        v = getattr(cfg, name)
        require(cfg, name, _is_int(v) and v >= low, f"integers >= {low}")


def numbers(cfg, rule: tuple[Callable[[float], bool], str], *names: str) -> None:
    """Each field is a finite number that passes ``rule`` (``POSITIVE``, ``NON_NEGATIVE``, ...)."""
    ok, allowed = rule
    for name in names:
        v = getattr(cfg, name)
        require(cfg, name, _is_number(v) and ok(v), allowed)


def optional_numbers(cfg, rule: tuple[Callable[[float], bool], str], *names: str) -> None:
    """Each field is ``None`` (off) or a finite number that passes ``rule``."""
    ok, allowed = rule
    for name in names:
        v = getattr(cfg, name)
        require(cfg, name, v is None or _is_number(v) and ok(v), f"None or {allowed}")


def choice(cfg, name: str, options: tuple) -> None:
    """The field is one of ``options``."""
    require(cfg, name, getattr(cfg, name) in options, " and ".join(repr(o) for o in options))


def divides(cfg, name: str, total: int, what: str) -> None:
    """The field divides ``total`` (``what`` says what ``total`` is, e.g. ``"n_envs * n_steps"``)."""
    v = getattr(cfg, name)
    if total % v:
        raise ValueError(f"{type(cfg).__name__}.{name}={v!r} does not divide {what} = {total}: "
                         "allowed values are its divisors")


# ---------------------------------------------------------------- replace and renamed fields
def replace(cfg, **changes):
    """A copy of ``cfg`` with some fields changed (validated again); unknown names are an error."""
    cls = type(cfg)
    changes = _translate(cls, changes, stacklevel=4)
    fields = [f.name for f in dataclasses.fields(cfg)]
    unknown = set(changes) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; allowed fields are {fields}")
    return dataclasses.replace(cfg, **changes)


def _identity(v):
    return v


def _translate(cls, kwargs: dict, stacklevel: int) -> dict:
    """Old keyword names -> new ones, with a DeprecationWarning each."""
    renames = getattr(cls, "_renamed", {})
    if not any(old in kwargs for old in renames):
        return kwargs
    kwargs = dict(kwargs)
    for old, (new, to_new, _) in renames.items():
        if old in kwargs:
            warnings.warn(f"{cls.__name__}.{old} is deprecated: use {new}", DeprecationWarning, stacklevel=stacklevel)
            if new in kwargs:
                raise TypeError(f"{cls.__name__} got both {old} (deprecated) and {new}; pass only {new}")
            kwargs[new] = to_new(kwargs.pop(old))
    return kwargs


def renamed_fields(**renames):
    """Class decorator: accept the old field names of a config for one release.

    ``renames`` maps an old name to the new one, or to ``(new, to_new, to_old)`` when the
    convention changed too (e.g. ``0 = off`` became ``None = off``). Old names work as
    constructor keywords and in ``replace`` (converted with ``to_new``), and as read-only
    attributes (converted back with ``to_old``); each use warns."""
    table = {old: (spec, _identity, _identity) if isinstance(spec, str) else spec for old, spec in renames.items()}

    def wrap(cls):
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            init(self, *args, **_translate(cls, kwargs, stacklevel=3))

        cls.__init__, cls._renamed = __init__, table
        for old, (new, _, to_old) in table.items():
            setattr(cls, old, property(_old_getter(cls.__name__, old, new, to_old),
                                       doc=f"Deprecated: use ``{new}``."))
        return cls

    return wrap


def _old_getter(cls_name, old, new, to_old):
    def get(self):
        warnings.warn(f"{cls_name}.{old} is deprecated: use {new}", DeprecationWarning, stacklevel=2)
        return to_old(getattr(self, new))
    return get


def renamed_kwargs(**renames: str):
    """Function decorator: accept old keyword names (``old="new"``) with a DeprecationWarning."""
    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            for old, new in renames.items():
                if old in kwargs:
                    warnings.warn(f"{fn.__name__}({old}=) is deprecated: use {new}=", DeprecationWarning,
                                  stacklevel=2)
                    if new in kwargs:
                        raise TypeError(f"{fn.__name__} got both {old} (deprecated) and {new}; pass only {new}")
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)
        return call
    return wrap
