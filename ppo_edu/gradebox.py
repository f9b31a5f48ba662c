"""The student's side of grading: a sandboxed process that only *produces* the student's functions.

``ppo-edu grade`` (:mod:`ppo_edu.coursework`) never runs a student's code itself. For each
submission it starts ``python -m ppo_edu.gradebox`` inside bubblewrap (``bwrap``): a read-only
view of the system, an empty private ``/tmp`` as working directory, no network, its own process
namespace (everything it starts dies with it), no view of the submissions, the assignment or
the output folder, a scrubbed environment, and limits on memory and file size. The grader sends
it the notebook's cells one at a time over a pipe; test cells never go there. To test a function,
the grader's own process runs the teacher's test cell with a :class:`Remote` stand-in for each
student name: calling it sends the inputs (tensors, arrays, numbers) to the student's process,
which calls the student's function and sends back its output (and, for a scalar loss, the
gradient with respect to every input that asked for one). The checks compare that output with
the untouched reference in the grader's process, so nothing the student's code does in its own
process (monkeypatching, input transformers, printing "PASSED", exiting) can change a result.

The messages are length-prefixed JSON; tensors travel as raw bytes with a dtype from a fixed
list, never as pickles, so the grader never deserialises code from the student's process.
"""
from __future__ import annotations

import base64
import builtins
import importlib
import inspect
import json
import math
import os
import resource
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_MESSAGE = 256 << 20  # bytes: a larger reply is a protocol error, not a memory bomb in the grader
_NP_DTYPES = {"float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool", "complex64",
              "complex128"}


