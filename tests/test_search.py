"""The Optuna search on real storages: a tiny study on SQLite (outputs, cache, MLflow runs, continuation),
the choice of the best feasible trial, a diverging λ, bad input, the DVC stage outside the root pipeline,
a killed worker, and two workers sharing one study on a real PostgreSQL server."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import pwd
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from conftest import (
    ROOT,
    committed_params,
    committed_stage_file,
    run_process,
    seed_params,
    tiny_params,
    write_fashion_mnist,
    write_params,
)
from netslim.cli import main
from netslim.config import load_config, read_yaml
from netslim.search.choice import LOST_WORKER, exp_run_command, select_best, summarize, trial_row
from netslim.search.figures import FIGURES, figures
from netslim.search.objective import lambda_grid
from netslim.search.study import LAMBDA_PARAM, LR_PARAM, PARAMS_ATTR, trial_budget
from netslim.vocabulary import FINETUNED, NUM_PARAMS, SPARSE, VAL_ACC, curve

BIN = Path(sys.executable).parent
ONE_LAMBDA = {"lambda_min": 1e-4, "lambda_max": 1.5e-4, "lambda_steps_per_decade": 1}  # a grid of one λ: 1e-4
EASY = {"min_accuracy": 0.05, "max_params": 10**9}  # every tiny trial is feasible


@pytest.fixture
def fmnist_dir(tmp_path: Path) -> Path:
    """Smaller than conftest's: a study trains several models, and each epoch here is 4 steps."""
    return write_fashion_mnist(tmp_path / "fmnist", n_train=160, n_test=48)


def project(root: Path, fmnist: Path, **sections) -> Path:
    """A project folder with a tiny params.yaml (search sections merged in) and its prepared data."""
    root.mkdir(parents=True, exist_ok=True)
    params = tiny_params(root, fmnist, data={"val_size": 32}, **sections)
    write_params(root / "params.yaml", params)
    cwd = Path.cwd()
    os.chdir(root)
    try:
        assert main(["prepare"]) == 0
    finally:
        os.chdir(cwd)
    return root


def study_of(root: Path, name: str = "netslim") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'reports/search/study.db'}")


def rows_of(root: Path) -> list[dict[str, str]]:
    with open(root / "reports/search/trials.csv") as f:
        return list(csv.DictReader(f))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env() -> dict[str, str]:
    return os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MPLBACKEND": "Agg"}


# ---- a tiny study on SQLite ---------------------------------------------------------------------


