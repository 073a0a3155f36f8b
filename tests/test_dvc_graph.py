"""The DVC graph is derived, not remembered: every stage's deps cover the code it runs, its params every key it reads.

And no more code than it runs: a folder or file in `deps` whose Python files the stage never imports is
reported too, since an edit there would rerun the stage for nothing.

For each stage of dvc.yaml and search/dvc.yaml, its `cmd` (`netslim <stage>`) names a CLI module
(`netslim.cli.STAGES`). From `netslim.cli` and that module the checker follows every `netslim` import
(top-level or inside a function; not one under `if TYPE_CHECKING:`, which never runs) to the import closure
of files in src/netslim; each must lie under a `deps` entry. The params keys a stage reads are found
statically in that closure:

- `config.<section>.<key>` (or `c.`, `self.config.`, `ctx.config.`) reads that key;
- a whole section passed to a function, e.g. `fit_settings(config, config.train, ...)`, reads the
  keys that function reads from its parameter (`optim.epochs`, ...); passed anywhere it cannot follow
  (`vars(...)`, `replace(...)`), or used through a method (`config.constraints.met_by`), it reads the
  whole section.

Only code that can run for the stage counts: module-level code of the closure, and every function or
method whose name that code mentions, to a fixed point (by name, so it over-approximates rather than
misses). Two files are left out of the params scan and keys that cannot change what a stage writes
are exempt, each with its reason (NOT_SCANNED and EXEMPT below).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import subprocess
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import ROOT, committed_stage_file
from netslim import cli, config
from netslim.registry import ENTRIES
from test_pipeline import DVC

PACKAGE = ROOT / "src" / "netslim"
SECTIONS = {f.name: typing.get_type_hints(config.Config)[f.name] for f in dataclasses.fields(config.Config)}
KEYS = {name: {f.name: f.name.rstrip("_") for f in dataclasses.fields(cls)} for name, cls in SECTIONS.items()}
EXEMPT = {
    "paths": "every path a stage reads or writes is already one of its deps or outs in dvc.yaml",
    "runtime": "how to run, not what to compute (RuntimeConfig)",
    "tracking": "where MLflow logs the run; no DVC output depends on it",
    "experiment.device": "which device runs the stage, not what it computes",
}
NOT_SCANNED = {
    "src/netslim/config/validation.py": "it reads every key to check it, not to compute with it",
    "src/netslim/tracking": "it writes to MLflow only (run params and tags), never to a DVC output",
}
CONFIG_NAMES = {"config", "c"}  # how the code names a Config; `x.config` counts too


@dataclass
class Stage:
    name: str
    dvc_file: str
    cli_stage: str
    deps: list[str]  # relative to the project root
    params: set[str]


@dataclass
class Gaps:
    files: dict[str, list[str]] = field(default_factory=dict)  # stage -> closure files no dep covers
    keys: dict[str, list[str]] = field(default_factory=dict)  # stage -> read keys no params entry covers
    extra: dict[str, list[str]] = field(default_factory=dict)  # stage -> code deps it never runs

    def __bool__(self) -> bool:
        return bool(self.files or self.keys or self.extra)

    def lines(self) -> list[str]:
        out = [f"{s}: deps miss {', '.join(f)}" for s, f in self.files.items()]
        out += [
            f"{s}: deps name code it never imports (a change there would rerun it): {', '.join(f)}"
            for s, f in self.extra.items()
        ]
        return out + [f"{s}: params miss {', '.join(k)}" for s, k in self.keys.items()]


# ---- dvc.yaml ---------------------------------------------------------------------------------


def stages_of(dvc_yaml: str, dvc_file: str = "dvc.yaml") -> list[Stage]:
    """The `netslim` stages of one dvc.yaml text (a foreach/matrix stage's `do` body counts once)."""
    wdir_of_file = Path(dvc_file).parent
    stages = []
    for name, body in yaml.safe_load(dvc_yaml)["stages"].items():
        body = body.get("do", body)
        words = body["cmd"].split()
        if words[0] != "netslim":
            continue
        wdir = wdir_of_file / body.get("wdir", ".")
        deps = [os.path.normpath(wdir / d) for d in body.get("deps", [])]
        params: set[str] = set()
        for entry in body.get("params", []):
            if isinstance(entry, dict):  # {params file: [keys]}
                params |= {key for keys in entry.values() for key in keys}
            else:
                params.add(entry)
        stages.append(Stage(name, dvc_file, words[1], deps, params))
    return stages


def covered_by_deps(path: str, deps: list[str]) -> bool:
    return any(path == d.rstrip("/") or path.startswith(d.rstrip("/") + "/") for d in deps)


def covered_by_params(key: str, params: set[str]) -> bool:
    section = key.split(".")[0]
    return key in params or section in params


# ---- the import closure -----------------------------------------------------------------------


def module_file(module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] != "netslim":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None


def runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of the tree but those under `if TYPE_CHECKING:`, which never run (an import there serves the
    annotations only: no stage runs that code for it)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in _identifiers(node.test):
            todo += node.orelse
        else:
            todo += ast.iter_child_nodes(node)


def imported_modules(tree: ast.AST) -> set[str]:
    """Every netslim module an AST imports, anywhere it can run, with the packages whose __init__ runs first."""
    found = set()
    for node in runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}")}
    return with_packages(found)