# ----------------------------------------------------------------------------- wire format
def send(fd: int, obj) -> None:
    data = json.dumps(obj).encode()
    view = memoryview(struct.pack(">Q", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exactly(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the pipe closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv(fd: int):
    (n,) = struct.unpack(">Q", _read_exactly(fd, 8))
    if n > MAX_MESSAGE:
        raise ValueError(f"a message of {n} bytes (more than {MAX_MESSAGE})")
    return json.loads(_read_exactly(fd, n))


class Unencodable(TypeError):
    pass


def encode(x, depth: int = 0, other=None):
    """Tensors, arrays, numbers, strings, None and tuples / lists / dicts of them, as JSON; anything
    else is ``other(x)`` (a handle, in the student's process) or an :class:`Unencodable` error."""
    import torch

    if depth > 20:
        raise Unencodable("nested too deeply")
    if x is None or isinstance(x, (bool, int, float, str)):
        return x if not isinstance(x, int) or abs(x) < 2 ** 62 else float(x)
    if type(x) in (tuple, list):
        return {"t": type(x).__name__, "v": [encode(v, depth + 1, other) for v in x]}
    if type(x) is dict and all(isinstance(k, str) for k in x):
        return {"t": "dict", "v": {k: encode(v, depth + 1, other) for k, v in x.items()}}
    if torch.is_tensor(x):
        t = x.detach().cpu()
        name = str(t.dtype).removeprefix("torch.")
        t = t.float() if name == "bfloat16" else t
        return {"t": "tensor", "dtype": name, "grad": bool(x.requires_grad), **_array(t.contiguous().numpy())}
    if isinstance(x, (np.ndarray, np.generic)) and x.dtype.name in _NP_DTYPES:
        return {"t": "ndarray" if isinstance(x, np.ndarray) else "npscalar", "dtype": x.dtype.name, **_array(x)}
    if other is not None:
        return {"t": "object", "v": other(x)}
    raise Unencodable(type(x).__name__)


def _array(a: np.ndarray) -> dict:
    return {"shape": list(np.shape(a)), "np": a.dtype.name, "data": base64.b64encode(a.tobytes(order="C")).decode()}


def decode(x, other=None):
    """The inverse of :func:`encode`; ``other`` turns an object handle into a stand-in."""
    import torch

    if not isinstance(x, dict):
        return x
    kind = x.get("t")
    if kind in ("tuple", "list"):
        items = [decode(v, other) for v in x["v"]]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict":
        return {str(k): decode(v, other) for k, v in x["v"].items()}
    if kind == "object" and other is not None:
        return other(x["v"])
    if kind in ("tensor", "ndarray", "npscalar"):
        if x["np"] not in _NP_DTYPES:
            raise ValueError(f"dtype {x['np']!r} is not allowed")
        a = np.frombuffer(base64.b64decode(x["data"]), dtype=np.dtype(x["np"])).reshape(x["shape"]).copy()
        if kind == "npscalar":
            return a[()]
        if kind == "ndarray":
            return a
        t = torch.from_numpy(a)
        t = t.to(torch.bfloat16) if x["dtype"] == "bfloat16" else t
        return t.requires_grad_(True) if x.get("grad") and t.is_floating_point() else t
    raise ValueError(f"unknown value kind {kind!r}")


# ----------------------------------------------------------------------------- the student's process
class _Server:
    """Runs cells and calls functions on request; lives inside the sandbox."""

    def __init__(self, rfd: int, wfd: int):
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config

        config = Config()
        config.HistoryManager.hist_file = ":memory:"
        self.rfd, self.wfd = rfd, wfd
        self.shell = InteractiveShell.instance(config=config)
        self.handles: dict[int, object] = {}

    def loop(self) -> None:
        while True:
            try:
                msg = recv(self.rfd)
            except EOFError:
                return
            try:
                _BUSY.set()
                signal.signal(signal.SIGINT, signal.default_int_handler)
                reply = getattr(self, "op_" + msg["op"])(msg)
            except KeyboardInterrupt:
                reply = {"error": "KeyboardInterrupt: interrupted by the grader's time limit"}
            finally:
                _BUSY.clear()
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # idle: a late interrupt must not kill us
            reply["id"] = msg.get("id")
            send(self.wfd, reply)

    def op_run(self, msg) -> dict:
        result = self.shell.run_cell(msg["source"], store_history=False)
        err = result.error_before_exec or result.error_in_exec
        return {"error": None if err is None else f"{type(err).__name__}: {err}"}

    def _describe(self, obj) -> dict:
        import types

        if isinstance(obj, types.ModuleType):
            return {**self._handle(obj), "kind": "module", "module": str(obj.__name__)}
        return {"kind": "value", "value": encode(obj, other=self._handle)}

    def _handle(self, obj) -> dict:
        self.handles[id(obj)] = obj
        name = getattr(obj, "__name__", type(obj).__name__)
        return {"kind": "object", "handle": id(obj), "type": type(obj).__name__, "callable": callable(obj),
                "name": name if isinstance(name, str) else type(obj).__name__}

    def op_describe(self, msg) -> dict:
        ns, out = self.shell.user_ns, {}
        for n in msg["names"]:
            if n in ns:
                info = self._describe(ns[n])
                big = info["kind"] == "value" and len(json.dumps(info["value"])) > MAX_MESSAGE // 16
                out[n] = {**self._handle(ns[n])} if big else info  # a large value stays here
        return {"names": out}

    def op_getattr(self, msg) -> dict:
        return self._describe(getattr(self.handles[msg["handle"]], msg["attr"]))

    def op_call(self, msg) -> dict:
        import torch

        fn = self.handles[msg["handle"]]
        args, kwargs = decode(msg["args"]), decode(msg["kwargs"])
        flat = [a for a in list(args) + list(kwargs.values()) if torch.is_tensor(a)]
        before = [a.detach().clone() for a in flat]
        hits, hook = _tripwire(msg.get("forbid", []))
        try:
            out = fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # SystemExit too: the student's error, reported
            return {"raised": type(err).__name__, "message": str(err)[:2000], "where": _where(err),
                    "reference": sorted(hits)}
        finally:
            tampered = hook is not None and sys.getprofile() is not hook
            sys.setprofile(None)
            threading.setprofile(None)
        changed = {str(i): encode(a.detach()) for i, (a, b) in enumerate(zip(flat, before))
                   if a.shape != b.shape or not torch.equal(a.detach(), b)}
        return {"out": self._describe(out), "grads": _grads(out, flat), "changed": changed,
                "reference": sorted(hits) + (["(the grader's tracing was switched off)"] if tampered else [])}


def _tripwire(forbid: list):
    """A profile hook that records every call into one of the ``forbid`` functions (file, first line,
    name): a re-exported or wrapped reference is caught however it is reached."""
    keys = {(f, int(line), name): label for f, line, name, label in forbid}
    hits: set = set()

    def hook(frame, event, arg):
        if event == "call":
            code = frame.f_code
            label = keys.get((code.co_filename, code.co_firstlineno, code.co_name))
            if label:
                hits.add(label)

    if keys:
        threading.setprofile(hook)
        sys.setprofile(hook)
    return hits, (hook if keys else None)


def _where(err) -> list | None:
    import traceback

    frames = traceback.extract_tb(err.__traceback__)
    return [frames[-1].lineno, frames[-1].line] if frames else None


def _grads(out, inputs) -> dict | None:
    """For a scalar loss (or a tuple whose first item is one), its gradient w.r.t. each input that
    asked for one, so the grader can check gradients without running the student's code."""
    import torch

    first = out[0] if isinstance(out, (tuple, list)) and out else out
    wanted = [i for i, a in enumerate(inputs) if a.requires_grad]
    if not (wanted and torch.is_tensor(first) and first.requires_grad and first.numel() == 1):
        return None
    grads = torch.autograd.grad(first.sum(), [inputs[i] for i in wanted], allow_unused=True)
    return {str(i): encode(g) for i, g in zip(wanted, grads) if g is not None}


_BUSY = threading.Event()


def _control(cfd: int) -> None:
    """The grader writes one byte here to interrupt a cell or call that ran past its time limit."""
    while os.read(cfd, 1):
        if _BUSY.is_set():
            os.kill(os.getpid(), signal.SIGINT)


# ----------------------------------------------------------------------------- the grader's side
class StudentGone(BaseException):
    """The student's process exited, died or was stopped: none of its code can run any more.
    A BaseException, so no ``except Exception`` in a check or a test cell can swallow it."""


@dataclass(frozen=True)
class Limits:
    """Per-submission limits (validated by :func:`check_limits`)."""

    cell_s: float = 300.0        #: wall time of one cell (or one call from a test cell)
    notebook_s: float = 1800.0   #: wall time of the whole submission
    memory_gib: float = 4.0      #: address space of the student's process (RLIMIT_AS)
    file_mib: float = 256.0      #: largest file it may write (RLIMIT_FSIZE)


def check_limits(**values: float) -> None:
    """Each value finite and > 0, else a ValueError naming the option, the value and what is allowed."""
    for option, v in values.items():
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"--{option.replace('_', '-')} must be a finite number > 0, got {v!r}")


def sandbox_available() -> str | None:
    """None when bubblewrap works here, else why not (said loudly by the grader)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bubblewrap (bwrap) is not installed"
    probe = subprocess.run([exe, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid",
                            "--unshare-net", "--die-with-parent", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"bubblewrap does not work here ({probe.stderr.strip()[:200] or probe.returncode})"
    return None


_USER_ARGS: list | None = None


def _user_args() -> list[str]:
    """Run as ``nobody`` in a user namespace where the system allows one (a root grader's student
    would otherwise be root: without capabilities, but the owner of root's files)."""
    global _USER_ARGS
    if _USER_ARGS is None:
        args = ["--unshare-user", "--uid", "65534", "--gid", "65534"]
        probe = subprocess.run(["bwrap", *args, "--ro-bind", "/", "/", "--cap-drop", "ALL", "true"],
                               capture_output=True)
        _USER_ARGS = args if probe.returncode == 0 else []
    return _USER_ARGS


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def bwrap_command(protect: list[Path]) -> list[str]:
    """A read-only view of the system with private /tmp (the working directory), /home, /root and
    /run, no network, its own pid namespace (every process it starts dies with it), and the
    ``protect`` paths (submissions, assignment, output) replaced by empty folders. Only what Python
    needs to import ``ppo_edu`` is shown again where it lies inside a hidden folder."""
    private = [Path(d) for d in ("/tmp", "/var/tmp", "/home", "/root", "/run", "/mnt", "/media", "/srv")]
    package = Path(__file__).resolve().parent
    needed = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), package}
    needed |= {Path(p).resolve() for p in sys.path if p and Path(p).is_dir()}
    protect = [p.resolve() for p in protect]
    # a folder that holds a protected path is not shown whole: only the package inside it
    needed = {n for n in needed if not any(_inside(p, n) for p in protect)} | {package}
    args = ["bwrap", *_user_args(), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid",
            "--unshare-net", "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--new-session", "--clearenv",
            "--cap-drop", "ALL"]
    args += [a for d in private if d.is_dir() for a in ("--tmpfs", str(d))]
    args += [a for n in sorted(needed) if any(_inside(n, d) for d in private) for a in ("--ro-bind", str(n), str(n))]
    for p in protect:
        args += ["--tmpfs", str(p)] if p.is_dir() else ["--ro-bind", "/dev/null", str(p)] if p.exists() else []
    args += [a for n in sorted(needed) if any(_inside(n, p) for p in protect) for a in ("--ro-bind", str(n), str(n))]
    return args + ["--dir", "/tmp/work", "--chdir", "/tmp/work"]


def student_env(home: str) -> dict:
    """A scrubbed environment: nothing of the teacher's but what Python needs."""
    root = str(Path(__file__).resolve().parent.parent)
    return {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": "/tmp",
            "LANG": "C.UTF-8", "PYTHONPATH": root, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
            "MPLBACKEND": "Agg", "MPLCONFIGDIR": f"{home}/.mpl", "IPYTHONDIR": f"{home}/.ipython"}


def _set_limits(limits: Limits):
    def apply():
        memory, size = int(limits.memory_gib * 2 ** 30), int(limits.file_mib * 2 ** 20)
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


class Box:
    """One student's process, and the pipes to it. ``close()`` kills its whole process group."""

    def __init__(self, limits: Limits, protect: list[Path], sandboxed: bool):
        self.limits, self.sandboxed = limits, sandboxed
        self._tmp = tempfile.TemporaryDirectory(prefix="ppo-edu-grade-")
        workdir = Path(self._tmp.name) / "work"
        workdir.mkdir()
        self.notebook_deadline = math.inf  # set by start(): a box may be started ahead of its turn
        self.cell_deadline = math.inf
        self.dead: str | None = None
        self.reference_hits: set[str] = set()
        self.references_checked: set = set()  # the references that the checks run so far compare with
        self.last_reference: dict = {}
        self._id = 0
        req_r, self._req = os.pipe()
        self._rep, rep_w = os.pipe()
        ctl_r, self._ctl = os.pipe()
        cmd = [sys.executable, "-m", "ppo_edu.gradebox", str(req_r), str(rep_w), str(ctl_r)]
        home = "/tmp/work" if sandboxed else str(workdir)
        cmd = bwrap_command(protect) + [a for k, v in student_env(home).items() for a in ("--setenv", k, v)] + cmd \
            if sandboxed else cmd
        self.log = Path(self._tmp.name) / "student.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, pass_fds=(req_r, rep_w, ctl_r), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, cwd=workdir, env=student_env(home), start_new_session=True,
                                         preexec_fn=_set_limits(limits))
        for fd in (req_r, rep_w, ctl_r):
            os.close(fd)

    def start(self, startup_s: float = 120.0) -> None:
        """Wait until the process is ready (imports done), then start the whole-submission clock."""
        try:
            if not select.select([self._rep], [], [], startup_s)[0]:
                self._stop(self._status(f"did not start within {startup_s:g} s and was stopped"))
                raise StudentGone(self.dead)
            recv(self._rep)
        except (OSError, EOFError, ValueError):
            tail = self.log.read_bytes()[-300:].decode(errors="replace").strip().splitlines()
            self._stop(self._status("could not start") + (f": {tail[-1]}" if tail else ""))
            raise StudentGone(self.dead) from None
        self.notebook_deadline = time.monotonic() + self.limits.notebook_s

    # ------------------------------------------------------------------ requests
    def request(self, msg: dict, limit_s: float) -> dict:
        if self.dead:
            raise StudentGone(self.dead)
        self._id = secrets.randbits(62)  # unpredictable: no reply can be written ahead of its request
        msg["id"] = self._id
        deadline = min(time.monotonic() + limit_s, self.cell_deadline, self.notebook_deadline)
        try:
            send(self._req, msg)
            return self._reply(self._id, deadline)
        except StudentGone:
            raise
        except (OSError, EOFError, ValueError, KeyError, TypeError) as err:
            self._stop(self._status(f"broke the grading protocol ({type(err).__name__})"))
        except BaseException:  # a check's own time limit (or ^C) landed while we waited: resynchronise
            self._recover(self._id)
            raise
        raise StudentGone(self.dead)

    def _reply(self, want: int, deadline: float) -> dict:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return self._timed_out(want, deadline)
            if not select.select([self._rep], [], [], left)[0]:
                continue
            reply = recv(self._rep)
            if reply.get("id") == want:
                return reply

    def _timed_out(self, want: int, deadline: float) -> dict:
        whole = deadline >= self.notebook_deadline
        what = (f"the whole submission ran longer than {self.limits.notebook_s:g} s" if whole else
                f"ran longer than {self.limits.cell_s:g} s")
        if not whole and self._recover(want, what):
            return {"error": f"TimeoutError: {what} and was interrupted (an infinite loop?)", "timeout": True}
        self._stop(self._status(f"{what} and was stopped"))
        raise StudentGone(self.dead)

    def _recover(self, want: int, what: str = "ran past a time limit", grace: float = 2.0) -> bool:
        """Interrupt the running cell or call; True if the process answered, else it is stopped."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            os.write(self._ctl, b"i")
            end = time.monotonic() + grace
            while (left := end - time.monotonic()) > 0:
                if select.select([self._rep], [], [], left)[0] and recv(self._rep).get("id") == want:
                    return True
        except (OSError, EOFError, ValueError):
            pass
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self._stop(self._status(f"{what}, could not be interrupted and was stopped"))
        return False

    def _status(self, fallback: str) -> str:
        try:
            code = self.proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            return f"the student's process {fallback}"
        if code < 0 or (self.sandboxed and code > 128):
            sig = -code if code < 0 else code - 128  # bubblewrap exits with 128 + N
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            return f"the student's process died with signal {sig} ({name})"
        return f"the student's process exited with status {code}"

    def _stop(self, why: str) -> None:
        self.dead = self.dead or why
        self.close()

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for fd in (self._req, self._rep, self._ctl):
            try:
                os.close(fd)
            except OSError:
                pass
        self._req = self._rep = self._ctl = -1
        self._tmp.cleanup()

    # ------------------------------------------------------------------ cells and names
    def run_cell(self, source: str) -> str | None:
        """Run one cell in the student's process; its error as text, or None."""
        self.cell_deadline = math.inf
        try:
            reply = self.request({"op": "run", "source": source}, self.limits.cell_s)
        except StudentGone:
            raise
        return reply.get("error")

    def bind(self, ns: dict, names: list[str]) -> None:
        """Put the student's current value of each of ``names`` into the checker's namespace ``ns``."""
        for name, info in self.request({"op": "describe", "names": names}, self.limits.cell_s)["names"].items():
            ns[name] = self.materialise(info)

    def materialise(self, info: dict):
        kind = info.get("kind")
        if kind == "value":
            return decode(info["value"], self.materialise)
        if kind == "module" and _importable(str(info.get("module"))):
            return importlib.import_module(str(info["module"]))  # the grader's own, untouched copy
        base = RemoteFunction if info.get("callable") else RemoteObject
        cls = type(str(info.get("type", "object")), (base,), {})
        return cls(self, int(info["handle"]), str(info.get("name", "")))

    def call(self, handle: int, args: tuple, kwargs: dict):
        import torch

        from .checks.harness import ACTIVE_REFERENCE

        reference = ACTIVE_REFERENCE.get() or self.last_reference.get(handle)
        self.last_reference[handle] = reference
        if reference is not None:
            self.references_checked.add(reference)
        forbid = [] if reference is None else [_code_key(reference)]
        reply = self.request({"op": "call", "handle": handle, "args": encode(tuple(args)), "kwargs": encode(kwargs),
                              "forbid": forbid}, self.limits.cell_s)
        self.reference_hits.update(str(r) for r in reply.get("reference", []))
        if "error" in reply:
            raise TimeoutError(reply["error"])
        if "raised" in reply:
            raise _student_error(reply)
        flat = [a for a in list(args) + list(kwargs.values()) if torch.is_tensor(a)]
        _apply_changes(flat, reply.get("changed") or {})
        return _attach_grads(self.materialise(reply["out"]), flat, reply.get("grads"))