def test_tiny_study_writes_outputs_reuses_the_cache_logs_nested_runs_and_continues(
    tmp_path, fmnist_dir, monkeypatch, capsys
):
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    root = project(
        tmp_path / "p",
        fmnist_dir,
        search=ONE_LAMBDA,
        constraints=EASY,
        tracking={"enabled": True, "uri": mlflow_uri, "log_models": False, "register_models": False},
    )
    monkeypatch.chdir(root)
    assert main(["search"]) == 0
    printed = capsys.readouterr().out

    out = root / "reports/search"
    for name in ("best.json", "trials.csv", *FIGURES):
        assert (out / name).stat().st_size > 0, name
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = json.loads((out / "best.json").read_text())
    study = study_of(root)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(study.trials) == 2 and len(complete) == 2
    assert study.metric_names == ["val_acc"]  # what optuna-dashboard labels the objective with
    assert best["feasible"] is True and best["status"] == "best feasible trial"
    assert best["val_acc"] == max(t.value for t in complete)
    assert best["trial"] == max(complete, key=lambda t: (t.value, -t.number)).number
    assert 0 <= best["test_acc"] <= 1 and best["lambda"] == "1e-4" and best[NUM_PARAMS] > 0 and best["macs"] > 0
    assert best["command"] in printed and best["command"].startswith("dvc exp run -S ")

    # Every trial carries both constraints; the second one loaded λ=1e-4 from the cache.
    assert all(set(t.constraints) == {"accuracy", "params"} for t in study.trials)
    rows = rows_of(root)
    assert [r["sparse_cached"] for r in rows] == ["False", "True"]
    assert (out / "cache/1e-4.pt").is_file()
    assert "test_acc" not in rows[0]  # the search looks at validation accuracy only

    # MLflow: one parent run for the study, one nested run per trial with curves and constraint values.
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("netslim").experiment_id])
    parents = [r for r in runs if r.data.tags.get("stage") == "search"]
    children = [r for r in runs if r.data.tags.get("stage") == "search-trial"]
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    for child in children:
        tuned = curve(VAL_ACC, FINETUNED)
        assert {"constraint_accuracy", "constraint_params", VAL_ACC, tuned} <= set(child.data.metrics)
        assert not any("test" in key for key in child.data.metrics)
        assert len(client.get_metric_history(child.info.run_id, tuned)) == 1  # one fine-tune epoch
    assert curve(VAL_ACC, SPARSE) in next(c for c in children if c.data.tags["trial"] == "0").data.metrics

    # Running again continues the same study: nothing new at n_trials, one more trial at --n-trials 3.
    started = {t.number: t.datetime_start for t in study.trials}
    assert main(["search"]) == 0
    assert len(study_of(root).trials) == 2
    assert main(["search", "--n-trials", "3"]) == 0
    trials = study_of(root).trials
    assert [t.number for t in trials] == [0, 1, 2]
    assert {t.number: t.datetime_start for t in trials[:2]} == started
    assert len(rows_of(root)) == 3 and rows_of(root)[2]["sparse_cached"] == "True"

    # Settings that change what a trial measures refuse to join the old study.
    capsys.readouterr()
    assert main(["search", "--n-trials", "4", "--set", "search.train_epochs=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "search.train_epochs: 2" in err and "--study-name" in err
    assert len(study_of(root).trials) == 3


PROFILES = sorted((ROOT / "profiles").glob("*.yaml"))


@pytest.mark.parametrize("profile", [None, *PROFILES], ids=["params.yaml", *(p.name for p in PROFILES)])
def test_the_search_draws_lambda_around_the_pipelines_own(profile: Path | None) -> None:
    """A search over λ far from the pipeline's own trains models that never get sparse (the demo drew 3.2e-6)."""
    overrides = read_yaml(profile.read_text()) if profile else None
    config = load_config(ROOT / "params.yaml", overrides)
    low, high, _ = lambda_grid(config)
    for lam in (float(label) for label in config.train.lambdas if float(label) > 0):
        assert 10**low <= lam <= 10**high, f"{lam:g} outside the search's λ grid {10**low:g}…{10**high:g}"


def _trial(value, accuracy, params, state=TrialState.COMPLETE, lam="1e-4", lr=1e-3, **attrs):
    return create_trial(
        state=state,
        value=value,
        params={LAMBDA_PARAM: -4.0, LR_PARAM: lr},
        distributions={
            LAMBDA_PARAM: FloatDistribution(-6, -3, step=0.25),
            LR_PARAM: FloatDistribution(1e-4, 1e-2, log=True),
        },
        user_attrs={"lambda": lam, PARAMS_ATTR: 1000, "test_acc": 0.5} | attrs,
        constraints={"accuracy": accuracy, "params": params},
    )


def _legend_and_points(ax) -> dict[str, list[float]]:
    """x values of each scatter on `ax`, by legend label (Optuna leaves the gray infeasible points unlabelled)."""
    return {c.get_label(): [float(x) for x, _ in c.get_offsets()] for c in ax.collections if len(c.get_offsets())}


def test_budget_best_choice_and_plots_come_from_optunas_own_api(tmp_path):
    """On SQLite: Optuna's MaxTrialsCallback counts the trials, Optuna's constrained best_trial is chosen (never the
    infeasible trial with higher accuracy), and Optuna's matplotlib plots draw the history and importances."""
    config = load_config(seed_params(tmp_path))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize", study_name="s")
    study.add_trial(_trial(0.99, accuracy=-0.09, params=0.5))  # best accuracy, 50% over the parameter budget
    study.add_trial(_trial(0.97, accuracy=-0.07, params=0.01))  # just over the budget
    study.add_trial(_trial(0.93, accuracy=-0.03, params=-0.2, lr=3e-3))  # feasible
    study.add_trial(_trial(0.95, accuracy=-0.05, params=-0.1, lr=2e-4))  # feasible, the best of them
    study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={1: 0.999}))
    study.add_trial(create_trial(state=TrialState.FAIL))

    best, feasible = select_best(study)
    assert (best.number, feasible) == (3, True) and best.number == study.best_trial.number
    rows = [trial_row(t) for t in study.trials]
    assert [r["feasible"] for r in rows] == [False, False, True, True, "", ""]
    assert rows[4]["val_acc"] == 0.999 and rows[5]["reason"] == LOST_WORKER
    # a trial's parameter count, stored under the study's older attribute name, is the vocabulary's num_params
    summary = summarize(study, config, "sqlite:///s.db")
    assert rows[3][NUM_PARAMS] == summary[NUM_PARAMS] == 1000 and "params" not in rows[3] | summary

    made = figures(study, rows, summary, config)
    assert list(made) == list(FIGURES)
    history = made["history.png"].axes[0]
    assert history.get_title() == "Optimization History Plot"  # Optuna's
    points = _legend_and_points(history)
    assert points["validation accuracy"] == [2.0, 3.0]  # feasible; the infeasible 0 and 1 are drawn apart, in gray
    assert sorted(x for label, xs in points.items() if label != "validation accuracy" for x in xs) == [0.0, 1.0]
    best_so_far = next(line for line in history.lines if line.get_label() == "Best Value")
    assert list(best_so_far.get_ydata())[-1] == 0.95  # the best feasible value, not 0.99
    importances = made["importances.png"].axes[0]
    assert importances.get_title(loc="left") == "Hyperparameter Importances"
    assert {t.get_text() for t in importances.get_yticklabels()} == {LAMBDA_PARAM, LR_PARAM}

    # The budget: 6 finished trials and one running on another worker count as 7, so a budget of 8 runs one more.
    study.ask()  # another worker's trial, still running
    budget = trial_budget(8)
    assert isinstance(budget, optuna.study.MaxTrialsCallback)
    study.optimize(lambda t: t.suggest_float(LR_PARAM, 1e-4, 1e-2, log=True), n_trials=10, callbacks=[budget])
    assert len(study.trials) == 8


