"""Import rules that keep the layers apart, read from the source with `ast`, so an import inside a function (or
under TYPE_CHECKING) cannot dodge them:

- tracking is a leaf adapter: no module of netslim.tracking imports torch or a netslim module outside
  TRACKING_MAY_IMPORT, and neither does anything those modules import, to the end of the chain. Stages hand it
  numbers, files, figures and the process rank; the torch side is netslim.stages.model_tracking.
- the report and the CI report import no torch, nor does any netslim module they import; io's checkpoint functions
  import torch when called, so importing them by name (or io as a whole) counts as importing torch.

A module reached through an import is read as it runs: its `if TYPE_CHECKING:` imports (tracking/run.py names
matplotlib's Figure there for its annotations) import nothing at run time. The modules a rule is about are read whole.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "src" / "netslim"
# torch-free by their own rules: the config and the architecture names it checks, and a file hash
TRACKING_MAY_IMPORT = {"netslim", "netslim.config", "netslim.registry", "netslim.digest", "netslim.vocabulary"}
REPORTS = (
    "netslim.report",
    "netslim.ci_report",
    "netslim.stages.report",
    "netslim.stages.ci_report",
    "netslim.stages.study_report",
)


@dataclass(frozen=True)
class Import:
    module: str
    names: tuple[str, ...]  # `from module import a, b`; () for `import module`, which can reach all of it
    line: int


def module_file(package: Path, module: str) -> Path | None:
    """netslim.a.b -> package/a/b.py or package/a/b/__init__.py; None for other packages' modules."""
    parts = module.split(".")
    if parts[0] != package.name:
        return None
    base = package.joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None


def modules_under(package: Path, module: str) -> list[str]:
    """The module, or every module of the package of that name."""
    path = module_file(package, module)
    if path is None:
        return []
    if path.name != "__init__.py":
        return [module]
    return sorted(
        ".".join((package.name, *p.relative_to(package).with_suffix("").parts)).removesuffix(".__init__")
        for p in path.parent.rglob("*.py")
    )


def _under_type_checking(tree: ast.AST) -> set[ast.AST]:
    return {
        child
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for child in ast.walk(stmt)
    }


def imports_of(package: Path, module: str, runtime_only: bool) -> list[Import]:
    """Every import statement of the module, top level or not (without those under TYPE_CHECKING if `runtime_only`);
    relative imports resolved, and `from package import module` as an import of that module."""
    path = module_file(package, module)
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _under_type_checking(tree) if runtime_only else set()
    here = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [Import(alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here.split(".")[: len(here.split(".")) - node.level + 1]) if node.level else ""
            source = ".".join(p for p in (base, node.module or "") if p)
            names = tuple(alias.name for alias in node.names)
            submodules = [n for n in names if module_file(package, f"{source}.{n}")]
            found += [Import(f"{source}.{n}", (), node.lineno) for n in submodules]
            if len(submodules) < len(names):
                found.append(Import(source, tuple(n for n in names if n not in submodules), node.lineno))
    return found


def is_torch(module: str) -> bool:
    return module == "torch" or module.startswith("torch.")


def torch_functions(package: Path, module: str) -> set[str]:
    """The module's top-level functions and classes that import torch when they run, directly or by calling one
    that does; "*" if the module imports torch as it is imported."""
    tree = ast.parse(module_file(package, module).read_text())
    skipped = _under_type_checking(tree)
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}

    def imports_torch(node: ast.AST) -> bool:
        return any(
            (isinstance(n, ast.Import) and any(is_torch(a.name) for a in n.names))
            or (isinstance(n, ast.ImportFrom) and is_torch(n.module or ""))
            for n in ast.walk(node)
            if n not in skipped
        )

    if any(imports_torch(stmt) for stmt in tree.body if stmt not in defs.values()):
        return {"*"}
    found = {name for name, node in defs.items() if imports_torch(node)}
    while grown := {
        name
        for name, node in defs.items()
        if name not in found and {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} & found
    }:
        found |= grown
    return found


def leaf_violations(package: Path, start: list[str], may_import: set[str]) -> list[str]:
    """What `start` (read whole) and the netslim modules they import (as they run) import against the leaf rule:
    torch anywhere, or a netslim module that is neither one of `start` nor in `may_import`."""
    allowed = set(start) | may_import
    seen, todo, found = set(), list(start), []
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for imp in imports_of(package, module, runtime_only=module not in start):
            where = f"{module}:{imp.line}"
            if is_torch(imp.module):
                found.append(f"{where} imports {imp.module}")
            elif module_file(package, imp.module) is not None:
                if imp.module in allowed:
                    todo.append(imp.module)
                else:
                    found.append(f"{where} imports {imp.module}, which tracking may not import")
    return found


