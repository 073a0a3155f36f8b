"""Optuna search over λ and the fine-tune learning rate under an accuracy and a parameter constraint.

Each trial sparsity-trains with a suggested λ, prunes at `search.ratio`, fine-tunes with a suggested lr and
returns the fine-tuned model's best **validation** accuracy (the test accuracy is kept aside and reported for
the best trial only). Constraints use Optuna's `trial.set_constraint` (feasible when every value <= 0):
accuracy `min_accuracy - val_acc` and params `(params - max_params) / max_params`.

Cost: λ lives on a log grid (`search.lambda_steps_per_decade` points per decade), so trials that share a λ
load its sparse checkpoint from `<search_reports>/cache/<λ label>.pt` instead of training it again (across
trials, workers on one machine, and restarts); a λ whose training diverged is cached as such too. A
MedianPruner stops fine-tunings whose per-epoch validation accuracy lags; a diverging loss prunes the trial
with the reason in its user attrs.

Storage: an Optuna RDB (SQLite file by default, PostgreSQL for several machines) with a heartbeat, so a killed
worker's trial turns FAIL instead of staying RUNNING. Rerunning continues the study until it holds
`n_trials` trials (finished or running on another worker): Optuna's MaxTrialsCallback counts them.

The trial's work is the pipeline's own steps (`netslim.steps`: sparsity training, pruning, fine-tuning), so a
trial computes what the stages would; this module adds only the search around them: the λ cache, Optuna's
pruner and constraints, heartbeats, and one nested MLflow run per trial.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import socket
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from netslim import tracking
from netslim.config import Config, ConfigError, lambda_label, validate
from netslim.data import PreparedData, load_prepared
from netslim.engine import TrainingDiverged, evaluate, resolve_device, set_deterministic
from netslim.io import CheckpointError, atomic_path, file_sha256, load_checkpoint, write_csv, write_json
from netslim.layout import Layout
from netslim.measure import model_summary
from netslim.models import model_from_checkpoint, save_model
from netslim.steps import RunOptions, fit_settings
from netslim.steps.finetune import finetune
from netslim.steps.prune import prune_configured
from netslim.steps.train import sparse_fingerprint, sparsity_train

LAMBDA_PARAM = "log10_lambda"  # λ = 10 ** this, on a grid of 1 / lambda_steps_per_decade
LR_PARAM = "finetune_lr"
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
CATCH = (RuntimeError, ValueError, ArithmeticError)  # a trial failing this way is recorded FAIL; the study goes on
FIGURES = ("history.png", "importances.png", "accuracy_vs_params.png")
OBJECTIVE = "validation accuracy"
METRIC = "val_acc"  # the objective's name in the study (set_metric_names)
LOST_WORKER = "its worker stopped sending heartbeats (killed or lost) and the trial was failed"
# SQLAlchemy's URL for PostgreSQL through psycopg 3 (the `postgres` extra); a bare postgresql:// picks the dialect's
# default driver, which is psycopg 3 from SQLAlchemy 2.1 on and psycopg2 before.
POSTGRES_URL = "postgresql+psycopg://user:password@host:5432/netslim"

# Params whose change makes earlier trials incomparable: a study refuses to mix them.
STUDY_SETTINGS = (
    "experiment.seed",
    "data.dataset",
    "data.val_size",
    "data.train_subset",
    "data.test_subset",
    "model.arch",
    "model.width",
    "model.bn_init",
    "train.batch_size",
    "train.lr",
    "train.weight_decay",
    "train.milestones",
    "train.lr_gamma",
    "train.schedule",
    "train.augment",
    "finetune.batch_size",
    "finetune.weight_decay",
    "finetune.milestones",
    "finetune.lr_gamma",
    "finetune.schedule",
    "finetune.augment",
    "prune.min_channels",
    "prune.bias_compensation",
    "prune.recalibration_batches",
    "constraints.min_accuracy",
    "constraints.max_params",
    "search.ratio",
    "search.train_epochs",
    "search.finetune_epochs",
)


@dataclass(frozen=True)
class Context:
    """What every trial needs, built once per worker."""

    config: Config
    data: PreparedData
    device: torch.device
    layout: Layout
    data_hash: str
    parent: tracking.Tracker


# ---- storage and study ------------------------------------------------------------------------


def default_storage(config: Config) -> str:
    return f"sqlite:///{Path(config.paths.search_reports) / 'study.db'}"


def redact(url: str) -> str:
    """The storage URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not even a URL: show it as given
        return url


