"""The report's figures and tables, from the stages' outputs already read into DataFrames and dicts.

Nothing here reads or writes files (`netslim.stages.report` does), so every figure and table can be built
and checked in memory. Figures are bare `matplotlib.figure.Figure` objects, not pyplot ones: no GUI backend
and no global figure registry to leak into, and both `savefig` and MLflow's `log_figure` accept them.
Values the stages did not write show as "n/a" rather than failing the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from netslim.config import BUDGET, Config, ConstraintsConfig, OptimConfig, lambda_label, milestone_epochs

DPI = 120
NA = "n/a"
STAGE_COLORS = {"train": "tab:gray", "prune": "tab:orange", "finetune": "tab:green"}

# Figure file -> heading; report.md embeds them in this order, each with a caption computed from this run's numbers.
FIGURES = {
    "sparsity_training_accuracy.png": "Sparsity training",
    "scaling_factor_distribution.png": "Scaling factors γ",
    "sparsity_vs_accuracy.png": "Sparsity against accuracy",
    "channels_per_layer.png": "Channels per layer",
    "finetune_accuracy.png": "Fine-tuning",
    "model_comparison.png": "Model comparison",
}
BASELINE = "unpruned_lambda_0"  # model key of the run trained with λ = 0: what the other models are measured against
SMALL_GAMMA = 0.05  # |γ| below this counts as "near zero" in the captions (the and the paper's eye-ball line)
SEED_LAMBDA_LABEL = "1e-4"  # the λ of the 40-epoch seed experiment, against which a scaled demo λ is stated
SEED_LAMBDA = float(SEED_LAMBDA_LABEL)
# How a pruned model was repaired right after surgery: prune metrics key suffix -> column title.
REPAIRS = {
    "plain": "plain surgery",
    "compensated": "+ bias compensation",
    "recalibrated": "+ BN recalibration",
    "compensated_recalibrated": "+ both",
}


@dataclass(frozen=True)
class ReportInputs:
    """Everything the earlier stages wrote, keyed by λ label (train) or ratio label (prune, finetune)."""

    train_history: dict[str, pd.DataFrame]
    train_metrics: dict[str, dict[str, Any]]
    gammas: dict[str, pd.DataFrame]
    prune_metrics: dict[str, dict[str, Any]]
    channels: dict[str, pd.DataFrame]
    finetune_history: dict[str, pd.DataFrame]
    finetune_metrics: dict[str, dict[str, Any]]
    export_metrics: dict[str, Any] = field(default_factory=dict)  # reports/export/*.json, when the export stage ran
    export_widths: dict[str, Any] = field(default_factory=dict)


# ---- names and numbers -----------------------------------------------------------------------------


def ratio_text(label: str) -> str:
    """ "0.9" -> "90%", "budget" -> "(budget)": how a prune target reads in a model name."""
    return f"({BUDGET})" if label == BUDGET else f"{float(label) * 100:g}%"


def model_name(label: str, finetuned: bool) -> str:
    return f"pruned {ratio_text(label)}" + (" + fine-tuned" if finetuned else "")


def number(values: Mapping[str, Any], key: str) -> float | None:
    """A finite number from a metrics dict, or None when missing, NaN or not a number."""
    value = values.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def meets_constraints(constraints: ConstraintsConfig, test_acc: float | None, params: float | None) -> bool | None:
    """Accuracy AND params within the constraints; None when either is unknown (shown as n/a, never as a pass)."""
    if test_acc is None or params is None:
        return None
    return constraints.met_by(test_acc, params)


def fmt_pct(value: float | None, digits: int = 2) -> str:
    """A share as a percentage: two decimals in tables, one (digits=1) in the running text under the figures."""
    return NA if value is None else f"{value * 100:.{digits}f}%"


def fmt_int(value: float | None) -> str:
    return NA if value is None else f"{round(value):,}"


def fmt_millions(value: float | None) -> str:
    return NA if value is None else f"{value / 1e6:,.1f} M"


def fmt_ratio(value: float | None) -> str:
    return NA if value is None else f"{value:.2f}×"


def fmt_rate(value: float | None) -> str:
    """Images/s: whole numbers, except that a slow rate keeps three significant digits."""
    return NA if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def fmt_bool(value: bool | None) -> str:
    return NA if value is None else ("yes" if value else "no")


# ---- the summary table ------------------------------------------------------------------------------


def _unpruned_architecture(inputs: ReportInputs) -> dict[str, Any]:
    """Params and MACs of the unpruned architecture (every λ trains the same one), from the first prune run that
    wrote them."""
    out: dict[str, Any] = {}
    for metrics in inputs.prune_metrics.values():
        for key in ("num_params_unpruned", "macs_unpruned", "flops_unpruned"):
            if key not in out and number(metrics, key) is not None:
                out[key] = metrics[key]
    return out


def _flops(values: Mapping[str, Any], macs: float | None) -> float | None:
    flops = number(values, "flops")
    return flops if flops is not None or macs is None else 2 * macs


def train_key(lam: str) -> str:
    """The model key of a sparsity-training run: λ = 0 trains the unpruned baseline, any other λ a sparse model."""
    return BASELINE if lam == "0" else f"sparse_lambda_{lam}"


def train_name(lam: str) -> str:
    return "unpruned (λ = 0)" if lam == "0" else f"sparse (λ = {lam})"


def summary_rows(inputs: ReportInputs, config: Config) -> dict[str, dict[str, Any]]:
    """One row per model of params.yaml: every λ of sparsity training ("unpruned_lambda_0", "sparse_lambda_1e-2"),
    then per ratio the pruned and the fine-tuned model ("pruned_0.9", "finetuned_0.9").

    No throughput: each one is timed in its own measurement (README "DVC views"); speed is compared as speedups, each
    pruned model against the unpruned model timed with it. None marks a value no stage wrote (an empty cell in
    summary.csv, "n/a" in report.md).
    """
    arch = _unpruned_architecture(inputs)
    macs = number(arch, "macs_unpruned")
    lambdas = sorted(inputs.train_metrics, key=lambda lam: lam != "0")  # the unpruned baseline first
    rows = {}
    for lam in lambdas:
        train = inputs.train_metrics[lam]
        rows[train_key(lam)] = {
            "model": train_name(lam),
            "stage": "train",
            "ratio": 0.0,
            "test_acc": number(train, "test_acc"),
            "num_params": number(train, "num_params") or number(arch, "num_params_unpruned"),
            "macs": macs,
            "flops": number(arch, "flops_unpruned") or (2 * macs if macs is not None else None),
        }
    for label, pm in inputs.prune_metrics.items():
        fm = inputs.finetune_metrics[label]
        for key, stage, metrics, acc_key in (
            (f"pruned_{label}", "prune", pm, "test_acc_before_finetune"),
            (f"finetuned_{label}", "finetune", fm, "test_acc"),
        ):
            macs = number(metrics, "macs")
            rows[key] = {
                "model": model_name(label, finetuned=stage == "finetune"),
                "stage": stage,
                "ratio": number(pm, "ratio_used"),
                "test_acc": number(metrics, acc_key),
                "num_params": number(metrics, "num_params"),
                "macs": macs,
                "flops": _flops(metrics, macs),
            }
    for row in rows.values():
        row["meets_constraints"] = meets_constraints(config.constraints, row["test_acc"], row["num_params"])
    return rows


HEADLINE = ("test_acc", "num_params", "macs", "meets_constraints")  # reports/metrics/<model>.json, in this order


def headline_metrics(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model, what `dvc metrics show` lists: HEADLINE's values that are known (the verdict a bool)."""
    return {key: {name: row[name] for name in HEADLINE if row.get(name) is not None} for key, row in rows.items()}


