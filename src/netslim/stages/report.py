"""`netslim report`: figures, tables, report.md and DVC's views of the run, from what the other stages wrote.

Reads every input first and stops with one line naming the first missing file (the CLI exits 2) before
anything is written; then builds every figure and table in memory, and only then writes them, atomically.
Writes <paths.reports>/{figures/*.png, summary.csv, report.md} and the files DVC shows (README "DVC views"):
metrics/<model>.json (the headline metrics, one file per model so `dvc metrics show` prints one row each),
timings/<measurement>.json (throughputs and speedups, noisy, kept out of `dvc metrics show`) and curves/*.csv
(every λ's and every ratio's accuracy per epoch in one table each, which dvc.yaml's top-level plots overlay).
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from netslim import tracking
from netslim.config import Config, ConfigError, lambda_label, ratio_label
from netslim.io import atomic_write_bytes, atomic_write_text, check_metrics, write_csv, write_json
from netslim.layout import Layout
from netslim.report.figures import DPI, figures
from netslim.report.inputs import ReportInputs
from netslim.report.markdown import markdown
from netslim.report.summary import curves, headline_metrics, summary_rows, timing_metrics
from netslim.vocabulary import (
    CHANNELS_FILE,
    GAMMAS_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    REPORT_FILE,
    SUMMARY_FILE,
    WIDTHS_FILE,
    model_metric,
)

HISTORY_COLUMNS = ("epoch", "train_acc", "test_acc", "sparsity")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: everything the report shows comes from params.yaml and the earlier stages' files."""


class _Reader:
    """Reads the inputs, remembering every missing one so the error can say how many there are."""

    def __init__(self) -> None:
        self.missing: list[tuple[Path, str]] = []

    def csv(self, path: Path, stage: str, columns: Iterable[str]) -> pd.DataFrame:
        if not path.is_file():
            self.missing.append((path, stage))
            return pd.DataFrame()
        try:
            frame = pd.read_csv(path)
        except (ValueError, UnicodeDecodeError):  # pandas' EmptyDataError and ParserError are ValueErrors
            raise ConfigError(f"{path}: empty or not a CSV table; rerun the {stage} stage (`dvc repro`)") from None
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise ConfigError(f"{path}: no column {', '.join(absent)}; rerun the {stage} stage (`dvc repro`)")
        check_metrics({c: frame[c].tolist() for c in columns if c != "layer"}, path)
        return frame

    def json(self, path: Path, stage: str) -> dict[str, Any]:
        if not path.is_file():
            self.missing.append((path, stage))
            return {}
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(f"{path}: not valid JSON; rerun the {stage} stage (`dvc repro`)") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: holds no metrics mapping; rerun the {stage} stage (`dvc repro`)")
        check_metrics(data, path)
        return data

    def optional_json(self, path: Path, stage: str) -> dict[str, Any]:
        """Like `json`, but a missing file is no error: a pipeline without that stage reports without it."""
        return self.json(path, stage) if path.is_file() else {}

    def check(self) -> None:
        if self.missing:
            path, stage = self.missing[0]
            more = f" ({len(self.missing) - 1} more input(s) missing too)" if len(self.missing) > 1 else ""
            raise ConfigError(f"{path}: missing; run `dvc repro` (the {stage} stage writes it){more}")


def load_inputs(config: Config) -> ReportInputs:
    layout = Layout(config.paths)
    lambdas = [lambda_label(lam) for lam in config.train.lambdas]
    ratios = [ratio_label(r) for r in config.prune.ratios]
    read = _Reader()
    train, prune, tune = (
        {lam: layout.train_reports(lam) for lam in lambdas},
        {r: layout.prune_reports(r) for r in ratios},
        {r: layout.finetune_reports(r) for r in ratios},
    )
    inputs = ReportInputs(
        train_history={lam: read.csv(d / HISTORY_FILE, "train", HISTORY_COLUMNS) for lam, d in train.items()},
        train_metrics={lam: read.json(d / METRICS_FILE, "train") for lam, d in train.items()},
        gammas={lam: read.csv(d / GAMMAS_FILE, "train", ("gamma",)) for lam, d in train.items()},
        prune_metrics={r: read.json(d / METRICS_FILE, "prune") for r, d in prune.items()},
        channels={
            r: read.csv(d / CHANNELS_FILE, "prune", ("layer", "channels_before", "channels_kept"))
            for r, d in prune.items()
        },
        finetune_history={r: read.csv(d / HISTORY_FILE, "finetune", HISTORY_COLUMNS) for r, d in tune.items()},
        finetune_metrics={r: read.json(d / METRICS_FILE, "finetune") for r, d in tune.items()},
        export_metrics=read.optional_json(layout.export_reports / METRICS_FILE, "export"),
        export_widths=read.optional_json(layout.export_reports / WIDTHS_FILE, "export"),
    )
    read.check()
    return inputs


def png_bytes(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def write_json_folder(folder: Path, files: dict[str, dict[str, Any]]) -> None:
    """<folder>/<name>.json for each entry, then the folder's other .json files removed: a model no longer in
    params.yaml must not linger as a row of `dvc metrics show`."""
    for name, values in files.items():
        write_json(folder / f"{name}.json", values)
    for stale in set(folder.glob("*.json")) - {folder / f"{name}.json" for name in files}:
        stale.unlink()


def run(args: argparse.Namespace, config: Config) -> int:
    inputs = load_inputs(config)  # a missing input stops here, before an MLflow run or any file exists
    out = Path(config.paths.reports)
    compared = {
        "lambda": lambda_label(config.prune.lambda_),
        "lambdas": tracking.param_text([lambda_label(lam) for lam in config.train.lambdas]),
        "ratios": tracking.param_text([ratio_label(r) for r in config.prune.ratios]),
    }
    with tracking.stage_run(config, "report", "report", params=compared, **{"lambda": config.prune.lambda_}) as tracker:
        rows = summary_rows(inputs, config)
        drawn = figures(inputs, config)
        pngs = {name: png_bytes(fig) for name, fig in drawn.items()}  # rendered before any file is written
        text = markdown(inputs, config, rows)
        for name, data in pngs.items():
            atomic_write_bytes(out / "figures" / name, data)
        write_csv(out / SUMMARY_FILE, list(rows.values()))
        write_json_folder(out / "metrics", headline_metrics(rows))
        write_json_folder(out / "timings", timing_metrics(inputs))
        for name, rows_of_curve in curves(inputs).items():
            write_csv(out / "curves" / name, rows_of_curve)
        atomic_write_text(out / REPORT_FILE, text)  # last: its links point at the files above
        for name in pngs:  # the files just written: log_figure would render every figure a second time (3 s)
            tracker.artifact(out / "figures" / name, "figures")
        tracker.table(list(rows.values()), "summary.json")
        # each model's accuracy and size as metrics (not its throughput: timings of other runs, see the report)
        headline = {
            model_metric(model, key): value
            for model, values in headline_metrics(rows).items()
            for key, value in values.items()
            if isinstance(value, int | float)
        }
        tracker.metrics(headline, headline=tuple(headline))
        tracker.artifact(out / REPORT_FILE)
        tracker.artifact(out / SUMMARY_FILE)
    print(f"report: {len(pngs)} figures, {len(rows)} models -> {out / REPORT_FILE}")
    return 0
