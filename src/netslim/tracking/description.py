"""A run's description (MLflow's `mlflow.note.content`, markdown): its headline numbers and links to other runs."""

from __future__ import annotations

from typing import Any

NOTE_TAG = "mlflow.note.content"  # the run's description in the UI (markdown)


def headline_table(values: dict[str, float]) -> list[str]:
    """Markdown: one row per metric, or, where every key is `model/metric` (export, report), one row per model
    and one column per metric."""
    if not all("/" in key for key in values):
        return ["| metric | value |", "|---|---|", *(f"| {key} | {_number(v)} |" for key, v in values.items())]
    rows: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        model, metric = key.rsplit("/", 1)
        rows.setdefault(model, {})[metric] = value
    columns = list(dict.fromkeys(metric for row in rows.values() for metric in row))
    cells = [[model, *(_number(row[c]) if c in row else "–" for c in columns)] for model, row in rows.items()]
    return ["| " + " | ".join(["model", *columns]) + " |", "|---" * (len(columns) + 1) + "|"] + [
        "| " + " | ".join(row) + " |" for row in cells
    ]


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() and abs(value) >= 1000 else f"{value:.4g}"


def run_link(run: Any) -> str:
    """A markdown link to the run that opens it in the UI (relative, so it works on any UI address), on the
    classic ML run page (without workflowType, MLflow 3 shows a run as a GenAI evaluation run)."""
    run_page = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    return f"[{run.info.run_name}]({run_page})"
