"""ppo-edu assign / grade on a small assignment: the student version, and a batch of good,
buggy and broken submissions graded without stopping and without touching the files."""
import csv
import hashlib
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from ppo_edu.cli import main
from ppo_edu.coursework import SOLUTION, assign, exercises, grade

SETUP = "import torch\nfrom ppo_edu.checks import check_discounted_returns, check_kl_k3"
SOL_RETURNS = '''def my_returns(rewards, dones, gamma):
    ### BEGIN SOLUTION
    out, running = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * (1 - dones[t]) * running
        out[t] = running
    return out
    ### END SOLUTION'''
TEST_RETURNS = '''check_discounted_returns(my_returns).assert_passed()
### BEGIN HIDDEN TESTS
assert my_returns(torch.ones(3, 1), torch.zeros(3, 1), 1.0)[0, 0] == 3.0
### END HIDDEN TESTS'''
SOL_KL = '''def my_k3(logp_new, logp_old):
    ### BEGIN SOLUTION
    log_r = logp_new - logp_old
    return (torch.exp(log_r) - 1 - log_r).mean()
    ### END SOLUTION'''
TEST_KL = "check_kl_k3(my_k3).assert_passed()"


def _cell(src, **nbgrader):
    c = nbformat.v4.new_code_cell(src)
    if nbgrader:
        c.metadata["nbgrader"] = dict(schema_version=3, locked=False, **nbgrader)
    return c


def make_assignment(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# Demo assignment"), _cell(SETUP),
                _cell(SOL_RETURNS, solution=True, grade=False, grade_id="returns"),
                _cell(TEST_RETURNS, solution=False, grade=True, grade_id="returns_test", points=2),
                _cell(SOL_KL, solution=True, grade=False, grade_id="k3"),
                _cell(TEST_KL, solution=False, grade=True, grade_id="k3_test", points=1)]
    nbformat.write(nb, path)
    return path


