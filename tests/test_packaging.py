"""environment.yml, pyproject.toml, constraints.txt, README and .ci/run agree (no conda runs
here, so this test is what keeps the conda file honest); the installed environment has what
the README's install promises (JupyterLab, TensorBoard); the sdist carries what its tests need."""
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

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
    assert constraints["torch"] == "2.13.0"


def _all_requirements(project: dict) -> list[Requirement]:
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in reqs if not r.startswith("ppo-edu[")]


def test_pyproject_states_ranges_and_every_pin_lies_inside_them():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    constraints = _pins((ROOT / "constraints.txt").read_text().splitlines())
    for req in _all_requirements(project):
        assert not any(s.operator == "==" for s in req.specifier), f"{req}: exact pins belong in constraints.txt"
        assert req.specifier.contains(constraints[_name(req.name)], prereleases=True), \
            f"constraints.txt pins {req.name}=={constraints[_name(req.name)]}, outside pyproject's {req}"
    torch = next(r for r in _all_requirements(project) if r.name == "torch")
    assert str(torch.specifier) and not torch.specifier.contains("2.12.0") and not torch.specifier.contains("2.15.0")


def test_the_installed_environment_has_everything_the_test_extra_promises():
    """What ``pip install -c constraints.txt -e ".[test]"`` (README) installs, in the versions claimed."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for raw in project["dependencies"] + _requirements(project, "test"):
        req = Requirement(raw)
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{req.name} is not installed: rerun the README's install line")
        assert req.specifier.contains(version.split("+")[0], prereleases=True), f"{req.name} {version} not in {req}"


def test_jupyter_lab_runs_from_the_installed_environment():
    """README and chapter 0: `jupyter lab book/`. The jupyter next to this Python is the venv's."""
    jupyter = Path(sys.executable).parent / "jupyter"
    assert jupyter.exists(), f"{jupyter} is missing: the book extra must bring JupyterLab"
    out = subprocess.run([str(jupyter), "lab", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"4\.\d+\.\d+", out.stdout.strip()), out.stdout
    import ipywidgets  # noqa: F401  (progress bars as widgets)


def test_licence_file_is_mit_and_declared():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the ppo-edu authors" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]


def _sdist_members(tmp_path) -> set[str]:
    """Build the sdist (setuptools' PEP 517 hook, offline) from a clean copy of the tree."""
    skip = shutil.ignore_patterns(".git", ".venv*", "build", "_build", "*.egg-info", "__pycache__", "runs",
                                  ".pytest_cache", ".hypothesis")
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=skip)
    code = "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=src, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    with tarfile.open(tmp_path / "dist" / out.stdout.strip().splitlines()[-1]) as tar:
        return {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}


def test_sdist_carries_the_book_pins_licence_and_what_the_tests_need(tmp_path):
    members = _sdist_members(tmp_path)
    needed = {"LICENSE", "README.md", "pyproject.toml", "constraints.txt", "environment.yml", "MANIFEST.in",
              ".ci/run", "book/_config.yml", "book/_toc.yml", "book/sanitize.cfg", "book/AUTHORING.md",
              "ppo_edu/ppo.py", "ppo_edu/rlhf/pipeline.py", "tests/conftest.py", "tests/test_packaging.py"}
    needed |= {str(p.relative_to(ROOT)) for p in ROOT.glob("book/*.ipynb")}
    needed |= {str(p.relative_to(ROOT)) for p in ROOT.glob("tests/*.py")}
    assert needed <= members, f"missing from the sdist: {sorted(needed - members)}"
    assert not [m for m in members if "__pycache__" in m or "_build/" in m or m.startswith((".venv", "runs/"))]


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
