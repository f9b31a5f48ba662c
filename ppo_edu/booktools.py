"""Keeping the stored book honest and readable, without re-running a chapter.

- ``shown_sources(nb)`` pairs every stored ``ppo_edu.show(...)`` output with what ``show`` prints
  for the installed library (the test ``tests/test_show.py`` compares them);
- ``refresh_shown(nb)`` rewrites those outputs after a library change;
- ``tidy_streams(nb)`` stores one final line per progress bar: a text bar redraws itself with
  ``\\r`` and each redraw became its own stored output.

Command line (after ``jupyter execute``, see book/AUTHORING.md)::

    python -m ppo_edu.booktools book/05_ppo.ipynb [more.ipynb ...]
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

__all__ = ["shown_sources", "refresh_shown", "tidy_streams", "tidy_text"]

HEADER = "# ppo_edu."


def _code(cell) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _namespace(nb) -> dict:
    """The chapter's imports (every top-level ``import`` of its code cells), executed."""
    ns: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        try:
            tree = ast.parse(_code(cell))
        except SyntaxError:
            continue
        imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        exec(compile(ast.Module(body=imports, type_ignores=[]), "<imports>", "exec"), ns)  # noqa: S102
    return ns


def _show_calls(source: str) -> list[ast.Call]:
    """The top-level ``ppo_edu.show(...)`` / ``show(...)`` calls of a cell, in order."""
    calls = []
    for node in ast.parse(source).body:
        call = node.value if isinstance(node, ast.Expr) else None
        if isinstance(call, ast.Call) and ast.unparse(call.func) in ("ppo_edu.show", "show"):
            calls.append(call)
    return calls


def _stored(cell) -> list[str]:
    out = []
    for o in cell.get("outputs", []):
        text = o.get("data", {}).get("text/plain")
        text = "".join(text) if isinstance(text, list) else text
        if text and text.startswith(HEADER):
            out.append(text.rstrip("\n"))
    return out


def shown_sources(nb, errors: list | None = None) -> list[tuple[int, list[str], list[str]]]:
    """``(cell index, stored texts, texts show gives now)`` for every code cell that calls ``show``
    (texts without their final newline, as a kernel stores them). A call that fails raises, or, when
    an ``errors`` list is given, is appended to it as ``(cell index, exception)`` and its cell skipped."""
    ns, rows = None, []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or "show(" not in _code(cell):
            continue
        calls = _show_calls(_code(cell))
        if not calls:
            continue
        ns = _namespace(nb) if ns is None else ns
        try:
            rows.append((i, _stored(cell), [_shown_now(call, ns) for call in calls]))
        except Exception as err:
            if errors is None:
                raise
            errors.append((i, err))
    return rows


def _shown_now(call: ast.Call, ns: dict) -> str:
    from ppo_edu.display import source_text

    args = [eval(compile(ast.Expression(a), "<show>", "eval"), ns) for a in call.args]  # noqa: S307
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    return source_text(*args, **kwargs).rstrip("\n")  # as a kernel stores it


def _display_data(text: str) -> dict:
    from IPython.core.formatters import DisplayFormatter
    from IPython.display import Code

    data, _ = DisplayFormatter().format(Code(text, language="python"))
    return {"output_type": "display_data", "metadata": {}, "data": data}


def refresh_shown(nb, errors: list | None = None) -> int:
    """Replace each stored ``show`` output by what ``show`` displays now; returns how many changed.
    With an ``errors`` list, cells whose ``show`` call fails are left as they are and listed there."""
    changed = 0
    for i, stored, now in shown_sources(nb, errors):
        if stored == now:
            continue
        cell = nb["cells"][i]
        others = [o for o in cell.get("outputs", []) if not _stored({"outputs": [o]})]
        cell["outputs"] = [_display_data(t) for t in now] + others
        changed += 1
    return changed


def tidy_text(text: str) -> str:
    """What a terminal would show: on each line, only the text after its last carriage return."""
    lines = text.split("\n")
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines)


def tidy_streams(nb) -> int:
    """Merge each cell's consecutive stream outputs of one name and keep each bar's final line."""
    changed = 0
    for cell in nb["cells"]:
        merged: list[dict] = []
        for o in cell.get("outputs", []):
            if o["output_type"] == "stream" and merged and merged[-1]["output_type"] == "stream" \
                    and merged[-1]["name"] == o["name"]:
                merged[-1] = {**merged[-1], "text": _code({"source": merged[-1]["text"]}) + _code({"source": o["text"]})}
            else:
                merged.append(dict(o))
        for o in merged:
            if o["output_type"] == "stream":
                o["text"] = tidy_text(_code({"source": o["text"]}))
        merged = [o for o in merged if not (o["output_type"] == "stream" and not o["text"].strip())]
        if merged != cell.get("outputs", merged):
            cell["outputs"] = merged
            changed += 1
    return changed


def main(argv: list[str]) -> int:
    import nbformat

    if not argv:
        print("usage: python -m ppo_edu.booktools NOTEBOOK.ipynb [...]", file=sys.stderr)
        return 2
    status = 0
    for name in argv:
        path = Path(name)
        if not path.is_file() or path.suffix != ".ipynb":
            print(f"booktools: {name!r} is not a notebook file (.ipynb)", file=sys.stderr)
            return 2
        nb = nbformat.read(path, as_version=4)
        errors: list = []
        bars, shown = tidy_streams(nb), refresh_shown(nb, errors)
        nbformat.write(nbformat.from_dict(nb), path)
        print(f"{name}: {bars} cells' streams tidied, {shown} show outputs refreshed")
        for i, err in errors:  # a show() call that no longer evaluates: its cell is left as it was
            print(f"{name}: cell {i}: show() failed, output not refreshed: {type(err).__name__}: {err}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