def _submission(student_nb, path: Path, **replace) -> Path:
    nb = nbformat.read(student_nb, as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in replace:
            cell.source = replace[gid]
    nb.cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") not in replace.get("_drop", ())]
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def assignment(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    teacher = make_assignment(root / "demo.ipynb")
    student = assign(teacher, root / "student")
    return root, teacher, student


def test_student_version_hides_solutions_and_hidden_tests(assignment):
    _, teacher, student = assignment
    text = student.read_text()
    assert "### BEGIN SOLUTION" not in text and "reversed(range" not in text
    assert "HIDDEN TESTS" not in text and "== 3.0" not in text
    assert "raise NotImplementedError" in text and "check_discounted_returns(my_returns)" in text
    nb = nbformat.read(student, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert [e.grade_id for e in exercises(nb)] == ["returns_test", "k3_test"]
    assert "reversed(range" in teacher.read_text()  # the teacher's file is untouched


def test_student_version_runs_up_to_the_first_exercise(assignment):
    _, _, student = assignment
    nb = nbformat.read(student, as_version=4)
    client = NotebookClient(nb, timeout=120, allow_errors=True, kernel_name="python3")
    client.execute()
    errors = [i for i, c in enumerate(nb.cells) if any(o.output_type == "error" for o in c.get("outputs", []))]
    first = errors[0]
    # the stubbed solution defines my_returns; its first use, the exercise's check, reports it
    assert nb.cells[first].metadata["nbgrader"]["grade_id"] == "returns_test"
    error = [o for o in nb.cells[first].outputs if o.output_type == "error"][0]
    assert error.ename == "AssertionError" and "raised NotImplementedError" in error.evalue
    assert all(c.execution_count for c in nb.cells[:first] if c.cell_type == "code")


def _hash(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_grading_a_batch(assignment, tmp_path):
    root, teacher, student = assignment
    subs = tmp_path / "submissions"
    subs.mkdir()
    teacher_nb = nbformat.read(teacher, as_version=4)
    solutions = {c.metadata["nbgrader"]["grade_id"]: c.source for c in teacher_nb.cells
                 if c.metadata.get("nbgrader", {}).get("solution")}
    _submission(student, subs / "ada.ipynb", **solutions)  # pasting the reference back passes everything
    _submission(student, subs / "bob.ipynb", returns=SOL_RETURNS.replace("(1 - dones[t]) * ", ""),
                k3=solutions["k3"])
    _submission(student, subs / "cy.ipynb", returns="def my_returns(rewards, dones, gamma)\n    return rewards",
                k3=solutions["k3"])
    _submission(student, subs / "dee.ipynb", returns="while True:\n    pass", k3=solutions["k3"])
    _submission(student, subs / "eve.ipynb", returns="import os\nos._exit(1)")
    _submission(student, subs / "fay.ipynb", _drop=("returns",), k3=solutions["k3"])
    (subs / "gus.py").write_text("import torch\n" + SOL_RETURNS.replace("    ### BEGIN SOLUTION\n", "")
                                 .replace("    ### END SOLUTION", "") + "\n\n" + SOL_KL)
    (subs / "hal.ipynb").write_text("this is not a notebook")
    before = _hash(subs)
    rows = grade(subs, teacher, tmp_path / "grades.csv", timeout=8, progress=False)
    assert _hash(subs) == before  # submissions are never modified
    by = {(r.student, r.exercise): r for r in rows}
    assert len(rows) == 8 * 2
    assert by["ada", "returns_test"].passed and by["ada", "k3_test"].passed
    assert by["gus", "returns_test"].passed and by["gus", "k3_test"].passed
    assert not by["bob", "returns_test"].passed and "episode boundary" in by["bob", "returns_test"].message
    assert by["bob", "k3_test"].passed and by["bob", "k3_test"].points == 1
    assert not by["cy", "returns_test"].passed and "SyntaxError" in by["cy", "returns_test"].message
    assert not by["dee", "returns_test"].passed and "longer than 8 s" in by["dee", "returns_test"].message
    assert by["dee", "k3_test"].passed  # the batch and the notebook go on after a timeout
    assert not by["eve", "returns_test"].passed and "process exited with status 1" in by["eve", "returns_test"].message
    assert not by["eve", "k3_test"].passed and "test did not run" in by["eve", "k3_test"].message
    assert not by["fay", "returns_test"].passed and "missing from the submission" in by["fay", "returns_test"].message
    assert not by["hal", "k3_test"].passed and "not a readable notebook" in by["hal", "k3_test"].message
    with open(tmp_path / "grades.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 16 and set(table[0]) == {"student", "exercise", "points", "max_points", "passed", "message",
                                                  "file", "sha256", "sandbox"}
    feedback = (tmp_path / "feedback" / "bob.md").read_text()
    assert "Score: 1 / 3" in feedback and "episode boundary" in feedback


def test_cli_assign_and_grade(assignment, tmp_path, capsys):
    _, teacher, _ = assignment
    assert main(["assign", str(teacher), "--out", str(tmp_path / "st")]) == 0
    subs = tmp_path / "subs"
    subs.mkdir()
    _submission(tmp_path / "st" / "demo.ipynb", subs / "zed.ipynb")  # handed in untouched
    assert main(["grade", str(subs), "--assignment", str(teacher), "--out", str(tmp_path / "g.csv"),
                 "--no-progress", "--timeout", "30"]) == 0
    assert "zed: 0 / 3" in capsys.readouterr().out
    assert main(["assign", str(tmp_path / "missing.ipynb"), "--out", str(tmp_path)]) == 2


def test_solution_markers_regex_keeps_indentation():
    src = "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n"
    assert SOLUTION.sub(lambda m: f"{m.group(1)}X{m.group(2)}", src) == "def f():\n    X\n"
    assert json.dumps(src)  # plain text in, plain text out


def test_an_interrupted_batch_resumes_where_it_stopped(assignment, tmp_path, monkeypatch, capsys):
    import ppo_edu.coursework as cw

    _, teacher, student = assignment
    subs = tmp_path / "subs"
    subs.mkdir()
    for name in ("amy", "ben"):
        _submission(student, subs / f"{name}.ipynb")
    real, calls = cw.grade_one, []

    def interrupted_at_ben(source, sub, *args, **kwargs):
        calls.append(sub.student)
        if sub.student == "ben" and len(calls) == 2:
            raise KeyboardInterrupt  # the teacher presses ^C while ben is graded
        return real(source, sub, *args, **kwargs)

    monkeypatch.setattr(cw, "grade_one", interrupted_at_ben)
    argv = ["grade", str(subs), "--assignment", str(teacher), "--out", str(tmp_path / "g.csv"), "--no-progress"]
    assert main(argv) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert not (tmp_path / "g.csv").exists()
    assert main(argv) == 0
    assert calls == ["amy", "ben", "ben"]  # amy was not graded again
    assert "amy: 0 / 3" in capsys.readouterr().out
    (subs / "amy.ipynb").write_text((subs / "amy.ipynb").read_text().replace("raise NotImplementedError", "pass"))
    assert main(argv) == 0 and calls[-1] == "amy"  # a changed file is graded again


def test_grades_written_into_the_submissions_folder_are_not_graded_next_time(assignment, tmp_path):
    _, teacher, student = assignment
    subs = tmp_path / "subs"
    subs.mkdir()
    _submission(student, subs / "amy.ipynb")
    first = grade(subs, teacher, subs / "grades.csv", progress=False)
    again = grade(subs, teacher, subs / "grades.csv", progress=False)
    assert {r.student for r in first} == {r.student for r in again} == {"amy"}
