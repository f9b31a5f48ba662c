"""Coursework: student versions of chapters, and batch grading (``ppo-edu assign`` / ``grade``).

Chapters mark exercises the way nbgrader and otter do, so the book runs with the reference
solutions filled in:

* a **solution cell** holds ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` and has cell
  metadata ``{"nbgrader": {"solution": true, "grade_id": "ex3_gae", ...}}``;
* a **test cell** has ``{"nbgrader": {"grade": true, "grade_id": "ex3_gae_test", "points": 2}}``;
  its visible part calls a check from :mod:`ppo_edu.checks`, and anything between
  ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` is removed from the student version.

``assign`` writes the student version (solutions replaced by ``raise NotImplementedError``,
hidden tests removed, outputs cleared). ``grade`` executes every submission in a fresh kernel
on a copy, with the teacher's test cells restored, and writes one CSV row per student and
exercise plus a feedback file per student. A broken submission fails with a reason; it never
stops the batch and the submitted files are never modified.
"""
from __future__ import annotations

import copy
import csv
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat

__all__ = ["assign", "grade", "grade_one", "student_version", "exercises_only", "Exercise", "GradeRow", "exercises"]

SOLUTION = re.compile(r"^([ \t]*)### BEGIN SOLUTION[^\n]*\n.*?^[ \t]*### END SOLUTION[^\n]*(\n|$)", re.S | re.M)
HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS[^\n]*\n.*?^[ \t]*### END HIDDEN TESTS[^\n]*(\n|$)", re.S | re.M)
STUB = 'raise NotImplementedError("exercise: replace this line with your solution")'


@dataclass(frozen=True)
class Exercise:
    grade_id: str
    points: float
    cell_index: int


@dataclass
class GradeRow:
    student: str
    exercise: str
    points: float
    max_points: float
    passed: bool
    message: str


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def exercises(nb) -> list[Exercise]:
    """The graded test cells of a notebook, in order."""
    return [Exercise(_meta(c)["grade_id"], float(_meta(c).get("points", 1)), i)
            for i, c in enumerate(nb.cells) if _meta(c).get("grade")]


def _read(path) -> nbformat.NotebookNode:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"notebook {str(path)!r} does not exist")
    return nbformat.read(path, as_version=4)


def exercises_only(nb) -> nbformat.NotebookNode:
    """Just the graded exercises (their markdown statement, solution and test cells): a short
    homework sheet that runs in seconds, instead of the whole chapter. The notebook is copied."""
    nb = copy.deepcopy(nb)
    keep = []
    for i, cell in enumerate(nb.cells):
        statement = (cell.cell_type == "markdown" and i + 1 < len(nb.cells)
                     and _meta(nb.cells[i + 1]).get("solution"))
        if _meta(cell) or statement:
            keep.append(cell)
    nb.cells = keep
    return nb