def open_storage(url: str, heartbeat_interval: int, attempts: int = 3) -> optuna.storages.RDBStorage:
    """An RDB storage with a heartbeat; ConfigError naming the URL when it cannot be opened.

    Workers that start together race to create the tables of a fresh database, so that is retried.
    """
    import sqlalchemy.exc

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}  # workers on one machine wait for the lock
    else:
        engine_kwargs = {"pool_pre_ping": True}  # long trials outlive idle server connections
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=2 * heartbeat_interval,
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(1 + attempt)
        except ImportError as e:
            raise ConfigError(
                f"search.storage: {redact(url)} needs the database driver {e.name or 'for it'}, which is not "
                "installed; for PostgreSQL install the extra (pip install 'netslim[postgres]', psycopg 3), or "
                "leave search.storage null for the local SQLite file"
            ) from None
        except (sqlalchemy.exc.SQLAlchemyError, ValueError) as e:
            detail = " ".join(str(e).split())[:160]
            raise ConfigError(
                f"search.storage: {redact(url)} cannot be opened ({type(e).__name__}: {detail}); check the URL "
                f"(e.g. {POSTGRES_URL}) and that the database server accepts connections, or leave it null for "
                "the local SQLite file"
            ) from None
    raise AssertionError("unreachable")


def study_settings(config: Config) -> dict[str, Any]:
    flat = config.to_flat_dict()
    return json.loads(json.dumps({key: flat[key] for key in STUDY_SETTINGS}))


def check_settings(study: optuna.Study, config: Config, url: str) -> None:
    """Record the settings on a new study; refuse to add trials run with other settings to an old one."""
    wanted = study_settings(config)
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", wanted)
        return
    for key, value in wanted.items():
        if stored.get(key) != value:
            raise ConfigError(
                f"{key}: {value!r}, but study {study.study_name!r} in {redact(url)} ran its trials with "
                f"{stored.get(key)!r}; restore that value, pass --study-name NEW_NAME for a new study, "
                "or delete the old study"
            )


