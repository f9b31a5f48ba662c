"""Showing the library inside the book: ``ppo_edu.show(compute_gae)`` prints the source the
chapter just derived, straight from the installed module (never a pasted copy)."""
from __future__ import annotations

import inspect

__all__ = ["show", "source_text"]


def _short(file: str) -> str:
    """``ppo_edu/gae.py`` rather than an absolute path that differs on every machine."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    try:
        return Path(file).resolve().relative_to(root).as_posix()
    except ValueError:
        return Path(file).name


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block_end(lines: list[str], i: int) -> int:
    """Index after the block that line ``i`` opens: the deeper-indented lines below it (a statement's
    body or continuation), or, for a comment line, the lines up to the next blank line or dedent."""
    k, comment = _indent(lines[i]), lines[i].lstrip().startswith("#")
    j = i + 1
    while j < len(lines):
        line = lines[j]
        if comment and (not line.strip() or _indent(line) < k or (_indent(line) == k and line.lstrip().startswith("#"))):
            break
        if not comment and line.strip() and _indent(line) <= k and not line.lstrip()[0] in ")]}":
            break
        j += 1
    while j > i + 1 and not lines[j - 1].strip():
        j -= 1
    return j


def _find(lines: list[str], marker: str, start: int, name: str) -> int:
    for i in range(start, len(lines)):
        if marker in lines[i]:
            return i
    raise ValueError(f"show(): excerpt marker {marker!r} is not in the source of {name}")


def _excerpt(lines: list[str], excerpt: str | tuple[str, str], name: str) -> tuple[int, int]:
    """(first, end) line indices of ``excerpt``: a marker's block, or a (start, end) marker pair (inclusive)."""
    if isinstance(excerpt, str):
        i = _find(lines, excerpt, 0, name)
        return i, _block_end(lines, i)
    if not (isinstance(excerpt, tuple) and len(excerpt) == 2 and all(isinstance(m, str) for m in excerpt)):
        raise TypeError(f"show(): excerpt={excerpt!r} must be a marker string or a (start, end) pair of strings")
    i = _find(lines, excerpt[0], 0, name)
    return i, _find(lines, excerpt[1], i, name) + 1


def source_text(obj, *, excerpt: str | tuple[str, str] | None = None) -> str:
    """The text ``show`` displays: a header naming the object and its file, then its source.

    Decorated functions (``@torch.no_grad()``, ``functools.wraps``) are unwrapped to the function
    the library wrote. ``excerpt="marker"`` keeps the first line containing ``marker`` and the block it
    opens (its deeper-indented body; for a ``# comment`` line, the lines up to the next blank line);
    ``excerpt=("start", "end")`` keeps the lines from the first containing ``start`` through the next
    containing ``end``. Markers are text, not line numbers, so an excerpt survives edits above it.
    """
    target = inspect.unwrap(obj.__func__ if inspect.ismethod(obj) else obj)
    try:
        lines = inspect.getsource(target).splitlines()
        file = inspect.getsourcefile(target) or "?"
    except (TypeError, OSError) as err:
        raise TypeError(f"show() needs a function, class or method defined in Python source, got {obj!r}") from err
    name = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '')}"
    if excerpt is not None:
        a, b = _excerpt(lines, excerpt, name)
        lines = lines[a:b]
        skip = min(_indent(line) for line in lines if line.strip())
        lines = [line[skip:] for line in lines]
        name += f", excerpt {excerpt!r}"
    return f"# {name}  ({_short(file)})\n" + "\n".join(lines) + "\n"


def show(obj, *, excerpt: str | tuple[str, str] | None = None) -> str:
    """Display the source of a function, class or method (or an excerpt, see ``source_text``).

    In Jupyter this renders as highlighted code; elsewhere it prints. Returns the text it showed, as a
    ``str`` that IPython does not echo again when ``show(...)`` is a cell's last line.
    """
    text = source_text(obj, excerpt=excerpt)
    try:
        from IPython import get_ipython
        from IPython.display import Code, display

        if get_ipython() is not None:
            display(Code(text, language="python"))
            return _Quiet(text)
    except ImportError:
        pass
    print(text, end="")
    return _Quiet(text)


class _Quiet(str):
    """The shown text as a ``str`` that IPython's display hook leaves alone, so ``show(f)`` as a cell's
    last line displays the source once, not twice."""

    def _ipython_display_(self):
        pass