def student_version(nb) -> nbformat.NotebookNode:
    """Solutions stubbed, hidden tests removed, outputs cleared (the notebook is copied)."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        src = cell.source
        if cell.cell_type == "code":
            src = SOLUTION.sub(lambda m: f"{m.group(1)}{STUB}{m.group(2)}", src)
            src = HIDDEN.sub("", src)
            cell.outputs, cell.execution_count = [], None
        elif cell.cell_type == "markdown":
            src = SOLUTION.sub(lambda m: f"{m.group(1)}_Your answer here._{m.group(2)}", src)
        cell.source = src.rstrip("\n")
    return nb


def assign(notebook, out_dir, only_exercises: bool = False) -> Path:
    """Write the student version of ``notebook`` into ``out_dir``; returns its path.

    ``only_exercises=True`` keeps just the graded exercises (grade it with the same flag)."""
    nb = _read(notebook)
    nb = exercises_only(nb) if only_exercises else nb
    if not exercises(nb):
        raise ValueError(f"{notebook}: no graded exercises (cells with nbgrader metadata grade=true)")
    out = Path(out_dir) / Path(notebook).name
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(student_version(nb), out)
    return out


# ----------------------------------------------------------------------------- grading
def _merge_submission(source, submission_path: Path) -> tuple[nbformat.NotebookNode, dict[str, str]]:
    """The teacher's notebook with the student's solution cells put in; notes on what is missing."""
    graded, notes = copy.deepcopy(source), {}
    if submission_path.suffix == ".py":
        code = f"exec(compile(open({str(submission_path)!r}).read(), {submission_path.name!r}, 'exec'))"
        first = True
        for cell in graded.cells:
            if _meta(cell).get("solution") and cell.cell_type == "code":
                cell.source, first = (code if first else "# (solutions come from the submitted module)"), False
        return graded, notes
    try:
        submitted = nbformat.read(submission_path, as_version=4)
    except Exception as err:  # not JSON, not a notebook
        raise ValueError(f"the submission is not a readable notebook ({type(err).__name__}: {err})") from None
    theirs = {_meta(c)["grade_id"]: c.source for c in submitted.cells
              if _meta(c).get("solution") and "grade_id" in _meta(c)}
    for cell in graded.cells:
        meta = _meta(cell)
        if meta.get("solution") and cell.cell_type == "code":
            if meta.get("grade_id") in theirs:
                cell.source = theirs[meta["grade_id"]]
            else:
                notes[str(meta.get("grade_id"))] = "is missing from the submission"
                cell.source = SOLUTION.sub(lambda m: f"{m.group(1)}{STUB}{m.group(2)}", cell.source)
    return graded, notes


def _cell_error(cell, timeout: float = 0) -> str | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            if out.get("ename") in ("KeyboardInterrupt", "TimeoutError"):  # interrupted by the time limit
                return f"the cell ran longer than {timeout:g} s and was stopped (an infinite loop?)"
            return f"{out.get('ename')}: {out.get('evalue')}"
    return None


def _execute(nb, workdir: Path, timeout: float, kernel: str) -> str | None:
    """Run ``nb`` in place in a fresh kernel; a fatal problem (dead kernel) is returned as text."""
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    client = NotebookClient(nb, timeout=timeout, allow_errors=True, interrupt_on_timeout=True,
                            error_on_timeout={"ename": "TimeoutError",
                                              "evalue": f"the cell ran longer than {timeout:g} s (an infinite loop?)",
                                              "traceback": []},
                            kernel_name=kernel, resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    except DeadKernelError as err:
        return f"the kernel died ({err}); a later cell could not run"
    except Exception as err:  # a kernel that would not start, a timeout that could not interrupt, ...
        return f"execution stopped: {type(err).__name__}: {err}"
    return None


def grade_one(source, submission: Path, timeout: float = 120, kernel: str = "python3") -> list[GradeRow]:
    """Grade one submission (``.ipynb`` or ``.py``) against the teacher's ``source`` notebook."""
    student = submission.stem
    tests = exercises(source)
    with tempfile.TemporaryDirectory(prefix="ppo-edu-grade-") as tmp:
        copy_path = Path(tmp) / submission.name
        shutil.copyfile(submission, copy_path)  # the student's file is never touched
        try:
            nb, notes = _merge_submission(source, copy_path)
        except ValueError as err:
            return [GradeRow(student, t.grade_id, 0.0, t.points, False, str(err)) for t in tests]
        fatal = _execute(nb, Path(tmp), timeout, kernel)
    problems = dict(notes)  # solution grade_id -> what went wrong with it
    problems.update({str(_meta(c).get("grade_id")): f"failed: {_cell_error(c, timeout)}"
                     for c in nb.cells if _meta(c).get("solution") and _cell_error(c)})
    rows = []
    for t in tests:
        cell = nb.cells[t.cell_index]
        error = _cell_error(cell, timeout)
        ran = cell.get("execution_count") is not None or bool(cell.get("outputs"))
        if error is None and ran:
            rows.append(GradeRow(student, t.grade_id, t.points, t.points, True, "passed"))
            continue
        # a solution cell belongs to the tests whose grade_id starts with its own
        own = {g: p for g, p in problems.items() if t.grade_id.startswith(g)} or problems
        causes = [f"solution cell {g!r} {p}" for g, p in own.items()] + ([fatal] if fatal else [])
        reason = "; ".join(causes + [f"test: {error or 'the test cell did not run'}"])
        rows.append(GradeRow(student, t.grade_id, 0.0, t.points, False, reason))
    return rows


def grade(submissions_dir, assignment, out_csv, timeout: float = 120, feedback_dir=None,
          kernel: str = "python3", progress: bool = True, only_exercises: bool = False) -> list[GradeRow]:
    """Grade every ``.ipynb`` / ``.py`` in ``submissions_dir``; write ``out_csv`` and feedback files."""
    source = _read(assignment)
    source = exercises_only(source) if only_exercises else source
    if not exercises(source):
        raise ValueError(f"{assignment}: no graded exercises (cells with nbgrader metadata grade=true)")
    subs = sorted(p for p in Path(submissions_dir).iterdir() if p.suffix in (".ipynb", ".py") and p.is_file())
    if not subs:
        raise ValueError(f"no .ipynb or .py submissions in {str(submissions_dir)!r}")
    from tqdm.auto import tqdm

    rows: list[GradeRow] = []
    for sub in tqdm(subs, desc="grading", unit="submission", disable=not progress):
        rows += grade_one(source, sub, timeout, kernel)
    _write_csv(rows, Path(out_csv))
    feedback = Path(feedback_dir) if feedback_dir else Path(out_csv).with_name("feedback")
    _write_feedback(rows, feedback, Path(assignment).name)
    return rows


def _write_csv(rows: list[GradeRow], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(GradeRow.__dataclass_fields__))
        w.writeheader()
        w.writerows(asdict(r) for r in rows)
    os.replace(tmp, path)


def _write_feedback(rows: list[GradeRow], folder: Path, assignment: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for student in dict.fromkeys(r.student for r in rows):
        mine = [r for r in rows if r.student == student]
        got, total = sum(r.points for r in mine), sum(r.max_points for r in mine)
        lines = [f"# Feedback for {student}: {assignment}", "", f"Score: {got:g} / {total:g}", ""]
        for r in mine:
            lines += [f"## {r.exercise}: {'passed' if r.passed else 'not passed'} ({r.points:g}/{r.max_points:g})", ""]
            if not r.passed:
                lines += ["```", r.message, "```", ""]
        (folder / f"{student}.md").write_text("\n".join(lines))
