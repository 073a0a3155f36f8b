"""report.md: the settings, the tables of every stage (models, pruning, speed, export, constraints) and every figure
with its caption, linked relative to the report as GitHub renders it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from netslim import vocabulary as vocab
from netslim.config import Config, ConstraintsConfig, OptimConfig, lambda_label, milestone_epochs
from netslim.report.captions import captions, compensation_subsumed, lambda_scale_note, pruning_text
from netslim.report.figures import FIGURES
from netslim.report.inputs import (
    NA,
    REPAIRS,
    ReportInputs,
    batch_sizes,
    fmt_bool,
    fmt_int,
    fmt_millions,
    fmt_pct,
    fmt_rate,
    fmt_ratio,
    model_name,
    number,
    saved_repair,
)


def markdown_table(header: list[str], rows: list[list[str]], numbers: bool = True) -> str:
    """A GitHub markdown table; with `numbers`, every column after the first is right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|:---|" + ("---:|" if numbers else ":---|") * (len(header) - 1)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def lr_schedule(optim: OptimConfig) -> str:
    """How a section's lr moves, e.g. "Adam 1e-3, ×0.1 after epochs 20, 30" or "Adam 4e-3, cosine to 0"."""
    if optim.schedule == "cosine":
        return f"Adam {lambda_label(optim.lr)}, cosine to 0"
    epochs = milestone_epochs(optim.milestones, optim.epochs)
    drops = f", ×{optim.lr_gamma:g} after epoch{'s' if len(epochs) > 1 else ''} {', '.join(map(str, epochs))}"
    return f"Adam {lambda_label(optim.lr)}" + (drops if epochs else "")


def _settings(inputs: ReportInputs, config: Config) -> str:
    c = config
    ratios = ", ".join(str(r) for r in c.prune.ratios)
    target = f" (budget: ≤ {c.prune.target_params:,} params)" if c.prune.target_params else ""
    size = c.data.image_size
    items = [
        ("dataset", c.data.dataset),
        ("image size", f"{size}×{size}" + (" (scaled down)" if size < 32 else "")),
        ("architecture", f"{c.model.arch}, width × {c.model.width:g}"),
        ("λ of sparsity training", ", ".join(c.train.lambdas) + lambda_scale_note(inputs, c)),
        ("λ of the pruned model", c.prune.lambda_),
        ("prune ratios", ratios + target),
        ("epochs", f"{c.train.epochs} sparsity training, {c.finetune.epochs} fine-tuning"),
        ("learning rate", f"{lr_schedule(c.train)} (sparsity training); {lr_schedule(c.finetune)} (fine-tuning)"),
        ("initial BN γ", "1.0 (PyTorch's default)" if c.model.bn_init is None else f"{c.model.bn_init:g}"),
        ("bias compensation", fmt_bool(c.prune.bias_compensation)),
        ("BN recalibration", f"{c.prune.recalibration_batches} batches" if c.prune.recalibration_batches else "off"),
        ("constraints", f"test accuracy ≥ {c.constraints.min_accuracy:.0%}, params ≤ {c.constraints.max_params:,}"),
    ]
    return markdown_table(["setting", "value"], [[k, v] for k, v in items], numbers=False)


def _comparison(rows: list[dict[str, Any]]) -> str:
    header = ["model", "test accuracy", "params", "MACs", "FLOPs", "meets"]
    cells = [
        [
            r["model"],
            fmt_pct(r[vocab.TEST_ACC]),
            fmt_int(r[vocab.NUM_PARAMS]),
            fmt_millions(r[vocab.MACS]),
            fmt_millions(r[vocab.FLOPS]),
            fmt_bool(r[vocab.MEETS_CONSTRAINTS]),
        ]
        for r in rows
    ]
    return markdown_table(header, cells)


def _pruning(prune_metrics: Mapping[str, Mapping[str, Any]], saved: str) -> str:
    header = ["pruned model", "ratio used", "channels removed", "γ threshold", "sparse model", *REPAIRS.values()]
    cells = []
    for label, m in prune_metrics.items():
        threshold = number(m, vocab.THRESHOLD)
        ratio = number(m, vocab.RATIO_USED)
        accuracies = vocab.variant_accuracies(m, saved)
        repairs = [fmt_pct(number(accuracies, key)) for key in REPAIRS]
        cells.append(
            [
                model_name(label, finetuned=False),
                NA if ratio is None else f"{ratio:.4f}",
                fmt_pct(number(m, vocab.CHANNELS_REMOVED)),
                NA if threshold is None else f"{threshold:.4g}",
                fmt_pct(number(m, vocab.of_sparse(vocab.TEST_ACC))),
                *(f"**{v}**" if key == saved else v for key, v in zip(REPAIRS, repairs, strict=True)),
            ]
        )
    return markdown_table(header, cells)


