"""The real `dvc repro` of the real dvc.yaml, in a temporary git repository, on a tiny profile."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_process, tiny_params, write_params
from netslim.ci_report import MARKER
from netslim.config import read_yaml
from test_ci_report import cell_number, close, table_rows

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")


def run(cmd: list[str], cwd: Path) -> str:
    result = run_process(cmd, cwd=cwd)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git + DVC project holding the real dvc.yaml and sources, with tiny params, reproduced once."""
    from conftest import write_fashion_mnist

    tmp = tmp_path_factory.mktemp("pipeline")
    repo = tmp / "repo"
    repo.mkdir()
    fmnist = write_fashion_mnist(tmp / "fmnist")
    shutil.copy(ROOT / "dvc.yaml", repo)
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = tiny_params(tmp, fmnist, prune={"ratios": [0.5, 0.9]})
    write_params(repo / "params.yaml", params)
    run(["git", "init", "-q"], repo)
    run([DVC, "init", "-q"], repo)
    run([DVC, "remote", "add", "-d", "local", str(tmp / "remote")], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny project"], repo)
    first = run([DVC, "repro"], repo)
    assert (
        ran_stages(first)
        == {"prepare", "train@0", "train@1", "prune@0", "prune@1", "finetune@0", "finetune@1", "export", "report"}
        or len(ran_stages(first)) == 9
    ), first
    return repo


def test_every_declared_output_exists_and_metrics_are_in_range(project):
    for path in [
        "data/prepared/train.pt",
        "models/sparse/1e-4/best.pt",
        "models/sparse/0/last.pt",
        "models/pruned/0.5.pt",
        "models/pruned/0.9.pt",
        "models/finetuned/0.9.pt",
        "reports/train/1e-4/history.csv",
        "reports/prune/0.9/channels.csv",
        "reports/finetune/0.9/history.csv",
        "models/exported/finetuned_0.9.onnx",
        "reports/export/metrics.json",
        "reports/report.md",
        "reports/summary.csv",
    ]:
        assert (project / path).is_file(), path
    for metrics in project.glob("reports/*/*/metrics.json"):
        for key, value in json.loads(metrics.read_text()).items():
            assert isinstance(value, int | float), (metrics, key)
            if key.endswith("acc") or "_acc_" in key:
                assert 0 <= value <= 1, (metrics, key, value)
            if key.startswith(("num_params", "macs", "flops")) and "ratio" not in key:
                assert value > 0, (metrics, key, value)
    pruned = json.loads((project / "reports/prune/0.9/metrics.json").read_text())
    assert pruned["num_params"] < pruned["num_params_unpruned"] and pruned["macs"] < pruned["macs_unpruned"]


def test_metrics_show_lists_accuracy_params_and_macs(project):
    shown = json.loads(run([DVC, "metrics", "show", "--json"], project))
    flat = json.dumps(shown)
    for key in ("test_acc", "num_params", "macs"):
        assert f'"{key}"' in flat


def test_a_second_repro_runs_no_stage(project):
    assert ran_stages(run([DVC, "repro"], project)) == set()


def commit_all(repo: Path, message: str) -> str:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message], repo)
    return run(["git", "rev-parse", "HEAD"], repo).strip()


@pytest.fixture(scope="module")
def finetune_lr_changed(project) -> tuple[str, str, set[str]]:
    """The reproduced project committed, then finetune.lr changed, reproduced and committed again, as a pull
    request would: (first commit, second commit, the stages the second `dvc repro` ran)."""
    first = commit_all(project, "reproduced")
    params = read_yaml((project / "params.yaml").read_text())  # as DVC reads it: PyYAML would unquote 1e-06
    params["finetune"]["lr"] = 1e-3
    write_params(project / "params.yaml", params)
    stages = ran_stages(run([DVC, "repro"], project))
    return first, commit_all(project, "finetune.lr=1e-3"), stages


def test_changing_a_finetune_key_reruns_only_finetune_export_and_report(finetune_lr_changed):
    *_, stages = finetune_lr_changed
    assert stages and all(s.startswith("finetune") or s in ("export", "report") for s in stages), stages
    assert "report" in stages


def metrics_at(repo: Path, sha: str) -> dict[tuple[str, str], object]:
    """Every metric at a commit, read straight from git: {(file, flattened key): value}."""
    lock = run(["git", "show", f"{sha}:dvc.lock"], repo)
    files = sorted(set(re.findall(r"path: (reports/\S*(?:metrics|summary)\.json)", lock)))
    assert files, "dvc.lock names no metrics file"
    out = {}
    for path in files:
        text = run(["git", "show", f"{sha}:{path}"], repo)
        out |= {(path, key): value for key, value in flat(json.loads(text)).items()}
    return out