def with_packages(modules: set[str]) -> set[str]:
    """The modules and every package above them (importing a.b.c runs a/__init__.py and a/b/__init__.py first)."""
    with_parents = set()
    for module in modules:
        parts = module.split(".")
        with_parents |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {m for m in with_parents if module_file(m)}


# Imports made by name at run time, which no import statement shows: building a model (netslim.models) imports
# the architecture's module that the registry names.
LAZY_IMPORTS = {"netslim.models": {place.partition(":")[0] for place in ENTRIES.values()}}


def import_closure(*modules: str) -> dict[str, ast.Module]:
    """Repo-relative path -> parsed AST of every src/netslim file that importing `modules` runs."""
    seen: dict[str, ast.Module] = {}
    todo = sorted(with_packages(set(modules)))
    while todo:
        module = todo.pop()
        path = module_file(module)
        rel = path.relative_to(ROOT).as_posix()
        if rel in seen:
            continue
        seen[rel] = ast.parse(path.read_text(), filename=rel)
        todo += sorted(imported_modules(seen[rel]) | with_packages(LAZY_IMPORTS.get(module, set())))
    return seen


# ---- the params keys a closure reads ----------------------------------------------------------


def _is_config(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id in CONFIG_NAMES) or (
        isinstance(node, ast.Attribute) and node.attr == "config"
    )


def _identifiers(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
    }


def reachable_code(trees: dict[str, ast.Module]) -> list[ast.AST]:
    """Module-level code plus every function whose name reachable code mentions, to a fixed point."""
    functions: dict[str, list[ast.AST]] = {}
    code: list[ast.AST] = []
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions.setdefault(node.name, []).append(node)
        for stmt in tree.body:
            if isinstance(stmt, ast.ClassDef):
                code += [s for s in stmt.body if not isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)]
            elif not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                code.append(stmt)
    names = set().union(*(_identifiers(n) for n in code)) | {"run", "__init__", "__post_init__", "__enter__"}
    done: set[str] = set()
    while todo := (names & functions.keys()) - done:
        for name in todo:
            for fn in functions[name]:
                code.append(fn)
                names |= _identifiers(fn)
        done |= todo
    return code


def _parents(nodes: list[ast.AST]) -> dict[ast.AST, ast.AST]:
    return {child: parent for node in nodes for parent in ast.walk(node) for child in ast.iter_child_nodes(parent)}


def _keys_read_through(function: ast.FunctionDef, param: str, section: str) -> set[str] | None:
    keys = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == param:
            if node.attr not in KEYS[section]:
                return None  # a method or something else: count the whole section
            keys.add(f"{section}.{KEYS[section][node.attr]}")
    return keys


def _section_passed_to(call: ast.Call, arg: ast.AST, section: str, functions: dict[str, list]) -> set[str]:
    """The keys a callee reads from `section`, passed to it as `arg`; the whole section when not followable."""
    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", None)
    for fn in functions.get(name, []):
        params = [a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs]
        if arg in call.args and call.args.index(arg) < len(fn.args.posonlyargs + fn.args.args):
            param = params[call.args.index(arg)]
        else:
            param = next((k.arg for k in call.keywords if k.value is arg), None)
        keys = _keys_read_through(fn, param, section) if param else None
        if keys is not None:
            return keys
    return {section}


def keys_read(trees: dict[str, ast.Module]) -> set[str]:
    """`section.key` (or a whole `section`) for every params key the reachable code reads."""
    code = reachable_code({p: t for p, t in trees.items() if not covered_by_deps(p, list(NOT_SCANNED))})
    functions: dict[str, list] = {}
    for node in code:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            functions.setdefault(node.name, []).append(node)
    parents = _parents(code)
    keys: set[str] = set()
    for node in {n for c in code for n in ast.walk(c)}:
        if not (isinstance(node, ast.Attribute) and node.attr in SECTIONS and _is_config(node.value)):
            continue
        section, parent = node.attr, parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.value is node:
            keys.add(f"{section}.{KEYS[section][parent.attr]}" if parent.attr in KEYS[section] else section)
        elif isinstance(parent, ast.Call) and node in parent.args:
            keys |= _section_passed_to(parent, node, section, functions)
        elif isinstance(parent, ast.keyword):
            keys |= _section_passed_to(parents[parent], node, section, functions)
        else:
            keys.add(section)
    return keys


def exempt(key: str) -> bool:
    return key in EXEMPT or key.split(".")[0] in EXEMPT


# ---- the check --------------------------------------------------------------------------------


def code_files(dep: str) -> list[str]:
    path = ROOT / dep
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.suffix == ".py" else []
    return [f.relative_to(ROOT).as_posix() for f in files]


