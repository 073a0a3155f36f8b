"""`netslim bench`'s verdicts and benchmarks.md: each figure judged against its target, and the report that says
why a short figure fell short, from the other measurements of the same run (`netslim.tools.bench` measures)."""

from __future__ import annotations

import os
import statistics

# figure key -> (target, how the target reads); ratios are "higher is better" except the tracking cost.
TARGETS = {
    "epoch_vs_seed_style": (1.3, ">= 1.3x faster than the seed-style epoch"),
    "step_vs_bare_step": (0.9, ">= 0.9x the bare model step's speed"),
    "tracking_overhead": (0.03, "< 3% of an epoch"),
}
PRUNED_TARGET = 0.5  # the 90%-pruned model's realised speedup >= half its MACs ratio


def judge(figures: list[dict]) -> None:
    """Add target, target text and pass/short to every figure that has a target (in place)."""
    for f in figures:
        if f["key"] == "tracking_overhead":
            target, text = TARGETS[f["key"]]
            f |= {"target": target, "target_text": text, "passed": f["overhead"] < target}
        elif f["key"] in TARGETS:
            target, text = TARGETS[f["key"]]
            f |= {"target": target, "target_text": text, "passed": f["ratio"] >= target}
        elif f.get("prune_ratio") == 0.9:
            target = PRUNED_TARGET * f["macs_ratio"]
            f |= {
                "target": target,
                "target_text": f">= half its MACs ratio ({f['macs_ratio']:.2f}x / 2 = {target:.2f}x)",
                "passed": f["ratio"] >= target,
            }


def _why_epoch(f: dict, step: dict | None, machine: dict, workers: int) -> str:
    """The seed-style comparison: how much of netslim's epoch is the model's own compute (figure 2)."""
    seed, ours = f["median_seconds"]["seed_style"], f["median_seconds"]["netslim"]
    extra = seed - ours
    text = f"the seed-style epoch took {seed:.2f} s, only {extra:.2f} s ({extra / ours:.0%}) more than netslim's"
    text += f" {ours:.2f} s."
    if step is not None:
        text += (
            f" netslim's trainer step runs at {step['ratio']:.2f}x the bare model step (figure 2), so its epoch is"
            " nearly all forward, backward and optimizer step: a larger ratio needs a slower seed-style pipeline."
        )
    free = (os.cpu_count() or 1) - machine["threads"]
    beside = f" on the {free} core(s) the {machine['threads']} torch thread(s) leave free" if free > 0 else ""
    return text + (
        f" On this CPU the model's compute is the bottleneck, and the seed-style PIL transforms run in {workers} "
        f"DataLoader worker processes{beside}, mostly hidden behind it. The cost the issue targets is a fast GPU "
        "waiting on per-image PIL work and host-to-device copies; `netslim bench` on a CUDA machine measures that."
    )


def _why_step(f: dict) -> str:
    extra = (f["trainer_step_seconds"] - f["bare_step_seconds"]) * 1e3
    return (
        f"the trainer adds {extra:.1f} ms a step to the bare {f['bare_step_seconds'] * 1e3:.1f} ms: the batch "
        "gather, crop/flip, normalisation, the L1 subgradient and the on-device metric sums."
    )


def _why_tracking(f: dict) -> str:
    logged = f["log_seconds_per_epoch"]
    share = logged / f["median_seconds"]["netslim"]
    text = f"logging itself took {logged * 1e3:.0f} ms an epoch ({share:.2%} of it, timed inside the tracked epochs)"
    if share >= f["target"]:
        return text + ", above the target: the store answers too slowly for epochs this short."
    return text + (
        f"; the rest of the measured difference is this machine's run-to-run noise: epochs without tracking alone "
        f"spread by {_spread(f['seconds']['netslim']):.1%} (max - min over median) in this run."
    )


