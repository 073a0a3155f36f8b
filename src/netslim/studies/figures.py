"""The studies' figures (controls.png, sweep.png, multipass.png), each from its part's JSON result."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from netslim.io import atomic_path
from netslim.vocabulary import NUM_PARAMS


def _figure(width: float, height: float, panels: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both cost (lower) and accuracy (higher), by ascending cost."""
    front, best = [], -math.inf
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((cost, acc))
            best = acc
    return front


def sweep_figure(result: dict[str, Any]):
    """Accuracy against params and against batch-1 latency: after pruning (repaired), fine-tuned, the Pareto front."""
    fig, axes = _figure(11, 4.2, 2)
    rows, ref = result["rows"], result["unpruned"]
    panels = ((axes[0], NUM_PARAMS, "parameters"), (axes[1], "latency_ms_b1", "eager latency, batch 1 (ms)"))
    for ax, key, label in panels:
        ax.plot([r[key] for r in rows], [100 * r["test_acc_pruned"] for r in rows], "o-", label="right after pruning")
        for r in rows:
            ax.annotate(
                f"{r['ratio']:g}",
                (r[key], 100 * r["test_acc_pruned"]),
                fontsize=7,
                xytext=(3, -9),
                textcoords="offset points",
            )
        tuned = [r for r in rows if r["test_acc_finetuned"] is not None]
        ax.plot([r[key] for r in tuned], [100 * r["test_acc_finetuned"] for r in tuned], "s", ms=8, label="fine-tuned")
        ax.plot([ref[key]], [100 * ref["test_acc_pruned"]], "*", ms=12, color="k", label="unpruned (sparse)")
        points = [(r[key], r["test_acc_pruned"]) for r in rows] + [(r[key], r["test_acc_finetuned"]) for r in tuned]
        front = pareto_front(points + [(ref[key], ref["test_acc_pruned"])])
        ax.step(
            [p[0] for p in front], [100 * p[1] for p in front], where="post", color="grey", ls=":", label="Pareto front"
        )
        ax.axhline(50, color="r", lw=0.6)
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%)")
        if key == NUM_PARAMS:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Ratio sweep from one sparse model (labels: pruning ratio)")
    return fig


def multipass_figure(result: dict[str, Any]):
    """Each pass's accuracy (after pruning, after training) and each pass's kept channels per prunable layer."""
    fig, axes = _figure(11, 4.2, 2)
    passes, single = result["passes"], result["single_pass"]
    x = [p["pass"] for p in passes]
    axes[0].plot(x, [100 * p["test_acc_pruned"] for p in passes], "o-", label="right after pruning (repaired)")
    axes[0].plot(x, [100 * p["test_acc_trained"] for p in passes], "s-", label="after the pass's training")
    tuned = 100 * single["test_acc_finetuned"]
    axes[0].axhline(tuned, color="k", ls="--", label="single pass, same params, fine-tuned")
    axes[0].axhline(100 * single["test_acc_pruned"], color="grey", ls=":", label="single pass, right after pruning")
    for p in passes:
        axes[0].annotate(
            f"{100 * p['channels_removed']:.0f}% removed\n{p[NUM_PARAMS] / 1e3:.0f}k params",
            (p["pass"], 100 * p["test_acc_trained"]),
            fontsize=7,
            xytext=(4, -22),
            textcoords="offset points",
        )
    axes[0].set_xlabel("pass")
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].set_xticks(x)
    axes[0].legend(fontsize=7, loc="lower left")
    axes[0].grid(alpha=0.3)
    layers = range(len(result["unpruned_widths"]))
    axes[1].plot(layers, result["unpruned_widths"], "k-", lw=1, label="unpruned")
    for p in passes:
        axes[1].plot(layers, p["widths"], "-", marker=".", label=f"after pass {p['pass']}")
    axes[1].plot(layers, single["widths"], "--", color="r", label="single pass, same params")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("prunable layer (forward order)")
    axes[1].set_ylabel("channels kept")
    axes[1].legend(fontsize=7)
    axes[1].grid(alpha=0.3)
    fig.suptitle(f"Multi-pass slimming, at most {result['settings']['pass_cap']:g} of any layer per pass")
    return fig


def controls_figure(result: dict[str, Any]):
    """Each control's test accuracy (mean over seeds) with one standard error of the test set."""
    fig, axes = _figure(9, 3.6, 1)
    names = list(dict.fromkeys(r["control"] for r in result["rows"]))
    means = [
        100
        * sum(r["test_acc"] for r in result["rows"] if r["control"] == n)
        / sum(1 for r in result["rows"] if r["control"] == n)
        for n in names
    ]
    ax = axes[0]
    ax.barh(range(len(names)), means, xerr=100 * result["noise"], color="tab:blue", alpha=0.8, capsize=3)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    for i, m in enumerate(means):
        ax.text(m + 100 * result["noise"] + 0.2, i, f"{m:.2f}%", va="center", fontsize=8)
    ax.set_xlim(min(means) - 5, max(means) + 3)
    ax.set_xlabel(f"test accuracy (%), ±1 standard error of {result['test_images']:,} test images")
    fig.suptitle(f"Is slimming worth it? Controls at the {result['ratio']:g}-pruned architecture")
    return fig


def save_figure(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


FIGURES = {"controls": controls_figure, "sweep": sweep_figure, "multipass": multipass_figure}