SAFE_MODULES = ("ppo_edu", "torch", "numpy", "math", "random", "collections", "functools", "itertools")


def _importable(name: str) -> bool:
    """Modules the grader imports itself when a test cell names one: only well-known ones, so a
    student cannot make the grader import something with side effects."""
    return name in sys.modules or name.split(".")[0] in SAFE_MODULES


class RemoteObject:
    """The grader's stand-in for an object that lives in the student's process."""

    def __init__(self, box: Box, handle: int, name: str):
        self._box, self._handle, self.__name__ = box, handle, name
        self.__qualname__ = name

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return self._box.materialise(self._box.request({"op": "getattr", "handle": self._handle, "attr": attr},
                                                       self._box.limits.cell_s))

    def __repr__(self) -> str:
        return f"<the student's {type(self).__name__} {self.__name__}>"


class RemoteFunction(RemoteObject):
    def __call__(self, *args, **kwargs):
        return self._box.call(self._handle, args, kwargs)


def _code_key(fn) -> list:
    code = inspect.unwrap(fn).__code__
    return [code.co_filename, code.co_firstlineno, code.co_name, f"{fn.__module__}.{fn.__qualname__}"]


class StudentError(Exception):
    """An exception raised by the student's function, re-raised in the grader with its type name."""


def _student_error(reply: dict) -> Exception:
    name, message = str(reply.get("raised")), str(reply.get("message"))
    builtin = getattr(builtins, name, None)
    cls = builtin if isinstance(builtin, type) and issubclass(builtin, Exception) and builtin.__module__ == "builtins" \
        else type(name, (StudentError,), {})
    try:
        err = cls(message)
    except Exception:
        err = type(name, (StudentError,), {})(message)
    where = reply.get("where")
    err.student_where = ([int(where[0]), str(where[1])[:200]] if isinstance(where, list) and len(where) == 2
                         and isinstance(where[0], int) else None)
    return err