def test_without_feasible_trials_the_closest_is_shown_and_said_to_be_infeasible(tmp_path):
    config = load_config(seed_params(tmp_path))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize", study_name="s")
    study.add_trial(_trial(0.99, accuracy=-0.09, params=0.5))
    study.add_trial(_trial(0.85, accuracy=0.05, params=-0.5, lam="1e-5"))  # the smallest violation

    best, feasible = select_best(study)
    assert (best.number, feasible) == (1, False)
    summary = summarize(study, config, "sqlite:///x.db")
    assert summary["feasible"] is False and summary["trial"] == 1 and summary["lambda"] == "1e-5"
    assert summary["status"].startswith("no trial meets the constraints")


def test_printed_command_sets_the_best_values_through_dvcs_own_override_parser(tmp_path):
    from dvc.utils.hydra import apply_overrides

    params = committed_params(tmp_path)
    words = shlex.split(exp_run_command("5.623413e-5", 0.0012345678, 0.9))
    assert words[:3] == ["dvc", "exp", "run"]
    apply_overrides(params, [words[i + 1] for i, w in enumerate(words) if w == "-S"])
    config = load_config(params)
    assert config.train.lambdas == ("5.623413e-5",) and config.prune.lambda_ == "5.623413e-5"
    assert config.prune.ratios == (0.9,) and config.finetune.lr == pytest.approx(0.00123457, rel=1e-6)


def test_a_diverging_lambda_is_pruned_with_its_reason_and_the_study_goes_on(tmp_path, fmnist_dir, monkeypatch):
    root = project(tmp_path / "p", fmnist_dir, search=ONE_LAMBDA | {"divergence_loss": 1e-6}, constraints=EASY)
    monkeypatch.chdir(root)
    assert main(["search"]) == 0
    trials = study_of(root).trials
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.PRUNED]
    for t in trials:
        reason = t.user_attrs["reason"]
        assert reason.startswith("sparsity training with λ=1e-4 diverged: ") and "diverged at epoch 1, loss" in reason
    assert (root / "reports/search/cache/1e-4.diverged.json").is_file()  # the second trial did not train again
    best = json.loads((root / "reports/search/best.json").read_text())
    assert best["feasible"] is False and "trial" not in best and "no trial has completed" in best["status"]
    assert [r["state"] for r in rows_of(root)] == ["PRUNED", "PRUNED"]

    # With a sane limit the same λ trains (the divergence record belongs to the old limit) and completes.
    assert main(["search", "--n-trials", "3", "--set", "search.divergence_loss=1000"]) == 0
    assert study_of(root).trials[2].state == TrialState.COMPLETE


