"""The book's graded exercises work as a course: ``ppo-edu assign book/05_ppo.ipynb`` gives a
student version that runs up to its first exercise, and pasting the reference solutions back
into any chapter's student version passes every check (hidden tests included)."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from ppo_edu.coursework import assign, exercises, exercises_only, grade, student_version

BOOK = Path(__file__).resolve().parents[1] / "book"
GRADED = sorted(p for p in BOOK.glob("[0-9][0-9]_*.ipynb") if exercises(nbformat.read(p, as_version=4)))


def _meta(cell):
    return cell.metadata.get("nbgrader", {})


def test_chapters_2_to_7_have_graded_exercises():
    names = {p.stem[:2] for p in GRADED}
    assert {"02", "03", "04", "05", "06", "07"} <= names


@pytest.mark.parametrize("chapter", GRADED, ids=lambda p: p.stem)
def test_reference_solutions_pasted_into_the_student_version_pass(chapter, tmp_path):
    teacher = exercises_only(nbformat.read(chapter, as_version=4))  # the long chapter body is not needed
    student = student_version(teacher)
    solutions = {_meta(c)["grade_id"]: c.source for c in teacher.cells if _meta(c).get("solution")}
    assert all("NotImplementedError" in c.source for c in student.cells if _meta(c).get("solution"))
    assert not any("HIDDEN TESTS" in c.source for c in student.cells)
    for cell in student.cells:
        if _meta(cell).get("solution"):
            cell.source = solutions[_meta(cell)["grade_id"]]  # the student pastes the reference in
    subs = tmp_path / "submissions"
    subs.mkdir()
    nbformat.write(student, subs / "solved.ipynb")
    nbformat.write(student_version(teacher), subs / "unsolved.ipynb")
    assignment = tmp_path / chapter.name
    nbformat.write(teacher, assignment)
    rows = grade(subs, assignment, tmp_path / "out" / "grades.csv", timeout=120, progress=False, log=lambda *a: None)
    by_student = {s: [r for r in rows if r.student == s] for s in ("solved", "unsolved")}
    assert by_student["solved"] and all(r.passed for r in by_student["solved"]), \
        [r.message for r in by_student["solved"] if not r.passed]
    assert by_student["unsolved"] and not any(r.passed for r in by_student["unsolved"])


def test_assigned_chapter_5_runs_up_to_its_first_exercise(tmp_path):
    student = assign(BOOK / "05_ppo.ipynb", tmp_path)
    nb = nbformat.read(student, as_version=4)
    NotebookClient(nb, timeout=600, allow_errors=True, kernel_name="python3",
                   resources={"metadata": {"path": str(BOOK)}}).execute()
    failing = [i for i, c in enumerate(nb.cells) if any(o.output_type == "error" for o in c.get("outputs", []))]
    assert failing, "the student version should stop at its first unsolved exercise"
    first = failing[0]
    assert _meta(nb.cells[first]).get("grade"), f"cell {first} failed before any exercise"
    first_test = min(i for i, c in enumerate(nb.cells) if _meta(c).get("grade"))
    assert first == first_test
    error = [o for o in nb.cells[first].outputs if o.output_type == "error"][0]
    assert "NotImplementedError" in error.evalue
    assert all(c.execution_count for c in nb.cells[:first] if c.cell_type == "code")