def _speed(prune_metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """Per pruned model, its measurement: its images/s next to the sparse model's timed with it, and the speedup."""
    batches = batch_sizes(prune_metrics)
    header = ["pruned model", "params ratio", "MACs ratio"]
    header += [h for b in batches for h in (f"img/s sparse → pruned (batch {b})", f"speedup (batch {b})")]
    ips, speedup = vocab.EAGER_IMAGES_PER_S, vocab.EAGER_SPEEDUP
    cells = []
    for label, m in prune_metrics.items():
        ratios = (fmt_ratio(number(m, k)) for k in (vocab.PARAMS_RATIO, vocab.MACS_RATIO))
        row = [model_name(label, finetuned=False), *ratios]
        for b in batches:
            sparse, pruned = number(m, vocab.per_batch(vocab.of_sparse(ips), b)), number(m, vocab.per_batch(ips, b))
            row += [f"{fmt_rate(sparse)} → {fmt_rate(pruned)}", fmt_ratio(number(m, vocab.per_batch(speedup, b)))]
        cells.append(row)
    return markdown_table(header, cells)


def export_markdown(export_metrics: Mapping[str, Any], widths: Mapping[str, Any]) -> list[str]:
    """The export stage's section of report.md (empty when it has not run): exported speed, then rounded widths.

    Args:
        export_metrics: reports/export/metrics.json: `threads`, `opset`, and per model (the sparse model of
            prune.lambda, "finetuned_<ratio>") its measurements, speedups against the exported sparse model.
        widths: reports/export/widths.json: "pruned_<ratio>" (plain) and "pruned_<ratio>_round<N>" right after pruning.
    """
    models = {k: v for k, v in export_metrics.items() if isinstance(v, Mapping) and vocab.role_of(k) == vocab.FINETUNED}
    if not models:
        return []
    batches = batch_sizes(models)
    header = ["exported model", "MACs ratio", "MACs run"]
    header += [f"speedup (batch {b})" for b in batches] + [f"of MACs ratio (batch {b})" for b in batches]
    header += [f"eager speedup (batch {b})" for b in batches] + ["ONNX test accuracy", "max abs Δ logit"]
    cells = []
    for name, m in models.items():
        speedups = _per_batch(m, vocab.ONNX_SPEEDUP, batches)
        shares = _per_batch(m, vocab.ONNX_SPEEDUP_OVER_MACS_RATIO, batches)
        eager = _per_batch(m, vocab.EAGER_SPEEDUP, batches)
        difference = number(m, vocab.MAX_ABS_DIFF)
        cells.append(
            [
                model_name(_ratio_of(name), finetuned=True),
                fmt_ratio(number(m, vocab.MACS_RATIO)),
                fmt_millions(number(m, vocab.ONNX_MACS)),
            ]
            + speedups
            + shares
            + eager
            + [fmt_pct(number(m, vocab.ONNX_TEST_ACC)), NA if difference is None else f"{difference:.1e}"]
        )
    threads, opset = export_metrics.get("threads", NA), export_metrics.get("opset", NA)
    pad_to = export_metrics.get("pad_to")
    padding = (
        f" Its pruned widths are padded with zero channels to multiples of {pad_to} (`export.pad_to`), which ONNX "
        "Runtime's blocked kernels need: the logits stay the pruned model's (*max abs Δ logit*), the graph computes "
        "*MACs run*, and *MACs ratio* is the pruned model's."
        if pad_to
        else ""
    )
    parts = [
        "## Exported models (ONNX Runtime)",
        f"Each model exported to ONNX (opset {opset}, BatchNorm folded into its conv) and timed in ONNX Runtime "
        f"with {threads} threads, interleaved with the exported sparse model; eager PyTorch, with as many threads, "
        f"likewise, in rounds of its own.{padding} *MACs ratio* and *MACs run* count conv + linear MACs; *of MACs "
        "ratio* is how much of the promised speedup the export realises.",
        markdown_table(header, cells),
    ]
    rows = {k: v for k, v in widths.items() if isinstance(v, Mapping)}
    if rows:
        batches = batch_sizes(rows)
        header = ["pruned model", "round_to", "params", "MACs", "accuracy right after pruning"]
        header += [f"ONNX speedup (batch {b})" for b in batches] + [f"of MACs ratio (batch {b})" for b in batches]
        cells = [
            [
                model_name(_width_ratio(name), finetuned=False),
                fmt_int(number(m, vocab.ROUND_TO)),
                fmt_int(number(m, vocab.NUM_PARAMS)),
                fmt_millions(number(m, vocab.MACS)),
                fmt_pct(number(m, vocab.TEST_ACC)),
            ]
            + _per_batch(m, vocab.ONNX_SPEEDUP, batches)
            + _per_batch(m, vocab.ONNX_SPEEDUP_OVER_MACS_RATIO, batches)
            for name, m in rows.items()
        ]
        parts += [
            "### Hardware-aligned widths",
            "Plain pruning next to pruning that keeps a multiple of `round_to` channels per layer (the next-largest "
            "|γ|), right after pruning (repaired as the prune stage repairs), speedups of the exports (not padded) "
            "against the exported sparse model:",
            markdown_table(header, cells),
            *_width_findings(rows, batches[-1]),
            *_padding_findings(models, rows, export_metrics.get("pad_to"), batches[-1]),
        ]
    return parts


def _per_batch(m: Mapping[str, Any], key: str, batches: list[int]) -> list[str]:
    return [fmt_ratio(number(m, vocab.per_batch(key, b))) for b in batches]


def _ratio_of(name: str) -> str:
    """The ratio label of a model key: "finetuned_0.5" -> "0.5"."""
    return name.partition("_")[2]


def _width_ratio(name: str) -> str:
    """The ratio label of a widths.json entry: "pruned_0.5" and "pruned_0.5_round8" -> "0.5"."""
    return _ratio_of(name).split("_round")[0]


def _width_findings(rows: Mapping[str, Mapping[str, Any]], batch: int) -> list[str]:
    """One sentence from the widths table: at each ratio, the plain and the rounded export's speedup at `batch`."""
    by_ratio: dict[str, list[Mapping[str, Any]]] = {}
    for name, m in rows.items():
        by_ratio.setdefault(_width_ratio(name), []).append(m)
    findings = []
    for label, variants in by_ratio.items():
        plain = [m for m in variants if number(m, vocab.ROUND_TO) == 1]
        rounded = [m for m in variants if (number(m, vocab.ROUND_TO) or 1) > 1]
        if not plain or not rounded:
            continue
        speedups = [number(m, vocab.per_batch(vocab.ONNX_SPEEDUP, batch)) for m in (plain[0], rounded[0])]
        if None in speedups:
            continue
        findings.append(
            f"{model_name(label, finetuned=False)} runs {fmt_ratio(speedups[0])} with plain widths and "
            f"{fmt_ratio(speedups[1])} with widths rounded to {fmt_int(number(rounded[0], vocab.ROUND_TO))}"
        )
    return _sentence(f"In this run, at batch {batch} against the exported sparse model: ", findings)


def _padding_findings(
    models: Mapping[str, Mapping[str, Any]], widths: Mapping[str, Mapping[str, Any]], pad_to: int | None, batch: int
) -> list[str]:
    """One sentence on what padding gave: each padded fine-tuned export's speedup at `batch` next to the plain
    (unpadded) export of the same widths in the widths table, where the two models have the same channel counts."""
    if not pad_to:
        return []
    findings = []
    for name, m in models.items():
        label = _ratio_of(name)
        plain = widths.get(vocab.pruned_model(label))
        if plain is None or number(plain, vocab.NUM_PARAMS) != number(m, vocab.NUM_PARAMS):  # not the same widths
            continue
        speedup = vocab.per_batch(vocab.ONNX_SPEEDUP, batch)
        padded, unpadded = number(m, speedup), number(plain, speedup)
        if None in (padded, unpadded):
            continue
        findings.append(
            f"{model_name(label, finetuned=True)} runs {fmt_ratio(padded)} padded to {pad_to}, where its widths "
            f"unpadded ran {fmt_ratio(unpadded)}"
        )
    return _sentence(f"Padding at export, at batch {batch}: ", findings)


def _sentence(opening: str, findings: list[str]) -> list[str]:
    """The findings as one sentence after `opening`, as a paragraph of report.md; none without findings."""
    return [opening + "; ".join(findings) + "."] if findings else []


def _verdicts(rows: list[dict[str, Any]], constraints: ConstraintsConfig) -> list[str]:
    """One line per model saying whether it meets the constraints, and if not, which one it misses."""
    lines = []
    for r in rows:
        if r[vocab.MEETS_CONSTRAINTS] is None:
            lines.append(f"- {r['model']}: n/a (accuracy or params unknown)")
            continue
        misses = []
        if r[vocab.TEST_ACC] < constraints.min_accuracy:
            misses.append(f"accuracy {fmt_pct(r['test_acc'])} < {fmt_pct(constraints.min_accuracy)}")
        if r[vocab.NUM_PARAMS] > constraints.max_params:
            misses.append(f"params {fmt_int(r['num_params'])} > {fmt_int(constraints.max_params)}")
        lines.append(f"- {r['model']}: " + ("**meets** both" if not misses else "misses: " + "; ".join(misses)))
    feasible = [r for r in rows if r[vocab.MEETS_CONSTRAINTS] and r["stage"] == "finetune"]
    if feasible:
        best = max(feasible, key=lambda r: r[vocab.TEST_ACC])
        lines.append(f"\nBest feasible model: **{best['model']}** ({fmt_pct(best['test_acc'])}).")
    else:
        lines.append("\nNo fine-tuned model meets both constraints.")
    return lines


def markdown(inputs: ReportInputs, config: Config, rows: Mapping[str, dict[str, Any]]) -> str:
    """report.md: settings, tables and every figure (linked relative to the report, as GitHub renders it)."""
    c = config.constraints
    parts = [
        f"# Network Slimming report: {config.model.arch} on {config.data.dataset}",
        "## Settings",
        _settings(inputs, config),
        "## Models",
        _comparison(list(rows.values())),
        "Accuracy is on the test set (best validation epoch). MACs are per image, the multiply-accumulates of the "
        "convolutions and linear layers (`macs`); FLOPs = 2 × MACs. thop's count, which also adds 4 per BatchNorm "
        "element and the average pool, is `thop_macs` in the stages' metrics.json files. A sparse model "
        "is the unpruned architecture trained with the L1 penalty of its λ; the pruned models come from the one of "
        f"λ = {config.prune.lambda_}. Speed is not in this table: each pruned model is timed in a measurement of its "
        "own, interleaved with the sparse model it was pruned from (Speed, below), and throughputs of different "
        "measurements do not compare.",
        "## Pruning",
        "Test accuracy right after pruning, before any fine-tuning, four ways: plain surgery; with the removed "
        "channels' constant output relu(β) folded into the next layer (bias compensation); with every BN's running "
        f"statistics re-estimated on {config.prune.recalibration_batches or 1} training batches (BN recalibration); "
        "and with both. In bold the model that was saved and fine-tuned.",
        _pruning(inputs.prune_metrics, saved_repair(config)),
        *compensation_subsumed(inputs.prune_metrics, config),
        pruning_text(inputs, config),
        "## Speed",
        "The speedup the MACs promise (MACs ratio, of conv + linear MACs) next to the speedup measured by the prune "
        "stage in eager PyTorch, "
        "each pruned model timed interleaved with the sparse model it was pruned from in one measurement (its "
        "images/s shown with it); fine-tuning keeps the architecture, so the fine-tuned model runs as fast:",
        _speed(inputs.prune_metrics),
        *export_markdown(inputs.export_metrics, inputs.export_widths),
        "## Constraints",
        f"Test accuracy ≥ {fmt_pct(c.min_accuracy)} and at most {fmt_int(c.max_params)} parameters.",
        "\n".join(_verdicts(list(rows.values()), c)),
        "## Figures",
    ]
    texts = captions(inputs, config, rows)
    for name, heading in FIGURES.items():
        parts += [f"### {heading}", f"![{heading}](figures/{name})", texts[name]]
    parts += [
        "## Is slimming worth it?",
        "Controls at the pruned architecture (trained from scratch, random channels, a uniformly narrower network), "
        "a ratio sweep and multi-pass slimming are a pipeline of their own, `make study` (studies/dvc.yaml): "
        "[studies/README.md](studies/README.md).",
    ]
    return "\n\n".join(parts) + "\n"
