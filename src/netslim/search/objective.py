"""One trial: sparsity training with a suggested λ (through the λ cache), pruning at `search.ratio` and fine-tuning
with a suggested lr, all through the pipeline's steps, inside a nested MLflow run; returns the best validation
accuracy and records the constraints, or prunes the trial with its reason."""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from netslim import tracking
from netslim.config import Config, lambda_label
from netslim.data import PreparedData
from netslim.engine import TrainingDiverged, evaluate
from netslim.io import CheckpointError, load_checkpoint, write_json
from netslim.layout import Layout
from netslim.measure import model_summary
from netslim.models import model_from_checkpoint, save_model
from netslim.search.study import LAMBDA_PARAM, LR_PARAM, PARAMS_ATTR
from netslim.steps import RunOptions, fit_settings
from netslim.steps.finetune import finetune
from netslim.steps.prune import prune_configured
from netslim.steps.train import sparse_fingerprint, sparsity_train
from netslim.vocabulary import FINETUNED, FLOPS, MACS, NUM_PARAMS, PRUNED, SPARSE, VAL_ACC, curve, model_metric

CATCH = (RuntimeError, ValueError, ArithmeticError)  # a trial failing this way is recorded FAIL; the study goes on


@dataclass(frozen=True)
class Context:
    """What every trial needs, built once per worker."""

    config: Config
    data: PreparedData
    device: torch.device
    layout: Layout
    data_hash: str
    parent: tracking.Tracker


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
                on_epoch=lambda record, _m: run.metrics(_public(record, SPARSE), step=int(record["epoch"])),
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


def _public(record: dict[str, float], role: str) -> dict[str, float]:
    """A history record without its test values (the search looks at validation data only), as the curves of the
    model of `role` that the trial trains ("sparse/epoch/val_acc")."""
    return {curve(k, role): v for k, v in record.items() if k != "epoch" and not k.startswith("test_")}


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
    trial.set_user_attr(PARAMS_ATTR, summary[NUM_PARAMS])
    trial.set_user_attr("macs", summary[MACS])
    trial.set_user_attr("flops", summary[FLOPS])
    trial.set_user_attr("ratio_used", pruned.ratio)
    set_constraint(
        trial, run, "params", (summary[NUM_PARAMS] - config.constraints.max_params) / config.constraints.max_params
    )
    ev = dict(device=ctx.device, batch_size=config.runtime.eval_batch_size, amp=config.runtime.amp)
    _, before = evaluate(model, ctx.data.val, ctx.data.mean, ctx.data.std, **ev)
    trial.report(before, 0)
    run.metrics({model_metric(PRUNED, VAL_ACC): before, NUM_PARAMS: summary[NUM_PARAMS], MACS: summary[MACS]})
    best = {"val_acc": -1.0}

    def on_epoch(record: dict[str, float], _m: nn.Module) -> None:
        run.metrics(_public(record, FINETUNED), step=int(record["epoch"]))
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
            run.metrics({VAL_ACC: value})
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
