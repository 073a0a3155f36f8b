"""Choosing and summarising: the best feasible trial (Optuna's rule) or, saying so, the closest one; one trials.csv
row per trial (validation accuracy only); best.json's summary with the `dvc exp run` command that reruns it."""

from __future__ import annotations

import json
import shlex
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from netslim.config import Config
from netslim.search.study import LR_PARAM, PARAMS_ATTR, redact
from netslim.vocabulary import NUM_PARAMS

LOST_WORKER = "its worker stopped sending heartbeats (killed or lost) and the trial was failed"


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
        NUM_PARAMS: attrs.get(PARAMS_ATTR, ""),
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
        NUM_PARAMS: attrs.get(PARAMS_ATTR),
        "macs": attrs.get("macs"),
        "flops": attrs.get("flops"),
        "constraint_values": dict(best.constraints),
        "command": exp_run_command(attrs["lambda"], best.params[LR_PARAM], config.search.ratio),
    }
    return summary