# What each measurement timed, kept apart from the headline metrics: timings move from run to run (the machine's
# load), so `dvc metrics diff` would report them as changed on every rerun. Each file holds one measurement, the
# unpruned model timed interleaved with the pruned one, so the speedup inside a file is a fair comparison.
PRUNE_TIMINGS = ("throughput_b{b}", "throughput_b{b}_unpruned", "speedup_b{b}")  # eager PyTorch, the prune stage
EXPORT_TIMINGS = ("onnx_images_per_s_b{b}", "onnx_images_per_s_unpruned_b{b}", "speedup_b{b}", "eager_speedup_b{b}")


def timing_metrics(inputs: ReportInputs) -> dict[str, dict[str, float]]:
    """reports/timings/<measurement>.json: "pruned_<ratio>" (the prune stage, eager PyTorch) and "exported_<ratio>"
    (the export stage: the fine-tuned model's ONNX export against the exported unpruned model)."""
    measurements: dict[str, tuple[Mapping[str, Any], tuple[str, ...]]] = {
        f"pruned_{label}": (metrics, PRUNE_TIMINGS) for label, metrics in inputs.prune_metrics.items()
    }
    exported = {k: v for k, v in inputs.export_metrics.items() if k.startswith("finetuned_") and isinstance(v, Mapping)}
    measurements |= {f"exported_{k.removeprefix('finetuned_')}": (v, EXPORT_TIMINGS) for k, v in exported.items()}
    out = {}
    for name, (metrics, keys) in measurements.items():
        names = [key.format(b=b) for b in _batch_sizes({name: metrics}) for key in keys]
        values = {key: number(metrics, key) for key in names if number(metrics, key) is not None}
        if values:
            out[name] = values
    return out


