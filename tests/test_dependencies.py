"""Every third-party package the code imports is declared in pyproject.toml; the ones only tests import are `dev`."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

from conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCAL = {"netslim", "conftest"} | {p.stem for p in (ROOT / "tests").glob("*.py")}


def imported_distributions(folder: Path) -> set[str]:
    """The distribution (normalised name) of every non-stdlib top-level module imported under `folder`.

    Where several distributions provide a module (mlflow and mlflow-skinny), the first one declared counts.
    """
    modules = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - LOCAL - {"__future__"}
    by_module = importlib.metadata.packages_distributions()
    everything = declared(PROJECT["dependencies"]) | declared(PROJECT["optional-dependencies"]["dev"])
    found = set()
    for module in third_party:
        candidates = [normalise(d) for d in by_module[module]]
        found.add(next((d for d in candidates if d in everything), candidates[0]))
    return found


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(requirements: list[str]) -> set[str]:
    return {normalise(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in requirements}


def test_every_package_the_library_imports_is_a_dependency() -> None:
    missing = imported_distributions(ROOT / "src") - declared(PROJECT["dependencies"])
    assert not missing, f"imported by src/netslim but not in [project] dependencies: {sorted(missing)}"


def test_every_package_the_tests_import_is_a_dependency_or_dev() -> None:
    available = declared(PROJECT["dependencies"]) | declared(PROJECT["optional-dependencies"]["dev"])
    missing = imported_distributions(ROOT / "tests") - available
    assert not missing, f"imported by tests but not declared (dev): {sorted(missing)}"


def test_packages_only_tests_import_are_dev_only() -> None:
    only_tests = imported_distributions(ROOT / "tests") - imported_distributions(ROOT / "src")
    runtime_only_tests = only_tests & declared(PROJECT["dependencies"])
    # dvc, mlflow and optuna run as the pipeline's commands and services, not only as imports
    assert runtime_only_tests <= {"dvc", "mlflow", "optuna", "torchvision"}, sorted(runtime_only_tests)


def test_the_set_up_installs_every_extra_so_no_make_target_installs_on_first_use() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = re.findall(r"-e '\.\[([^\]]*)\]'", makefile)
    assert installs, "the Makefile installs the project with no extras"
    for extras in installs:  # the uv line and its pip fallback
        assert set(extras.split(",")) == set(PROJECT["optional-dependencies"]), extras
    assert "pip install" not in makefile.split("\ndashboard:")[1].split("\n\n")[0]  # `make dashboard` only runs it
