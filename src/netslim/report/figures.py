"""The report's figures (FIGURES), each a bare matplotlib Figure built in memory from the stages' numbers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from netslim import vocabulary as vocab
from netslim.config import Config, ConstraintsConfig
from netslim.report.inputs import NA, ReportInputs, fmt_ratio, model_name, number
from netslim.report.summary import summary_rows

DPI = 120
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
    speedup (against the sparse model timed with it) compares like with like."""
    names = [r["model"] for r in rows]
    colors = [STAGE_COLORS.get(r["stage"], "tab:blue") for r in rows]

    def column(key: str, scale: float = 1.0) -> list[float | None]:
        return [None if r[key] is None else r[key] / scale for r in rows]

    fig = _figure(11, 8.5)
    (acc, params), (macs, speed) = fig.subplots(2, 2)
    _bars(acc, names, column(vocab.TEST_ACC, 0.01), colors, lambda v: f"{v:.1f}%")
    acc.axvline(constraints.min_accuracy * 100, color="tab:red", ls="--")
    acc.set(title=f"Test accuracy (dashed: min {constraints.min_accuracy:.0%})", xlabel="accuracy (%)")
    _bars(params, names, column(vocab.NUM_PARAMS, 1e6), colors, lambda v: f"{v:.2f} M")
    params.axvline(constraints.max_params / 1e6, color="tab:red", ls="--")
    params.set(title=f"Parameters (dashed: max {constraints.max_params / 1e6:g} M)", xlabel="parameters (millions)")
    params.tick_params(labelleft=False)  # same models in the same order as the panel on its left
    _bars(macs, names, column(vocab.MACS, 1e6), colors, lambda v: f"{v:,.1f} M")
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
    exported = {label: export_metrics.get(vocab.finetuned_model(label)) for label in labels}
    eager = [vocab.per_batch(vocab.EAGER_SPEEDUP, b) for b in (1, 64)]
    series = [
        ("MACs ratio", "tab:gray", [number(prune_metrics[label], vocab.MACS_RATIO) for label in labels]),
        ("eager, batch 1", "tab:blue", [number(prune_metrics[label], eager[0]) for label in labels]),
        ("eager, batch 64", "tab:purple", [number(prune_metrics[label], eager[1]) for label in labels]),
    ]
    for batch, color in ((1, "tab:cyan"), (64, "tab:pink")):
        onnx = vocab.per_batch(vocab.ONNX_SPEEDUP, batch)
        values = [number(m, onnx) if isinstance(m, Mapping) else None for m in exported.values()]
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
    ax.set(title="Speedup: MACs ratio vs measured", xlabel="× the sparse model timed in the same measurement")
    ax.margins(x=0.25)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=7)  # below: no bar or label hidden


def figures(inputs: ReportInputs, config: Config) -> dict[str, Figure]:
    """Every figure of FIGURES, by file name."""
    lam = config.prune.lambda_
    threshold = config.train.sparsity_threshold
    best = number(inputs.train_metrics[lam], vocab.BEST_EPOCH)
    built = {
        "sparsity_training_accuracy.png": sparsity_training_accuracy(
            inputs.train_history[lam], lam, None if best is None else int(best)
        ),
        "scaling_factor_distribution.png": scaling_factor_distribution(inputs.gammas, threshold),
        "sparsity_vs_accuracy.png": sparsity_vs_accuracy(inputs.train_history, threshold),
        "channels_per_layer.png": channels_per_layer(inputs.channels),
        "finetune_accuracy.png": finetune_accuracy(
            inputs.finetune_history,
            {label: number(m, vocab.TEST_ACC) for label, m in inputs.prune_metrics.items()},
            config.constraints.min_accuracy,
        ),
        "model_comparison.png": model_comparison(
            list(summary_rows(inputs, config).values()), inputs.prune_metrics, config.constraints, inputs.export_metrics
        ),
    }
    return {name: built[name] for name in FIGURES}
