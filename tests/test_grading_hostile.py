"""ppo-edu grade against crashing, cheating and hostile submissions to Chapter 3 (--exercises-only),
graded in one batch against the real, executed chapter: each gets the points it earns and a reason,
correct answers written differently pass, and no file in or around the submissions folder changes."""
import csv
import hashlib
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from ppo_edu.cli import main
from ppo_edu.coursework import assign, grade
from ppo_edu.gradebox import sandbox_available

BOOK = Path(__file__).resolve().parent.parent / "book" / "03_gae.ipynb"
needs_sandbox = pytest.mark.skipif(sandbox_available() is not None, reason=f"no sandbox: {sandbox_available()}")

CORRECT_VECTOR_STYLE = '''import torch

def my_compute_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    cut_bootstrap = terminated.to(values.dtype)
    cut_recursion = (terminated | truncated).to(values.dtype)
    deltas = rewards + gamma * (1 - cut_bootstrap) * next_values - values
    out, carry = [], torch.zeros_like(deltas[0])
    for delta, cut in zip(reversed(deltas), reversed(cut_recursion)):
        carry = delta + gamma * lam * (1 - cut) * carry
        out.append(carry)
    advantages = torch.stack(out[::-1])
    return advantages, advantages + values'''
WRONG = '''import torch

def my_compute_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    advantages = rewards - values       # one-step, no bootstrap: wrong
    return advantages, advantages + values'''


