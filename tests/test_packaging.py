"""environment.yml, pyproject.toml, constraints.txt, README and .ci/run agree (no conda runs
here, so this test is what keeps the conda file honest)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.match(r"^\s*(?:-\s+)?([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def _requirements(project: dict, extra: str) -> list[str]:
    """The requirements of an extra, with self-references like ``ppo-edu[book]`` expanded."""
    out = []
    for req in project["optional-dependencies"][extra]:
        m = re.match(r"ppo-edu\[([\w,]+)\]", req)
        out += [r for e in m.group(1).split(",") for r in _requirements(project, e)] if m else [req]
    return out


def test_environment_yml_pins_every_runtime_and_test_dependency_at_the_constraint_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {_name(r) for r in project["dependencies"] + _requirements(project, "test")}
    constraints = _pins((ROOT / "constraints.txt").read_text().splitlines())
    env_pins = _pins((ROOT / "environment.yml").read_text().splitlines())
    assert needed <= set(constraints), f"not pinned in constraints.txt: {needed - set(constraints)}"
    assert needed <= set(env_pins), f"missing from environment.yml: {needed - set(env_pins)}"
    for name in needed:
        assert env_pins[name] == constraints[name], f"{name}: environment.yml {env_pins[name]} != {constraints[name]}"
    assert constraints["torch"] == "2.13.0" and "torch==2.13.0" in project["dependencies"]


def test_environment_yml_python_satisfies_requires_python():
    text = (ROOT / "environment.yml").read_text()
    version = re.search(r"-\s*python=(\d+)\.(\d+)", text)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    low = re.search(r">=\s*(\d+)\.(\d+)", project["requires-python"])
    assert version and low and tuple(map(int, version.groups())) >= tuple(map(int, low.groups()))


def test_ci_runs_the_readme_install_and_test_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().replace(" -q", "")
    install = re.search(r"pip install (-c constraints.txt -e \"\.\[test\]\")", readme).group(1)
    assert f"pip install {install}" in ci
    assert "python -m pytest" in readme and "python -m pytest" in ci
