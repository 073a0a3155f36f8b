"""What each figure shows in this run, from its numbers, and the sentences report.md puts under its tables (what
each repair after surgery bought, a λ scaled for a short run)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from netslim.config import Config
from netslim.report.inputs import (
    NA,
    REPAIRS,
    ReportInputs,
    batch_sizes,
    fmt_pct,
    fmt_ratio,
    model_name,
    number,
    saved_repair,
)
from netslim.vocabulary import (
    BASELINE,
    BEST_EPOCH,
    EAGER_SPEEDUP,
    MACS_RATIO,
    ONNX_SPEEDUP,
    PARAMS_RATIO,
    TEST_ACC,
    finetuned_model,
    of_sparse,
    per_batch,
    train_model,
    variant_accuracies,
)

SMALL_GAMMA = 0.05  # |γ| below this counts as "near zero" in the captions (the and the paper's eye-ball line)
SEED_LAMBDA_LABEL = "1e-4"  # the λ of the 40-epoch seed experiment, against which a scaled demo λ is stated
SEED_LAMBDA = float(SEED_LAMBDA_LABEL)


def _points(a: float | None, b: float | None) -> str:
    """a - b in percentage points, signed."""
    return NA if a is None or b is None else f"{(a - b) * 100:+.1f} points"


def lambda_scale_note(inputs: ReportInputs, config: Config) -> str:
    """Says when this run's λ is scaled up from the seed experiment's for a short schedule."""
    largest = max(float(lam) for lam in config.train.lambdas)
    steps = number(inputs.train_metrics.get(config.prune.lambda_, {}), "steps")
    if largest <= SEED_LAMBDA or steps is None:
        return ""
    return (
        f" (scaled for {round(steps):,} steps per λ: the 40-epoch seed experiment, about 14,000 steps, uses "
        f"{SEED_LAMBDA_LABEL}; this short run needs up to ×{largest / SEED_LAMBDA:g} to move γ as far)"
    )


def _gamma_shares(inputs: ReportInputs) -> dict[str, tuple[float, float]]:
    """Per λ: (share of |γ| below SMALL_GAMMA, median |γ|)."""
    out = {}
    for lam, df in inputs.gammas.items():
        g = np.abs(df["gamma"].to_numpy(dtype=float)) if "gamma" in df else np.array([])
        if g.size:
            out[lam] = (float(np.mean(g < SMALL_GAMMA)), float(np.median(g)))
    return out


def compensation_subsumed(prune_metrics: Mapping[str, Mapping[str, Any]], config: Config) -> list[str]:
    """A note under the pruning table where "+ both" scores what "+ BN recalibration" scores (none where any model
    differs): bias compensation is folded into the next BatchNorm's running mean, which recalibration re-estimates."""
    saved = saved_repair(config)
    both = [variant_accuracies(m, saved) for m in prune_metrics.values()]
    pairs = [(number(v, "recalibrated"), number(v, "compensated_recalibrated")) for v in both]
    if not pairs or any(a is None or a != b for a, b in pairs):
        return []
    note = (
        "*+ both* equals *+ BN recalibration* by construction: bias compensation is folded into the next "
        "BatchNorm's running mean, which recalibration then re-estimates from data, so the two models are the same."
    )
    if config.prune.bias_compensation and config.prune.recalibration_batches > 0:
        note += " With recalibration on, `prune.bias_compensation: true` changes nothing in the saved model."
    return [note]


def pruning_text(inputs: ReportInputs, config: Config) -> str:
    """One sentence per pruned model: what each repair after surgery bought, against the sparse model."""
    lines = []
    saved = saved_repair(config)
    for label, m in inputs.prune_metrics.items():
        sparse = number(m, of_sparse(TEST_ACC))
        accuracies = variant_accuracies(m, saved)
        values = {key: number(accuracies, key) for key in REPAIRS}
        known = {k: v for k, v in values.items() if v is not None}
        if sparse is None or not known:
            continue
        best = max(known, key=known.get)
        lines.append(
            f"- {model_name(label, finetuned=False)}: the sparse model scores {fmt_pct(sparse, 1)}; plain surgery "
            f"{fmt_pct(values['plain'], 1)} ({_points(values['plain'], sparse)}), best with {REPAIRS[best]} at "
            f"{fmt_pct(known[best], 1)} ({_points(known[best], sparse)})."
        )
    return "\n".join(lines)


