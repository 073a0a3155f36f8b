"""MLflow tracking against real stores: a real `mlflow server` (SQLite backend) on 127.0.0.1, SQLite files,
the real `netslim` CLI, a real `dvc repro`, and the MLproject file as `mlflow run` reads it."""

from __future__ import annotations

import contextlib
import csv
import importlib
import importlib.metadata
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from conftest import ROOT, run_process, tiny_params, write_fashion_mnist, write_params
from netslim import tracking
from netslim import vocabulary as vocab
from netslim.config import ConstraintsConfig, FinetuneConfig, config_from_dict, load_config
from netslim.io import file_sha256, load_checkpoint
from netslim.stages.model_tracking import log_model, save_checkpoint
from netslim.vocabulary import HEADLINE

BIN = Path(sys.executable).parent
PIPELINE_ID = "tracked-pipeline"
REGISTERED = "netslim-resnet50-fashion-mnist"  # one registered model per architecture and dataset
TRAIN_EPOCHS = 2


# ---- helpers --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(uri: str, **extra: str) -> dict[str, str]:
    """The test's environment without any MLflow or pipeline settings, so the CLI's own defaults are what runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != tracking.PIPELINE_ENV}
    return env | {"MLFLOW_TRACKING_URI": uri, "MPLBACKEND": "Agg", "MLFLOW_DISABLE_TELEMETRY": "true"} | extra


@dataclass
class Server:
    uri: str
    process: subprocess.Popen
    log: Path

    def kill(self) -> None:
        """The whole server (uvicorn workers included) goes away at once, as in a crash."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[Server]:
    """`mlflow server` with a SQLite backend and proxied artifacts on a free port, stopped afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "server.log"
    cmd = [
        str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
        "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    env = child_env("") | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: faster start
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"mlflow server exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"mlflow server not healthy in 120 s:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{server.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            time.sleep(0.3)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


def netslim(args: list[str], cwd: Path, env: dict[str, str], expect: int = 0) -> subprocess.CompletedProcess:
    result = run_process([str(BIN / "netslim"), *args], cwd=cwd, env=env, timeout=600)
    assert result.returncode == expect, f"netslim {' '.join(args)} -> {result.returncode}:\n{result.stderr[-4000:]}"
    return result


def tiny_project(tmp: Path, **sections) -> Path:
    """A tiny params.yaml (tracking on) in `tmp`, plus its Fashion-MNIST files."""
    fmnist = write_fashion_mnist(tmp / "fmnist")
    params = tiny_params(tmp, fmnist, **({"tracking": {"enabled": True}} | sections))
    write_params(tmp / "params.yaml", params)
    return tmp


def prepare_in_process(project: Path) -> None:
    """The prepared data a train stage reads, made without a subprocess (and without a run)."""
    from netslim.data import prepare

    config = load_config(project / "params.yaml")
    prepare(config.data, config.experiment.seed, project / config.paths.raw, project / config.paths.prepared)


def wait_for_first_epoch(client, process: subprocess.Popen, timeout: float = 300):
    """The run of the training `process` once its first epoch's metrics are in the store (the process still running)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        experiment = client.get_experiment_by_name("netslim")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if runs and client.get_metric_history(runs[0].info.run_id, vocab.curve("train_loss")):
            assert process.poll() is None, "training ended before its first epoch was logged"
            return runs[0]
        time.sleep(0.2)
    raise AssertionError(f"no epoch logged in {timeout:.0f} s (exit code {process.poll()})")


