"""The README is a contract: every code block runs here, as written, in a fresh folder.

A block may be skipped only with a visible marker on the line before its fence,
``<!-- readme-test: skip: <reason> -->`` (the install itself, minutes-long builds, the test
suite). Skipped blocks are still checked: Python must compile and its imports must work, and
each ``ppo-edu ...`` line must parse with the CLI's own parser.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"(?:<!-- readme-test: skip: (?P<reason>[^\n]*?) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)```", re.S)


def readme_blocks(text: str) -> list[dict]:
    """Every fenced block of the README: ``lang``, ``code``, ``skip`` (the reason or None), ``line``."""
    return [{"lang": m["lang"], "code": m["code"], "skip": m["reason"],
             "line": text[:m.start("code")].count("\n")} for m in FENCE.finditer(text)]


BLOCKS = readme_blocks((ROOT / "README.md").read_text())
RUN = [b for b in BLOCKS if b["skip"] is None]
SKIPPED = [b for b in BLOCKS if b["skip"] is not None]


def _id(b):
    return f"line{b['line']}-{b['lang']}"


def _env():
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", SDL_VIDEODRIVER="dummy",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # ppo-edu, this venv
    return env


def _run(block, cwd: Path) -> subprocess.CompletedProcess:
    (cwd / "book").symlink_to(ROOT / "book")              # commands use paths relative to the repository
    argv = [sys.executable, "-c", block["code"]] if block["lang"] == "python" else \
        ["bash", "-euo", "pipefail", "-c", block["code"]]
    return subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)


def test_the_readme_has_blocks_and_every_one_is_python_or_bash():
    assert len(BLOCKS) >= 8 and len(RUN) >= 4
    assert {b["lang"] for b in BLOCKS} <= {"python", "bash"}, [b["lang"] for b in BLOCKS]
    assert all(b["skip"].strip() for b in SKIPPED), "a skip marker must give its reason"


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN, ids=_id)
def test_readme_block_runs_as_written(block, tmp_path):
    out = _run(block, tmp_path)
    assert out.returncode == 0, \
        f"README block at line {block['line']} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    if "callback=" in block["code"]:  # a callback must not stop training on the NaN before the first episode
        steps = int(out.stdout.strip().splitlines()[-1].split()[0])
        assert steps > 256, f"the README's callback stopped training after {steps} steps"


@pytest.mark.parametrize("block", [b for b in SKIPPED if b["lang"] == "python"], ids=_id)
def test_skipped_python_blocks_compile_and_import(block):
    code = block["code"]
    compile(code, f"README.md:{block['line']}", "exec")
    imports = "\n".join(line for line in code.splitlines() if re.match(r"(from \S+ )?import ", line))
    exec(compile(imports, f"README.md:{block['line']}", "exec"), {})


@pytest.mark.parametrize("block", [b for b in SKIPPED if b["lang"] == "bash"], ids=_id)
def test_skipped_cli_lines_parse(block):
    from ppo_edu.cli import build_parser

    for line in block["code"].splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["ppo-edu"]:
            try:
                build_parser().parse_args(words[1:])
            except SystemExit as stop:
                pytest.fail(f"README line {line!r} does not parse (exit {stop.code})")


def test_the_readme_parser_finds_skip_markers_and_blocks():
    text = "x\n<!-- readme-test: skip: slow -->\n```bash\nsleep 1\n```\n\n```python\nprint(1)\n```\n"
    blocks = readme_blocks(text)
    assert [(b["lang"], b["skip"], b["code"]) for b in blocks] == [("bash", "slow", "sleep 1\n"),
                                                                   ("python", None, "print(1)\n")]