def _apply_changes(flat: list, changed: dict) -> None:
    """Copy what the student's function wrote into its inputs back onto ours (so checks see it)."""
    import torch

    with torch.no_grad():
        for i, value in changed.items():
            new, old = decode(value), flat[int(i)]
            if torch.is_tensor(new) and new.shape == old.shape:
                old.copy_(new.to(old.dtype))
            else:
                old.add_(float("nan"))  # changed shape in place: make sure the difference shows


def _attach_grads(out, flat: list, grads: dict | None):
    """Connect a scalar loss from the student's process to our inputs, with its gradients."""
    import torch

    if not grads:
        return out
    first = out[0] if isinstance(out, (tuple, list)) else out
    wanted = [i for i, a in enumerate(flat) if a.requires_grad]
    values = tuple(decode(grads[str(i)]) if str(i) in grads else None for i in wanted)
    first = _Attached.apply(first.detach(), values, *[flat[i] for i in wanted])
    if isinstance(out, (tuple, list)):
        return type(out)([first, *out[1:]])
    return first


def _attached_class():
    import torch

    class Attached(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value, grads, *inputs):
            ctx.grads = grads
            return value.clone()

        @staticmethod
        def backward(ctx, g):
            return (None, None, *[None if gi is None else g * gi for gi in ctx.grads])

    return Attached


class _LazyAttached:
    def apply(self, *args):
        global _Attached
        _Attached = _attached_class()
        return _Attached.apply(*args)


_Attached = _LazyAttached()


def main(argv: list[str]) -> None:
    rfd, wfd, cfd = (int(a) for a in argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_control, args=(cfd,), daemon=True).start()
    builtins.__dict__.setdefault("display", print)
    server = _Server(rfd, wfd)
    try:  # while the grader is busy with the previous student: most chapters need these
        import torch  # noqa: F401
    except ImportError:
        pass
    send(wfd, {"id": 0, "ready": True})  # the time limits start counting from here
    server.loop()


if __name__ == "__main__":
    main(sys.argv[1:])
