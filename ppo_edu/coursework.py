"""Coursework: student versions of chapters, and batch grading (``ppo-edu assign`` / ``grade``).

Chapters mark exercises the way nbgrader and otter do, so the book runs with the reference
solutions filled in:

* a **solution cell** holds ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` and has cell
  metadata ``{"nbgrader": {"solution": true, "grade_id": "ex3_gae", ...}}``;
* a **test cell** has ``{"nbgrader": {"grade": true, "grade_id": "ex3_gae_test", "points": 2}}``;
  its visible part calls a check from :mod:`ppo_edu.checks`, and anything between
  ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` is removed from the student version.

``assign`` writes the student version (solutions replaced by ``raise NotImplementedError``,
hidden tests removed, outputs cleared). ``grade`` reads (and hashes) every file of the
submissions folder first, then for each student starts a fresh sandboxed process
(:mod:`ppo_edu.gradebox`) that runs the notebook's non-test cells with the student's solution
cells put in, nothing stored from any earlier run. The teacher's test cells, hidden tests
included, run in the grader's own process against stand-ins for the student's functions, so
the student's code can neither see nor change them. Every file gets one row per exercise,
whatever its code does; the CSV and the feedback files are written atomically at the end, and a
state file beside the CSV lets an interrupted batch resume.
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import copy
import csv
import hashlib
import io
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from .gradebox import Box, Limits, StudentGone, check_limits, sandbox_available

__all__ = ["assign", "grade", "grade_one", "student_version", "exercises_only", "Exercise", "GradeRow", "exercises",
           "Limits", "Submission", "read_submissions"]

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
    file: str = ""       #: the submitted file's name
    sha256: str = ""     #: of the submitted file, as read before grading
    sandbox: str = ""    #: "bubblewrap", or "NONE: why" when the student's code ran without one


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


# ----------------------------------------------------------------------------- reading the submissions
MAX_BYTES = 50 << 20
NOT_GRADABLE = "not a notebook or .py module"


@dataclass
class Submission:
    """One entry of the submissions folder, read into memory before anything runs."""

    name: str            #: the file's name in the folder
    student: str         #: the name without its suffix
    data: bytes = b""
    sha256: str = ""
    problem: str = ""    #: why it cannot be graded ("" if it can)


def read_submissions(folder, ignore=()) -> list[Submission]:
    """Every entry of ``folder`` (hidden ones and the grader's own ``ignore`` outputs aside), read
    and hashed; two entries named after one student are an error naming both."""
    folder, ignore = Path(folder), {Path(p).resolve() for p in ignore}
    if not folder.is_dir():
        raise FileNotFoundError(f"submissions folder {str(folder)!r} does not exist or is not a folder")
    subs, owner = [], {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.resolve() in ignore:
            continue  # .ipynb_checkpoints, .DS_Store, ..., or grades.csv written into the folder
        student = entry.stem if entry.suffix in (".ipynb", ".py") else entry.name.split(".")[0] or entry.name
        if student in owner:
            raise ValueError(f"{owner[student]} and {entry} both belong to student {student!r}: "
                             "keep one file per student")
        owner[student] = entry
        subs.append(_read_one(entry, student))
    if not subs:
        raise ValueError(f"no submissions in {str(folder)!r}")
    return subs


def _read_one(entry: Path, student: str) -> Submission:
    sub = Submission(entry.name, student)
    if entry.is_symlink() or not entry.is_file():
        sub.problem = f"{NOT_GRADABLE} ({'a link' if entry.is_symlink() else 'a folder'})"
        return sub
    if entry.stat().st_size > MAX_BYTES:
        sub.problem = f"larger than {MAX_BYTES >> 20} MiB"
        return sub
    try:
        sub.data = entry.read_bytes()
    except OSError as err:
        sub.problem = f"could not be read ({err.strerror})"
        return sub
    sub.sha256 = hashlib.sha256(sub.data).hexdigest()
    if entry.suffix not in (".ipynb", ".py"):
        sub.problem = NOT_GRADABLE
    return sub


# ----------------------------------------------------------------------------- merging
@dataclass
class Cell:
    kind: str        #: "test" (runs in the grader), "solution" or "code" (run in the student's process)
    source: str
    grade_id: str = ""


def merge(source, sub: Submission) -> tuple[list[Cell], dict[str, str]]:
    """The teacher's code cells, the student's solution cells in place of the teacher's; notes on
    solution cells missing from the submission. Nothing of the submission but the source of its
    solution cells is used: no outputs, no execution counts, no metadata but the grade_id."""
    notes, cells = {}, []
    if sub.name.endswith(".py"):
        theirs, module = {}, sub.data.decode("utf-8", errors="replace")
    else:
        theirs, module = _solutions(sub), None
    first = True
    for cell in source.cells:
        meta = _meta(cell)
        if cell.cell_type != "code":
            continue
        if meta.get("grade"):
            cells.append(Cell("test", cell.source, str(meta.get("grade_id"))))
        elif meta.get("solution"):
            gid = str(meta.get("grade_id"))
            if module is not None:
                code = module if first else "# (solutions come from the submitted module)"
            elif gid in theirs:
                code = theirs[gid]
            else:
                notes[gid] = "is missing from the submission (a deleted cell?)"
                code = SOLUTION.sub(lambda m: f"{m.group(1)}{STUB}{m.group(2)}", cell.source)
            cells.append(Cell("solution", code, gid))
            first = False
        else:
            cells.append(Cell("code", cell.source))
    return cells, notes


def _solutions(sub: Submission) -> dict[str, str]:
    try:
        submitted = nbformat.reads(sub.data.decode("utf-8"), as_version=4)
    except Exception as err:  # not UTF-8, not JSON, not a notebook
        raise ValueError(f"the submission is not a readable notebook ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None
    return {str(_meta(c)["grade_id"]): str(c.source) for c in submitted.cells
            if c.get("cell_type") == "code" and _meta(c).get("solution") and "grade_id" in _meta(c)}


# ----------------------------------------------------------------------------- grading one submission
@dataclass
class _Run:
    """What happened while one submission ran: per test, (passed, message)."""

    outcome: dict = field(default_factory=dict)
    problems: dict = field(default_factory=dict)   # solution grade_id -> what went wrong with it
    fatal: str = ""                                # why the student's process stopped, if it did


def _parse(source: str):
    try:
        return ast.parse(source)
    except SyntaxError:
        return ast.parse("")


def _bound_names(source: str) -> set[str]:
    """Names a cell binds: definitions, assignments, imports (what a solution cell produces)."""
    names = set()
    for n in ast.walk(_parse(source)):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            names.add(n.id)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in n.names}
    return names


def _teacher_imports(cells: list[Cell]) -> dict:
    """The checker's namespace: the imports of the teacher's own cells, done here, so a test cell's
    ``check_...`` is the grader's untouched one whatever the student's process holds under that name."""
    ns = {"__name__": "__main__", "display": lambda *a, **k: None}
    for cell in cells:
        if cell.kind != "code":
            continue
        for node in ast.walk(_parse(cell.source)):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
                try:
                    exec(compile(ast.Module([node], []), "<teacher import>", "exec"), ns)
                except Exception:  # a module the grader lacks: the name comes from the student's process
                    pass
    return ns


def _loaded_names(source: str) -> list[str]:
    """Names the cell reads before (or without) binding them itself: what it needs from outside."""
    first: dict[str, bool] = {}
    nodes = [n for n in ast.walk(_parse(source)) if isinstance(n, ast.Name)]
    for n in sorted(nodes, key=lambda n: (n.lineno, n.col_offset)):
        first.setdefault(n.id, isinstance(n.ctx, ast.Load))
    names = {name for name, loaded in first.items() if loaded}
    return sorted(n for n in names if not hasattr(builtins, n))


def _run_test(box: Box, ns: dict, cell: Cell, theirs: set, theirs_source: str) -> tuple[bool, str]:
    """The teacher's test cell, in the grader's process, against the student's current names: those
    the student's cells bind (``theirs``) and any the teacher's imports did not provide."""
    box.reference_hits.clear()
    box.references_checked.clear()
    try:
        box.bind(ns, [n for n in _loaded_names(cell.source) if n in theirs or n not in ns])
        box.cell_deadline = time.monotonic() + box.limits.cell_s
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            exec(compile(cell.source, f"<test cell {cell.grade_id}>", "exec"), ns)
    except StudentGone as gone:
        return False, f"test did not finish: {gone}"
    except Exception as err:
        return False, f"test: {type(err).__name__}: {err}"
    finally:
        box.cell_deadline = float("inf")
    hits = box.reference_hits | _imports_of(box.references_checked, theirs_source)
    if hits:
        return False, (f"uses the reference implementation ({', '.join(sorted(hits, key=lambda h: (h[0] == '(', h)))}): "
                       "the exercise is to write it yourself")
    return True, "passed"


def _imports_of(references, sources: str) -> set[str]:
    """The references that the solution cells import or name by their module path (found in the
    source, so it does not depend on anything the student's process reports)."""
    hits, tree = set(), _parse(sources)
    for ref in references:
        module, name = ref.__module__, ref.__name__
        for n in ast.walk(tree):
            imported = isinstance(n, ast.ImportFrom) and n.module == module and any(a.name == name for a in n.names)
            named = isinstance(n, ast.Attribute) and n.attr == name and ast.unparse(n.value).endswith(module)
            if imported or named:
                hits.add(f"{module}.{name}")
    return hits


def _run_cells(box: Box, cells: list[Cell], notes: dict) -> _Run:
    run = _Run(problems=dict(notes))
    ns = _teacher_imports(cells)
    theirs_source = "\n".join(c.source for c in cells if c.kind == "solution" and _parse(c.source).body)
    theirs = _bound_names(theirs_source)
    for cell in cells:
        if cell.kind == "test":
            run.outcome[cell.grade_id] = (_run_test(box, ns, cell, theirs, theirs_source) if not box.dead else
                                          (False, "test did not run"))
            run.fatal = run.fatal or (box.dead or "")
            continue
        if box.dead:
            continue
        try:
            error = box.run_cell(cell.source)
        except StudentGone as gone:
            error = run.fatal = str(gone)
        if error and cell.kind == "solution":
            note = run.problems.get(cell.grade_id)
            run.problems[cell.grade_id] = f"{note + ', and ' if note else ''}failed: {error}"
    return run


def grade_one(source, sub: Submission, limits: Limits = Limits(), sandbox: str = "bubblewrap",
              protect: tuple = (), box: Box | None = None) -> list[GradeRow]:
    """Grade one submission (already read into memory) against the teacher's ``source`` notebook.
    ``sandbox`` is "bubblewrap" or "NONE: why"; ``protect`` lists paths the student must not see;
    ``box`` is the student's process if one was started ahead (it is closed here)."""
    tests = exercises(source)

    def row(t, passed, message):
        return GradeRow(sub.student, t.grade_id, t.points if passed else 0.0, t.points, passed, message,
                        sub.name, sub.sha256, sandbox)

    try:
        if sub.problem:
            raise ValueError(sub.problem)
        cells, notes = merge(source, sub)
    except ValueError as err:
        if box is not None:
            box.close()
        return [row(t, False, str(err)) for t in tests]
    box = box or Box(limits, list(protect), sandbox == "bubblewrap")
    try:
        box.start()
        run = _run_cells(box, cells, notes)
    except StudentGone as gone:
        run = _Run(problems=notes, fatal=str(gone))
    finally:
        box.close()
    return [row(t, *_verdict(t, run)) for t in tests]


def _verdict(t: Exercise, run: _Run) -> tuple[bool, str]:
    passed, message = run.outcome.get(t.grade_id, (False, "test did not run"))
    if passed:
        return True, message
    # a solution cell belongs to the tests whose grade_id starts with its own
    own = {g: p for g, p in run.problems.items() if t.grade_id.startswith(g)} or run.problems
    causes = [f"solution cell {g!r} {p}" for g, p in own.items()]
    if run.fatal and not any(run.fatal in c for c in causes + [message]):
        causes.append(run.fatal)
    return False, "; ".join(causes + [message])


# ----------------------------------------------------------------------------- the batch
def _state_key(assignment_bytes: bytes, only_exercises: bool, limits: Limits) -> str:
    text = json.dumps([hashlib.sha256(assignment_bytes).hexdigest(), only_exercises, asdict(limits)])
    return hashlib.sha256(text.encode()).hexdigest()


def _load_state(path: Path, key: str) -> dict:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state.get("students", {}) if isinstance(state, dict) and state.get("key") == key else {}


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def grade(submissions_dir, assignment, out_csv, timeout: float = 300, feedback_dir=None,
          kernel: str = "python3", progress: bool = True, only_exercises: bool = False,
          notebook_timeout: float = 1800, memory_gib: float = 4.0, log=print) -> list[GradeRow]:
    """Grade every file in ``submissions_dir``; write ``out_csv`` and the feedback files.

    ``timeout`` limits each cell (and each call a test makes), ``notebook_timeout`` a whole submission,
    ``memory_gib`` the student's process. ``kernel`` is kept for compatibility (the student's code
    always runs in this Python). Already graded students whose file is unchanged are skipped
    (``<out_csv>.state.json``)."""
    check_limits(timeout=timeout, notebook_timeout=notebook_timeout, memory=memory_gib)
    limits = Limits(cell_s=float(timeout), notebook_s=float(notebook_timeout), memory_gib=float(memory_gib))
    out_csv = Path(out_csv)
    feedback = Path(feedback_dir) if feedback_dir else out_csv.with_name("feedback")
    source_bytes = Path(assignment).read_bytes() if Path(assignment).is_file() else None
    source = _read(assignment)
    source = exercises_only(source) if only_exercises else source
    if not exercises(source):
        raise ValueError(f"{assignment}: no graded exercises (cells with nbgrader metadata grade=true)")
    state_path = out_csv.with_name(out_csv.name + ".state.json")
    subs = read_submissions(submissions_dir, ignore=(out_csv, state_path, feedback))
    why_not = sandbox_available()
    sandbox = "bubblewrap" if why_not is None else f"NONE: {why_not}"
    if why_not:
        print(f"WARNING: NO SANDBOX: {why_not}. Students' code runs with this user's rights and can read and "
              "write what this user can (time, memory and process-group limits still apply); install bubblewrap "
              "(apt-get install bubblewrap) to isolate it.", file=sys.stderr, flush=True)
    protect = (Path(submissions_dir), Path(assignment), out_csv.parent, feedback)
    key = _state_key(source_bytes or b"", only_exercises, limits)
    done = _load_state(state_path, key)
    rows = _grade_all(source, subs, limits, sandbox, protect, done, state_path, key, progress)
    _write_outputs(rows, out_csv, feedback, Path(assignment).name, log)
    return rows


def _grade_all(source, subs, limits, sandbox, protect, done, state_path, key, progress) -> list[GradeRow]:
    from tqdm.auto import tqdm

    todo = [s for s in subs if not _cached(done, s)]
    rows: list[GradeRow] = []
    ahead: dict[str, Box] = {}   # the next student's process starts while this one is graded
    try:
        for sub in tqdm(subs, desc="grading", unit="submission", disable=not progress):
            if _cached(done, sub):
                rows += [GradeRow(**r) for r in done[sub.student]["rows"]]
                continue
            nxt = todo[todo.index(sub) + 1] if todo.index(sub) + 1 < len(todo) else None
            if nxt is not None and not nxt.problem:
                ahead[nxt.student] = Box(limits, list(protect), sandbox == "bubblewrap")
            mine = grade_one(source, sub, limits, sandbox, protect, ahead.pop(sub.student, None))
            rows += mine
            done[sub.student] = {"sha256": sub.sha256, "file": sub.name, "rows": [asdict(r) for r in mine]}
            _atomic_write(state_path, json.dumps({"key": key, "students": done}).encode())
    finally:
        for box in ahead.values():
            box.close()
    return rows


def _cached(done: dict, sub: Submission) -> bool:
    entry = done.get(sub.student)
    return bool(entry and sub.sha256 and entry.get("sha256") == sub.sha256 and entry.get("file") == sub.name)


def _write_outputs(rows: list[GradeRow], out_csv: Path, feedback: Path, assignment: str, log) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(GradeRow.__dataclass_fields__), lineterminator="\n")
    w.writeheader()
    w.writerows(asdict(r) for r in rows)
    data = buf.getvalue().encode()
    _atomic_write(out_csv, data)
    sums = []
    for student in dict.fromkeys(r.student for r in rows):
        text = _feedback([r for r in rows if r.student == student], student, assignment).encode()
        _atomic_write(feedback / f"{student}.md", text)
        sums.append(f"{hashlib.sha256(text).hexdigest()}  {student}.md\n")
    _atomic_write(feedback / "SHA256SUMS", "".join(sums).encode())
    log(f"grades written to {out_csv} (sha256 {hashlib.sha256(data).hexdigest()})")
    log(f"feedback written to {feedback}/ ({len(sums)} files; their sha256 in {feedback / 'SHA256SUMS'})")


def _feedback(mine: list[GradeRow], student: str, assignment: str) -> str:
    got, total = sum(r.points for r in mine), sum(r.max_points for r in mine)
    lines = [f"# Feedback for {student}: {assignment}", "", f"Submitted file: {mine[0].file} "
             f"(sha256 {mine[0].sha256 or '-'})", "", f"Score: {got:g} / {total:g}", ""]
    if mine[0].sandbox != "bubblewrap":
        lines += [f"Graded without a sandbox ({mine[0].sandbox}).", ""]
    for r in mine:
        lines += [f"## {r.exercise}: {'passed' if r.passed else 'not passed'} ({r.points:g}/{r.max_points:g})", ""]
        if not r.passed:
            lines += ["```", r.message, "```", ""]
    return "\n".join(lines)
