"""Run folders that never mix two runs and never lose one.

* :func:`holds_run` tells whether a folder already holds a run (the CLI then refuses it
  unless ``--overwrite`` or ``--resume``).
* :class:`RunLock` locks a folder while a run owns it: a second run on the same folder stops
  at once with a message. The lock is an ``flock`` on ``.lock``, released by the kernel when
  the process dies, even by SIGKILL, so a killed run never leaves a folder locked.
* :func:`clean_stray_tmp` removes the ``.NAME.*.tmp`` files an atomic write leaves behind
  when its process is killed mid-write.
* :class:`MetricsWriter` streams ``metrics.csv`` one row per update, flushed, so an
  interrupted run keeps every finished update's row.
* :func:`write_status` records ``status.json``: running, finished, interrupted or failed,
  with the step count the checkpoint holds.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from .checkpoint import atomic_write_text

__all__ = ["RUN_FILES", "holds_run", "RunLock", "FolderInUse", "clean_stray_tmp", "MetricsWriter", "write_status",
           "read_status"]

RUN_FILES = ("config.json", "metrics.csv", "learning_curve.png", "model.pt", "eval.json", "status.json")


class FolderInUse(RuntimeError):
    """Another process holds the run folder's lock."""


def holds_run(folder: Path) -> list[str]:
    """The run files present in ``folder`` (empty when it holds no run)."""
    return [name for name in RUN_FILES if (Path(folder) / name).exists()]


class RunLock:
    """``with RunLock(folder):`` owns ``folder`` for one run; raises :class:`FolderInUse` if
    another live process owns it."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # Windows: an exclusive create (a killed run's .lock must be deleted by hand)
            return self._enter_exclusive()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise FolderInUse(f"run folder {str(self.path.parent)!r} is in use by another run "
                                  f"({self._owner()}); wait for it to finish or choose another --out") from None
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                break  # else the owner removed the file as we opened it: try again on the new one
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def check_free(self) -> None:
        """Raise :class:`FolderInUse` if a live run holds the folder (takes and drops the lock)."""
        if self.path.exists():
            with self:
                pass

    def _enter_exclusive(self) -> "RunLock":
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            raise FolderInUse(f"run folder {str(self.path.parent)!r} is in use by another run ({self._owner()}); "
                              f"if no run is alive, delete {str(self.path)!r}") from None
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def _owner(self) -> str:
        try:
            return f"process {self.path.read_text().strip()}"
        except OSError:
            return "unknown process"

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.unlink(self.path)  # still holding the lock: nobody can take it in between
            os.close(self.fd)
            self.fd = None


def clean_stray_tmp(folder: Path) -> list[str]:
    """Delete temporary files that killed writers left in ``folder`` (call it holding the lock)."""
    removed = []
    for p in Path(folder).glob("*.tmp"):
        if p.is_file():
            p.unlink()
            removed.append(p.name)
    for p in Path(folder).glob(".*.tmp"):
        if p.is_file():
            p.unlink()
            removed.append(p.name)
    return sorted(removed)


class MetricsWriter:
    """Append metrics rows to a CSV as they come, flushed after each row.

    ``keep_updates=k`` first keeps only the rows of updates 1..k already in the file (a
    resumed run redoes the updates after its checkpoint)."""

    def __init__(self, path: Path, keep_updates: int | None = None):
        self.path, self.fields = Path(path), None
        if keep_updates is None or not self.path.exists():
            self.path.write_text("")
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("update", "").isdigit() and int(r["update"]) <= keep_updates]
        self.path.write_text("")
        for row in rows:
            self.write(row)

    def write(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            if new:
                w.writeheader()
            w.writerow(row)


def write_status(folder: Path, status: str, **fields) -> None:
    """``status.json``: ``status`` (running | finished | interrupted | failed) and the counts."""
    atomic_write_text(Path(folder) / "status.json", json.dumps({"status": status, **fields}, indent=2))


def read_status(folder: Path) -> dict:
    path = Path(folder) / "status.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