def torch_free_violations(package: Path, start: list[str]) -> list[str]:
    """Where `start` (read whole) imports torch, or they or a netslim module they import (and so on) import by name
    (or whole) a module that imports torch as it is imported or a function of one that imports torch when it runs."""
    seen, todo, found = set(), [(m, True) for m in start], []
    while todo:
        module, whole = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for imp in imports_of(package, module, runtime_only=not whole):
            where = f"{module}:{imp.line}"
            if is_torch(imp.module) and whole:  # a module reached by name: its import site counted its torch
                found.append(f"{where} imports {imp.module}")
            if module_file(package, imp.module) is None:
                continue
            torch_side = torch_functions(package, imp.module)
            reached = torch_side if "*" in torch_side or not imp.names else torch_side & set(imp.names)
            if reached:
                found.append(f"{where} imports {imp.module} ({', '.join(sorted(reached))} imports torch)")
            todo.append((imp.module, False))
    return found


def test_tracking_imports_no_torch_and_only_the_config_registry_and_file_hash():
    modules = modules_under(PACKAGE, "netslim.tracking")
    assert {"netslim.tracking", "netslim.tracking.run", "netslim.tracking.store"} <= set(modules)
    may_import = TRACKING_MAY_IMPORT | set(modules_under(PACKAGE, "netslim.config"))  # the config package, whole
    assert leaf_violations(PACKAGE, modules, may_import) == []


@pytest.mark.parametrize("report", REPORTS)
def test_the_report_and_the_ci_report_import_no_torch(report):
    modules = [m for name in (report,) for m in modules_under(PACKAGE, name)]
    assert modules, f"{report} is gone: point REPORTS at where it moved"
    assert torch_free_violations(PACKAGE, modules) == []


# ---- the checks find what they are for -----------------------------------------------------------------------


@pytest.fixture
def fake_package(tmp_path) -> Path:
    """A package named netslim with a leaf `tracking` and its neighbours, to break one rule at a time."""
    package = tmp_path / "netslim"
    files = {
        "__init__.py": "",
        "config.py": "import json\n",
        "models.py": "import torch\n",
        "io.py": "def write(p):\n    pass\n\ndef load(p):\n    import torch\n\ndef load_model(p):\n    load(p)\n",
        "tracking/__init__.py": "from netslim.tracking.run import stage_run\n",
        "tracking/run.py": "from netslim import config\n\ndef stage_run():\n    pass\n",
        "report.py": "from netslim.io import write\n",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    return package


def test_the_fake_package_breaks_no_rule(fake_package):
    assert leaf_violations(fake_package, modules_under(fake_package, "netslim.tracking"), {"netslim.config"}) == []
    assert torch_free_violations(fake_package, ["netslim.report"]) == []


@pytest.mark.parametrize(
    ("code", "found"),
    [
        ("def log():\n    import torch\n", "netslim.tracking.run:3 imports torch"),
        ("def log():\n    from torch import nn\n", "netslim.tracking.run:3 imports torch"),
        ("if TYPE_CHECKING:\n    import torch.nn\n", "netslim.tracking.run:3 imports torch.nn"),
        ("def log():\n    from netslim.models import x\n", "netslim.tracking.run:3 imports netslim.models,"),
        ("def log():\n    from .. import models\n", "netslim.tracking.run:3 imports netslim.models,"),
        ("from netslim.io import write\n", "netslim.tracking.run:2 imports netslim.io,"),
    ],
)
def test_tracking_importing_torch_or_model_code_anywhere_is_found(fake_package, code, found):
    (fake_package / "tracking/run.py").write_text("from netslim import config\n" + code)
    [violation] = leaf_violations(fake_package, modules_under(fake_package, "netslim.tracking"), {"netslim.config"})
    assert violation.startswith(found)


def test_an_allowed_module_that_imports_torch_is_found_through_tracking(fake_package):
    (fake_package / "config.py").write_text("def check():\n    import torch\n")
    [violation] = leaf_violations(fake_package, modules_under(fake_package, "netslim.tracking"), {"netslim.config"})
    assert violation == "netslim.config:2 imports torch"


@pytest.mark.parametrize(
    ("code", "found"),
    [
        ("def figure():\n    import torch\n", "netslim.report:2 imports torch"),
        ("from netslim.io import load_model\n", "netslim.report:1 imports netslim.io (load_model imports torch)"),
        ("from netslim import io\n", "netslim.report:1 imports netslim.io (load, load_model imports torch)"),
        ("def table():\n    from netslim.models import x\n", "netslim.report:2 imports netslim.models (* imports"),
    ],
)
def test_the_report_importing_torch_directly_or_through_a_function_is_found(fake_package, code, found):
    (fake_package / "report.py").write_text(code)
    [violation] = torch_free_violations(fake_package, ["netslim.report"])
    assert violation.startswith(found)