def stage_script(body: str) -> str:
    """Python for `python -c SCRIPT URI NAME`: one stage run named NAME tracked to URI, running `body` inside."""
    return (
        "import sys\nfrom netslim import tracking\nfrom netslim.config import config_from_dict\n"
        "config = config_from_dict({'tracking': {'uri': sys.argv[1]}})\n"
        f"with tracking.stage_run(config, 'prepare', sys.argv[2]) as run:\n    {body}\n"
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- the tiny pipeline against a real tracking server ------------------------------------------------


@dataclass
class Tracked:
    project: Path
    uri: str
    commit: str
    runs: dict  # run name -> mlflow Run


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> Iterator[Tracked]:
    """prepare, train λ=1e-4, prune and finetune 50% and 90%, report, through the CLI in a project with the
    real dvc.yaml, all tracked to one server."""
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("tracked")
    project = tiny_project(
        tmp / "project",
        train={"epochs": TRAIN_EPOCHS, "lambdas": ["1e-4"]},
        prune={"ratios": [0.5, 0.9]},
        constraints={"min_accuracy": 0.05, "max_params": 10**9},
    )
    (project / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())  # what each stage's params come from
    git = ["git", "-c", "user.name=netslim test", "-c", "user.email=test@netslim.local"]
    for cmd in (["init", "-q"], ["add", "params.yaml"], ["commit", "-qm", "tiny"]):
        subprocess.run([*git, *cmd], cwd=project, check=True, capture_output=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    with mlflow_server(tmp / "mlflow") as server:
        env = child_env(server.uri, NETSLIM_PIPELINE_ID=PIPELINE_ID)
        stages = ["prepare", "train --lambda 1e-4"]
        stages += [f"{stage} --ratio {r}" for r in ("0.5", "0.9") for stage in ("prune", "finetune")] + ["report"]
        for args in stages:
            netslim(args.split(), project, env)
        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("netslim")
        runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
        yield Tracked(project, server.uri, commit, runs)


@pytest.fixture
def tracking_uri_env(tracked, monkeypatch):
    """Resolve runs:/ and models:/ URIs against the test server in this process."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked.uri)
    mlflow.set_tracking_uri(tracked.uri)


def dvc_params_keys(stage: str, params: dict) -> set[str]:
    """What dvc.yaml lists for a stage, each section expanded to its keys, read here without netslim."""
    entry = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    keys = set()
    for key in entry.get("do", entry)["params"]:
        section, _, name = key.partition(".")
        keys |= {f"{section}.{k}" for k in params[section]} if not name else {key}
    return keys


def stage_runs(tracked: Tracked, stage: str) -> list:
    return [run for run in tracked.runs.values() if run.data.tags["stage"] == stage]


@pytest.mark.slow
def test_one_run_per_stage_with_readable_names_and_tags(tracked):
    runs = tracked.runs
    expected = {
        "prepare fashion-mnist": {"stage": "prepare"},
        "train λ=1e-4": {"stage": "train", "lambda": "1e-4"},
        "prune 50%": {"stage": "prune", "lambda": "1e-4", "ratio": "0.5"},
        "prune 90%": {"stage": "prune", "lambda": "1e-4", "ratio": "0.9"},
        "finetune 50%": {"stage": "finetune", "lambda": "1e-4", "ratio": "0.5"},  # λ spelled as in the others
        "finetune 90%": {"stage": "finetune", "lambda": "1e-4", "ratio": "0.9"},
        "report": {"stage": "report"},
    }
    assert set(runs) == set(expected)
    for name, run in runs.items():
        assert run.info.status == "FINISHED", name
        tags = run.data.tags
        assert {k: tags.get(k) for k in expected[name]} == expected[name], name
        assert tags["arch"] == "resnet50" and tags["dataset"] == "fashion-mnist", name
        assert tags["mlflow.source.git.commit"] == tracked.commit, name  # MLflow's own tag, which its UI shows
        assert (tags["mlflow.source.name"], tags["mlflow.source.type"]) == (f"netslim {tags['stage']}", "LOCAL")
        assert tags["pipeline_id"] == PIPELINE_ID, name


# What tells each stage's runs apart, logged as params beside dvc.yaml's keys (the compare view shows them).
DISTINGUISHING = {
    "prepare fashion-mnist": {},
    "train λ=1e-4": {"lambda": "1e-4"},
    "prune 50%": {"ratio": "0.5", "lambda": "1e-4"},
    "prune 90%": {"ratio": "0.9", "lambda": "1e-4"},
    "finetune 50%": {"ratio": "0.5", "lambda": "1e-4"},
    "finetune 90%": {"ratio": "0.9", "lambda": "1e-4"},
    "report": {"lambda": "1e-4", "lambdas": "[1e-4]", "ratios": "[0.5, 0.9]"},
}


@pytest.mark.slow
def test_each_stage_logs_the_params_dvc_yaml_lists_and_what_distinguishes_its_runs_as_written(tracked):
    params = yaml.safe_load((tracked.project / "params.yaml").read_text())
    for name, run in tracked.runs.items():
        stage = run.data.tags["stage"]
        distinguishing = DISTINGUISHING[name]
        assert set(run.data.params) == dvc_params_keys(stage, params) | set(distinguishing), name
        assert {k: run.data.params[k] for k in distinguishing} == distinguishing, name
    train = tracked.runs["train λ=1e-4"].data.params
    assert train["train.epochs"] == str(TRAIN_EPOCHS) and train["model.arch"] == "resnet50"
    assert train["train.milestones"] == "[0.5, 0.75]" and train["experiment.deterministic"] == "true"
    prune = tracked.runs["prune 90%"].data.params
    assert prune["prune.lambda"] == "1e-4" and prune["prune.ratios"] == "[0.5, 0.9]"
    assert tracked.runs["finetune 90%"].data.params["finetune.epochs"] == "1"


def test_stage_params_keep_the_text_of_params_yaml_unless_the_config_differs(tmp_path):
    """`lr: 3.0e-4` is logged as 3.0e-4; a value that differs from the file (a --set override) as the config has it."""
    from netslim.config import config_from_dict

    (tmp_path / "params.yaml").write_text(
        "train:\n  lr: 3.0e-4   # Adam\n  milestones: [0.5, 0.75]\nprune:\n  lambda: '1e-4'\n  target_params: null\n"
    )
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  train:\n    foreach: [a]\n    do:\n      cmd: x\n      deps: ['${paths.prepared}']\n"
        "      params: [train.lr, train.milestones, train.epochs, prune]\n"
    )
    config = config_from_dict({"train": {"lr": 3e-4, "epochs": 7}, "prune": {"lambda": "1e-4"}})
    spec = tracking.dvc_stage("train", config, tmp_path / "dvc.yaml")
    assert spec.deps == (Path("data/prepared"),)  # ${} resolved from the config
    logged = tracking.stage_params(spec, config, tmp_path / "params.yaml")
    assert logged["train.lr"] == "3.0e-4" and logged["train.milestones"] == "[0.5, 0.75]"
    assert logged["train.epochs"] == "7"  # not in the file: the config's value
    assert logged["prune.lambda"] == "1e-4" and logged["prune.target_params"] == "null"
    import dataclasses

    from netslim.config import PruneConfig

    every_prune_key = {f"prune.{f.name.rstrip('_')}" for f in dataclasses.fields(PruneConfig)}  # a section entry
    assert set(logged) == {"train.lr", "train.milestones", "train.epochs"} | every_prune_key
    overridden = config_from_dict({"train": {"lr": 5e-4}})
    assert tracking.stage_params(spec, overridden, tmp_path / "params.yaml")["train.lr"] == "0.0005"
    assert tracking.dvc_stage("search", config, tmp_path / "dvc.yaml") is None
    assert tracking.dvc_stage("train", config, tmp_path / "missing.yaml") is None


@pytest.mark.slow
def test_lineage_tags_lead_from_finetune_to_prune_to_train_with_checkpoint_hashes(tracked):
    by_id = {run.info.run_id: run for run in tracked.runs.values()}
    project = tracked.project
    for ratio in ("0.5", "0.9"):
        finetune = tracked.runs[f"finetune {float(ratio) * 100:g}%"].data.tags
        prune = by_id[finetune["source_run_id"]]
        assert prune.info.run_name == f"prune {float(ratio) * 100:g}%" and finetune["source_stage"] == "prune"
        pruned_file = project / finetune["source_checkpoint"]
        assert finetune["source_sha256"] == file_sha256(pruned_file)
        assert prune.data.tags[f"checkpoint_sha256/{ratio}.pt"] == finetune["source_sha256"]
        train = by_id[prune.data.tags["source_run_id"]]
        assert train.info.run_name == "train λ=1e-4" and prune.data.tags["source_stage"] == "train"
        assert prune.data.tags["source_sha256"] == file_sha256(project / "models/sparse/1e-4/best.pt")
        assert train.data.tags["checkpoint_sha256/best.pt"] == prune.data.tags["source_sha256"]
        finetuned = project / f"models/finetuned/{ratio}.pt"
        assert tracked.runs[f"finetune {float(ratio) * 100:g}%"].data.tags[f"checkpoint_sha256/{ratio}.pt"] == (
            file_sha256(finetuned)
        )


@pytest.mark.slow
def test_prepared_splits_are_the_dataset_inputs_of_the_stages_that_read_or_write_them(tracked):
    prepared = tracked.project / "data/prepared"
    meta = json.loads((prepared / "meta.json").read_text())
    expected = {
        split: (meta["dataset"], file_sha256(prepared / f"{split}.pt")[:12], meta["sizes"][split])
        for split in ("train", "val", "test")
    }
    for name, run in tracked.runs.items():
        inputs = run.inputs.dataset_inputs
        if run.data.tags["stage"] == "report":
            assert inputs == [], name
            continue
        logged = {}
        for item in inputs:
            context = next(t.value for t in item.tags if t.key == "mlflow.data.context")
            profile = json.loads(item.dataset.profile)
            logged[context] = (item.dataset.name, item.dataset.digest, profile["num_images"])
        assert logged == expected, name


@pytest.mark.slow
def test_every_per_epoch_metric_has_one_point_per_epoch(tracked):
    from mlflow import MlflowClient

    client = MlflowClient(tracked.uri)
    histories = {
        "train λ=1e-4": tracked.project / "reports/train/1e-4/history.csv",
        "finetune 90%": tracked.project / "reports/finetune/0.9/history.csv",
    }
    for name, path in histories.items():
        history = read_csv(path)
        assert len(history) == (1 if name.startswith("finetune") else TRAIN_EPOCHS)
        keys = [k for k in history[0] if k != "epoch"]
        assert {"train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss", "lr", "sparsity"} <= {*keys}
        for key in keys:
            points = client.get_metric_history(tracked.runs[name].info.run_id, vocab.curve(key))
            assert [p.step for p in points] == [int(row["epoch"]) for row in history], (name, key)
            assert [p.value for p in points] == pytest.approx([float(row[key]) for row in history]), (name, key)


@pytest.mark.slow
def test_gamma_histograms_are_step_images_and_cfg_is_logged(tracked, tracking_uri_env, tmp_path):
    import mlflow

    from netslim.io import load_checkpoint

    train = tracked.runs["train λ=1e-4"].info.run_id
    images = mlflow.artifacts.list_artifacts(run_id=train, artifact_path="images", tracking_uri=tracked.uri)
    full = sorted((Path(f.path).name for f in images if f.path.endswith(".png")), key=lambda n: int(n.split("+")[2]))
    steps = [["gamma_histogram", "step", str(e)] for e in range(TRAIN_EPOCHS + 1)]  # step 0: the initial γ
    assert [n.split("+")[:3] for n in full] == steps
    png = mlflow.artifacts.download_artifacts(
        run_id=train, artifact_path=f"images/{full[-1]}", dst_path=str(tmp_path), tracking_uri=tracked.uri
    )
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    values = mlflow.artifacts.load_dict(f"runs:/{train}/gamma_values/epoch_{TRAIN_EPOCHS:03d}.json")
    gammas = read_csv(tracked.project / "reports/train/1e-4/gammas.csv")
    assert values["epoch"] == TRAIN_EPOCHS and len(values["gammas"]) == len(gammas) > 0

    prune = tracked.runs["prune 90%"].info.run_id
    logged = mlflow.artifacts.load_dict(f"runs:/{prune}/cfg.json")
    assert logged["cfg"] == load_checkpoint(tracked.project / "models/pruned/0.9.pt")["cfg"]
    metrics = tracked.runs["prune 90%"].data.metrics
    timed = vocab.per_batch(vocab.EAGER_IMAGES_PER_S, 1)
    assert {vocab.NUM_PARAMS, vocab.MACS, vocab.FLOPS, timed, vocab.TEST_ACC} <= set(metrics)
    assert "params" not in metrics


@pytest.mark.slow
@pytest.mark.parametrize(
    ("run_name", "model_name", "checkpoint"),
    [
        ("train λ=1e-4", "sparse-1e-4", "sparse/1e-4/best.pt"),
        ("prune 90%", "pruned-0_9", "pruned/0.9.pt"),
        ("finetune 90%", "finetuned-0_9", "finetuned/0.9.pt"),
    ],
)
def test_logged_model_is_named_after_what_it_is_and_gives_the_checkpoints_outputs(
    tracked, tracking_uri_env, run_name, model_name, checkpoint
):
    import mlflow

    from netslim.data import load_prepared, normalize
    from netslim.models import load_model

    [output] = tracked.runs[run_name].outputs.model_outputs  # the model logged by this run
    info = mlflow.models.get_model_info(f"models:/{output.model_id}")
    assert info.name == model_name
    assert info.signature is not None and info.saved_input_example_info is not None
    logged = mlflow.pytorch.load_model(f"models:/{output.model_id}")
    reference = load_model(tracked.project / "models" / checkpoint).eval()
    data = load_prepared(tracked.project / "data/prepared")
    images = normalize(data.test.images[:5], data.mean, data.std).contiguous()  # not the example's batch of 2
    with torch.inference_mode():
        expected = reference(images)
        got = logged(images)
    assert got.shape == expected.shape == (5, data.num_classes)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_one_registered_model_holds_every_finetuned_version_and_champion_is_the_best_feasible(
    tracked, tracking_uri_env
):
    from mlflow import MlflowClient

    client = MlflowClient(tracked.uri)
    assert [m.name for m in client.search_registered_models()] == [REGISTERED]
    versions = client.search_model_versions(f"name = '{REGISTERED}'")
    finetune_runs = {run.info.run_id: run for run in stage_runs(tracked, "finetune")}
    assert {v.run_id for v in versions} == set(finetune_runs) and len(versions) == 2
    for version in versions:
        ratio = finetune_runs[version.run_id].data.tags["ratio"]
        metrics = json.loads((tracked.project / f"reports/finetune/{ratio}/metrics.json").read_text())
        assert version.tags["ratio"] == ratio and version.tags["lambda"] == "1e-4"
        assert version.tags["meets_constraints"] == str(metrics["meets_constraints"]).lower()
        for key in ("val_acc", "test_acc", "num_params", "macs"):
            assert float(version.tags[key]) == pytest.approx(metrics[key]), key
    feasible = [v for v in versions if v.tags["meets_constraints"] == "true"]
    assert feasible  # the fixture's constraints let both through
    best = max(feasible, key=lambda v: (float(v.tags["val_acc"]), int(v.version)))
    assert client.get_model_version_by_alias(REGISTERED, "champion").version == best.version


@pytest.mark.slow
def test_report_logs_its_summary_as_a_table_figures_and_each_models_accuracy_and_size(
    tracked, tracking_uri_env, tmp_path
):
    import mlflow

    report = tracked.runs["report"]
    headline = HEADLINE  # accuracy, size and verdict: no throughput (timings of other runs)
    by_model: dict[str, dict[str, float]] = {}
    for key, value in report.data.metrics.items():
        model, name = key.rsplit("/", 1)
        by_model.setdefault(model, {})[name] = value
    assert "finetuned_0.9" in by_model and all(set(values) == set(headline) for values in by_model.values())
    shown = sorted(tuple(values[k] for k in headline) for values in by_model.values())
    summary = read_csv(tracked.project / "reports/summary.csv")
    written = sorted(
        tuple(float(row[k] == "True" if k == "meets_constraints" else row[k]) for k in headline) for row in summary
    )
    assert [v for values in shown for v in values] == pytest.approx([v for values in written for v in values])
    assert json.loads(report.data.tags["mlflow.loggedArtifacts"]) == [{"path": "summary.json", "type": "table"}]
    logged = mlflow.artifacts.load_dict(f"runs:/{report.info.run_id}/summary.json")  # what mlflow.load_table reads
    table = [dict(zip(logged["columns"], row, strict=True)) for row in logged["data"]]
    summary = read_csv(tracked.project / "reports/summary.csv")
    assert [row["model"] for row in table] == [row["model"] for row in summary]
    assert [row["num_params"] for row in table] == [float(row["num_params"]) for row in summary]
    figures = mlflow.artifacts.list_artifacts(run_id=report.info.run_id, artifact_path="figures")
    written = {p.name: p for p in (tracked.project / "reports/figures").iterdir()}
    assert {Path(f.path).name for f in figures} == set(written)
    first = sorted(written)[0]  # the run holds the very PNG the report links to, not a second rendering
    logged_png = mlflow.artifacts.download_artifacts(
        run_id=report.info.run_id, artifact_path=f"figures/{first}", dst_path=str(tmp_path), tracking_uri=tracked.uri
    )
    assert Path(logged_png).read_bytes() == written[first].read_bytes()


@pytest.mark.slow
def test_readme_tracking_section_names_only_what_is_logged(tracked):
    """Every tag, param section, metric, dataset field, image key and model name the README's list of what
    each run holds names (in backticks) is one the tiny pipeline's runs really have."""
    from mlflow import MlflowClient

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Tracking (MLflow)") :]
    held = section[section.index("What each run holds:") : section.index("```bash", section.index("What each"))]
    client = MlflowClient(tracked.uri)
    logged = {"champion"} | {run.info.run_name for run in tracked.runs.values()}
    models = set()
    for run in tracked.runs.values():
        logged |= set(run.data.tags) | {run.data.tags["stage"]} | set(run.data.metrics)
        logged |= {k.split(".")[0] for k in run.data.params}
        for item in run.inputs.dataset_inputs:
            logged |= {t.value for t in item.tags} | set(json.loads(item.dataset.profile))
        for output in run.outputs.model_outputs:
            models.add(client.get_logged_model(output.model_id).name)
        images = client.list_artifacts(run.info.run_id, "images")
        logged |= {Path(f.path).name.split("+")[0] for f in images}
    for version in client.search_model_versions(f"name = '{REGISTERED}'"):
        logged |= set(version.tags)
    named = set(re.findall(r"`([a-z][a-z0-9_]*)`", held))
    assert named - logged == set()
    assert set(re.findall(r"`((?:sparse|pruned|finetuned)-[^`]+)`", held)) <= models
    assert {"sparse-1e-4", "pruned-0_9", "finetuned-0_9"} <= models


def headline_cells(note: str) -> dict[str, str]:
    """The numbers of a description's markdown table: metric -> shown value (`model/metric` in a model table)."""
    header, _, *rows = [line.strip("|").split(" | ") for line in note.splitlines() if line.startswith("| ")] or [[]]
    header = [cell.strip() for cell in header]
    cells = [[cell.strip() for cell in row] for row in rows]
    if header[:1] == ["metric"]:
        return {row[0]: row[1] for row in cells}
    return {f"{row[0]}/{name}": cell for row in cells for name, cell in zip(header[1:], row[1:], strict=True)}


@pytest.mark.slow
def test_every_run_has_headline_metrics_and_a_description_with_them(tracked):
    for name, run in tracked.runs.items():
        note = run.data.tags["mlflow.note.content"]
        assert note.startswith(f"**{name}**"), name
        shown = {key: value for key, value in headline_cells(note).items() if value != "–"}
        assert shown, f"{name}: no headline numbers"
        for key, value in shown.items():
            assert float(value.replace(",", "")) == pytest.approx(run.data.metrics[key], rel=1e-3), (name, key)
    # the trained model's numbers under the names metrics.json gives them; its per-epoch curves under epoch/
    train = set(tracked.runs["train λ=1e-4"].data.metrics)
    assert {vocab.TEST_ACC, vocab.SPARSITY, vocab.NUM_PARAMS, vocab.curve(vocab.TEST_ACC)} <= train
    assert "finetuned_0.9/test_acc" in headline_cells(tracked.runs["report"].data.tags["mlflow.note.content"])


@pytest.mark.slow
def test_descriptions_link_each_run_to_the_runs_it_came_from(tracked):
    from mlflow import MlflowClient

    client = MlflowClient(tracked.uri)
    link = re.compile(r"\[([^]]+)\]\(#/experiments/(\d+)/runs/([0-9a-f]{32})\?workflowType=machine_learning\)")

    def linked(name: str) -> list[str]:
        found = []
        for text, experiment, run_id in link.findall(tracked.runs[name].data.tags["mlflow.note.content"]):
            source = client.get_run(run_id)  # the link resolves to an existing run of that experiment
            assert (source.info.run_name, source.info.experiment_id) == (text, experiment)
            found.append(text)
        return found

    assert linked("finetune 90%") == ["prune 90%"]
    assert linked("prune 50%") == ["train λ=1e-4"]
    assert linked("train λ=1e-4") == []
    others = [name for name in tracked.runs if name != "report"]
    assert sorted(linked("report")) == sorted(others)  # the report reads files: it links its pipeline's runs


@pytest.mark.slow
def test_ui_link_opens_the_runs_table_with_headline_columns(tracked):
    """The experiment holds a shared view state whose columns are the headline metrics and distinguishing params;
    `make ui`'s link names it, so the table opens with them."""
    from mlflow import MlflowClient

    experiment = MlflowClient(tracked.uri).get_experiment_by_name("netslim")
    view = json.loads(experiment.tags[tracking.VIEW_TAG])
    columns = {c.split(".", 1)[1].strip("`") for c in view["selectedColumns"]}
    logged = set()
    for run in tracked.runs.values():
        logged |= set(run.data.metrics) | set(run.data.params)
    assert columns <= logged and {"lambda", "ratio", vocab.TEST_ACC, vocab.NUM_PARAMS} <= columns
    url = tracking.runs_view_url("http://127.0.0.1:5000", experiment.experiment_id, headline_view=True)
    assert url.endswith(f"runs?workflowType=machine_learning&viewStateShareKey={tracking.VIEW_KEY}")


# ---- failures ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_unreachable_tracking_uri_stops_train_before_any_training(tmp_path):
    project = tiny_project(tmp_path)
    prepare_in_process(project)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = netslim(["train", "--lambda", "1e-4"], project, child_env(uri), expect=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and uri in lines[0], result.stderr
    assert "MLFLOW_TRACKING_URI" in lines[0]  # says what to fix
    for written in ("models", "reports"):
        assert not (project / written).exists(), written
    # only the stage's lock, taken before the tracking URI is tried (a second run is refused before any MLflow run)
    assert [p.name for p in (project / ".netslim").rglob("*") if p.is_file()] == ["train-1e-4.lock"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_stage_ends_its_run_killed(tmp_path, signum):
    """A `kill` (SIGTERM) or Ctrl-C (SIGINT) mid-training: the run is ended KILLED, not left RUNNING."""
    from mlflow import MlflowClient

    project = tiny_project(tmp_path / "project", train={"epochs": 50})
    prepare_in_process(project)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    client.search_experiments()  # the store exists before the stage and this test both poll it
    with open(tmp_path / "stderr", "w") as err:
        process = subprocess.Popen(
            [str(BIN / "netslim"), "train", "--lambda", "1e-4"], cwd=project, env=child_env(uri), stderr=err
        )
    try:
        run = wait_for_first_epoch(client, process)
        process.send_signal(signum)
        returncode = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert returncode != 0
    assert client.get_run(run.info.run_id).info.status == "KILLED", (tmp_path / "stderr").read_text()[-3000:]


def test_mlflow_is_imported_only_when_a_run_is_opened():
    """Importing tracking (every stage does) costs no mlflow import (1-3 s); a stage with tracking off never pays it."""
    script = (
        "import sys\nfrom netslim import tracking\nfrom netslim.config import config_from_dict\n"
        "with tracking.stage_run(config_from_dict({'tracking': {'enabled': False}}), 'prepare', 'off'):\n    pass\n"
        "print('mlflow' in sys.modules)\n"
    )
    shown = subprocess.run([sys.executable, "-c", script], env=child_env(""), capture_output=True, text=True)
    assert shown.returncode == 0 and shown.stdout.split() == ["False"], shown.stderr[-2000:]


def test_stages_starting_together_on_a_fresh_sqlite_store_each_get_their_run(tmp_path):
    """MLflow checks for its tables and then creates them: without the lock, stages that start together on a
    new store fail with "table ... already exists"."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/fresh/mlflow.db"
    script = stage_script("assert run.enabled and not run.lost")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, uri, f"run {i}"], env=child_env(""), stderr=subprocess.PIPE, text=True
        )
        for i in range(3)
    ]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], "\n".join(e[-1500:] for e in errors)
    experiment = MlflowClient(uri).get_experiment_by_name("netslim")
    runs = MlflowClient(uri).search_runs([experiment.experiment_id])
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [(f"run {i}", "FINISHED") for i in range(3)]


def test_a_moved_project_keeps_its_artifacts(tmp_path):
    """MLflow stores the absolute path of ./mlruns; after the project folder moves, the next run (or `make ui`)
    points the store at the moved folder and the old runs' artifacts load again."""
    import mlflow

    old, new = tmp_path / "old", tmp_path / "new"
    script = stage_script("run.dict({'run': sys.argv[2]}, 'x.json')") + "print(run.run_id)\n"
    old.mkdir()
    first = subprocess.run(
        [sys.executable, "-c", script, "sqlite:///mlflow.db", "before"], cwd=old, env=child_env(""), capture_output=True
    )
    assert first.returncode == 0, first.stderr.decode()[-2000:]
    old.rename(new)
    helper = subprocess.run(
        [sys.executable, "-m", "netslim.mlflow_ui", "--backend-store-uri", "sqlite:///mlflow.db"],
        cwd=new,
        env=child_env(""),
        capture_output=True,
        text=True,
    )
    assert helper.returncode == 0 and f"{old}/mlruns was moved to {new}/mlruns" in helper.stderr, helper.stderr
    run_id = first.stdout.decode().split()[-1]
    mlflow.set_tracking_uri(f"sqlite:///{new}/mlflow.db")
    try:
        assert mlflow.get_run(run_id).info.artifact_uri.startswith(f"{new}/mlruns/")
        assert mlflow.artifacts.load_dict(f"runs:/{run_id}/x.json") == {"run": "before"}
    finally:
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory) -> str:
    """One SQLite tracking store for the in-process tests (creating its tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite-store')}/mlflow.db"


@pytest.fixture
def in_process_mlflow(sqlite_store, tmp_path, monkeypatch) -> str:
    """The SQLite store for stage_run in this process; env changes are undone afterwards."""
    for key in [*tracking.HTTP_DEFAULTS, "MLFLOW_TRACKING_URI", tracking.PIPELINE_ENV, tracking.PROJECT_RUN_ENV]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    return sqlite_store


def test_a_stage_that_raises_is_marked_failed_and_the_next_run_starts(in_process_mlflow):
    from mlflow import MlflowClient

    config = config_from_dict({"tracking": {"uri": in_process_mlflow, "experiment": "failures"}})
    with pytest.raises(RuntimeError, match="out of memory"):
        with tracking.stage_run(config, "train", "train λ=1e-4", **{"lambda": "1e-4"}) as run:
            run.epoch({"epoch": 1, "train_loss": 2.5})
            raise RuntimeError("out of memory")
    with pytest.raises(KeyboardInterrupt):
        with tracking.stage_run(config, "prune", "prune 90%", ratio="0.9"):
            raise KeyboardInterrupt
    with pytest.raises(SystemExit):  # a signal handler that exits (as `make demo`'s does)
        with tracking.stage_run(config, "prune", "prune 50%", ratio="0.5"):
            sys.exit(128 + signal.SIGTERM)
    with tracking.stage_run(config, "finetune", "finetune 90%", ratio="0.9") as run:  # no run is left active
        run.metrics({"test_acc": 0.5})

    client = MlflowClient(in_process_mlflow)
    experiment = client.get_experiment_by_name("failures")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert {name: r.info.status for name, r in runs.items()} == {
        "train λ=1e-4": "FAILED",
        "prune 90%": "KILLED",
        "prune 50%": "KILLED",
        "finetune 90%": "FINISHED",
    }
    logged = runs["train λ=1e-4"].data.metrics
    assert logged == {vocab.curve("train_loss"): 2.5}  # what was logged before the crash stays
    assert runs["train λ=1e-4"].data.tags["stage"] == "train"


def test_champion_goes_to_the_best_feasible_version_across_ratios(in_process_mlflow, tiny_data):
    """Versions of both ratios logged in turn into one registered model: infeasible ones never hold the
    alias, a worse feasible one does not take it, a better one of another ratio does."""
    from mlflow import MlflowClient

    config = config_from_dict({"tracking": {"uri": in_process_mlflow, "experiment": "registry"}})
    registered = "netslim-resnet50-cifar10"  # the config's architecture and dataset
    client = MlflowClient(in_process_mlflow)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))
    champions = []
    logged = [("0.9", True, 0.5), ("0.5", False, 0.9), ("0.5", True, 0.4), ("0.5", True, 0.7)]
    for ratio, feasible, score in logged:
        with tracking.stage_run(config, "finetune", f"finetune {ratio}", ratio=ratio) as run:
            metrics = {"val_acc": score, "num_params": 12_292, "meets_constraints": feasible}
            log_model(
                run, model, tiny_data.test.images[:2], tiny_data.mean, tiny_data.std, register=True, metrics=metrics
            )
        assert not run.lost, run.lost
        champions.append(str(client.get_model_version_by_alias(registered, "champion").version))
    assert champions == ["1", "1", "1", "4"]
    tags = client.get_model_version(registered, "2").tags
    assert {k: tags[k] for k in ("meets_constraints", "val_acc", "num_params", "ratio")} == {
        "meets_constraints": "false",
        "val_acc": "0.9",
        "num_params": "12292",
        "ratio": "0.5",
    }
    [output] = client.get_run(client.get_model_version(registered, "4").run_id).outputs.model_outputs
    assert client.get_logged_model(output.model_id).name == "finetuned-0_5"


def test_only_the_stages_in_model_stages_log_their_model(in_process_mlflow, tiny_data):
    from mlflow import MlflowClient

    config = config_from_dict(
        {"tracking": {"uri": in_process_mlflow, "experiment": "model-stages", "model_stages": ["finetune"]}}
    )
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))
    for stage in ("train", "finetune"):
        with tracking.stage_run(config, stage, f"{stage} run") as run:
            log_model(run, model, tiny_data.test.images[:2], tiny_data.mean, tiny_data.std)
        assert not run.lost, run.lost
    client = MlflowClient(in_process_mlflow)
    experiment = client.get_experiment_by_name("model-stages")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert runs["train run"].outputs.model_outputs == []
    [output] = runs["finetune run"].outputs.model_outputs
    assert client.get_logged_model(output.model_id).source_run_id == runs["finetune run"].info.run_id


@pytest.mark.slow
def test_server_lost_mid_run_does_not_stop_training(tmp_path):
    """The server is killed after the first epoch's metrics arrive; the stage still finishes, quickly, and warns."""
    from mlflow import MlflowClient

    epochs = 3
    project = tiny_project(tmp_path / "project", train={"epochs": epochs})
    prepare_in_process(project)
    with mlflow_server(tmp_path / "mlflow") as server:
        client = MlflowClient(server.uri)
        with open(tmp_path / "stderr", "w") as err:
            process = subprocess.Popen(
                [str(BIN / "netslim"), "train", "--lambda", "1e-4"],
                cwd=project,
                env=child_env(server.uri),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        wait_for_first_epoch(client, process)
        server.kill()
        killed = time.monotonic()
        # MLflow's own defaults (7 retries with backoff, 120 s timeouts) would take minutes per call here.
        returncode = process.wait(timeout=240)
    stderr = (tmp_path / "stderr").read_text()
    assert returncode == 0, stderr[-3000:]
    history = read_csv(project / "reports/train/1e-4/history.csv")
    assert [int(row["epoch"]) for row in history] == list(range(1, epochs + 1))
    metrics = json.loads((project / "reports/train/1e-4/metrics.json").read_text())
    assert {vocab.VAL_ACC, vocab.TEST_ACC, vocab.SPARSITY, vocab.NUM_PARAMS} <= set(metrics)
    assert (project / "models/sparse/1e-4/best.pt").is_file()
    assert f"warning: MLflow at {server.uri} stopped answering" in stderr
    assert "log_metrics(step=" in stderr and "end_run(FINISHED)" in stderr, stderr[-3000:]
    assert time.monotonic() - killed < 240


# ---- pipeline id, MLproject ----------------------------------------------------------------------------


@pytest.mark.slow
def test_stages_of_one_dvc_repro_share_a_pipeline_id(tmp_path):
    """Two stages of one real `dvc repro` get the same id; the next repro, and a lone stage, get others."""
    probe = f"{sys.executable} -c 'from netslim.tracking import pipeline_id; print(pipeline_id())'"
    stages = {
        "a": {"cmd": f"{probe} > a.txt", "outs": ["a.txt"]},
        "b": {"cmd": f"{probe} > b.txt", "deps": ["a.txt"], "outs": ["b.txt"]},
    }
    write_params(tmp_path / "dvc.yaml", {"stages": stages})
    env = child_env("") | {"DVC_NO_ANALYTICS": "1"}
    dvc = [str(BIN / "dvc")]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, env=env, check=True)
    ids = []
    for extra in ([], ["--force"]):
        result = run_process([*dvc, "repro", *extra], cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        ids.append({(tmp_path / f"{s}.txt").read_text().strip() for s in stages})
    first, second = ids
    assert len(first) == len(second) == 1 and first != second
    assert next(iter(first)).startswith("dvc-")
    lone = subprocess.run(shlex.split(probe), env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert lone.startswith("run-")
    shared = subprocess.run(shlex.split(probe), env=env | {tracking.PIPELINE_ENV: "demo-1"}, capture_output=True)
    assert shared.stdout.decode().strip() == "demo-1"


def test_mlproject_entry_points_are_typed_and_match_the_cli():
    """What `mlflow run` would execute for each entry point parses with the netslim CLI's own options."""
    from mlflow.projects import _project_spec

    from netslim.cli import STAGES, stage_parser

    project = _project_spec.load_project(str(ROOT))
    given = {
        "train": {"lambda": "1e-4"},
        "prune": {"ratio": "0.9"},
        "finetune": {"ratio": "0.9"},
        "search": {"n_trials": "3"},
    }
    parsed = {
        "train": {"lam": "1e-4"},
        "prune": {"ratio": "0.9"},
        "finetune": {"ratio": "0.9"},
        "search": {"n_trials": 3},
    }
    types = {"lambda": "string", "ratio": "float", "n_trials": "int", "params": "path", "pipeline": "path"}
    for name in ("main", "prepare", "train", "prune", "finetune", "export", "report", "search"):
        entry = project.get_entry_point(name)
        assert entry.parameters, f"{name}: no parameters"
        assert {k: p.type for k, p in entry.parameters.items()} == {k: types[k] for k in entry.parameters}, name
        argv = shlex.split(entry.compute_command(given.get(name, {}), storage_dir=None))
        if name == "main":
            assert argv == ["dvc", "repro", "dvc.yaml"]
            continue
        assert argv[:2] == ["netslim", name]
        args = stage_parser(name, importlib.import_module(STAGES[name][0])).parse_args(argv[2:])
        assert args.params == "params.yaml"
        assert {k: getattr(args, k) for k in parsed.get(name, {})} == parsed.get(name, {}), name


def test_python_env_lists_the_package_dependencies():
    """python_env.yaml (for `mlflow run --env-manager virtualenv`) holds pyproject.toml's dependencies."""
    from mlflow.utils.environment import _PythonEnv
    from packaging.requirements import Requirement

    def parsed(requirements: list[str]) -> set[tuple[str, str]]:
        return {(r.name, str(r.specifier)) for r in map(Requirement, requirements)}

    env = _PythonEnv.from_yaml(str(ROOT / "python_env.yaml"))
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert parsed([d for d in env.dependencies if d != "."]) == parsed(required)
    assert "." in env.dependencies  # netslim itself, for the `netslim` command of every entry point
    assert env.python == f"{sys.version_info.major}.{sys.version_info.minor}"


# ---- the UI link ----------------------------------------------------------------------------------------


def test_ui_link_opens_the_runs_table_of_the_experiment(in_process_mlflow, tmp_path):
    """What `make ui` prints first: the runs view of the params' experiment in the UI's store (not the
    GenAI traces page MLflow 3 opens by default); before any run, the experiment list, and no store is made."""
    from mlflow import MlflowClient

    experiment = MlflowClient(in_process_mlflow).create_experiment("ui-link")
    write_params(tmp_path / "params.yaml", {"tracking": {"experiment": "ui-link"}})
    helper = [sys.executable, "-m", "netslim.mlflow_ui", "--port", "5123"]
    env = child_env("")
    shown = subprocess.run(
        [*helper, "--backend-store-uri", in_process_mlflow], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    url = f"http://127.0.0.1:5123/#/experiments/{experiment}/runs?workflowType=machine_learning"
    assert shown.stdout.split()[:3] == ["MLflow", "UI:", url]
    empty = subprocess.run(
        [*helper, "--backend-store-uri", f"sqlite:///{tmp_path}/none.db"], cwd=tmp_path, env=env, capture_output=True
    )
    assert empty.stdout.decode().split()[2] == "http://127.0.0.1:5123/#/experiments"
    assert not (tmp_path / "none.db").exists()


def test_make_ui_prints_the_link_for_the_store_and_port_it_serves():
    dry = subprocess.run(["make", "-n", "ui", "UI_PORT=5123"], cwd=ROOT, capture_output=True, text=True, check=True)
    lines = dry.stdout.replace("\\\n", " ").splitlines()
    [link] = [shlex.split(line) for line in lines if "-m netslim.mlflow_ui" in line]
    [serve] = [shlex.split(line) for line in lines if " ui " in f" {line} " and "mlflow" in line]
    option = lambda argv, name: argv[argv.index(name) + 1]  # noqa: E731
    for name in ("--backend-store-uri", "--host", "--port"):
        assert option(link, name) == option(serve, name), name
    assert option(serve, "--port") == "5123"
    order = [i for i, line in enumerate(lines) if "-m netslim.mlflow_ui" in line or "mlflow ui" in line]
    assert "-m netslim.mlflow_ui" in lines[order[0]]  # the link comes before the server blocks the terminal


def test_stage_run_logs_params_datasets_and_lineage_in_process(in_process_mlflow, tmp_path):
    """The same paths as the CLI stages, against the SQLite store: dvc.yaml's params, the prepared splits as
    inputs, and a checkpoint's run id leading the next run back to it."""
    from mlflow import MlflowClient

    from netslim.models import build_model

    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    prepared = tmp_path / "data/prepared"
    prepared.mkdir(parents=True)
    sizes = {"train": 3, "val": 2, "test": 1}
    for split in sizes:
        (prepared / f"{split}.pt").write_bytes(split.encode())
    meta = {"dataset": "fashion-mnist", "num_classes": 10, "sizes": sizes}
    (prepared / "meta.json").write_text(json.dumps(meta))
    config = config_from_dict({"tracking": {"uri": in_process_mlflow, "experiment": "lineage"}})
    model = build_model("resnet50", 4, width=0.0625)
    with tracking.stage_run(config, "prune", "prune 90%", ratio="0.9") as prune:
        save_checkpoint(prune, tmp_path / "pruned.pt", model, {"stage": "prune", tracking.RUN_ID_KEY: "stale"})
    with tracking.stage_run(config, "finetune", "finetune 90%", ratio="0.9") as finetune:
        pruned = tmp_path / "pruned.pt"
        finetune.source(pruned, file_sha256(pruned), load_checkpoint(pruned)["provenance"])
    assert not prune.lost and not finetune.lost, prune.lost + finetune.lost

    client = MlflowClient(in_process_mlflow)
    tags = client.get_run(finetune.run_id).data.tags
    assert (tags["source_run_id"], tags["source_stage"]) == (prune.run_id, "prune")
    checkpoint_hash = client.get_run(prune.run_id).data.tags["checkpoint_sha256/pruned.pt"]
    assert tags["source_sha256"] == checkpoint_hash == file_sha256(tmp_path / "pruned.pt")
    run = client.get_run(finetune.run_id)
    # dvc.yaml's finetune params: whole sections (every key of their config class) and single keys.
    sections = {"finetune": FinetuneConfig, "constraints": ConstraintsConfig}
    whole = {f"{name}.{f.name}" for name, cls in sections.items() for f in fields(cls)}
    single = {
        "experiment.seed",
        "experiment.deterministic",
        "data.dataset",
        "model.arch",
        "data.image_size",
        "train.sparsity_threshold",
        "prune.lambda",  # which sparse model is the distillation teacher
        "runtime.threads",  # per-process CPU threads (dvc.yaml: they change the last bits of sums)
    }
    assert set(run.data.params) == whole | single
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert {split: json.loads(d.profile)["num_images"] for split, d in inputs.items()} == sizes
    assert {d.name for d in inputs.values()} == {"fashion-mnist"}
    assert inputs["val"].digest == file_sha256(prepared / "val.pt")[:12]
