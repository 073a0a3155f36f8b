"""The summary: one row per model of params.yaml (summary.csv, report.md's table), the headline metrics `dvc metrics
show` lists (reports/metrics/), each measurement's timings (reports/timings/) and the curves DVC's plots overlay
(reports/curves/)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from netslim import vocabulary as vocab
from netslim.config import Config
from netslim.report.inputs import (
    ReportInputs,
    batch_sizes,
    meets_constraints,
    model_name,
    number,
    train_name,
)
from netslim.vocabulary import FLOPS, HEADLINE, MACS, MEETS_CONSTRAINTS, NUM_PARAMS, TEST_ACC, of_sparse


def _sparse_size(inputs: ReportInputs) -> dict[str, Any]:
    """Params, MACs and FLOPs of the sparse model, the unpruned architecture that every λ trains, from the first
    prune run that wrote them."""
    out: dict[str, Any] = {}
    for metrics in inputs.prune_metrics.values():
        for key in (NUM_PARAMS, MACS, FLOPS):
            if key not in out and number(metrics, of_sparse(key)) is not None:
                out[key] = metrics[of_sparse(key)]
    return out


def _flops(values: Mapping[str, Any], macs: float | None) -> float | None:
    flops = number(values, FLOPS)
    return flops if flops is not None or macs is None else 2 * macs


def summary_rows(inputs: ReportInputs, config: Config) -> dict[str, dict[str, Any]]:
    """One row per model of params.yaml: every λ of sparsity training ("unpruned_lambda_0", "sparse_lambda_1e-2"),
    then per ratio the pruned and the fine-tuned model ("pruned_0.9", "finetuned_0.9").

    No throughput: each one is timed in its own measurement (README "DVC views"); speed is compared as speedups, each
    pruned model against the sparse model timed with it. None marks a value no stage wrote (an empty cell in
    summary.csv, "n/a" in report.md).
    """
    arch = _sparse_size(inputs)
    macs = number(arch, MACS)
    lambdas = sorted(inputs.train_metrics, key=lambda lam: lam != "0")  # the unpruned baseline first
    rows = {}
    for lam in lambdas:
        train = inputs.train_metrics[lam]
        rows[vocab.train_model(lam)] = {
            "model": train_name(lam),
            "stage": "train",
            "ratio": 0.0,
            TEST_ACC: number(train, TEST_ACC),
            NUM_PARAMS: number(train, NUM_PARAMS) or number(arch, NUM_PARAMS),
            MACS: macs,
            FLOPS: number(arch, FLOPS) or (2 * macs if macs is not None else None),
        }
    for label, pm in inputs.prune_metrics.items():
        fm = inputs.finetune_metrics[label]
        for key, stage, metrics in (
            (vocab.pruned_model(label), "prune", pm),
            (vocab.finetuned_model(label), "finetune", fm),
        ):
            macs = number(metrics, MACS)
            rows[key] = {
                "model": model_name(label, finetuned=stage == "finetune"),
                "stage": stage,
                "ratio": number(pm, vocab.RATIO_USED),
                TEST_ACC: number(metrics, TEST_ACC),
                NUM_PARAMS: number(metrics, NUM_PARAMS),
                MACS: macs,
                FLOPS: _flops(metrics, macs),
            }
    for row in rows.values():
        row[MEETS_CONSTRAINTS] = meets_constraints(config.constraints, row[TEST_ACC], row[NUM_PARAMS])
    return rows


def headline_metrics(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model, what `dvc metrics show` lists (reports/metrics/<model>.json): HEADLINE's values that are known (the
    verdict a bool)."""
    return {key: {name: row[name] for name in HEADLINE if row.get(name) is not None} for key, row in rows.items()}


# What each measurement timed, kept apart from the headline metrics: timings move from run to run (the machine's
# load), so `dvc metrics diff` would report them as changed on every rerun. Each file holds one measurement, the
# sparse model timed interleaved with the pruned one, so the speedup inside a file is a fair comparison.


def timing_metrics(inputs: ReportInputs) -> dict[str, dict[str, float]]:
    """reports/timings/<measurement>.json: "pruned_<ratio>" (the prune stage, eager PyTorch) and "exported_<ratio>"
    (the export stage: the fine-tuned model's ONNX export against the exported sparse model)."""
    measurements: dict[str, tuple[Mapping[str, Any], tuple[str, ...]]] = {
        vocab.pruned_model(label): (metrics, vocab.PRUNE_TIMINGS) for label, metrics in inputs.prune_metrics.items()
    }
    exported = {
        k: v for k, v in inputs.export_metrics.items() if vocab.role_of(k) == vocab.FINETUNED and isinstance(v, Mapping)
    }
    measurements |= {f"exported_{k.partition('_')[2]}": (v, vocab.EXPORT_TIMINGS) for k, v in exported.items()}
    out = {}
    for name, (metrics, keys) in measurements.items():
        names = [vocab.per_batch(key, b) for b in batch_sizes({name: metrics}) for key in keys]
        values = {key: number(metrics, key) for key in names if number(metrics, key) is not None}
        if values:
            out[name] = values
    return out


def curves(inputs: ReportInputs) -> dict[str, list[dict[str, Any]]]:
    """reports/curves/*.csv: every λ's sparsity training per epoch; every ratio's fine-tuning per epoch, from epoch 0,
    the pruned model's accuracy before fine-tuning.

    dvc.yaml's top-level plots overlay them, one line per `model` (.dvc/plots/lines_by_model.json): long tables, so
    any number of λ and ratios overlay without dvc.yaml naming each run's file.
    """
    training = [
        {"model": train_name(lam), "lambda": lam} | {k: row[k] for k in ("epoch", "test_acc", "sparsity")}
        for lam, history in inputs.train_history.items()
        for row in history.to_dict("records")
    ]
    finetuning = []
    for label, history in inputs.finetune_history.items():
        name = model_name(label, finetuned=False)  # the pruned model the curve fine-tunes
        before = number(inputs.prune_metrics.get(label, {}), TEST_ACC)
        start = [{"epoch": 0, "test_acc": before}] if before is not None else []
        finetuning += [
            {"model": name, "ratio": label, "epoch": row["epoch"], "test_acc": row["test_acc"]}
            for row in start + history.to_dict("records")
        ]
    return {"sparsity_training.csv": training, "finetuning.csv": finetuning}
