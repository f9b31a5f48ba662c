"""``ppo_edu.show``: unwraps decorators, cuts excerpts by marker, returns its text; and every
``show`` output stored in the book is what ``show`` prints for the current library."""
import ast
import re
from pathlib import Path

import nbformat
import pytest
import torch

import ppo_edu
from ppo_edu.booktools import refresh_shown, shown_sources, tidy_streams, tidy_text
from ppo_edu.display import source_text
from ppo_edu.gae import compute_gae
from ppo_edu.ppo import PPO
from ppo_edu.rlhf.policy import sample

BOOK = Path(__file__).resolve().parents[1] / "book"
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))


def test_show_prints_and_returns_the_source_with_its_module_and_file(capsys):
    text = ppo_edu.show(compute_gae)
    assert capsys.readouterr().out == text
    assert text.startswith("# ppo_edu.gae.compute_gae  (ppo_edu/gae.py)\ndef compute_gae(")


def test_show_unwraps_a_torch_no_grad_function():
    assert hasattr(sample, "__wrapped__")  # torch.no_grad() wraps it
    text = source_text(sample)
    assert text.startswith("# ppo_edu.rlhf.policy.sample  (ppo_edu/rlhf/policy.py)\n")
    assert "def sample(" in text and "_contextlib" not in text


def test_show_accepts_a_bound_method():
    agent_method = PPO("CartPole-v1", seed=0).learn
    assert source_text(agent_method) == source_text(PPO.learn)


def test_excerpt_by_marker_keeps_the_block_it_opens_dedented():
    text = source_text(PPO.learn, excerpt="for _ in range(n_updates)")
    body = text.splitlines()[1:]
    assert body[0].startswith("for _ in range(n_updates)")
    assert all(line.startswith(" ") or not line for line in body[1:])  # only the loop's body follows
    assert "return self" not in text


def test_excerpt_by_a_pair_of_markers_is_inclusive():
    text = source_text(compute_gae, excerpt=("def compute_gae", "gamma"))
    body = text.splitlines()[1:]
    assert body[0].startswith("def compute_gae(") and "gamma" in body[-1]


def test_a_comment_marker_keeps_its_paragraph():
    def f():
        x = 1
        # -- phase a
        y = x + 1
        z = y * 2

        # -- phase b
        return z
    text = source_text(f, excerpt="# -- phase a")
    assert text.splitlines()[1:] == ["# -- phase a", "y = x + 1", "z = y * 2"]


def test_a_missing_marker_or_a_bad_excerpt_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"marker 'no such line' is not in the source of ppo_edu.gae.compute_gae"):
        source_text(compute_gae, excerpt="no such line")
    with pytest.raises(TypeError, match=r"excerpt=\(1, 2\) must be a marker string"):
        source_text(compute_gae, excerpt=(1, 2))
    with pytest.raises(TypeError, match="needs a function, class or method"):
        source_text(torch.exp)


def test_tidy_text_keeps_the_final_redraw_of_each_line():
    assert tidy_text("\rbar 0%\rbar 50%\rbar 100%\n") == "bar 100%\n"
    assert tidy_text("a\nb\n") == "a\nb\n"


def test_tidy_streams_merges_a_bar_into_one_line():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text=t)
                    for t in ("\rbar 0%", "\rbar 50%", "\rbar 100%", "\n")]
    cell.outputs.append(nbformat.v4.new_output("stream", name="stdout", text="done\n"))
    nb.cells.append(cell)
    assert tidy_streams(nb) == 1
    assert [(o["name"], o["text"]) for o in cell.outputs] == [("stderr", "bar 100%\n"), ("stdout", "done\n")]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_stored_show_output_is_what_show_prints_now(chapter):
    from ppo_edu.rlhf.ppo import PPORLHF

    if chapter.stem == "10_rlhf_ppo" and not hasattr(PPORLHF, "minibatch_step"):
        pytest.skip("chapter 10 shows PPORLHF.minibatch_step, the public name the RLHF-trainer branch adds")
    nb = nbformat.read(chapter, as_version=4)
    for index, stored, now in shown_sources(nb):
        assert stored == now, (f"{chapter.name} cell {index}: the stored show() output is stale; "
                               f"run: python -m ppo_edu.booktools book/{chapter.name}")


def test_refresh_rewrites_a_stale_show_output():
    nb = nbformat.read(BOOK / "03_gae.ipynb", as_version=4)
    (index, stored, _), *_ = shown_sources(nb)
    cell = nb.cells[index]
    for o in cell.outputs:
        if "text/plain" in o.get("data", {}):
            o["data"]["text/plain"] = "# ppo_edu.gae.compute_gae  (stale)\n"
    assert refresh_shown(nb) == 1
    assert shown_sources(nb)[0][1] == stored


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_stored_progress_bars_are_one_line_each(chapter):
    nb = nbformat.read(chapter, as_version=4)
    for index, cell in enumerate(nb.cells):
        streams = [o for o in cell.get("outputs", []) if o["output_type"] == "stream"]
        names = [o["name"] for o in streams]
        assert all(a != b for a, b in zip(names, names[1:])), f"{chapter.name} cell {index}: unmerged streams"
        assert not any(re.search(r"\r(?!\n)", o["text"]) for o in streams), f"{chapter.name} cell {index}: \\r redraws"


PRIVATE = re.compile(r"\b\w+\._[a-z]\w*")  # obj._name (dunder names like __call__ are fine)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapters_show_and_call_only_public_names(chapter):
    nb = nbformat.read(chapter, as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        code = "\n".join(line.split("#")[0] for line in cell.source.splitlines())  # comments may name them
        ast.parse(cell.source)
        found = PRIVATE.findall(code)
        assert not found, f"{chapter.name} cell {index} uses private names {found}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapters_cut_source_by_marker_not_by_line_numbers(chapter):
    nb = nbformat.read(chapter, as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not re.search(r"inspect\.getsource|\bshow\([^)]*\blines=", cell.source), \
                f"{chapter.name} cell {index}: use ppo_edu.show(f, excerpt=...) rather than line numbers"


def test_booktools_command_refreshes_what_it_can_and_names_what_failed(tmp_path, capsys):
    from ppo_edu.booktools import main

    nb = nbformat.read(BOOK / "03_gae.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("ppo_edu.show(ppo_edu.no_such_function)"))
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    assert main([str(path)]) == 1
    assert f"cell {len(nb.cells) - 1}: show() failed" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.ipynb")]) == 2
    assert "is not a notebook file" in capsys.readouterr().err


def _draws_a_figure(source: str) -> bool:
    """True if the cell itself runs plt.show(): at its top level, or through a function it defines and calls
    (a cell that only defines a plotting function, or shows under ``if``, draws nothing by itself)."""
    tree = ast.parse(source)
    seg = lambda node: ast.get_source_segment(source, node) or ""  # noqa: E731
    drawers = {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and "plt.show()" in seg(n)}
    top = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.If))]
    return any("plt.show()" in seg(n) or any(isinstance(c, ast.Call) and getattr(c.func, "id", None) in drawers
                                             for c in ast.walk(n)) for n in top)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_figure_cell_stored_its_figure(chapter):
    """A chapter executed with a non-interactive matplotlib backend (MPLBACKEND=Agg) stores no figures."""
    nb = nbformat.read(chapter, as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and cell.execution_count is not None and _draws_a_figure(cell.source):
            assert any("image/png" in o.get("data", {}) for o in cell.outputs), \
                f"{chapter.name} cell {index} shows a figure but stored none (executed with MPLBACKEND=Agg?)"