def captions(inputs: ReportInputs, config: Config, rows: Mapping[str, dict[str, Any]]) -> dict[str, str]:
    """What each figure shows in this run, from its numbers."""
    lam = config.prune.lambda_
    texts: dict[str, str] = {}

    h = inputs.train_history.get(lam, pd.DataFrame())
    best = number(inputs.train_metrics.get(lam, {}), BEST_EPOCH)
    text = f"Sparsity training at λ = {lam}, accuracy per epoch."
    if len(h) and best is not None:
        at_best = h.loc[h["epoch"] == int(best), "test_acc"]
        text += (
            f" Test accuracy went from {fmt_pct(float(h['test_acc'].iloc[0]), 1)} after epoch 1 to "
            f"{fmt_pct(float(at_best.iloc[0]) if len(at_best) else None, 1)} at the best validation epoch "
            f"({int(best)} of {len(h)})"
        )
        if BASELINE in rows and lam != "0":
            baseline = fmt_pct(rows[BASELINE]["test_acc"], 1)
            text += f"; the same network trained without the penalty (λ = 0) reached {baseline}"
        text += "."
    texts["sparsity_training_accuracy.png"] = text

    shares = _gamma_shares(inputs)
    texts["scaling_factor_distribution.png"] = (
        f"Prunable BN scaling factors after sparsity training, one panel per λ on shared axes (log count). "
        f"Share of |γ| below {SMALL_GAMMA:g}: "
        + "; ".join(f"λ = {k}: {v[0]:.0%} (median |γ| {v[1]:.3g})" for k, v in shares.items())
        + "."
    )

    last = {k: df.iloc[-1] for k, df in inputs.train_history.items() if len(df)}
    texts["sparsity_vs_accuracy.png"] = (
        f"Share of prunable channels with |γ| < {config.train.sparsity_threshold:g} and training accuracy per epoch. "
        "At the last epoch: "
        + "; ".join(
            f"λ = {k}: {r['sparsity']:.0%} sparse at {fmt_pct(float(r['train_acc']), 1)} training accuracy"
            for k, r in last.items()
        )
        + "."
    )

    parts = []
    for label, df in inputs.channels.items():
        if not len(df):
            continue
        share = df["channels_kept"] / df["channels_before"]
        most, least = df.loc[share.idxmin()], df.loc[share.idxmax()]
        parts.append(
            f"{model_name(label, finetuned=False)} keeps {int(df['channels_kept'].sum()):,} of "
            f"{int(df['channels_before'].sum()):,} prunable channels ({most['layer']} keeps {most['channels_kept']} "
            f"of {most['channels_before']}, {least['layer']} {least['channels_kept']} of {least['channels_before']})"
        )
    texts["channels_per_layer.png"] = (
        "Channels kept per prunable layer against the unpruned widths (one global |γ| threshold): "
        + "; ".join(parts)
        + "."
    )

    parts = []
    for label, fh in inputs.finetune_history.items():
        before = number(inputs.prune_metrics.get(label, {}), TEST_ACC)
        after = number(inputs.finetune_metrics.get(label, {}), TEST_ACC)
        parts.append(
            f"{model_name(label, finetuned=False)}: {fmt_pct(before, 1)} right after pruning, "
            f"{fmt_pct(after, 1)} after {len(fh)} fine-tuning epochs"
        )
    texts["finetune_accuracy.png"] = (
        "Fine-tuning accuracy per epoch, from the pruned model's accuracy (×, epoch 0), with the accuracy "
        f"constraint ({config.constraints.min_accuracy:.0%}) dashed: " + "; ".join(parts) + "."
    )

    reference = rows.get(BASELINE) or rows.get(train_model(lam), {})
    parts = []
    for label, m in inputs.prune_metrics.items():
        tuned = rows.get(finetuned_model(label), {})
        parts.append(
            f"{model_name(label, finetuned=True)}: {fmt_pct(tuned.get('test_acc'), 1)} "
            f"({_points(tuned.get('test_acc'), reference.get('test_acc'))} against "
            f"{reference.get('model', 'unpruned')}) "
            f"with {fmt_ratio(number(m, PARAMS_RATIO))} fewer parameters and {fmt_ratio(number(m, MACS_RATIO))} "
            f"fewer MACs, measured {fmt_ratio(number(m, per_batch(EAGER_SPEEDUP, 64)))} faster at batch 64 in eager "
            "PyTorch" + _exported_speedup(inputs.export_metrics.get(finetuned_model(label)))
        )
    texts["model_comparison.png"] = (
        "Every model side by side with the constraint lines (grey: unpruned and sparse, orange: pruned, green: "
        "fine-tuned), and the speedups, each measured against the sparse model it was pruned from, timed with it. "
        + "; ".join(parts)
        + "."
    )
    return texts


def _exported_speedup(metrics: Any) -> str:
    """ ", {speedup}× exported (ONNX Runtime)" at the largest timed batch, or "" without an export."""
    if not isinstance(metrics, Mapping):
        return ""
    batches = batch_sizes({"model": metrics})
    speedup = number(metrics, per_batch(ONNX_SPEEDUP, batches[-1])) if batches else None
    return "" if speedup is None else f" and {fmt_ratio(speedup)} exported to ONNX Runtime (batch {batches[-1]})"
