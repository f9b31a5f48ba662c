"""Showing the library inside the book: ``ppo_edu.show(compute_gae)`` prints the source the
chapter just derived, straight from the installed module (never a pasted copy)."""
from __future__ import annotations

import inspect

__all__ = ["show"]


def _short(file: str) -> str:
    """``ppo_edu/gae.py`` rather than an absolute path that differs on every machine."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    try:
        return Path(file).resolve().relative_to(root).as_posix()
    except ValueError:
        return Path(file).name


def show(obj, *, lines: tuple[int, int] | None = None):
    """Display the source of a function, class or method, with its file and line numbers.

    In Jupyter this renders as highlighted code; elsewhere it prints. ``lines=(a, b)`` keeps
    lines a..b (1-based, inclusive) of the object's source. Returns the source text.
    """
    try:
        source = inspect.getsource(obj)
        file = inspect.getsourcefile(obj) or "?"
        start = inspect.getsourcelines(obj)[1]
    except (TypeError, OSError) as err:
        raise TypeError(f"show() needs a function, class or method defined in Python source, got {obj!r}") from err
    if lines is not None:
        a, b = lines
        source = "\n".join(source.splitlines()[a - 1:b]) + "\n"
        start += a - 1
    module = getattr(obj, "__module__", "?")
    header = f"# {module}.{getattr(obj, '__qualname__', '')}  ({_short(file)}, line {start})\n"
    try:
        from IPython import get_ipython
        from IPython.display import Code, display

        if get_ipython() is not None:
            display(Code(header + source, language="python"))
            return None
    except ImportError:
        pass
    print(header + source)
    return None