def open_study(config: Config, url: str) -> optuna.Study:
    """Create or load the study (maximize validation accuracy) and fail the trials of dead workers."""
    storage = open_storage(url, config.search.heartbeat_interval)
    study = optuna.create_study(
        storage=storage,
        study_name=config.search.study_name,
        direction="maximize",
        load_if_exists=True,
        # Unseeded: workers and restarts must not propose the same random startup trials again.
        sampler=optuna.samplers.TPESampler(constant_liar=True),
        # Fine-tune epochs are the steps; step 0 (the pruned model before fine-tuning) never prunes.
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
    )
    check_settings(study, config, url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # optuna-dashboard and Optuna's plots label the objective with this, not "Objective 0"; the same name as
        # trials.csv's column and the trial runs' MLflow metric.
        study.set_metric_names([METRIC])
        optuna.storages.fail_stale_trials(study)
    return study


def counted(study: optuna.Study) -> int:
    """Trials that count toward n_trials: finished ones and those running on some worker."""
    return len(study.get_trials(deepcopy=False, states=COUNTED))


def trial_budget(n_trials: int) -> MaxTrialsCallback:
    """Stop this worker once the study (all workers together) holds n_trials counted trials."""
    return MaxTrialsCallback(n_trials, states=COUNTED)


# ---- one trial --------------------------------------------------------------------------------


def lambda_grid(config: Config) -> tuple[float, float, float]:
    """(low, high, step) of log10 λ: a grid through log10(lambda_min), at most up to log10(lambda_max)."""
    s = config.search
    step = 1 / s.lambda_steps_per_decade
    low, high = math.log10(s.lambda_min), math.log10(s.lambda_max)
    return low, low + math.floor((high - low) / step + 1e-9) * step, step


def suggest(trial: optuna.Trial, config: Config) -> tuple[float, float]:
    """(λ, lr): λ from the log grid (so it repeats and hits the cache), lr log-uniform."""
    low, high, step = lambda_grid(config)
    lam = float(lambda_label(10 ** trial.suggest_float(LAMBDA_PARAM, low, high, step=step)))
    lr = trial.suggest_float(LR_PARAM, config.search.lr_min, config.search.lr_max, log=True)
    return lam, lr


def sparse_model(ctx: Context, lam: float, run: tracking.Tracker) -> tuple[nn.Module, bool]:
    """The sparsity-trained model of λ and whether it came from the cache; TrainingDiverged if λ diverges."""
    config, label, cache = ctx.config, lambda_label(lam), ctx.layout.search_cache
    settings = fit_settings(
        config, config.train, lam, epochs=config.search.train_epochs, divergence_loss=config.search.divergence_loss
    )
    fingerprint = sparse_fingerprint(config, settings, ctx.data_hash)
    path, diverged = cache / f"{label}.pt", cache / f"{label}.diverged.json"
    marker = _read_marker(diverged)
    if marker.get("fingerprint") == fingerprint:
        raise TrainingDiverged(marker["epoch"], marker["loss"], settings.divergence_loss)
    if path.is_file():
        try:
            checkpoint = load_checkpoint(path)
            if checkpoint.get("provenance", {}).get("fingerprint") == fingerprint:
                return model_from_checkpoint(checkpoint, path), True
        except CheckpointError as e:
            print(f"warning: training λ={label} again: {e}", file=sys.stderr)
    state_path = ctx.layout.state("search-train", label)
    try:
        result = sparsity_train(
            config,
            ctx.data,
            settings,
            ctx.device,
            ctx.data_hash,
            RunOptions(
                state_path,
                resume=True,  # a worker killed during sparsity training continues where it stopped
                on_epoch=lambda record, _m: run.metrics(_public(record, "sparse_"), step=int(record["epoch"])),
                desc=f"search train λ={label}",
            ),
        )
    except TrainingDiverged as e:
        write_json(diverged, {"fingerprint": fingerprint, "epoch": e.epoch, "loss": e.loss, "reason": str(e)})
        state_path.unlink(missing_ok=True)
        raise
    model = result.best_model()
    provenance = {
        "stage": "search-train",
        "lambda": lam,
        "fingerprint": fingerprint,
        "best_epoch": result.fit.best_epoch,
    }
    save_model(path, model, provenance)
    state_path.unlink(missing_ok=True)
    return model, False


def _read_marker(path: Path) -> dict[str, Any]:
    """The record of a diverged λ, or {} when there is none (or it is unreadable: then λ is simply trained)."""
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) and {"epoch", "loss"} <= marker.keys() else {}


def _public(record: dict[str, float], prefix: str) -> dict[str, float]:
    """A history record without its test values (the search looks at validation data only), prefixed."""
    return {f"{prefix}{k}": v for k, v in record.items() if k != "epoch" and not k.startswith("test_")}


