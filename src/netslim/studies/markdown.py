"""reports/studies/README.md: the studies' tables and what their numbers say, from the parts' JSON results."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from netslim.studies.parts import CFG_NUM_PARAMS, PARTS, load_part
from netslim.vocabulary import NUM_PARAMS


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
                f"{mine[0][NUM_PARAMS]:,}",
                f"{mine[0]['macs']:,}",
                str(mine[0]["epochs"]),
            ]
        )
    lines = [
        f"## Is slimming worth it? Controls at the {result['ratio']:g}-pruned architecture",
        "",
        f"Every row has the architecture of the sparse model pruned at {result['ratio']:g} "
        f"({result[CFG_NUM_PARAMS]:,} params) or, last row, a uniformly narrower network of about that many params; "
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
            f"{r[NUM_PARAMS]:,}",
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
            f"{p[NUM_PARAMS]:,}",
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
            f"{single[NUM_PARAMS]:,}",
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
            f"{c[NUM_PARAMS]:,}",
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
        f"({last[NUM_PARAMS]:,} params) and ends at {_pct(last['test_acc_trained'])}; single-pass pruning to the same "
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