def _why_inference(f: dict) -> str:
    pruned = next(name for name in f["median_seconds"] if name != "unpruned")
    rate = {name: f["macs"][name] * f["images_per_sample"] / f["median_seconds"][name] / 1e9 for name in f["macs"]}
    return (
        f"the pruned model does {f['macs_ratio']:.1f}x fewer MACs but runs them at {rate[pruned]:.2f} GMAC/s against "
        f"the unpruned model's {rate['unpruned']:.2f} GMAC/s. It keeps every layer, with only a few channels in "
        "many of them (random γ prune every layer alike, which also makes the MACs ratio this large); such thin "
        "convolutions do not fill the CPU's vector units, and the per-layer costs (operator dispatch, memory-bound "
        "BatchNorm and ReLU) do not shrink with the MACs."
    )


def _why_short(f: dict, result: dict) -> str:
    """Why a figure fell short, from the other measurements of the same run."""
    by_key = {g["key"]: g for g in result["figures"]}
    if f["key"] == "epoch_vs_seed_style":
        return _why_epoch(f, by_key.get("step_vs_bare_step"), result["machine"], result["settings"]["workers"])
    if f["key"] == "step_vs_bare_step":
        return _why_step(f)
    if f["key"] == "tracking_overhead":
        return _why_tracking(f)
    return _why_inference(f)


def _spread(samples: list[float]) -> float:
    return (max(samples) - min(samples)) / statistics.median(samples)


def _measured(f: dict) -> str:
    if f["key"] == "tracking_overhead":
        return f"{f['ratio']:.3f}x ({f['overhead']:+.1%})"
    if "macs_ratio" in f:
        return f"{f['ratio']:.2f}x (MACs ratio {f['macs_ratio']:.2f}x)"
    return f"{f['ratio']:.2f}x"


def render_markdown(result: dict) -> str:
    """reports/benchmarks.md: the table, then why each short figure fell short."""
    m, s = result["machine"], result["settings"]
    lines = [
        "# netslim benchmarks",
        "",
        f"Measured by `netslim bench` on {m['device_name']} ({m['threads']} threads, torch {m['torch']}), "
        f"load average {m['load_before']:.1f} before and {m['load_after']:.1f} after, in {result['seconds']:.0f} s. "
        f"Model: {s['arch']} width {s['width']} ({result['params']:,} parameters) on 32×32 images; "
        f"{s['images']} training images, batch {s['batch_size']}; every ratio is a ratio of medians of "
        f"{s['repeats']} interleaved samples per variant ({5 * s['repeats']} for inference).",
        "",
        "| figure | measured | target | result |",
        "|---|---|---|---|",
    ]
    for f in result["figures"]:
        verdict = "—" if "passed" not in f else ("pass" if f["passed"] else "**short**")
        lines.append(
            f"| {f['title']} | {_measured(f)} | {f.get('target_text', 'none (shown for context)')} | {verdict} |"
        )
    short = [f for f in result["figures"] if f.get("passed") is False]
    lines += ["", "## Where a figure falls short", ""]
    lines += [f"- **{f['title']}**: {_why_short(f, result)}" for f in short] or ["Every figure meets its target."]
    spread, noisiest = max((_spread(v), f["title"]) for f in result["figures"] for v in f["seconds"].values())
    lines += [
        "",
        f'Samples of one variant spread by up to {spread:.0%} (max - min over median), in "{noisiest}"; '
        "medians of interleaved samples keep that noise out of the ratios as far as they can.",
    ]
    cost = next((f for f in result["figures"] if f["key"] == "tracking_overhead"), None)
    if cost is not None:
        share = cost["log_seconds_per_epoch"] / cost["median_seconds"]["netslim"]
        lines += [
            "",
            f"Logging an epoch's metrics took {cost['log_seconds_per_epoch'] * 1e3:.0f} ms ({share:.2%} of an epoch), "
            f"timed directly inside the tracked epochs. Starting the MLflow run (a fresh SQLite store: schema, "
            f"experiment, tags) took {cost['run_start_seconds']:.1f} s, once per stage, outside the per-epoch figure.",
        ]
    if m["device"] == "cpu":
        lines += [
            "",
            "No GPU was used: bf16 autocast is CUDA-only and is not part of these figures; "
            "run `netslim bench` on a CUDA machine for it.",
        ]
    lines += ["", "All samples, medians and settings: `benchmarks.json`.", ""]
    return "\n".join(lines)