def train_prune_finetune(ctx: Context, trial: optuna.Trial, lam: float, lr: float, run: tracking.Tracker) -> float:
    """The trial's work; returns the fine-tuned model's best validation accuracy."""
    config = ctx.config
    try:
        sparse, cached = sparse_model(ctx, lam, run)
    except TrainingDiverged as e:
        raise optuna.TrialPruned(f"sparsity training with λ={lambda_label(lam)} diverged: {e}") from None
    trial.set_user_attr("sparse_cached", cached)
    pruned = prune_configured(sparse, ctx.data, config, ctx.device, config.search.ratio)
    model = pruned.model
    summary = model_summary(model, (1, *ctx.data.image_shape))
    trial.set_user_attr("params", summary["params"])
    trial.set_user_attr("macs", summary["macs"])
    trial.set_user_attr("flops", summary["flops"])
    trial.set_user_attr("ratio_used", pruned.ratio)
    set_constraint(
        trial, run, "params", (summary["params"] - config.constraints.max_params) / config.constraints.max_params
    )
    ev = dict(device=ctx.device, batch_size=config.runtime.eval_batch_size, amp=config.runtime.amp)
    _, before = evaluate(model, ctx.data.val, ctx.data.mean, ctx.data.std, **ev)
    trial.report(before, 0)
    run.metrics({"val_acc_before_finetune": before, "params": summary["params"], "macs": summary["macs"]})
    best = {"val_acc": -1.0}

    def on_epoch(record: dict[str, float], _m: nn.Module) -> None:
        run.metrics(_public(record, "ft_"), step=int(record["epoch"]))
        best["val_acc"] = max(best["val_acc"], record["val_acc"])
        trial.report(record["val_acc"], int(record["epoch"]))
        if trial.should_prune():
            set_constraint(trial, run, "accuracy", config.constraints.min_accuracy - best["val_acc"])
            raise optuna.TrialPruned(
                f"stopped at fine-tune epoch {record['epoch']}: val acc {record['val_acc']:.4f} is below the "
                "median of earlier trials at that epoch"
            )

    settings = fit_settings(
        config,
        config.finetune,
        0.0,
        epochs=config.search.finetune_epochs,
        lr=lr,
        divergence_loss=config.search.divergence_loss,
    )
    try:
        options = RunOptions(on_epoch=on_epoch, desc=f"search trial {trial.number}")
        tuned = finetune(model, ctx.data, settings, ctx.device, {}, options)
    except TrainingDiverged as e:
        raise optuna.TrialPruned(f"fine-tuning with lr={lr:.3g} diverged: {e}") from None
    trial.set_user_attr("val_acc", tuned.best["val_acc"])
    trial.set_user_attr("test_acc", tuned.best["test_acc"])  # shown for the best trial only
    trial.set_user_attr("best_epoch", tuned.fit.best_epoch)
    set_constraint(trial, run, "accuracy", config.constraints.min_accuracy - tuned.best["val_acc"])
    return float(tuned.best["val_acc"])


def set_constraint(trial: optuna.Trial, run: tracking.Tracker, name: str, value: float) -> None:
    trial.set_constraint(name, value)
    run.metrics({f"constraint_{name}": value})