def flat(obj: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_ci_report_shows_every_changed_metric_and_param_with_old_new_and_delta(project, finetune_lr_changed):
    first, second, _ = finetune_lr_changed
    out = project / "pr-report.md"
    run([str(BIN / "netslim"), "ci-report", "--base", first, "--out", str(out)], project)
    md = out.read_text()
    assert md.startswith(MARKER) and first[:8] in md

    old, new = metrics_at(project, first), metrics_at(project, second)
    changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
    # the export's measured speeds differ on every run; what came before fine-tuning did not run again
    assert any(path == "reports/export/metrics.json" for path, _ in changed), changed
    assert not any(path.startswith(("reports/train/", "reports/prune/")) for path, _ in changed), changed
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
    # and nothing else: the metrics that stayed the same (e.g. the sparse models') are left out
    headings = [line for line in md.splitlines() if line.startswith("#### ")]
    assert sum(len(table_rows(md, h)) - 1 for h in headings) == len(changed), md

    params = table_rows(md, "### Params")
    assert set(params) == {"param", "finetune.lr"}, params
    assert [cell_number(c) for c in params["finetune.lr"]] == [3e-3, 1e-3]


def test_push_then_pull_restores_identical_checkpoints(project):
    checkpoints = sorted(project.glob("models/**/*.pt"))
    before = {p: sha(p) for p in checkpoints}
    run([DVC, "push"], project)
    shutil.rmtree(project / ".dvc" / "cache")
    for path in checkpoints:  # not the whole folder: DVC's .gitignore files there keep the outputs out of git
        path.unlink()
    run([DVC, "pull"], project)
    assert {p: sha(p) for p in checkpoints} == before


def test_the_demo_reproduces_params_yaml_as_a_named_experiment_and_leaves_dvc_status_clean(project):
    """`make demo` = `python -m netslim.demo`: params.yaml as committed, as the experiment demo-<time>."""
    commit_all(project, "reproduced, before the demo")
    before = (project / "params.yaml").read_bytes()

    output = run([sys.executable, "-m", "netslim.demo"], project)

    assert (project / "params.yaml").read_bytes() == before
    assert ran_stages(output) == set(), "the committed dvc.lock is this params.yaml's: nothing to rerun"
    names = run([DVC, "exp", "list", "--name-only"], project).split()
    assert any(re.fullmatch(r"demo-\d{8}-\d{6}", name) for name in names), names
    assert "Data and pipelines are up to date." in run([DVC, "status"], project)
    assert run(["git", "diff", "--cached", "--name-only"], project).strip() == ""


def test_a_profile_runs_as_its_own_named_experiment_and_only_what_it_changes_reruns(project):
    """`make seed` = the same with --profile: `dvc exp run -S` for every key, and DVC's workspace afterwards."""
    (project / "profiles").mkdir(exist_ok=True)
    (project / "profiles" / "tiny.yaml").write_text("export.repeats: 2  # only the export and the report rerun\n")
    commit_all(project, "a profile")

    output = run([sys.executable, "-m", "netslim.demo", "--profile", "profiles/tiny.yaml", "--name", "tiny"], project)

    assert ran_stages(output) == {"export", "report"}, output  # the changed stage and what follows it
    assert any(name.startswith("tiny-") for name in run([DVC, "exp", "list", "--name-only"], project).split())
    assert read_yaml((project / "params.yaml").read_text())["export"]["repeats"] == 2  # DVC's convention
    assert "Data and pipelines are up to date." in run([DVC, "status"], project)
    run(["git", "checkout", "--", "params.yaml", "dvc.lock"], project)
    run([DVC, "checkout", "-q"], project)


def processes_in(folder: Path) -> list[str]:
    """The command lines of the processes whose working directory is `folder` (a stage DVC started runs there)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cwd").resolve() == folder.resolve():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:  # gone, or not ours to read
            continue
    return found


def interrupt_demo(project: Path, signum: int) -> tuple[int, str]:
    """Start the demo as a terminal would (its own process group), signal that group once a training stage runs."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "netslim.demo", "--profile", "profiles/longer.yaml", "--name", "longer"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    for line in demo.stdout:
        lines.append(line)
        if line.startswith("Running stage 'train@"):
            time.sleep(3)  # into the stage's training
            os.killpg(demo.pid, signum)
            break
    lines.append(demo.stdout.read())
    return demo.wait(timeout=120), "".join(lines)


def test_an_interrupted_demo_leaves_nothing_staged_no_stage_running_and_the_next_demo_completes(project):
    (project / "profiles").mkdir(exist_ok=True)
    (project / "profiles" / "longer.yaml").write_text("train.epochs: 4\n")
    commit_all(project, "a longer profile")
    params = (project / "params.yaml").read_bytes()
    head = run(["git", "rev-parse", "HEAD"], project)

    for signum in (signal.SIGINT, signal.SIGTERM):
        code, output = interrupt_demo(project, signum)

        assert code == 128 + signum, output
        last = output.strip().splitlines()[-1]
        assert "interrupted" in last and "python -m netslim.demo --profile profiles/longer.yaml" in last, output
        assert processes_in(project) == [], "no stage outlives the demo"
        assert run(["git", "diff", "--cached", "--name-only"], project).strip() == "", "nothing left staged"
        assert (project / "params.yaml").read_bytes() == params
        assert run(["git", "rev-parse", "HEAD"], project) == head

    longer = [sys.executable, "-m", "netslim.demo", "--profile", "profiles/longer.yaml", "--name", "longer"]
    output = run(longer, project)
    assert {"report"} <= ran_stages(output), output
    assert "Data and pipelines are up to date." in run([DVC, "status"], project)
    run(["git", "checkout", "--", "params.yaml", "dvc.lock"], project)
    run([DVC, "checkout", "-q"], project)