# ---- curves for DVC's plots ------------------------------------------------------------------------


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
        before = number(inputs.prune_metrics.get(label, {}), "test_acc_before_finetune")
        start = [{"epoch": 0, "test_acc": before}] if before is not None else []
        finetuning += [
            {"model": name, "ratio": label, "epoch": row["epoch"], "test_acc": row["test_acc"]}
            for row in start + history.to_dict("records")
        ]
    return {"sparsity_training.csv": training, "finetuning.csv": finetuning}


# ---- figures ----------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _panels(fig: Figure, n: int, **share: bool) -> list[Axes]:
    return list(np.atleast_1d(fig.subplots(1, n, squeeze=False, **share)).ravel())


def _plot_accuracy(ax: Axes, history: pd.DataFrame) -> None:
    marker = "o" if len(history) <= 25 else None  # markers help on a few epochs, clutter on many
    for column, name, color in (
        ("train_acc", "train", "tab:blue"),
        ("val_acc", "validation", "tab:green"),
        ("test_acc", "test", "tab:orange"),
    ):
        if column in history and history[column].notna().any():
            ax.plot(history["epoch"], history[column] * 100, marker=marker, ms=3, color=color, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _legend_below(fig: Figure, ax: Axes) -> None:
    """One legend for all panels, under them, where it hides no curve."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=9)


def sparsity_training_accuracy(history: pd.DataFrame, lam: str, best_epoch: int | None = None) -> Figure:
    fig = _figure(7, 4)
    ax = fig.subplots()
    _plot_accuracy(ax, history)
    if best_epoch is not None:
        ax.axvline(best_epoch, color="k", ls=":", lw=1, label=f"best validation epoch ({best_epoch})")
    ax.set_title(f"Sparsity training at λ = {lam}: accuracy per epoch")
    ax.legend(loc="lower right")
    return fig


def scaling_factor_distribution(gammas: Mapping[str, pd.DataFrame], threshold: float) -> Figure:
    """One γ histogram per λ; shared bins and axes so the panels compare at a glance."""
    values = {lam: df["gamma"].to_numpy(dtype=float) for lam, df in gammas.items()}
    everything = np.concatenate(list(values.values()))
    lo, hi = (min(everything.min(), 0.0), everything.max()) if everything.size else (0.0, 1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 61)
    fig = _figure(3.6 * len(values) + 0.6, 3.8)
    axes = _panels(fig, len(values), sharex=True, sharey=True)
    for ax, (lam, v) in zip(axes, values.items(), strict=True):
        ax.hist(v, bins=bins, color="tab:blue")
        ax.set_yscale("log")  # near-zero γ outnumber the rest by orders of magnitude at a large λ
        share = float(np.mean(np.abs(v) < threshold)) if v.size else math.nan
        ax.set_title(f"λ = {lam}: {share:.0%} of |γ| < {threshold:g}", fontsize=11)
        ax.set_xlabel("γ (BN scaling factor)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("channels (log scale)")
    fig.suptitle("Distribution of the prunable BN scaling factors γ after sparsity training")
    return fig


def sparsity_vs_accuracy(histories: Mapping[str, pd.DataFrame], threshold: float) -> Figure:
    fig = _figure(3.6 * len(histories) + 0.6, 3.8)
    axes = _panels(fig, len(histories), sharex=True, sharey=True)
    for ax, (lam, h) in zip(axes, histories.items(), strict=True):
        ax.plot(
            h["epoch"], h["sparsity"] * 100, color="tab:red", marker="o", ms=3, label=f"sparsity (|γ| < {threshold:g})"
        )
        ax.plot(h["epoch"], h["train_acc"] * 100, color="tab:blue", marker="o", ms=3, label="train accuracy")
        ax.set(title=f"λ = {lam}", xlabel="epoch", ylim=(0, 102))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% of channels / % accuracy")
    _legend_below(fig, axes[0])
    fig.suptitle("Sparsity and training accuracy during sparsity training")
    return fig


def channels_per_layer(channels: Mapping[str, pd.DataFrame]) -> Figure:
    """Kept channels per layer at each ratio, over grey bars of the unpruned widths (same for every ratio)."""
    first = next(iter(channels.values()))
    layers = list(first["layer"])
    x = np.arange(len(layers))
    fig = _figure(max(8.0, 0.22 * len(layers) + 2.5), 4.8)
    ax = fig.subplots()
    ax.bar(x, first["channels_before"], color="lightgray", label="unpruned")
    for label, df in channels.items():
        kept = df.set_index("layer")["channels_kept"].reindex(layers)
        ax.plot(x, kept, marker="o", ms=3, label=model_name(label, finetuned=False))
    ax.set_xticks(x, layers, rotation=90, fontsize=7)
    ax.set(xlabel="prunable layer (its BN)", ylabel="channels", title="Channels kept per prunable layer")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return fig


def finetune_accuracy(
    histories: Mapping[str, pd.DataFrame], after_pruning: Mapping[str, float | None], min_accuracy: float
) -> Figure:
    fig = _figure(4.2 * len(histories) + 0.6, 3.9)
    axes = _panels(fig, len(histories), sharey=True)
    for ax, (label, h) in zip(axes, histories.items(), strict=True):
        _plot_accuracy(ax, h)
        if after_pruning.get(label) is not None:
            ax.plot([0], [after_pruning[label] * 100], "kx", ms=8, label="after pruning")
        ax.axhline(min_accuracy * 100, color="tab:red", ls="--", lw=1, label=f"constraint ({min_accuracy:.0%})")
        ax.set_title(model_name(label, finetuned=False))
    _legend_below(fig, axes[0])
    fig.suptitle("Fine-tuning the pruned models: accuracy per epoch")
    return fig


def _bars(ax: Axes, names: list[str], values: list[float | None], colors: list[str], fmt) -> None:
    """Horizontal bars, top to bottom in table order, each labelled with its value (n/a for unknown)."""
    y = np.arange(len(names))[::-1]
    ax.barh(y, [0 if v is None else v for v in values], color=colors)
    for yi, v in zip(y, values, strict=True):
        ax.text(0 if v is None else v, yi, f" {NA if v is None else fmt(v)}", va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.margins(x=0.25)
    ax.grid(axis="x", alpha=0.3)


def model_comparison(
    rows: list[dict[str, Any]],
    prune_metrics: Mapping[str, Mapping[str, Any]],
    constraints: ConstraintsConfig,
    export_metrics: Mapping[str, Any] | None = None,
) -> Figure:
    """Every model side by side (accuracy, params, MACs) with the constraint lines, and each pruned model's speedup
    against its MACs ratio: measured in eager PyTorch by the prune stage, and in ONNX Runtime by the export stage when
    it has run. No throughput bars: each model is timed in its own measurement, under its own load, so only a
    speedup (against the unpruned model timed with it) compares like with like."""
    names = [r["model"] for r in rows]
    colors = [STAGE_COLORS.get(r["stage"], "tab:blue") for r in rows]

    def column(key: str, scale: float = 1.0) -> list[float | None]:
        return [None if r[key] is None else r[key] / scale for r in rows]

    fig = _figure(11, 8.5)
    (acc, params), (macs, speed) = fig.subplots(2, 2)
    _bars(acc, names, column("test_acc", 0.01), colors, lambda v: f"{v:.1f}%")
    acc.axvline(constraints.min_accuracy * 100, color="tab:red", ls="--")
    acc.set(title=f"Test accuracy (dashed: min {constraints.min_accuracy:.0%})", xlabel="accuracy (%)")
    _bars(params, names, column("num_params", 1e6), colors, lambda v: f"{v:.2f} M")
    params.axvline(constraints.max_params / 1e6, color="tab:red", ls="--")
    params.set(title=f"Parameters (dashed: max {constraints.max_params / 1e6:g} M)", xlabel="parameters (millions)")
    params.tick_params(labelleft=False)  # same models in the same order as the panel on its left
    _bars(macs, names, column("macs", 1e6), colors, lambda v: f"{v:,.1f} M")
    macs.set(title="MACs per image", xlabel="MACs (millions); FLOPs = 2 × MACs")
    fig.suptitle("Unpruned and sparse (grey), pruned before fine-tuning (orange) and after fine-tuning (green)")
    _speedups(speed, prune_metrics, export_metrics or {})
    return fig


def _speedups(ax: Axes, prune_metrics: Mapping[str, Mapping[str, Any]], export_metrics: Mapping[str, Any]) -> None:
    """Grouped bars per pruned model: the speedup its MACs promise, the speedups measured in eager PyTorch at batch 1
    and 64 (prune stage), and those of its exported fine-tuned model in ONNX Runtime (export stage), if any.

    Fine-tuning keeps the architecture, so the fine-tuned model's export stands for the pruned model's speed.
    """
    labels = list(prune_metrics)
    y = np.arange(len(labels))[::-1]
    exported = {label: export_metrics.get(f"finetuned_{label}") for label in labels}
    series = [
        ("MACs ratio", "tab:gray", [number(prune_metrics[label], "macs_ratio") for label in labels]),
        ("eager, batch 1", "tab:blue", [number(prune_metrics[label], "speedup_b1") for label in labels]),
        ("eager, batch 64", "tab:purple", [number(prune_metrics[label], "speedup_b64") for label in labels]),
    ]
    for batch, color in ((1, "tab:cyan"), (64, "tab:pink")):
        values = [number(m, f"speedup_b{batch}") if isinstance(m, Mapping) else None for m in exported.values()]
        if any(v is not None for v in values):
            series.append((f"ONNX Runtime, batch {batch}", color, values))
    height = 0.8 / len(series)
    for i, (name, color, values) in enumerate(series):
        offsets = y + ((len(series) - 1) / 2 - i) * height
        ax.barh(offsets, [v or 0 for v in values], height=height, color=color, label=name)
        for yi, v in zip(offsets, values, strict=True):
            ax.text(v or 0, yi, f" {fmt_ratio(v)}", va="center", fontsize=7)
    ax.axvline(1, color="k", lw=1)
    ax.set_yticks(y, [model_name(label, finetuned=False) for label in labels], fontsize=8)
    ax.set(title="Speedup: MACs ratio vs measured", xlabel="× the unpruned model timed in the same measurement")
    ax.margins(x=0.25)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=7)  # below: no bar or label hidden


def figures(inputs: ReportInputs, config: Config) -> dict[str, Figure]:
    """Every figure of FIGURES, by file name."""
    lam = config.prune.lambda_
    threshold = config.train.sparsity_threshold
    best = number(inputs.train_metrics[lam], "best_epoch")
    built = {
        "sparsity_training_accuracy.png": sparsity_training_accuracy(
            inputs.train_history[lam], lam, None if best is None else int(best)
        ),
        "scaling_factor_distribution.png": scaling_factor_distribution(inputs.gammas, threshold),
        "sparsity_vs_accuracy.png": sparsity_vs_accuracy(inputs.train_history, threshold),
        "channels_per_layer.png": channels_per_layer(inputs.channels),
        "finetune_accuracy.png": finetune_accuracy(
            inputs.finetune_history,
            {label: number(m, "test_acc_before_finetune") for label, m in inputs.prune_metrics.items()},
            config.constraints.min_accuracy,
        ),
        "model_comparison.png": model_comparison(
            list(summary_rows(inputs, config).values()), inputs.prune_metrics, config.constraints, inputs.export_metrics
        ),
    }
    return {name: built[name] for name in FIGURES}


# ---- report.md --------------------------------------------------------------------------------------


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
            fmt_pct(r["test_acc"]),
            fmt_int(r["num_params"]),
            fmt_millions(r["macs"]),
            fmt_millions(r["flops"]),
            fmt_bool(r["meets_constraints"]),
        ]
        for r in rows
    ]
    return markdown_table(header, cells)


def _pruning(prune_metrics: Mapping[str, Mapping[str, Any]], saved: str) -> str:
    header = ["pruned model", "ratio used", "channels removed", "γ threshold", "sparse model", *REPAIRS.values()]
    cells = []
    for label, m in prune_metrics.items():
        threshold = number(m, "threshold")
        ratio = number(m, "ratio_used")
        repairs = [fmt_pct(number(m, f"test_acc_{key}")) for key in REPAIRS]
        cells.append(
            [
                model_name(label, finetuned=False),
                NA if ratio is None else f"{ratio:.4f}",
                fmt_pct(number(m, "channels_removed")),
                NA if threshold is None else f"{threshold:.4g}",
                fmt_pct(number(m, "unpruned_test_acc")),
                *(f"**{v}**" if key == saved else v for key, v in zip(REPAIRS, repairs, strict=True)),
            ]
        )
    return markdown_table(header, cells)


def _speed(prune_metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """Per pruned model, its measurement: its images/s next to the unpruned model's timed with it, and the speedup."""
    batches = _batch_sizes(prune_metrics)
    header = ["pruned model", "params ratio", "MACs ratio"]
    header += [h for b in batches for h in (f"img/s unpruned → pruned (batch {b})", f"speedup (batch {b})")]
    cells = []
    for label, m in prune_metrics.items():
        row = [model_name(label, finetuned=False), *(fmt_ratio(number(m, k)) for k in ("params_ratio", "macs_ratio"))]
        for b in batches:
            unpruned, pruned = number(m, f"throughput_b{b}_unpruned"), number(m, f"throughput_b{b}")
            row += [f"{fmt_rate(unpruned)} → {fmt_rate(pruned)}", fmt_ratio(number(m, f"speedup_b{b}"))]
        cells.append(row)
    return markdown_table(header, cells)


def _batch_sizes(models: Mapping[str, Mapping[str, Any]]) -> list[int]:
    """The batch sizes the export stage timed, from its metric names (speedup_b1, speedup_b64, ...)."""
    found = {int(k.removeprefix("speedup_b")) for m in models.values() for k in m if k.startswith("speedup_b")}
    return sorted(found)


def export_markdown(export_metrics: Mapping[str, Any], widths: Mapping[str, Any]) -> list[str]:
    """The export stage's section of report.md (empty when it has not run): exported speed, then rounded widths.

    Args:
        export_metrics: reports/export/metrics.json: `threads`, `opset`, and per model ("unpruned",
            "finetuned_<ratio>") its measurements, speedups against the exported unpruned model.
        widths: reports/export/widths.json: "pruned_<ratio>" (plain) and "pruned_<ratio>_round<N>" right after pruning.
    """
    models = {k: v for k, v in export_metrics.items() if isinstance(v, Mapping) and k != "unpruned"}
    if not models:
        return []
    batches = _batch_sizes(models)
    header = ["exported model", "MACs ratio", "MACs run"]
    header += [f"speedup (batch {b})" for b in batches] + [f"of MACs ratio (batch {b})" for b in batches]
    header += [f"eager speedup (batch {b})" for b in batches] + ["ONNX test accuracy", "max abs Δ logit"]
    cells = []
    for name, m in models.items():
        speedups = [fmt_ratio(number(m, f"speedup_b{b}")) for b in batches]
        shares = [fmt_ratio(number(m, f"speedup_over_macs_ratio_b{b}")) for b in batches]
        eager = [fmt_ratio(number(m, f"eager_speedup_b{b}")) for b in batches]
        difference = number(m, "max_abs_diff")
        cells.append(
            [
                model_name(name.removeprefix("finetuned_"), finetuned=True),
                fmt_ratio(number(m, "macs_ratio")),
                fmt_millions(number(m, "onnx_macs")),
            ]
            + speedups
            + shares
            + eager
            + [fmt_pct(number(m, "onnx_test_acc")), NA if difference is None else f"{difference:.1e}"]
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
        f"with {threads} threads, interleaved with the exported unpruned model; eager PyTorch, with as many threads, "
        f"likewise, in rounds of its own.{padding} *MACs ratio* and *MACs run* count conv + linear MACs; *of MACs "
        "ratio* is how much of the promised speedup the export realises.",
        markdown_table(header, cells),
    ]
    rows = {k: v for k, v in widths.items() if isinstance(v, Mapping)}
    if rows:
        batches = _batch_sizes(rows)
        header = ["pruned model", "round_to", "params", "MACs", "accuracy right after pruning"]
        header += [f"ONNX speedup (batch {b})" for b in batches] + [f"of MACs ratio (batch {b})" for b in batches]
        cells = [
            [
                model_name(_width_ratio(name), finetuned=False),
                fmt_int(number(m, "round_to")),
                fmt_int(number(m, "params")),
                fmt_millions(number(m, "macs")),
                fmt_pct(number(m, "test_acc")),
            ]
            + [fmt_ratio(number(m, f"speedup_b{b}")) for b in batches]
            + [fmt_ratio(number(m, f"speedup_over_macs_ratio_b{b}")) for b in batches]
            for name, m in rows.items()
        ]
        parts += [
            "### Hardware-aligned widths",
            "Plain pruning next to pruning that keeps a multiple of `round_to` channels per layer (the next-largest "
            "|γ|), right after pruning (repaired as the prune stage repairs), speedups of the exports (not padded) "
            "against the exported unpruned model:",
            markdown_table(header, cells),
            *_width_findings(rows, batches[-1]),
            *_padding_findings(models, rows, export_metrics.get("pad_to"), batches[-1]),
        ]
    return parts


def _width_ratio(name: str) -> str:
    """The ratio label of a widths.json entry: "pruned_0.5" and "pruned_0.5_round8" -> "0.5"."""
    return name.removeprefix("pruned_").split("_round")[0]


def _width_findings(rows: Mapping[str, Mapping[str, Any]], batch: int) -> list[str]:
    """One sentence from the widths table: at each ratio, the plain and the rounded export's speedup at `batch`."""
    by_ratio: dict[str, list[Mapping[str, Any]]] = {}
    for name, m in rows.items():
        by_ratio.setdefault(_width_ratio(name), []).append(m)
    findings = []
    for label, variants in by_ratio.items():
        plain = [m for m in variants if number(m, "round_to") == 1]
        rounded = [m for m in variants if (number(m, "round_to") or 1) > 1]
        if not plain or not rounded:
            continue
        speedups = [number(m, f"speedup_b{batch}") for m in (plain[0], rounded[0])]
        if None in speedups:
            continue
        findings.append(
            f"{model_name(label, finetuned=False)} runs {fmt_ratio(speedups[0])} with plain widths and "
            f"{fmt_ratio(speedups[1])} with widths rounded to {fmt_int(number(rounded[0], 'round_to'))}"
        )
    return _sentence(f"In this run, at batch {batch} against the exported unpruned model: ", findings)


def _padding_findings(
    models: Mapping[str, Mapping[str, Any]], widths: Mapping[str, Mapping[str, Any]], pad_to: int | None, batch: int
) -> list[str]:
    """One sentence on what padding gave: each padded fine-tuned export's speedup at `batch` next to the plain
    (unpadded) export of the same widths in the widths table, where the two models have the same channel counts."""
    if not pad_to:
        return []
    findings = []
    for name, m in models.items():
        label = name.removeprefix("finetuned_")
        plain = widths.get(f"pruned_{label}")
        if plain is None or number(plain, "params") != number(m, "params"):  # not the same widths: nothing to compare
            continue
        padded, unpadded = number(m, f"speedup_b{batch}"), number(plain, f"speedup_b{batch}")
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
        if r["meets_constraints"] is None:
            lines.append(f"- {r['model']}: n/a (accuracy or params unknown)")
            continue
        misses = []
        if r["test_acc"] < constraints.min_accuracy:
            misses.append(f"accuracy {fmt_pct(r['test_acc'])} < {fmt_pct(constraints.min_accuracy)}")
        if r["num_params"] > constraints.max_params:
            misses.append(f"params {fmt_int(r['num_params'])} > {fmt_int(constraints.max_params)}")
        lines.append(f"- {r['model']}: " + ("**meets** both" if not misses else "misses: " + "; ".join(misses)))
    feasible = [r for r in rows if r["meets_constraints"] and r["stage"] == "finetune"]
    if feasible:
        best = max(feasible, key=lambda r: r["test_acc"])
        lines.append(f"\nBest feasible model: **{best['model']}** ({fmt_pct(best['test_acc'])}).")
    else:
        lines.append("\nNo fine-tuned model meets both constraints.")
    return lines


def saved_repair(config: Config) -> str:
    """The REPAIRS key of the pruned model the prune stage saves (and fine-tuning starts from)."""
    compensated, recalibrated = config.prune.bias_compensation, config.prune.recalibration_batches > 0
    return list(REPAIRS)[int(compensated) + 2 * int(recalibrated)]


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
    pairs = [
        (number(m, "test_acc_recalibrated"), number(m, "test_acc_compensated_recalibrated"))
        for m in prune_metrics.values()
    ]
    if not pairs or any(a is None or a != b for a, b in pairs):
        return []
    note = (
        "*+ both* equals *+ BN recalibration* by construction: bias compensation is folded into the next "
        "BatchNorm's running mean, which recalibration then re-estimates from data, so the two models are the same."
    )
    if config.prune.bias_compensation and config.prune.recalibration_batches > 0:
        note += " With recalibration on, `prune.bias_compensation: true` changes nothing in the saved model."
    return [note]


def pruning_text(inputs: ReportInputs) -> str:
    """One sentence per pruned model: what each repair after surgery bought, against the sparse model."""
    lines = []
    for label, m in inputs.prune_metrics.items():
        sparse = number(m, "unpruned_test_acc")
        values = {key: number(m, f"test_acc_{key}") for key in REPAIRS}
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
    best = number(inputs.train_metrics.get(lam, {}), "best_epoch")
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
        before = number(inputs.prune_metrics.get(label, {}), "test_acc_before_finetune")
        after = number(inputs.finetune_metrics.get(label, {}), "test_acc")
        parts.append(
            f"{model_name(label, finetuned=False)}: {fmt_pct(before, 1)} right after pruning, "
            f"{fmt_pct(after, 1)} after {len(fh)} fine-tuning epochs"
        )
    texts["finetune_accuracy.png"] = (
        "Fine-tuning accuracy per epoch, from the pruned model's accuracy (×, epoch 0), with the accuracy "
        f"constraint ({config.constraints.min_accuracy:.0%}) dashed: " + "; ".join(parts) + "."
    )

    reference = rows.get(BASELINE) or rows.get(train_key(lam), {})
    parts = []
    for label, m in inputs.prune_metrics.items():
        tuned = rows.get(f"finetuned_{label}", {})
        parts.append(
            f"{model_name(label, finetuned=True)}: {fmt_pct(tuned.get('test_acc'), 1)} "
            f"({_points(tuned.get('test_acc'), reference.get('test_acc'))} against "
            f"{reference.get('model', 'unpruned')}) "
            f"with {fmt_ratio(number(m, 'params_ratio'))} fewer parameters and {fmt_ratio(number(m, 'macs_ratio'))} "
            f"fewer MACs, measured {fmt_ratio(number(m, 'speedup_b64'))} faster at batch 64 in eager PyTorch"
            + _exported_speedup(inputs.export_metrics.get(f"finetuned_{label}"))
        )
    texts["model_comparison.png"] = (
        "Every model side by side with the constraint lines (grey: unpruned and sparse, orange: pruned, green: "
        "fine-tuned), and the speedups, each measured against the unpruned model timed with it. "
        + "; ".join(parts)
        + "."
    )
    return texts


def _exported_speedup(metrics: Any) -> str:
    """ ", {speedup}× exported (ONNX Runtime)" at the largest timed batch, or "" without an export."""
    if not isinstance(metrics, Mapping):
        return ""
    batches = _batch_sizes({"model": metrics})
    speedup = number(metrics, f"speedup_b{batches[-1]}") if batches else None
    return "" if speedup is None else f" and {fmt_ratio(speedup)} exported to ONNX Runtime (batch {batches[-1]})"


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
        "own, interleaved with the unpruned model (Speed, below), and throughputs of different measurements do not "
        "compare.",
        "## Pruning",
        "Test accuracy right after pruning, before any fine-tuning, four ways: plain surgery; with the removed "
        "channels' constant output relu(β) folded into the next layer (bias compensation); with every BN's running "
        f"statistics re-estimated on {config.prune.recalibration_batches or 1} training batches (BN recalibration); "
        "and with both. In bold the model that was saved and fine-tuned.",
        _pruning(inputs.prune_metrics, saved_repair(config)),
        *compensation_subsumed(inputs.prune_metrics, config),
        pruning_text(inputs),
        "## Speed",
        "The speedup the MACs promise (MACs ratio, of conv + linear MACs) next to the speedup measured by the prune "
        "stage in eager PyTorch, "
        "each pruned model timed interleaved with the unpruned model in one measurement (its images/s shown with "
        "it); fine-tuning keeps the architecture, so the fine-tuned model runs as fast:",
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