def check(stages: list[Stage]) -> Gaps:
    gaps = Gaps()
    for stage in stages:
        trees = import_closure("netslim.cli", cli.STAGES[stage.cli_stage][0])
        files = sorted(p for p in trees if not covered_by_deps(p, stage.deps))
        extra = sorted(f for d in stage.deps if d.startswith("src/") for f in code_files(d) if f not in trees)
        if extra:
            gaps.extra[stage.name] = extra
        keys = sorted(k for k in keys_read(trees) if not exempt(k) and not covered_by_params(k, stage.params))
        if files:
            gaps.files[stage.name] = files
        if keys:
            gaps.keys[stage.name] = keys
    return gaps


def project_stages() -> list[Stage]:
    return [
        s
        for f in ("dvc.yaml", "search/dvc.yaml", "studies/dvc.yaml")
        for s in stages_of(committed_stage_file(f).read_text(), f)
    ]


# ---- tests ------------------------------------------------------------------------------------


def test_every_stage_depends_on_the_code_it_runs_and_the_params_it_reads() -> None:
    gaps = check(project_stages())
    assert not gaps, "dvc.yaml does not cover what its stages run and read:\n" + "\n".join(gaps.lines())


def test_every_netslim_stage_is_checked() -> None:
    checked = {s.cli_stage for s in project_stages()}
    assert {"prepare", "train", "prune", "finetune", "report", "search"} <= checked


def test_the_check_finds_the_gaps_of_the_dvc_yaml_before_it() -> None:
    """dvc.yaml and search/dvc.yaml as of commit 07e5df9 (copied under tests/data): each known gap is reported."""
    old = stages_of((ROOT / "tests/data/dvc-07e5df9.yaml").read_text()) + stages_of(
        (ROOT / "tests/data/search-dvc-07e5df9.yaml").read_text(), "search/dvc.yaml"
    )
    gaps = check(old)
    assert "src/netslim/data/augment.py" in gaps.files["train"]  # the trainer runs the batch augmentation
    for stage in ("prune", "finetune"):
        assert {"src/netslim/models/__init__.py", "src/netslim/measure.py"} <= set(gaps.files[stage])
        assert f"src/netslim/stages/{stage}.py" in gaps.files[stage]
    assert "train.sparsity_threshold" in gaps.keys["finetune"]  # fit_settings reads it for the history
    assert "src/netslim/steps/__init__.py" in gaps.files["search"]  # fit_settings, once in stages/common.py


def test_a_section_passed_to_a_function_reads_only_the_keys_it_uses() -> None:
    tree = ast.parse(
        "def fit_settings(config, optim):\n    return optim.epochs, optim.lr, config.train.sparsity_threshold\n"
        "def run(args, config):\n    fit_settings(config, config.finetune)\n    vars(config.prune)\n"
        "    config.constraints.met_by(1, 2)\n"
    )
    assert keys_read({"x.py": tree}) == {
        "finetune.epochs",
        "finetune.lr",
        "train.sparsity_threshold",
        "prune",
        "constraints",
    }


def test_code_no_stage_function_mentions_is_not_counted() -> None:
    tree = ast.parse("def run(args, config):\n    return config.model.arch\ndef unused(config):\n    config.train.lr\n")
    assert keys_read({"x.py": tree}) == {"model.arch"}


@pytest.mark.parametrize("dvc_file", ["dvc.yaml", "search/dvc.yaml", "studies/dvc.yaml"])
def test_every_code_dep_exists(dvc_file: str) -> None:
    for stage in stages_of(committed_stage_file(dvc_file).read_text(), dvc_file):
        missing = [d for d in stage.deps if d.startswith("src/") and not (ROOT / d).exists()]
        assert not missing, f"{stage.name}: {missing}"


@pytest.mark.slow
def test_dvc_plots_show_renders_the_report_figures(tmp_path) -> None:
    """The real `dvc plots show` of the real dvc.yaml lists every PNG the report stage writes as an image."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path)
    figures = tmp_path / "reports" / "figures"
    figures.mkdir(parents=True)
    for name in ("finetune_accuracy.png", "channels_per_layer.png"):
        Image.new("RGB", (4, 4)).save(figures / name)
    for cmd in (["git", "init", "-q"], [DVC, "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    shown = subprocess.run([DVC, "plots", "show", "--json"], cwd=tmp_path, capture_output=True, text=True)
    data = json.loads(shown.stdout)["data"]  # the stages' CSV plots are missing here, so the exit code is 1
    for name in ("finetune_accuracy.png", "channels_per_layer.png"):
        assert [r["type"] for r in data[f"reports/figures/{name}"]] == ["image"]


def test_python_bytecode_in_a_code_folder_is_not_a_dependency_change() -> None:
    """Python writes __pycache__/ into src/netslim/models (a folder dep) on import: DVC must not see a change."""
    cache = "src/netslim/models/__pycache__/resnet.cpython-311.pyc"
    checked = subprocess.run(
        [DVC, "check-ignore", cache, "src/netslim/models/resnet.py"], cwd=ROOT, capture_output=True, text=True
    )
    assert checked.stdout.split() == [cache], checked.stdout + checked.stderr
