"""tools/gpu_checks.sh, the prepared GPU checks: its usage errors are one line and cost nothing (no pip, no
device), so a mistyped stage never spends a lent machine's minutes."""
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "gpu_checks.sh"


def run(args, cwd, tmp_path):
    return subprocess.run(["bash", str(cwd / "tools" / "gpu_checks.sh"), *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")}, timeout=60)


@pytest.fixture
def copy(tmp_path):
    """The script alone in a folder of its own (it works from its parent folder, which has no .wheels)."""
    (tmp_path / "repo" / "tools").mkdir(parents=True)
    shutil.copy(SCRIPT, tmp_path / "repo" / "tools")
    return tmp_path / "repo"


@pytest.mark.parametrize("args, words", [(["speed", "bogus"], ["unknown stage 'bogus'", "speed quality summary"]),
                                         ([], ["name a stage", "fetch"])])
def test_a_wrong_stage_is_one_line_before_any_setup(copy, tmp_path, args, words):
    r = run(args, copy, tmp_path)
    assert r.returncode == 2
    assert r.stdout.count("\n") == 1 and all(w in r.stdout for w in words), r.stdout
    assert not (tmp_path / "out").exists()                           # nothing ran


def test_missing_wheels_say_how_to_fetch_them(copy, tmp_path):
    r = run(["speed"], copy, tmp_path)
    assert r.returncode == 2
    assert r.stdout.strip() == "gpu_checks: .wheels/ is missing: run 'tools/gpu_checks.sh fetch' here and carry it"