def test_bad_input_fails_in_one_line_and_writes_nothing(tmp_path, fmnist_dir, monkeypatch, capsys):
    root = project(tmp_path / "p", fmnist_dir, search=ONE_LAMBDA)
    monkeypatch.chdir(root)
    port = free_port()  # nothing listens there
    cases = [
        (["--storage", f"postgresql://netslim:secret@127.0.0.1:{port}/netslim"], f"127.0.0.1:{port}"),
        (["--storage", "nonsense"], "search.storage: nonsense"),
        (["--n-trials", "0"], "search.n_trials: 0"),
        (["--set", "paths.prepared=missing"], "missing/meta.json: not found"),
    ]
    for args, expected in cases:
        assert main(["search", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
        assert "secret" not in err
    assert not (root / "reports").exists()

    assert main(["prepare", "--set", "data.val_size=0"]) == 0
    assert main(["search"]) == 2
    assert "data.val_size: 0" in capsys.readouterr().err
    assert not (root / "reports").exists()


# ---- real processes: DVC, a killed worker, PostgreSQL --------------------------------------------


def run(cmd: list[str], cwd: Path, **kwargs) -> str:
    result = run_process(cmd, cwd=cwd, env=worker_env(), **kwargs)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.mark.slow
def test_search_stage_runs_only_when_its_dvc_yaml_is_named(tmp_path, fmnist_dir):
    """The root pipeline (its real prepare stage) never runs the search; `dvc repro search/dvc.yaml` does."""
    repo = tmp_path / "repo"
    (repo / "search").mkdir(parents=True)
    root_stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    # Only the root's prepare stage: the other root stages are not what is being tested here.
    write_params(repo / "dvc.yaml", {"stages": {"prepare": root_stages["stages"]["prepare"]}})
    shutil.copy(committed_stage_file("search/dvc.yaml"), repo / "search/dvc.yaml")  # as `make search` does
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = tiny_params(tmp_path, fmnist_dir, data={"val_size": 32}, search=ONE_LAMBDA, constraints=EASY)
    write_params(repo / "params.yaml", params)
    dvc = str(BIN / "dvc")
    run(["git", "init", "-q"], repo)
    run([dvc, "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny project"], repo)

    assert ran_stages(run([dvc, "repro"], repo)) == {"prepare"}
    assert not (repo / "reports/search").exists()
    assert ran_stages(run([dvc, "repro", "search/dvc.yaml"], repo)) == {"search/dvc.yaml:search"}
    for name in ("best.json", "trials.csv", *FIGURES):
        assert (repo / "reports/search" / name).is_file(), name
    lock = yaml.safe_load((repo / "search/dvc.lock").read_text())
    assert lock["stages"]["search"]["params"]["params.yaml"]["search"]["n_trials"] == 2  # the root params.yaml
    assert "reports/search/study.db" in {out["path"] for out in lock["stages"]["search"]["outs"]}
    assert ran_stages(run([dvc, "repro"], repo)) == set()
    assert "didn't change" in run([dvc, "repro", "search/dvc.yaml"], repo)
    # The study is a persisted output: a forced rerun continues it (it holds its 2 trials, so none runs) instead
    # of starting over on a deleted database.
    started = [t.datetime_start for t in study_of(repo).trials]
    forced = run([dvc, "repro", "--force", "--single-item", "search/dvc.yaml"], repo)
    assert ran_stages(forced) == {"search/dvc.yaml:search"}
    assert [t.datetime_start for t in study_of(repo).trials] == started and len(rows_of(repo)) == 2


def heartbeat_times(root: Path) -> tuple:
    """The search's SQLite study's heartbeat rows (Optuna's trial_heartbeats) and the database's clock, which Optuna
    compares with them against the grace period."""
    with contextlib.closing(sqlite3.connect(root / "reports/search/study.db")) as db:
        rows = db.execute("SELECT * FROM trial_heartbeats").fetchall()
        return rows, db.execute("SELECT CURRENT_TIMESTAMP").fetchone()


def running_and_beating(root: Path) -> bool:
    """Whether the search's SQLite study has a RUNNING trial with a heartbeat row.

    Read through sqlite3 in read-only mode, not optuna.load_study: opening an RDBStorage creates the tables of a
    database that has none yet, and racing the worker to do that fails one of them (seen once in CI: UNIQUE
    constraint failed: alembic_version.version_num).
    """
    path = root / "reports/search/study.db"
    if not path.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            running = db.execute("SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
            beats = db.execute("SELECT COUNT(*) FROM trial_heartbeats").fetchone()[0]
    except sqlite3.OperationalError:  # the worker has not created the tables yet, or holds the lock
        return False
    return bool(running and beats)


@pytest.mark.slow
def test_a_killed_worker_leaves_its_trial_failed_not_running(tmp_path, fmnist_dir):
    root = project(
        tmp_path / "p", fmnist_dir, search=ONE_LAMBDA | {"n_trials": 1, "heartbeat_interval": 1, "train_epochs": 50}
    )
    worker = subprocess.Popen(
        [str(BIN / "netslim"), "search"], cwd=root, env=worker_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 300

        # Killed before its first heartbeat, a trial would stay RUNNING: Optuna fails only trials whose heartbeat
        # went stale, and one without any has none to go stale (seen once under load in a full suite).
        while time.monotonic() < deadline and worker.poll() is None and not running_and_beating(root):
            time.sleep(0.5)
        assert worker.poll() is None, worker.stderr.read().decode()[-2000:]
        worker.kill()  # SIGKILL mid-trial: no chance to tell the storage anything
        worker.wait()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    states = [(t.state, t.datetime_start) for t in study_of(root).trials]
    assert states[0][0] == TrialState.RUNNING, (states, heartbeat_times(root))
    time.sleep(3)  # past the grace period of 2 heartbeats

    cwd = Path.cwd()
    os.chdir(root)
    try:
        assert main(["search"]) == 0  # the study already holds its one trial: nothing new runs
    finally:
        os.chdir(cwd)
    trials = study_of(root).trials
    assert [t.state for t in trials] == [TrialState.FAIL], (
        [(t.state, t.datetime_start) for t in trials],
        heartbeat_times(root),
    )
    assert rows_of(root)[0]["reason"] == LOST_WORKER


PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (Debian's postgresql package) and the URL of a fresh database."""
    if not PG_BINS or not (PG_BINS[-1] / "initdb").is_file():
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql (`make test` does it as root)")
    pytest.importorskip("psycopg", reason="the postgres extra is not installed: pip install -e '.[postgres]'")
    pg = PG_BINS[-1]
    as_user: list[str] = []
    # The server refuses to run as root; as root, run it as the `postgres` user the Debian package creates.
    base = Path(tempfile.mkdtemp(prefix="netslim-pg-"))  # not tmp_path: pytest's 0700 folders shut that user out
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base)
            pytest.skip("running as root and there is no 'postgres' user to run the PostgreSQL server as")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = base / "data"
    try:
        run([*as_user, str(pg / "initdb"), "-D", str(data), "-U", "netslim", "--auth=trust", "-E", "UTF8"], base)
        options = f"-h 127.0.0.1 -p {port} -k {base}"
        run(
            [*as_user, str(pg / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-o", options, "-w", "start"], base
        )
        run([*as_user, str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "netslim", "netslim"], base)
        yield f"postgresql+psycopg://netslim@127.0.0.1:{port}/netslim"
    finally:
        subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_on_postgresql_record_every_trial_once(tmp_path, fmnist_dir, postgres_url):
    n_trials = 4
    settings = {"search": ONE_LAMBDA | {"n_trials": n_trials}, "constraints": EASY}
    # Two "machines": separate project folders (own data, cache and outputs), one study in PostgreSQL.
    roots = [project(tmp_path / f"machine{i}", fmnist_dir, **settings) for i in (1, 2)]
    workers = [
        subprocess.Popen(
            [str(BIN / "netslim"), "search", "--storage", postgres_url],
            cwd=root,
            env=worker_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for root in roots
    ]
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, out + err[-3000:]

    study = optuna.load_study(study_name="netslim", storage=postgres_url)
    trials = study.trials
    # A worker starts a trial only while the study holds fewer than n_trials: the other worker may have
    # started one in the same instant, so there can be one more, never a lost or doubled one.
    assert n_trials <= len(trials) <= n_trials + 1
    assert [t.number for t in trials] == list(range(len(trials)))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in trials)
    ran = [{int(line.split()[1]) for line in out.splitlines() if line.startswith("trial ")} for out, _ in outputs]
    assert ran[0].isdisjoint(ran[1]) and ran[0] | ran[1] == {t.number for t in trials}
    assert ran[0] and ran[1], "both workers should have run trials"
    for root in roots:
        assert len(rows_of(root)) == len(trials)
