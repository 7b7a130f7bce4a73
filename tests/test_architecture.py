"""The package's floors (README, Layout): math → catalog → stages → runtime → interfaces. A module imports only from
its own floor or those below (imports inside functions count), and no stage module imports another stage module."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "survey"
FLOORS = {"catalog": 1, "stages": 2, "runtime": 3, "cli": 4, "search": 4, "report": 4}  # anything else: math, 0


def floor(module: str) -> int:
    parts = module.split(".")
    return FLOORS.get(parts[1], 0) if len(parts) > 1 else 0


def imports(package: Path = PACKAGE) -> list[tuple[str, str]]:
    """(importing module, imported survey module) for every import statement in the package."""
    found = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("survey"):
                found.append((module, node.module))
            elif isinstance(node, ast.Import):
                found += [(module, alias.name) for alias in node.names if alias.name.startswith("survey")]
    return found


def upward(found: list[tuple[str, str]]) -> list[str]:
    return [f"{module} → {target}" for module, target in found if floor(target) > floor(module)]


def siblings(found: list[tuple[str, str]]) -> list[str]:
    return [f"{module} → {target}" for module, target in found
            if module.startswith("survey.stages.") and target.startswith("survey.stages.") and target != module]


def test_no_module_imports_from_a_higher_floor_and_no_stage_from_another():
    found = imports()
    assert len(found) > 100  # the walk saw the package
    assert upward(found) == []
    assert siblings(found) == []


def test_the_checks_catch_an_upward_and_a_sibling_import(tmp_path):
    package = tmp_path / "survey"
    (package / "catalog").mkdir(parents=True)
    (package / "stages").mkdir()
    (package / "catalog" / "rows.py").write_text("def load():\n    from survey.stages.mei import MeiStage\n")
    (package / "stages" / "capacity.py").write_text(
        "from survey.stages import Stage\nfrom survey.stages.mei import a\n")
    found = imports(package)
    assert upward(found) == ["survey.catalog.rows → survey.stages.mei"]
    assert siblings(found) == ["survey.stages.capacity → survey.stages.mei"]
