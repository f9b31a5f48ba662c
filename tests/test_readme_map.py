"""The README's "Map of the library" is true: every module is listed, on the floor its imports
give it (one above the highest floor among the ppo_edu modules it imports; 0 if none)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ppo_edu"


def unit_of(path: Path) -> str | None:
    """The README row a source file belongs to; ``checks`` is one row, module or package."""
    rel = path.relative_to(ROOT).as_posix()
    if rel in ("ppo_edu/__init__.py", "ppo_edu/rlhf/__init__.py"):
        return None                                    # package facades, not rows
    if rel == "ppo_edu/checks.py" or rel.startswith("ppo_edu/checks/"):
        return "ppo_edu/checks/"
    return rel


def dotted_to_unit(name: str) -> str | None:
    """``ppo_edu.rlhf.ppo`` -> ``ppo_edu/rlhf/ppo.py`` (or the checks row); None for packages themselves."""
    parts = name.split(".")
    for n in (len(parts), len(parts) - 1):            # a name imported from a module is not itself a module
        stem = ROOT.joinpath(*parts[:n])
        for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
            if candidate.exists():
                return unit_of(candidate)
    return None


def imports_of(path: Path) -> set[str]:
    """The ppo_edu modules a file imports (also inside functions), as dotted names."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = ".".join(path.relative_to(ROOT).parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[:len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {f"{target}.{a.name}" for a in node.names} | {target}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ppo_edu"):
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ppo_edu")}
    return found


def computed_floors() -> dict[str, int]:
    deps: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        unit = unit_of(path)
        if unit is not None:
            targets = {dotted_to_unit(name) for name in imports_of(path)}
            deps.setdefault(unit, set()).update(t for t in targets if t is not None and t != unit)
    floors: dict[str, int] = {}

    def floor(unit: str, seen: tuple = ()) -> int:
        assert unit not in seen, f"import cycle: {' -> '.join(seen + (unit,))}"
        if unit not in floors:
            floors[unit] = 1 + max((floor(d, seen + (unit,)) for d in deps[unit]), default=-1)
        return floors[unit]

    for unit in deps:
        floor(unit)
    return floors


def readme_floors() -> dict[str, int]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Map of the library", 1)[1].split("\n## ", 1)[0]
    return {m.group(2): int(m.group(1)) for m in re.finditer(r"^\| (\d+) \| `([^`]+)` \|", section, re.M)}


def test_readme_map_lists_every_module_on_the_floor_its_imports_give_it():
    computed, listed = computed_floors(), readme_floors()
    assert sorted(set(computed) - set(listed)) == [], "modules missing from the README's map"
    assert sorted(set(listed) - set(computed)) == [], "README rows for modules that do not exist"
    wrong = {u: (listed[u], computed[u]) for u in computed if listed[u] != computed[u]}
    assert wrong == {}, "README floor vs floor from imports"


def test_floors_are_computed_from_imports():
    """The rule itself, on modules whose imports are fixed by design."""
    floors = computed_floors()
    assert floors["ppo_edu/gae.py"] == 0 and floors["ppo_edu/losses.py"] == 0
    assert floors["ppo_edu/rlhf/ppo.py"] > floors["ppo_edu/rlhf/trainer.py"] > floors["ppo_edu/rlhf/policy.py"]
    assert floors["ppo_edu/train.py"] > floors["ppo_edu/cli.py"] > floors["ppo_edu/ppo.py"]
