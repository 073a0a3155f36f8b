"""netslim ci-report (metric and params diff against a git revision) and the pull-request workflow."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, committed_params, run_process, tiny_params, write_fashion_mnist, write_params
from netslim import cli
from netslim.ci_report import MARKER, Diff, render

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
WORKFLOW = ROOT / ".github" / "workflows" / "pr-metrics.yml"


def sh(cmd: list[str], cwd: Path) -> str:
    """Runs a command with the venv's scripts on PATH (dvc.yaml's stages call `netslim`)."""
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = run_process(cmd, cwd=cwd, env=env)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def cell_number(text: str) -> float:
    """A markdown cell back to a number: '1,234' '+0.0123' '-3.5%' 'yes'."""
    text = text.strip().strip("`")
    if text in ("yes", "no"):
        return float(text == "yes")
    return float(text.replace(",", "").replace("%", ""))


def table_rows(markdown: str, heading: str) -> dict[str, list[str]]:
    """The rows of the table under `heading`, keyed by their first cell."""
    lines = markdown.splitlines()
    start = lines.index(heading)
    rows = {}
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def close(a: float, b: float) -> bool:
    """Equal to the 4 significant digits the report prints."""
    return math.isclose(a, b, rel_tol=6e-4, abs_tol=1e-12)


def flat(obj: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


# ---- the report from dvc's diff ---------------------------------------------------------------------


def test_summary_models_become_tables_with_deltas_and_percent_only_where_sensible():
    metrics = {
        "reports/summary.json": {
            "finetuned_0.9.test_acc": {"old": 0.8, "new": 0.84, "diff": 0.04},
            "finetuned_0.9.num_params": {"old": 120000, "new": 110000, "diff": -10000},
            "finetuned_0.9.meets_constraints": {"old": 0, "new": 1, "diff": 1},
            "unpruned.test_acc": {"old": 0.9, "new": 0.9, "diff": 0},
        },
        "reports/prune/0.9/metrics.json": {"threshold": {"old": 0.0, "new": 0.02, "diff": 0.02}},
    }
    params = {"params.yaml": {"finetune.lr": {"old": 0.001, "new": 0.0005}}}
    md = render("origin/main", "0123456789abcdef", Diff(metrics, []), Diff(params, []))
    assert md.startswith(MARKER + "\n")
    finetuned = table_rows(md, "#### `reports/summary.json` · finetuned_0.9")
    assert list(finetuned) == ["metric", "test_acc", "num_params", "meets_constraints"]  # accuracy first, then size
    assert finetuned["test_acc"] == ["0.8", "0.84", "+0.04", "+5.0%"]
    assert finetuned["num_params"] == ["120,000", "110,000", "-10,000", "-8.3%"]
    assert finetuned["meets_constraints"][3] == "—"  # no % of a change from 0
    assert "unpruned" not in md  # an unchanged metric is no row and its model no table
    assert table_rows(md, "#### `reports/prune/0.9/metrics.json`")["threshold"] == ["0", "0.02", "+0.02", "—"]
    assert table_rows(md, "### Params")["finetune.lr"] == ["0.001", "0.0005"]
    assert "has no metrics to compare with" not in md


def test_nothing_changed_says_so_and_a_base_without_metrics_is_named():
    md = render("main", "abc", Diff({}, []), Diff({}, []))
    assert "No metric changed." in md and "No param changed." in md and "| metric |" not in md
    only_new = {"reports/summary.json": {"finetuned_0.9.test_acc": {"old": None, "new": 0.7}}}
    md = render("main", "abc", Diff(only_new, ["ERROR: failed to load metrics at 'main'"]), Diff({}, []))
    assert "`main` has no metrics to compare with: commit `dvc.lock`" in md
    assert table_rows(md, "#### `reports/summary.json` · finetuned_0.9")["test_acc"] == ["—", "0.7", "—", "—"]
    assert "> dvc: ERROR: failed to load metrics at 'main'" in md


@pytest.mark.parametrize(
    ("base", "expected"),
    [("origin/no-such-branch", ("'origin/no-such-branch'", "git fetch")), ("HEAD", ("not inside a DVC project",))],
    ids=["unknown-base", "no-dvc-project"],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys, base, expected):
    # a git repo without `dvc init`: dvc's own diff would print {} there, which must not read as "no change"
    committed_params(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "empty"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "report.md"
    assert cli.main(["ci-report", "--base", base, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(word in err for word in expected), err
    assert not out.exists()


# ---- the real thing: two commits, dvc repro on each -----------------------------------------------


@pytest.fixture(scope="module")
def two_commits(tmp_path_factory) -> tuple[Path, str, str]:
    """A git + DVC project on the tiny profile, reproduced and committed twice with different params.

    The second commit changes finetune.lr and prune.min_channels: a pruned model that keeps at least 4
    channels per layer is surely larger, so params and MACs change whatever the tiny training does.
    """
    tmp = tmp_path_factory.mktemp("ci-report")
    repo = tmp / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo)
    shutil.copytree(ROOT / "src" / "netslim", repo / "src" / "netslim", ignore=shutil.ignore_patterns("__pycache__"))
    fmnist = write_fashion_mnist(tmp / "fmnist", n_train=192, n_test=64)
    params = tiny_params(tmp, fmnist, train={"lambdas": ["1e-4"]}, prune={"ratios": [0.9], "min_channels": 2})
    sh(["git", "init", "-q"], repo)
    sh([DVC, "init", "-q"], repo)
    shas = []
    for lr, min_channels in ((params["finetune"]["lr"], 2), (0.05, 4)):
        params["finetune"]["lr"] = lr
        params["prune"]["min_channels"] = min_channels
        write_params(repo / "params.yaml", params)
        sh([DVC, "repro"], repo)
        sh(["git", "add", "-A"], repo)
        sh(["git", "commit", "-qm", f"finetune.lr={lr} prune.min_channels={min_channels}"], repo)
        shas.append(sh(["git", "rev-parse", "HEAD"], repo).strip())
    return repo, shas[0], shas[1]


def metrics_at(repo: Path, sha: str) -> dict[tuple[str, str], object]:
    """Every metric at a commit, read straight from git: {(file, flattened key): value}."""
    lock = subprocess.run(["git", "show", f"{sha}:dvc.lock"], cwd=repo, capture_output=True, text=True, check=True)
    files = sorted(set(re.findall(r"path: (reports/\S*(?:metrics|summary)\.json)", lock.stdout)))
    assert files, "dvc.lock names no metrics file"
    out = {}
    for path in files:
        text = subprocess.run(["git", "show", f"{sha}:{path}"], cwd=repo, capture_output=True, text=True, check=True)
        out |= {(path, key): value for key, value in flat(json.loads(text.stdout)).items()}
    return out


@pytest.mark.slow
def test_ci_report_shows_every_changed_metric_and_param_with_old_new_and_delta(two_commits):
    repo, first, second = two_commits
    out = repo / "pr-report.md"
    sh([str(BIN / "netslim"), "ci-report", "--base", first, "--out", str(out)], repo)
    md = out.read_text()
    assert md.startswith(MARKER) and first[:8] in md

    old, new = metrics_at(repo, first), metrics_at(repo, second)
    changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
    for key in ("finetuned_0.9.num_params", "finetuned_0.9.macs", "pruned_0.9.num_params"):
        assert ("reports/summary.json", key) in changed, changed
    tables: dict[str, dict[str, list[str]]] = {}
    for path, key in sorted(changed):
        model, _, metric = key.rpartition(".")
        heading = f"#### `{path}` · {model}" if model else f"#### `{path}`"
        rows = tables.setdefault(heading, table_rows(md, heading))
        assert metric in rows, f"{path} {key} changed but is not in the report:\n{md}"
        old_cell, new_cell, delta_cell, _ = rows[metric]
        a, b = float(old[path, key]), float(new[path, key])
        assert close(cell_number(old_cell), a) and close(cell_number(new_cell), b), (key, rows[metric], a, b)
        if isinstance(new[path, key], bool):  # a yes/no flag has no delta
            assert delta_cell == "—", (key, rows[metric])
        else:
            assert close(cell_number(delta_cell), b - a), (key, delta_cell, b - a)
    # and nothing else: the metrics that stayed the same (e.g. the sparse model's) are left out
    headings = [line for line in md.splitlines() if line.startswith("#### ")]
    assert sum(len(table_rows(md, h)) - 1 for h in headings) == len(changed), md

    params = table_rows(md, "### Params")
    assert set(params) == {"param", "finetune.lr", "prune.min_channels"}, params
    assert [cell_number(c) for c in params["finetune.lr"]] == [3e-3, 0.05]
    assert [cell_number(c) for c in params["prune.min_channels"]] == [2, 4]


# ---- the workflow -----------------------------------------------------------------------------------


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def job_steps(job: dict) -> list[dict]:
    """A job's steps, each local composite action (`uses: ./...`) replaced by its own steps."""
    steps = []
    for step in job["steps"]:
        uses = str(step.get("uses", ""))
        if uses.startswith("./"):
            action = yaml.safe_load((ROOT / uses / "action.yml").read_text())
            assert action["runs"]["using"] == "composite", uses
            steps += action["runs"]["steps"]
        else:
            steps.append(step)
    return steps