def run_trial(ctx: Context, trial: optuna.Trial) -> float:
    """One trial inside its own nested MLflow run; the reason of a pruned or failed trial lands in user attrs."""
    lam, lr = suggest(trial, ctx.config)
    label = lambda_label(lam)
    trial.set_user_attr("lambda", label)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    tags = {"study": ctx.config.search.study_name, "trial": trial.number, "lambda": label}
    pruned: optuna.TrialPruned | None = None
    with contextlib.ExitStack() as stack:
        run = trial_tracker(ctx, stack, f"trial {trial.number} λ={label} lr={lr:.3g}", tags)
        run.params({"lambda": lam, "finetune_lr": lr, "ratio": ctx.config.search.ratio, "trial": trial.number})
        try:
            value = train_prune_finetune(ctx, trial, lam, lr, run)
        except optuna.TrialPruned as e:
            # Raised again after the run has ended FINISHED: stopping early is not a failure.
            trial.set_user_attr("reason", str(e))
            run.dict({"state": "PRUNED", "reason": str(e)}, "outcome.json")
            pruned = e
        except Exception as e:
            trial.set_user_attr("reason", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
            raise
        else:
            run.metrics({"val_acc": value})
            run.dict({"state": "COMPLETE", "constraints": trial.constraints}, "outcome.json")
    if pruned is not None:
        raise pruned
    return value


def trial_tracker(ctx: Context, stack: contextlib.ExitStack, name: str, tags: dict[str, Any]) -> tracking.Tracker:
    """A nested MLflow run under the worker's study run; no tracking (and no failed trial) if MLflow is gone."""
    if not ctx.parent.enabled or ctx.parent.lost:
        return tracking.Tracker(None)
    try:
        return stack.enter_context(tracking.stage_run(ctx.config, "search-trial", name, nested=True, **tags))
    except tracking.TrackingError as e:
        ctx.parent.lost.append(f"trial run ({e})")
        return tracking.Tracker(None)


def report_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """One line per finished trial of this worker."""
    del study
    row = trial_row(trial)
    if trial.state == TrialState.COMPLETE:
        what = f"val acc {row['val_acc']:.4f}, params {row['params']:,}, feasible: {row['feasible']}"
    else:
        what = row["reason"]
    print(
        f"trial {trial.number} {trial.state.name}: λ={row['lambda']} lr={_fmt(row['finetune_lr'])}: {what}", flush=True
    )


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# ---- choosing and reporting -------------------------------------------------------------------


def is_feasible(trial: FrozenTrial) -> bool:
    """Optuna's rule: every constraint value <= 0."""
    return all(v <= 0 for v in trial.constraints.values())


def violation(trial: FrozenTrial) -> float:
    return sum(max(0.0, v) for v in trial.constraints.values())


def select_best(study: optuna.Study) -> tuple[FrozenTrial | None, bool]:
    """(trial, feasible): Optuna's best trial, the complete feasible one with the highest value; without one, the
    closest complete trial (smallest total constraint violation, then highest value); (None, False) without any."""
    try:
        return study.best_trial, True
    except ValueError:  # no complete trial, or none that meets its constraints
        pass
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        return min(complete, key=lambda t: (violation(t), -t.value, t.number)), False
    return None, False


def reason(trial: FrozenTrial) -> str:
    if "reason" in trial.user_attrs:
        return str(trial.user_attrs["reason"])
    return LOST_WORKER if trial.state == TrialState.FAIL else ""


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    """One trials.csv row: parameters, state, validation accuracy, cost and constraint values (no test accuracy)."""
    c, attrs = trial.constraints, trial.user_attrs
    if trial.value is not None:
        val_acc: Any = trial.value
    else:  # a pruned trial: its best fine-tune epoch so far (step 0 is before fine-tuning)
        val_acc = max((v for step, v in trial.intermediate_values.items() if step > 0), default="")
    seconds = (
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.datetime_complete and trial.datetime_start
        else ""
    )
    return {
        "number": trial.number,
        "state": trial.state.name,
        "lambda": attrs.get("lambda", ""),
        "finetune_lr": trial.params.get(LR_PARAM, ""),
        "val_acc": val_acc,
        "params": attrs.get("params", ""),
        "macs": attrs.get("macs", ""),
        "constraint_accuracy": c.get("accuracy", ""),
        "constraint_params": c.get("params", ""),
        "feasible": is_feasible(trial) if len(c) == 2 else "",  # known once both are measured
        "sparse_cached": attrs.get("sparse_cached", ""),
        "seconds": seconds,
        "reason": reason(trial),
        "worker": attrs.get("worker", ""),
    }


def exp_run_overrides(lam_label: str, lr: float, ratio: float) -> list[str]:
    """`dvc exp run -S` values that run the whole pipeline with this λ, ratio and fine-tune lr.

    λ stays a quoted label: params.yaml names files by it, so it must not become a float like 5.6e-05.
    """
    return [
        f"train.lambdas={json.dumps([lam_label])}",
        f"prune.lambda={json.dumps(lam_label)}",
        f"prune.ratios={json.dumps([ratio])}",
        f"finetune.lr={lr:.6g}",
    ]


def exp_run_command(lam_label: str, lr: float, ratio: float) -> str:
    return "dvc exp run " + " ".join(f"-S {shlex.quote(o)}" for o in exp_run_overrides(lam_label, lr, ratio))


def summarize(study: optuna.Study, config: Config, url: str) -> dict[str, Any]:
    """best.json: the best feasible trial (or, saying so, the closest one) and the study's state."""
    trials = study.get_trials(deepcopy=False)
    best, feasible = select_best(study)
    cons = config.constraints
    summary: dict[str, Any] = {
        "study": study.study_name,
        "storage": redact(url),
        "trials": {state.name: sum(t.state == state for t in trials) for state in TrialState} | {"total": len(trials)},
        "constraints": {"min_val_accuracy": cons.min_accuracy, "max_params": cons.max_params},
        "feasible": feasible,
        "ratio": config.search.ratio,
        "train_epochs": config.search.train_epochs,
        "finetune_epochs": config.search.finetune_epochs,
    }
    if best is None:
        summary["status"] = "no trial has completed yet, so there is no best trial"
        return summary
    attrs = best.user_attrs
    summary |= {
        "status": "best feasible trial"
        if feasible
        else f"no trial meets the constraints (val acc >= {cons.min_accuracy}, params <= {cons.max_params:,}); "
        "this is the closest one",
        "trial": best.number,
        "lambda": attrs["lambda"],
        "finetune_lr": best.params[LR_PARAM],
        "ratio_used": attrs.get("ratio_used"),
        "val_acc": best.value,
        "test_acc": attrs.get("test_acc"),
        "params": attrs.get("params"),
        "macs": attrs.get("macs"),
        "flops": attrs.get("flops"),
        "constraint_values": dict(best.constraints),
        "command": exp_run_command(attrs["lambda"], best.params[LR_PARAM], config.search.ratio),
    }
    return summary


# ---- figures ----------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")  # Optuna's legends sit right of the axes
    _pyplot().close(fig)


def _note(text: str) -> Any:
    """A figure that says why there is nothing to plot."""
    fig, ax = _pyplot().subplots(figsize=(5.6, 2.8))
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def _optuna_figure(plot: Callable[..., Any], study: optuna.Study) -> Any:
    """The figure of one of optuna.visualization.matplotlib's plots of validation accuracy."""
    plt = _pyplot()
    with warnings.catch_warnings(), plt.rc_context():  # the plots switch the global style to ggplot: keep it local
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return plot(study, target_name=OBJECTIVE).figure


def plot_history(study: optuna.Study, config: Config) -> Any:
    """Optuna's optimization history: each complete trial's validation accuracy (infeasible ones in gray) and the
    best feasible value so far, with the accuracy constraint drawn in."""
    from optuna.visualization.matplotlib import plot_optimization_history

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return _note("no trial has completed yet: there is no validation accuracy to plot")
    fig = _optuna_figure(plot_optimization_history, study)
    ax = fig.axes[0]
    ax.axhline(config.constraints.min_accuracy, ls="--", color="tab:green", label="min accuracy")
    ax.legend(bbox_to_anchor=(1.05, 1.0), loc="upper left")
    return fig


def plot_importances(study: optuna.Study) -> Any:
    """Optuna's parameter importances (its default evaluator) for validation accuracy; a note with fewer than 2
    complete trials, where any split of importance would be arbitrary."""
    from optuna.visualization.matplotlib import plot_param_importances

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return _note(f"parameter importances need at least 2 complete trials; the study has {len(complete)}")
    try:
        return _optuna_figure(plot_param_importances, study)
    except (ValueError, RuntimeError) as e:  # e.g. every complete trial has the same parameters
        return _note(f"parameter importances cannot be computed: {e}")


def plot_accuracy_params(rows: list[dict[str, Any]], summary: dict[str, Any], config: Config) -> Any:
    """Validation accuracy against parameters of the complete trials, the feasible region shaded, the best marked
    (Optuna has no plot of the objective against a user attribute)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    cons = config.constraints
    xs = [r["params"] for r in complete] + [cons.max_params]
    ys = [r["val_acc"] for r in complete] + [cons.min_accuracy]
    x_lo, x_hi = min(xs) / 2, max(xs) * 2
    y_lo, y_hi = max(0.0, min(ys) - 0.05), min(1.0, max(ys) + 0.05)
    ax.fill_between(
        [x_lo, cons.max_params],
        cons.min_accuracy,
        y_hi,
        color="tab:green",
        alpha=0.15,
        label=f"feasible: val acc >= {cons.min_accuracy}, params <= {cons.max_params:,}",
    )
    for feasible, style in ((True, dict(color="tab:blue", marker="o")), (False, dict(color="tab:red", marker="x"))):
        group = [r for r in complete if (r["feasible"] is True) == feasible]
        if group:
            ax.scatter(
                [r["params"] for r in group],
                [r["val_acc"] for r in group],
                label="feasible trials" if feasible else "infeasible trials",
                **style,
            )
    if "trial" in summary:
        ax.scatter(
            [summary["params"]],
            [summary["val_acc"]],
            s=220,
            marker="*",
            color="gold",
            edgecolor="k",
            zorder=3,
            label=f"{'best' if summary['feasible'] else 'closest'}: trial {summary['trial']}",
        )
    if not complete:
        ax.text(0.5, 0.5, "no complete trials yet", ha="center", transform=ax.transAxes)
    ax.set_xscale("log")
    ax.set(
        xlim=(x_lo, x_hi),
        ylim=(y_lo, y_hi),
        xlabel="parameters (pruned model)",
        ylabel="validation accuracy",
        title="Accuracy vs parameters",
    )
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def figures(study: optuna.Study, rows: list[dict[str, Any]], summary: dict[str, Any], config: Config) -> dict:
    """The study's figures by file name (FIGURES), in memory."""
    made = (plot_history(study, config), plot_importances(study), plot_accuracy_params(rows, summary, config))
    return dict(zip(FIGURES, made, strict=True))


def write_outputs(study: optuna.Study, config: Config, url: str) -> tuple[dict[str, Any], list[Path]]:
    """best.json, trials.csv and the figures in paths.search_reports; returns the summary and the files."""
    out = Path(config.paths.search_reports)
    trials = study.get_trials(deepcopy=False)
    rows = [trial_row(t) for t in trials]
    summary = summarize(study, config, url)
    write_csv(out / "trials.csv", rows)
    for name, fig in figures(study, rows, summary, config).items():
        _save(fig, out / name)
    write_json(out / "best.json", summary)
    return summary, [out / "best.json", out / "trials.csv", *(out / f for f in FIGURES)]


# ---- the whole search -------------------------------------------------------------------------


def with_overrides(
    config: Config, storage: str | None = None, n_trials: int | None = None, study_name: str | None = None
) -> Config:
    """The config with the CLI's --storage / --n-trials / --study-name applied and validated."""
    changes = {"storage": storage, "n_trials": n_trials, "study_name": study_name}
    config = replace(config, search=replace(config.search, **{k: v for k, v in changes.items() if v is not None}))
    validate(config)
    return config


def search(config: Config) -> dict[str, Any]:
    """Run this worker's share of the study, then write the outputs; returns the best.json summary."""
    layout = Layout(config.paths)
    set_deterministic(config.experiment.deterministic)
    device = resolve_device(config.experiment.device)
    data = load_prepared(layout.prepared, config.data.dataset, config.data.image_size)
    if len(data.val) == 0:
        raise ConfigError(
            "data.val_size: 0 leaves no validation images; the search chooses λ and lr on held-out data, "
            "so set it > 0 (e.g. 5000) and rerun `netslim prepare`"
        )
    url = config.search.storage or default_storage(config)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is printed below instead
    study = open_study(config, url)
    name = config.search.study_name
    with tracking.stage_run(config, "search", f"search {name}", study=name) as parent:
        parent.params(
            {k: v for k, v in config.to_flat_dict().items() if k.startswith(("search.", "constraints."))}
            | {"search.storage": redact(url)}
        )
        ctx = Context(config, data, device, layout, file_sha256(layout.prepared / "meta.json"), parent)
        remaining = config.search.n_trials - counted(study)
        if remaining > 0:
            study.optimize(
                lambda trial: run_trial(ctx, trial),
                n_trials=remaining,
                catch=CATCH,
                callbacks=[trial_budget(config.search.n_trials), report_trial],
                gc_after_trial=True,
            )
        summary, files = write_outputs(study, config, url)
        numbers = {k: summary[k] for k in ("val_acc", "test_acc", "params", "macs") if summary.get(k) is not None}
        parent.metrics(numbers | {"feasible": float(summary["feasible"]), "trials": summary["trials"]["total"]})
        for path in files:
            parent.artifact(path)
    print_summary(summary, files)
    return summary


def print_summary(summary: dict[str, Any], files: list[Path]) -> None:
    counts = ", ".join(f"{n} {s.lower()}" for s, n in summary["trials"].items() if n and s != "total")
    print(f"study {summary['study']!r} ({summary['storage']}): {summary['trials']['total']} trials ({counts})")
    if "trial" not in summary:
        print(summary["status"])
    else:
        print(
            f"{summary['status']}: trial {summary['trial']}: λ={summary['lambda']}, fine-tune lr "
            f"{summary['finetune_lr']:.4g}, ratio {summary['ratio']}: val acc {summary['val_acc']:.4f}, "
            f"test acc {summary['test_acc']:.4f}, params {summary['params']:,}, MACs {summary['macs']:,}"
        )
        print(f"run the full pipeline with these values:\n  {summary['command']}")
    print(f"outputs -> {', '.join(map(str, files))}")