def _solutions():
    nb = nbformat.read(BOOK, as_version=4)
    return [c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")][0]


def hostile(root: Path) -> dict[str, str]:
    """name -> solution cell source; paths are given to the attacks outright (stronger than finding them)."""
    subs, out, assignment = root / "submissions", root / "out", root / "teacher" / "03_gae.ipynb"
    vandal = f'''
import glob, os
for target in glob.glob({str(subs)!r} + "/*") + [{str(assignment)!r}, {str(out)!r} + "/grades.csv"]:
    for action in (lambda: open(target, "a").write("owned"), lambda: os.remove(target)):
        try:
            action()
        except Exception:
            pass
for path in ({str(root)!r} + "/outside.txt", "/tmp/ppo-edu-hostile-was-here"):
    try:
        open(path, "w").write("owned")
    except Exception:
        pass
try:  # the grader's command line names the folders
    ppid = open("/proc/self/stat").read().split()[3]
    print(open(f"/proc/{{ppid}}/cmdline").read())
except Exception:
    pass
'''
    return {
        "ada": _solutions(),                                           # the reference solution, pasted
        "bea": CORRECT_VECTOR_STYLE,                                   # correct, written differently
        "cara": CORRECT_VECTOR_STYLE.replace(".to(values.dtype)", ".float()"),  # float32 masks, as most PPO code
        "reexport": "from ppo_edu.gae import compute_gae as my_compute_gae",
        "wrapper": "import ppo_edu.gae as g\n\ndef my_compute_gae(*args):\n    return g.compute_gae(*args)",
        "untraced": ("import sys, threading\nsys.setprofile = threading.setprofile = lambda *a: None\n"
                     "from ppo_edu.gae import compute_gae\n\ndef my_compute_gae(*args):\n"
                     "    return compute_gae(*args)"),
        "monkeypatch": WRONG + '''
import ppo_edu.checks, ppo_edu.gae, torch.testing
class Passed:
    passed = True
    def assert_passed(self):
        pass
ppo_edu.checks.check_compute_gae = lambda fn, *a, **k: Passed()
torch.testing.assert_close = lambda *a, **k: None
ppo_edu.gae.compute_gae = my_compute_gae''',
        "transformer": WRONG + "\nget_ipython().input_transformers_cleanup.append(lambda lines: ['pass\\n'])",
        "printexit": WRONG + "\nprint('check_compute_gae: PASSED')\nimport os\nos._exit(0)",
        "segfault": "import ctypes\nctypes.string_at(0)",
        "stubborn": "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
        "loopfn": "def my_compute_gae(*args):\n    while True:\n        pass",
        "exitcall": "def my_compute_gae(*args):\n    import os\n    os._exit(3)",
        "alwaysequal": ("class Anything:\n    def __eq__(self, other):\n        return True\n\n"
                        "def my_compute_gae(*args):\n    return Anything(), Anything()"),
        "memory": "hog = bytearray(8 << 30)\n" + _solutions(),
        "vandal": vandal + "\n" + _solutions(),                      # harmless: every write fails
        "daemon": ("import subprocess\nsubprocess.Popen(['sh', '-c', 'sleep 1; echo owned >> "
                   f"{out}/grades.csv; echo owned >> {subs}/ada.ipynb'], start_new_session=True)\n" + _solutions()),
        "syntax": "def my_compute_gae(rewards, values)\n    return rewards",
        "snoop": f'''import os
def my_compute_gae(*args):
    seen = [n for d in ({str(subs)!r}, {str(out)!r}) if os.path.isdir(d)
            for n in os.listdir(d)]
    try:
        answer = open({str(assignment)!r}).read()
    except OSError as err:
        answer = type(err).__name__
    raise ValueError(f"saw {{seen}} and {{answer[:40]}}")''',
    }


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*")) if "out" not in p.relative_to(root).parts}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    (root / "teacher").mkdir()
    teacher = root / "teacher" / "03_gae.ipynb"
    shutil.copyfile(BOOK, teacher)                       # the executed chapter, as a teacher has it
    student = assign(teacher, root / "student", only_exercises=True)
    subs = root / "submissions"
    subs.mkdir()
    for name, code in hostile(root).items():
        nb = nbformat.read(student, as_version=4)
        for cell in nb.cells:
            if cell.metadata.get("nbgrader", {}).get("solution"):
                cell.source = code
        nbformat.write(nb, subs / f"{name}.ipynb")
    nb = nbformat.read(student, as_version=4)
    nb.cells = [c for c in nb.cells if not c.metadata.get("nbgrader", {}).get("solution")]
    nbformat.write(nb, subs / "deleted.ipynb")                          # the solution cell deleted
    (subs / "module.py").write_text(CORRECT_VECTOR_STYLE)               # a .py module
    (subs / "garbage.ipynb").write_text("this is not a notebook")
    (subs / "notes.txt").write_text("not a submission")
    (subs / "photo.ipynb").mkdir()                                      # a folder named like a notebook
    (root / "beside.txt").write_text("next to the submissions")
    before = _snapshot(root)
    start = time.monotonic()
    rows = grade(subs, teacher, root / "out" / "grades.csv", timeout=3, progress=False, only_exercises=True)
    seconds = time.monotonic() - start
    time.sleep(1.5)                                                     # give the daemon its chance
    return root, before, {r.student: r for r in rows}, seconds


@needs_sandbox
def test_every_file_gets_exactly_one_row(batch):
    root, _, rows, _ = batch
    names = set(hostile(root)) | {"deleted", "module", "garbage", "notes", "photo"}
    assert set(rows) == names
    with open(root / "out" / "grades.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(names) and {r["student"] for r in table} == names
    assert all(r["sandbox"] == "bubblewrap" for r in table)


@needs_sandbox
def test_correct_answers_written_differently_pass(batch):
    _, _, rows, _ = batch
    for name in ("ada", "bea", "cara", "module", "vandal", "daemon"):
        assert rows[name].passed and rows[name].points == 3.0, (name, rows[name].message)


@needs_sandbox
@pytest.mark.parametrize("name, reason", [
    ("reexport", "uses the reference implementation (ppo_edu.gae.compute_gae)"),
    ("wrapper", "uses the reference implementation (ppo_edu.gae.compute_gae)"),
    ("untraced", "uses the reference implementation (ppo_edu.gae.compute_gae"),
    ("monkeypatch", "Values differ"),
    ("transformer", "Values differ"),
    ("printexit", "the student's process exited with status 0"),
    ("segfault", "died with signal 11 (SIGSEGV)"),
    ("stubborn", "ran longer than 3 s, could not be interrupted and was stopped"),
    ("loopfn", "ran longer than 3 s and was interrupted"),
    ("exitcall", "the student's process exited with status 3"),
    ("alwaysequal", "returned a Anything; expected a torch tensor"),
    ("memory", "MemoryError"),
    ("syntax", "SyntaxError"),
    ("snoop", "ValueError: saw [] and PermissionError"),
    ("deleted", "is missing from the submission"),
    ("garbage", "not a readable notebook"),
    ("notes", "not a notebook or .py module"),
    ("photo", "not a notebook or .py module (a folder)"),
])
def test_crashing_and_cheating_submissions_get_nothing(batch, name, reason):
    _, _, rows, _ = batch
    assert not rows[name].passed and rows[name].points == 0.0
    assert reason in rows[name].message, rows[name].message


@needs_sandbox
def test_no_file_in_or_around_the_submissions_changes(batch):
    root, before, _, _ = batch
    assert _snapshot(root) == before
    assert not Path("/tmp/ppo-edu-hostile-was-here").exists()
    assert "owned" not in (root / "out" / "grades.csv").read_text()


@needs_sandbox
def test_a_rerun_skips_students_graded_with_the_same_file(batch, capsys):
    root, _, rows, _ = batch
    start = time.monotonic()
    again = grade(root / "submissions", root / "teacher" / "03_gae.ipynb", root / "out" / "grades.csv",
                  timeout=3, progress=False, only_exercises=True)
    assert time.monotonic() - start < 5  # nothing ran again
    assert {r.student: (r.points, r.message) for r in again} == {k: (r.points, r.message) for k, r in rows.items()}
    assert "sha256" in capsys.readouterr().out


def test_two_files_for_one_student_are_an_error_naming_both(tmp_path, capsys):
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "alice.ipynb").write_text("{}")
    (tmp_path / "subs" / "alice.py").write_text("")
    code = main(["grade", str(tmp_path / "subs"), "--assignment", str(BOOK), "--out", str(tmp_path / "g.csv"),
                 "--exercises-only", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "alice.ipynb" in err and "alice.py" in err and "Traceback" not in err
    assert not (tmp_path / "g.csv").exists()


@pytest.mark.parametrize("option, value", [("--timeout", "0"), ("--timeout", "-5"), ("--timeout", "nan"),
                                           ("--timeout", "inf"), ("--notebook-timeout", "0"), ("--memory", "-1")])
def test_limits_are_validated_before_any_work(tmp_path, capsys, option, value):
    code = main(["grade", str(tmp_path / "missing"), "--assignment", str(BOOK), "--out", str(tmp_path / "g.csv"),
                 option, value])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"ppo-edu grade: error: {option} must be a finite number > 0, got")


def test_without_a_sandbox_the_grader_says_so_and_still_grades(tmp_path, monkeypatch, capsys):
    import ppo_edu.coursework as cw

    monkeypatch.setattr(cw, "sandbox_available", lambda: "bubblewrap (bwrap) is not installed")
    teacher = tmp_path / "03_gae.ipynb"
    shutil.copyfile(BOOK, teacher)
    student = assign(teacher, tmp_path / "student", only_exercises=True)
    (tmp_path / "subs").mkdir()
    nb = nbformat.read(student, as_version=4)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = CORRECT_VECTOR_STYLE
    nbformat.write(nb, tmp_path / "subs" / "zoe.ipynb")
    (tmp_path / "subs" / "eve.ipynb").write_text(nbformat.writes(nb).replace("my_compute_gae(", "my_gae("))
    rows = grade(tmp_path / "subs", teacher, tmp_path / "g.csv", timeout=30, progress=False, only_exercises=True)
    assert "WARNING: NO SANDBOX: bubblewrap (bwrap) is not installed" in capsys.readouterr().err
    by = {r.student: r for r in rows}
    assert by["zoe"].passed and not by["eve"].passed
    assert all(r.sandbox == "NONE: bubblewrap (bwrap) is not installed" for r in rows)
    assert "Graded without a sandbox" in (tmp_path / "feedback" / "zoe.md").read_text()
