"""`netslim search`: the Optuna study over λ and the fine-tune lr under the constraints in params.yaml.

Writes reports/search/{best.json,trials.csv,history.png,importances.png,accuracy_vs_params.png}; the study
itself lives in search.storage (default: reports/search/study.db), so running again continues it. The search's
parts are in `netslim.search` (study and storage, one trial, the choice of the best, figures); this module is the
stage around them: device, data, the MLflow run, this worker's trials and the outputs.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from netslim.config import Config, ConfigError, validate
from netslim.io import file_sha256, write_csv, write_json
from netslim.search.choice import summarize, trial_row
from netslim.search.figures import FIGURES, figures, save_png
from netslim.search.objective import CATCH, Context, run_trial
from netslim.search.study import counted, default_storage, open_study, redact, trial_budget
from netslim.stages.shell import StageShell
from netslim.vocabulary import MACS, NUM_PARAMS, TEST_ACC, VAL_ACC


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        help="Optuna storage URL shared by all workers, e.g. postgresql+psycopg://user:pw@host/netslim "
        "(default: search.storage, else sqlite:///<paths.search_reports>/study.db)",
    )
    parser.add_argument(
        "--n-trials",
        type=int,
        help="run until the study holds this many trials, all workers together (search.n_trials)",
    )
    parser.add_argument("--study-name", help="the study to create or continue (default: search.study_name)")


def with_overrides(
    config: Config, storage: str | None = None, n_trials: int | None = None, study_name: str | None = None
) -> Config:
    """The config with the CLI's --storage / --n-trials / --study-name applied and validated."""
    changes = {"storage": storage, "n_trials": n_trials, "study_name": study_name}
    config = replace(config, search=replace(config.search, **{k: v for k, v in changes.items() if v is not None}))
    validate(config)
    return config


def run(args: argparse.Namespace, config: Config) -> int:
    """Run this worker's share of the study, then write the outputs."""
    config = with_overrides(config, storage=args.storage, n_trials=args.n_trials, study_name=args.study_name)
    shell = StageShell(config, "search", config.experiment.deterministic)
    layout, device, data = shell.layout, shell.device, shell.data
    if len(data.val) == 0:
        raise ConfigError(
            "data.val_size: 0 leaves no validation images; the search chooses λ and lr on held-out data, "
            "so set it > 0 (e.g. 5000) and rerun `netslim prepare`"
        )
    url = config.search.storage or default_storage(config)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is printed below instead
    study = open_study(config, url)
    name = config.search.study_name
    with shell.tracking_run(f"search {name}", study=name) as parent:
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
        numbers = {k: summary[k] for k in (VAL_ACC, TEST_ACC, NUM_PARAMS, MACS) if summary.get(k) is not None}
        parent.metrics(numbers | {"feasible": float(summary["feasible"]), "trials": summary["trials"]["total"]})
        for path in files:
            parent.artifact(path)
    print_summary(summary, files)
    return 0


def write_outputs(study: optuna.Study, config: Config, url: str) -> tuple[dict[str, Any], list[Path]]:
    """best.json, trials.csv and the figures in paths.search_reports; returns the summary and the files."""
    out = Path(config.paths.search_reports)
    trials = study.get_trials(deepcopy=False)
    rows = [trial_row(t) for t in trials]
    summary = summarize(study, config, url)
    write_csv(out / "trials.csv", rows)
    for name, fig in figures(study, rows, summary, config).items():
        save_png(fig, out / name)
    write_json(out / "best.json", summary)
    return summary, [out / "best.json", out / "trials.csv", *(out / f for f in FIGURES)]


def report_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """One line per finished trial of this worker."""
    del study
    row = trial_row(trial)
    if trial.state == TrialState.COMPLETE:
        what = f"val acc {row['val_acc']:.4f}, params {row[NUM_PARAMS]:,}, feasible: {row['feasible']}"
    else:
        what = row["reason"]
    print(
        f"trial {trial.number} {trial.state.name}: λ={row['lambda']} lr={_fmt(row['finetune_lr'])}: {what}", flush=True
    )


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def print_summary(summary: dict[str, Any], files: list[Path]) -> None:
    counts = ", ".join(f"{n} {s.lower()}" for s, n in summary["trials"].items() if n and s != "total")
    print(f"study {summary['study']!r} ({summary['storage']}): {summary['trials']['total']} trials ({counts})")
    if "trial" not in summary:
        print(summary["status"])
    else:
        print(
            f"{summary['status']}: trial {summary['trial']}: λ={summary['lambda']}, fine-tune lr "
            f"{summary['finetune_lr']:.4g}, ratio {summary['ratio']}: val acc {summary['val_acc']:.4f}, "
            f"test acc {summary['test_acc']:.4f}, params {summary[NUM_PARAMS]:,}, MACs {summary['macs']:,}"
        )
        print(f"run the full pipeline with these values:\n  {summary['command']}")
    print(f"outputs -> {', '.join(map(str, files))}")
