"""The studies' settings, files, figures and report (reports/studies/README.md), apart from their experiments.

A module of its own, without torch, so that the `study-report` stage depends on this file and the parts' JSON files
only: changing the wording of the report reruns nothing else (netslim.studies holds the experiments).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netslim.config import ConfigError, read_yaml, section_from_dict
from netslim.io import atomic_path, write_csv, write_json

PARTS = ("controls", "sweep", "multipass")


@dataclass(frozen=True)
class StudiesConfig:
    """studies/params.yaml's `studies` section."""

    reports: str = "reports/studies"  # where every part writes its JSON, CSV and figures
    ratio: float = 0.9  # the controls' and the cap's pruning ratio
    seeds: tuple[int, ...] = (0,)  # the controls' training seeds (the sparse model is experiment.seed's)
    kd_alpha: float = 0.5  # the distillation control's α (its temperature is finetune.distill_temperature)
    sweep_ratios: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
    sweep_finetune_ratios: tuple[float, ...] = (0.5, 0.8)  # the sweep's ratios also fine-tuned
    latency_repeats: int = 20  # timed batch-1 forward passes per model (median)
    caps: tuple[float, ...] = (1.0, 0.95, 0.92, 0.9)  # max_layer_ratio values tried at `ratio` in one pass
    passes: int = 4  # multi-pass: prunings, each taking at most `pass_cap` of any layer
    pass_cap: float = 0.5
    pass_target: float = 0.9  # share of the prunable channels removed after the last pass
    pass_epochs: int = 1  # sparsity-training epochs (train.lr, λ = prune.lambda) after every pass but the last


