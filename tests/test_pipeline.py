"""The real `dvc repro` of the real dvc.yaml, in a temporary git repository, on a tiny profile."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_process, tiny_params, write_params

pytestmark = pytest.mark.slow
DVC = str(Path(sys.executable).with_name("dvc"))


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


def test_changing_a_finetune_key_reruns_only_finetune_export_and_report(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["finetune"]["lr"] = 1e-3
    write_params(project / "params.yaml", params)
    stages = ran_stages(run([DVC, "repro"], project))
    assert stages and all(s.startswith("finetune") or s in ("export", "report") for s in stages), stages
    assert "report" in stages


def test_push_then_pull_restores_identical_checkpoints(project):
    checkpoints = sorted(project.glob("models/**/*.pt"))
    before = {p: sha(p) for p in checkpoints}
    run([DVC, "push"], project)
    shutil.rmtree(project / ".dvc" / "cache")
    for path in checkpoints:  # not the whole folder: DVC's .gitignore files there keep the outputs out of git
        path.unlink()
    run([DVC, "pull"], project)
    assert {p: sha(p) for p in checkpoints} == before


def test_the_demo_runs_as_an_experiment_and_leaves_params_yaml_byte_identical(project):
    """`make demo` = `python -m netslim.demo`: a DVC experiment with the profile's overrides; params.yaml stays."""
    (project / "profiles").mkdir(exist_ok=True)
    profile = "export.repeats: 2  # only the export and the report rerun\n"
    (project / "profiles" / "demo.yaml").write_text(profile)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "demo profile"], project)
    before = (project / "params.yaml").read_bytes()

    output = run([sys.executable, "-m", "netslim.demo"], project)

    assert (project / "params.yaml").read_bytes() == before
    stages = ran_stages(output)
    assert stages == {"export", "report"}, stages  # the changed stage and what follows it, nothing upstream
    assert "pruned 90% + fine-tuned" in output  # the comparison table is printed
    assert run([DVC, "exp", "list", "--name-only"], project).split(), "dvc exp show lists the demo"
    # the workspace outputs are the demo's, and DVC says they were made with other params than params.yaml's
    # (dvc.yaml declares the whole export section, so DVC names the section: "modified: export")
    assert re.search(r"modified:\s+export\b", run([DVC, "status"], project))
