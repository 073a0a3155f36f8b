"""MLflow tracking against real stores: a real `mlflow server` (SQLite backend) on 127.0.0.1, SQLite files,
the real `netslim` CLI, a real `dvc repro`, and the MLproject file as `mlflow run` reads it."""

from __future__ import annotations

import contextlib
import csv
import importlib
import importlib.metadata
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import ROOT, tiny_params, write_fashion_mnist, write_params
from netslim import tracking
from netslim.config import config_from_dict, load_config

BIN = Path(sys.executable).parent
PIPELINE_ID = "tracked-pipeline"
REGISTERED = "netslim-resnet50-0.9"
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
    result = subprocess.run(
        [str(BIN / "netslim"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
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
    """prepare, train λ=1e-4 and λ=0, prune 90%, finetune 90% through the CLI, all tracked to one server."""
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("tracked")
    project = tiny_project(
        tmp / "project",
        train={"epochs": TRAIN_EPOCHS},
        prune={"ratios": [0.9]},
        constraints={"min_accuracy": 0.05, "max_params": 10**9},
    )
    git = ["git", "-c", "user.name=netslim test", "-c", "user.email=test@netslim.local"]
    for cmd in (["init", "-q"], ["add", "params.yaml"], ["commit", "-qm", "tiny"]):
        subprocess.run([*git, *cmd], cwd=project, check=True, capture_output=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    with mlflow_server(tmp / "mlflow") as server:
        env = child_env(server.uri, NETSLIM_PIPELINE_ID=PIPELINE_ID)
        for args in ("prepare", "train --lambda 1e-4", "train --lambda 0", "prune --ratio 0.9", "finetune --ratio 0.9"):
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


@pytest.mark.slow
def test_one_run_per_stage_with_readable_names_and_tags(tracked):
    runs = tracked.runs
    assert set(runs) == {"prepare fashion-mnist", "train λ=1e-4", "train λ=0", "prune 90%", "finetune 90%"}
    expected = {
        "prepare fashion-mnist": {"stage": "prepare"},
        "train λ=1e-4": {"stage": "train", "lambda": "1e-4"},
        "train λ=0": {"stage": "train", "lambda": "0"},
        "prune 90%": {"stage": "prune", "lambda": "1e-4", "ratio": "0.9"},
        "finetune 90%": {"stage": "finetune", "lambda": "1e-4", "ratio": "0.9"},  # λ spelled as in the others
    }
    for name, run in runs.items():
        assert run.info.status == "FINISHED", name
        tags = run.data.tags
        assert {k: tags.get(k) for k in expected[name]} == expected[name], name
        assert tags["arch"] == "resnet50" and tags["dataset"] == "fashion-mnist", name
        assert tags["git_commit"] == tracked.commit, name
        assert tags["pipeline_id"] == PIPELINE_ID, name
    train_params = runs["train λ=1e-4"].data.params  # the stage's params, flattened
    assert train_params["train.epochs"] == str(TRAIN_EPOCHS) and train_params["model.arch"] == "resnet50"
    assert runs["finetune 90%"].data.params["finetune.epochs"] == "1"


@pytest.mark.slow
def test_every_per_epoch_metric_has_one_point_per_epoch(tracked):
    from mlflow import MlflowClient

    client = MlflowClient(tracked.uri)
    histories = {
        "train λ=1e-4": tracked.project / "reports/train/1e-4/history.csv",
        "train λ=0": tracked.project / "reports/train/0/history.csv",
        "finetune 90%": tracked.project / "reports/finetune/0.9/history.csv",
    }
    for name, path in histories.items():
        history = read_csv(path)
        assert len(history) == (1 if name.startswith("finetune") else TRAIN_EPOCHS)
        keys = [k for k in history[0] if k != "epoch"]
        assert {"train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss", "lr", "sparsity"} <= {*keys}
        for key in keys:
            points = client.get_metric_history(tracked.runs[name].info.run_id, key)
            assert [p.step for p in points] == [int(row["epoch"]) for row in history], (name, key)
            assert [p.value for p in points] == pytest.approx([float(row[key]) for row in history]), (name, key)


@pytest.mark.slow
def test_gamma_histograms_and_cfg_are_logged(tracked, tracking_uri_env, tmp_path):
    import mlflow

    from netslim.io import load_checkpoint

    train = tracked.runs["train λ=1e-4"].info.run_id
    figures = mlflow.artifacts.list_artifacts(run_id=train, artifact_path="gamma_hist", tracking_uri=tracked.uri)
    assert sorted(Path(f.path).name for f in figures) == [f"epoch_{e:03d}.png" for e in range(1, TRAIN_EPOCHS + 1)]
    png = mlflow.artifacts.download_artifacts(
        run_id=train, artifact_path=figures[-1].path, dst_path=str(tmp_path), tracking_uri=tracked.uri
    )
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    values = mlflow.artifacts.load_dict(f"runs:/{train}/gamma_values/epoch_{TRAIN_EPOCHS:03d}.json")
    gammas = read_csv(tracked.project / "reports/train/1e-4/gammas.csv")
    assert values["epoch"] == TRAIN_EPOCHS and len(values["gammas"]) == len(gammas) > 0

    prune = tracked.runs["prune 90%"].info.run_id
    logged = mlflow.artifacts.load_dict(f"runs:/{prune}/cfg.json")
    assert logged["cfg"] == load_checkpoint(tracked.project / "models/pruned/0.9.pt")["cfg"]
    metrics = tracked.runs["prune 90%"].data.metrics
    assert {"params", "macs", "flops", "throughput_b1", "test_acc_before_finetune"} <= set(metrics)


@pytest.mark.slow
@pytest.mark.parametrize(("run_name", "checkpoint"), [("prune 90%", "pruned"), ("finetune 90%", "finetuned")])
def test_logged_model_gives_the_checkpoints_outputs(tracked, tracking_uri_env, run_name, checkpoint):
    import mlflow

    from netslim.data import load_prepared, normalize
    from netslim.models import load_model

    [output] = tracked.runs[run_name].outputs.model_outputs  # the model logged by this run
    logged = mlflow.pytorch.load_model(f"models:/{output.model_id}")
    reference = load_model(tracked.project / f"models/{checkpoint}/0.9.pt").eval()
    data = load_prepared(tracked.project / "data/prepared")
    images = normalize(data.test.images[:5], data.mean, data.std).contiguous()  # not the example's batch of 2
    with torch.inference_mode():
        expected = reference(images)
        got = logged(images)
    assert got.shape == expected.shape == (5, data.num_classes)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_champion_alias_points_at_a_feasible_finetuned_version(tracked, tracking_uri_env):
    from mlflow import MlflowClient

    client = MlflowClient(tracked.uri)
    champion = client.get_model_version_by_alias(REGISTERED, "champion")
    metrics = json.loads((tracked.project / "reports/finetune/0.9/metrics.json").read_text())
    assert champion.run_id == tracked.runs["finetune 90%"].info.run_id
    assert champion.tags["meets_constraints"] == "true" and metrics["meets_constraints"] is True
    assert float(champion.tags["val_acc"]) == pytest.approx(metrics["val_acc"], abs=1e-6)


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
    for written in ("models", "reports", ".netslim"):
        assert not (project / written).exists(), written


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
    with tracking.stage_run(config, "finetune", "finetune 90%", ratio="0.9") as run:  # no run is left active
        run.metrics({"test_acc": 0.5})

    client = MlflowClient(in_process_mlflow)
    experiment = client.get_experiment_by_name("failures")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert {name: r.info.status for name, r in runs.items()} == {
        "train λ=1e-4": "FAILED",
        "prune 90%": "KILLED",
        "finetune 90%": "FINISHED",
    }
    assert runs["train λ=1e-4"].data.metrics == {"train_loss": 2.5}  # what was logged before the crash stays
    assert runs["train λ=1e-4"].data.tags["stage"] == "train"


def test_champion_goes_to_the_best_feasible_version(in_process_mlflow, tiny_data):
    """Versions logged in turn: infeasible ones never hold the alias, a worse feasible one does not take it."""
    from mlflow import MlflowClient

    config = config_from_dict({"tracking": {"uri": in_process_mlflow, "experiment": "registry"}})
    client = MlflowClient(in_process_mlflow)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))
    champions = []
    for feasible, score in ((True, 0.5), (False, 0.9), (True, 0.4), (True, 0.7)):
        with tracking.stage_run(config, "finetune", "finetune 90%") as run:
            run.model(model, "model", tiny_data.test.images[:2], tiny_data.mean, tiny_data.std, "tiny", feasible, score)
        assert not run.lost, run.lost
        champions.append(str(client.get_model_version_by_alias("tiny", "champion").version))
    assert champions == ["1", "1", "1", "4"]
    tags = client.get_model_version("tiny", "2").tags
    assert (tags["meets_constraints"], tags["val_acc"]) == ("false", "0.900000")


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
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            experiment = client.get_experiment_by_name("netslim")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and client.get_metric_history(runs[0].info.run_id, "train_loss"):
                break
            time.sleep(0.2)
        assert process.poll() is None, "training ended before its first epoch reached the server"
        server.kill()
        killed = time.monotonic()
        # MLflow's own defaults (7 retries with backoff, 120 s timeouts) would take minutes per call here.
        returncode = process.wait(timeout=240)
    stderr = (tmp_path / "stderr").read_text()
    assert returncode == 0, stderr[-3000:]
    history = read_csv(project / "reports/train/1e-4/history.csv")
    assert [int(row["epoch"]) for row in history] == list(range(1, epochs + 1))
    metrics = json.loads((project / "reports/train/1e-4/metrics.json").read_text())
    assert {"best_val_acc", "test_acc", "sparsity", "params"} <= set(metrics)
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
        result = subprocess.run([*dvc, "repro", *extra], cwd=tmp_path, env=env, capture_output=True, text=True)
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
    """python_env.yaml (for `mlflow run --env-manager virtualenv`) holds the installed package's dependencies."""
    from mlflow.utils.environment import _PythonEnv
    from packaging.requirements import Requirement

    def parsed(requirements: list[str]) -> set[tuple[str, str]]:
        return {(r.name, str(r.specifier)) for r in map(Requirement, requirements)}

    env = _PythonEnv.from_yaml(str(ROOT / "python_env.yaml"))
    required = [r for r in importlib.metadata.requires("netslim") if "extra ==" not in r]
    assert parsed([d for d in env.dependencies if d != "."]) == parsed(required)
    assert "." in env.dependencies  # netslim itself, for the `netslim` command of every entry point
    assert env.python == f"{sys.version_info.major}.{sys.version_info.minor}"