def load_studies(path: str | Path) -> StudiesConfig:
    """The `studies` section of `path`, validated; ConfigError (one line) on a bad file, key or value."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: studies params file not found; run from the project root (studies/params.yaml)")
    raw = read_yaml(path.read_text()) or {}
    if not isinstance(raw, dict) or set(raw) - {"studies"}:
        raise ConfigError(f"{path}: must hold only a `studies:` section")
    s = section_from_dict(StudiesConfig, raw.get("studies"), "studies")
    for key in ("ratio", "pass_target"):
        value = getattr(s, key)
        if not 0 < value < 1:
            raise ConfigError(f"studies.{key}: {value} is outside (0, 1); e.g. 0.9")
    for key in ("sweep_ratios", "sweep_finetune_ratios"):
        for value in getattr(s, key):
            if not 0 < value < 1:
                raise ConfigError(f"studies.{key}: {value} is outside (0, 1); ratios like 0.5")
    for value in (*s.caps, s.pass_cap):
        if not 0 < value <= 1:
            raise ConfigError(f"studies.caps/pass_cap: {value} is outside (0, 1]; 1 = uncapped")
    if not s.seeds:
        raise ConfigError("studies.seeds: [] must list at least one seed, e.g. [0]")
    if not 0 <= s.kd_alpha <= 1:
        raise ConfigError(f"studies.kd_alpha: {s.kd_alpha} must be in [0, 1], e.g. 0.5")
    if s.passes < 1 or s.pass_epochs < 1 or s.latency_repeats < 1:
        raise ConfigError("studies.passes/pass_epochs/latency_repeats: must be >= 1")
    return s


def test_noise(accuracy: float, images: int) -> float:
    """One standard error of an accuracy measured on `images` test images (binomial), e.g. 0.008 at 85% on 2,000."""
    return math.sqrt(accuracy * (1 - accuracy) / images)


def write_part(out: Path, name: str, result: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """`name`.json (everything) and `name`.csv (the rows, list-valued columns left out) under `out`."""
    write_json(out / f"{name}.json", result)
    write_csv(out / f"{name}.csv", [{k: v for k, v in r.items() if not isinstance(v, list)} for r in rows])


def load_part(out: Path, name: str) -> dict[str, Any]:
    return json.loads((out / f"{name}.json").read_text())


# ---- figures and the report ----------------------------------------------------------------------


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
    panels = ((axes[0], "params", "parameters"), (axes[1], "latency_ms_b1", "eager latency, batch 1 (ms)"))
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
        if key == "params":
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
            f"{100 * p['channels_removed']:.0f}% removed\n{p['params'] / 1e3:.0f}k params",
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


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _verdict(diff: float, margin: float) -> str:
    """A difference in accuracy said plainly against the noise of a difference of two test accuracies."""
    if abs(diff) < margin:
        return "within the noise"
    return "better" if diff > 0 else "worse"


def controls_markdown(result: dict[str, Any]) -> list[str]:
    rows, noise = result["rows"], result["noise"]
    margin = 1.96 * math.sqrt(2) * noise  # 95% of the difference of two accuracies, each ±noise
    names = list(dict.fromkeys(r["control"] for r in rows))
    mean = {n: statistics.mean([r["test_acc"] for r in rows if r["control"] == n]) for n in names}
    base = mean[names[0]]
    seeds = sorted({r["seed"] for r in rows})
    table = []
    for n in names:
        mine = [r for r in rows if r["control"] == n]
        table.append(
            [
                n,
                ", ".join(_pct(r["test_acc"]) for r in mine),
                _pct(mean[n]),
                f"{100 * (mean[n] - base):+.2f}" if n != names[0] else "–",
                _pct(mine[0]["test_acc_before_training"]),
                f"{mine[0]['params']:,}",
                f"{mine[0]['macs']:,}",
                str(mine[0]["epochs"]),
            ]
        )
    lines = [
        f"## Is slimming worth it? Controls at the {result['ratio']:g}-pruned architecture",
        "",
        f"Every row has the architecture of the sparse model pruned at {result['ratio']:g} "
        f"({result['cfg_params']:,} params) or, last row, a uniformly narrower network of about that many params; "
        f"seeds {seeds} (training order, initialisation, random channels; the sparse model is one run). Scratch rows "
        f"train with the sparsity-training recipe at λ = 0: Scratch-E {result['scratch_e_epochs']} epochs (sparsity "
        f"training + fine-tuning), Scratch-B {result['scratch_b_epochs']} epochs (the same conv+linear MAC budget). "
        f"Distillation: α = {result['kd']['alpha']:g}, T = {result['kd']['temperature']:g}, teacher the "
        f"{result['kd']['teacher']}, same epochs as plain fine-tuning. Test set: {result['test_images']:,} images, "
        f"one standard error ±{100 * noise:.1f} points; a difference between two rows under ±{100 * margin:.1f} "
        "points (95%) is noise."
        + (
            " One seed: the spread between training runs is not measured here and can be larger than the test set's "
            "(a nearby architecture, or another thread count, fine-tunes several points apart), so each 'better' or "
            "'worse' below is one run's."
            if len(seeds) == 1
            else ""
        ),
        "",
        _table(
            [
                "control",
                "test acc (per seed)",
                "mean",
                "Δ vs slimming (points)",
                "before training",
                "params",
                "conv+linear MACs",
                "epochs",
            ],
            table,
        ),
        "",
        "![controls](controls.png)",
        "",
    ]
    for n in names[1:]:
        diff = mean[n] - base
        lines.append(
            f"- {n}: {_pct(mean[n])}, {100 * diff:+.2f} points against slimming + fine-tuning "
            f"({_pct(base)}): {_verdict(diff, margin)}."
        )
    scratch_e, scratch_b = (next(n for n in names if n.startswith(p)) for p in ("Scratch-E", "Scratch-B"))
    matched = [n for n in (scratch_e, scratch_b) if mean[n] - base > -margin]
    if matched:
        which = " and ".join("the same epochs" if n == scratch_e else "the same compute" for n in matched)
        lines.append(
            f"- Training the pruned architecture from scratch with {which} matches or beats slimming + fine-tuning "
            "here: at this size the inherited weights are not what makes the pruned model good (as Liu et al., "
            "*Rethinking the Value of Network Pruning*, found); what slimming contributes is the architecture."
        )
    else:
        lines.append(
            "- Slimming + fine-tuning beats training the pruned architecture from scratch (same epochs and same "
            "compute) beyond the noise: the inherited weights are worth something at this training budget."
        )
    return lines


def sweep_markdown(result: dict[str, Any], controls_ratio: float) -> list[str]:
    ref = result["unpruned"]
    rows = [
        [
            f"{r['ratio']:g}",
            f"{100 * r['channels_removed']:.1f}%",
            f"{r['params']:,}",
            f"{r['macs']:,}",
            f"{r['thop_macs']:,}",
            _pct(r["test_acc_pruned"]),
            _pct(r["test_acc_finetuned"]),
            f"{r['latency_ms_b1']:.2f}",
        ]
        for r in [ref, *result["rows"]]
    ]
    below = result["first_ratio_below_half"]
    return [
        "## Ratio sweep from one sparse model",
        "",
        "Accuracy right after pruning is of the model repaired as `prune` configures it; the fine-tuned models get "
        f"the demo's fine-tuning (at {controls_ratio:g} it is the controls' slimming + fine-tuning row). MACs are "
        "conv + linear multiply-accumulates per image (thop's count, which adds BatchNorm and pooling, beside it); "
        "latency is eager PyTorch at batch 1 on this machine, the median of "
        "interleaved samples (no ONNX export: cheap, and one measurement for every model).",
        "",
        _table(
            [
                "ratio",
                "channels removed",
                "params",
                "conv+linear MACs",
                "thop MACs",
                "acc right after pruning",
                "fine-tuned",
                "latency ms",
            ],
            rows,
        ),
        "",
        "![sweep](sweep.png)",
        "",
        f"- Accuracy right after pruning first falls below 50% at ratio {below:g}."
        if below is not None
        else "- Accuracy right after pruning stays at or above 50% at every ratio swept.",
        "",
    ]


def multipass_markdown(result: dict[str, Any]) -> list[str]:
    passes, single, st = result["passes"], result["single_pass"], result["settings"]
    last = passes[-1]
    rows = [
        [
            str(p["pass"]),
            f"{p['ratio']:.3f}",
            f"{100 * p['channels_removed']:.1f}%",
            f"{p['params']:,}",
            f"{p['macs']:,}",
            _pct(p["test_acc_pruned"]),
            _pct(p["test_acc_trained"]),
            p["trained"],
        ]
        for p in passes
    ]
    rows.append(
        [
            "single pass",
            "–",
            f"{100 * single['channels_removed']:.1f}%",
            f"{single['params']:,}",
            f"{single['macs']:,}",
            _pct(single["test_acc_pruned"]),
            _pct(single["test_acc_finetuned"]),
            "fine-tuned",
        ]
    )
    caps = [
        [
            f"{c['max_layer_ratio']:g}",
            f"{100 * c['channels_removed']:.1f}%",
            f"{c['params']:,}",
            f"{100 * c['min_width_share']:.1f}%",
            _pct(c["test_acc_pruned"]),
        ]
        for c in result["caps"]
    ]
    diff = last["test_acc_trained"] - single["test_acc_finetuned"]
    uncapped = next((c for c in result["caps"] if c["max_layer_ratio"] == 1), None)
    best_cap = max(result["caps"], key=lambda c: c["test_acc_pruned"])
    lines = [
        "## Multi-pass slimming",
        "",
        f"Each pass prunes at most {st['pass_cap']:g} of any prunable layer (`prune.max_layer_ratio`), at the global "
        f"ratio that reaches {100 * st['pass_target']:g}% of the prunable channels evenly over the passes left; every "
        f"pass but the last is followed by {st['pass_epochs']} epoch(s) of sparsity training (λ = prune.lambda), which "
        f"is also the next pass's sparsity training; the last is fine-tuned for {st['finetune_epochs']} epochs. "
        "The single-pass row prunes the sparse model once (uncapped) to the multi-pass model's parameter count and "
        "fine-tunes it for as many epochs.",
        "",
        _table(
            [
                "pass",
                "pass ratio",
                "channels removed (of the original)",
                "params",
                "conv+linear MACs",
                "acc right after pruning",
                "acc after training",
                "training",
            ],
            rows,
        ),
        "",
        "![multipass](multipass.png)",
        "",
        f"- Multi-pass removes {100 * last['channels_removed']:.1f}% of the prunable channels "
        f"({last['params']:,} params) and ends at {_pct(last['test_acc_trained'])}; single-pass pruning to the same "
        f"params ends at {_pct(single['test_acc_finetuned'])} ({100 * diff:+.2f} points for multi-pass, which also "
        f"trained {st['pass_epochs'] * (len(passes) - 1)} epoch(s) more).",
        "",
        f"### The per-layer cap at ratio {st['ratio']:g}, one pass",
        "",
        _table(
            [
                "max_layer_ratio",
                "channels removed",
                "params",
                "smallest layer kept (share)",
                "acc right after pruning (repaired)",
            ],
            caps,
        ),
        "",
    ]
    if uncapped is not None:
        lines.append(
            f"- Uncapped, the accuracy right after pruning at {st['ratio']:g} is "
            f"{_pct(uncapped['test_acc_pruned'])}; the best cap here ({best_cap['max_layer_ratio']:g}) gives "
            f"{_pct(best_cap['test_acc_pruned'])}. Multi-pass reaches "
            f"{100 * last['channels_removed']:.1f}% removed with {_pct(last['test_acc_pruned'])} right after "
            "its last pruning."
        )
    lines.append("")
    return lines


def load_results(out: Path) -> dict[str, dict[str, Any]]:
    """The three parts' results; the sweep's row at the controls' ratio gets the controls' slimming + fine-tuning
    accuracy (mean over seeds) as its fine-tuned accuracy: the same pruned model and the same fine-tuning, run once."""
    results = {part: load_part(out, part) for part in PARTS}
    controls = results["controls"]
    slimming = [r["test_acc"] for r in controls["rows"] if r["control"] == controls["rows"][0]["control"]]
    for row in results["sweep"]["rows"]:
        if row["ratio"] == controls["ratio"] and row["test_acc_finetuned"] is None:
            row["test_acc_finetuned"] = statistics.mean(slimming)
    return results


def report_markdown(results: dict[str, dict[str, Any]]) -> str:
    """reports/studies/README.md from the three parts' results (`load_results`)."""
    controls_result, sweep_result, multipass_result = (results[part] for part in PARTS)
    lines = [
        "# Studies: is slimming worth it, and how far can it go?",
        "",
        "Written by `make study` (studies/dvc.yaml, settings in studies/params.yaml plus params.yaml); every number "
        "below is measured on this run's data and models, on one seed unless a row lists more.",
        "",
        *controls_markdown(controls_result),
        "",
        *sweep_markdown(sweep_result, controls_result["ratio"]),
        *multipass_markdown(multipass_result),
    ]
    return "\n".join(lines)


FIGURES = {"controls": controls_figure, "sweep": sweep_figure, "multipass": multipass_figure}