def all_steps() -> list[dict]:
    return [step for job in workflow()["jobs"].values() for step in job_steps(job)]


def run_lines(steps: list[dict] | None = None) -> list[str]:
    """Every shell line the steps (default: the whole workflow's) run, continuation lines joined, no comments."""
    scripts = [step["run"] for step in (all_steps() if steps is None else steps) if "run" in step]
    lines = [line.strip() for script in scripts for line in script.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.MULTILINE))


def triggers() -> dict:
    flow = workflow()
    on = flow.get("on", flow.get(True))  # YAML 1.1 reads the key `on` as True
    return on if isinstance(on, dict) else dict.fromkeys(on if isinstance(on, list) else [on])


def test_workflow_runs_on_pull_requests_and_may_comment():
    flow = workflow()
    assert "pull_request" in triggers()
    metrics = flow["jobs"]["metrics"]
    assert "pull_request" in metrics["if"] and metrics["permissions"]["pull-requests"] == "write"
    assert "pull-requests" not in flow["permissions"]  # only the job that comments may write
    steps = job_steps(metrics)
    checkout = next(s for s in steps if str(s.get("uses", "")).startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0  # the base branch's metrics live in its commits
    python = next(s for s in steps if str(s.get("uses", "")).startswith("actions/setup-python"))
    assert str(python["with"]["python-version"]) == "3.11"
    script = "\n".join(run_lines(steps))
    assert MARKER in script and "PATCH" in script  # one comment, edited on later pushes
    assert "dvc plots diff" in script and any("upload-artifact" in str(s.get("uses")) for s in steps)


def test_test_job_runs_the_fast_tests_on_push():
    test = workflow()["jobs"]["test"]
    assert "push" in triggers() and "push" in test["if"]
    assert "make test-fast" in run_lines(job_steps(test))


def test_workflow_caches_pip_installs_cpu_torch_and_no_postgresql():
    for name, job in workflow()["jobs"].items():
        steps = job_steps(job)
        python = next(s for s in steps if str(s.get("uses", "")).startswith("actions/setup-python"))
        assert python["with"]["cache"] == "pip" and python["with"]["cache-dependency-path"] == "pyproject.toml", name
        setup = next(s for s in steps if "make setup" in str(s.get("run")))  # the pip install, before any make demo
        assert setup["env"]["PIP_EXTRA_INDEX_URL"] == "https://download.pytorch.org/whl/cpu", name
        assert "torch.version.cuda is None" in setup["run"], name  # the CPU build really came
        lines = run_lines(steps)
        assert not any("postgres" in line or "system-deps" in line for line in lines), name
        assert lines.index(next(x for x in lines if "make setup" in x)) < lines.index(
            next(x for x in lines if x.startswith("make ") and "setup" not in x)
        ), name


def test_workflow_uses_current_major_versions_of_its_actions():
    current = {"actions/checkout": "v6", "actions/setup-python": "v6", "actions/upload-artifact": "v7"}
    used = [str(s["uses"]) for s in all_steps() if "uses" in s]
    assert {u.split("@")[0] for u in used} == set(current)
    for uses in used:
        action, version = uses.split("@")
        assert version == current[action], uses


def test_every_netslim_and_make_command_in_the_workflow_exists():
    lines = run_lines()
    netslim_calls = [line[m.start(1) :] for line in lines if (m := re.search(r"(?:^|[\s/])netslim (\S+)", line))]
    make_calls = [m.group(1) for line in lines for m in re.finditer(r"(?:^|\s)make ([\w-]+)", line)]
    assert netslim_calls and make_calls
    assert "demo" in make_calls, "the workflow sets up and runs the pipeline with the README's command"
    assert set(make_calls) <= make_targets(), set(make_calls) - make_targets()
    for call in netslim_calls:
        name, *args = call.split()
        assert name in cli.STAGES, name
        module = __import__(cli.STAGES[name][0], fromlist=["add_arguments"])
        cli.stage_parser(name, module).parse_args([a.strip('"') for a in args])  # exits 2 on an unknown option
