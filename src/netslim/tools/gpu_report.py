"""gpu-check's report: the JSON skeleton, the seed experiment's time estimated from the measured epochs, and the
markdown table."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from netslim import vocabulary as vocab
from netslim.tools.gpu_shapes import ARCHS, VARIANTS, CheckSize, SeedShape

if TYPE_CHECKING:
    from netslim.config import Config


def new_report(machine: dict[str, Any], size: CheckSize, shape: SeedShape, configured_variant: str) -> dict[str, Any]:
    """The report before any section ran: where, at what size, for which seed experiment."""
    return {
        "gpu": machine.get("gpu"),
        "fallback": "gpu" not in machine,
        "machine": machine,
        "size": asdict(size),
        "seed": asdict(shape),
        "configured_variant": configured_variant,
        "sections": {},
        "skipped": {},
        "errors": {},
        "estimate": {},
    }


def configured_variant(config: Config) -> str:
    switches = (config.runtime.amp, config.runtime.channels_last, config.runtime.compile)
    return next((name for name, value in VARIANTS.items() if value == switches), "bf16_channels_last")


def estimate(report: dict[str, Any], shape: SeedShape) -> dict[str, Any]:
    """The seed experiment's training time from the measured epochs: every λ's sparsity training, then the
    fine-tuning of every pruned model (pruning and export are seconds beside them), per arch and variant."""
    sections = report["sections"]
    result: dict[str, Any] = {}
    for arch in ARCHS:
        for variant in VARIANTS:
            train, base = sections.get(f"train/{arch}/{variant}"), sections.get(f"train/{arch}/bf16_channels_last")
            tunes = [sections.get(f"finetune/{arch}/{r:g}") for r in shape.ratios]
            if train is None or base is None or any(t is None for t in tunes):
                continue
            train_seconds = shape.lambdas * shape.train_epochs * train["epoch_seconds"]
            # fine-tuning is timed in bf16 + channels_last only; other variants scale it as their training scales
            factor = train["epoch_seconds"] / base["epoch_seconds"]
            tune_seconds = sum(shape.finetune_epochs * t["epoch_seconds"] * factor for t in tunes)
            result[f"{arch}/{variant}"] = {
                "train_epoch_seconds": train["epoch_seconds"],
                "train_seconds": train_seconds,
                "finetune_seconds": tune_seconds,
                "total_seconds": train_seconds + tune_seconds,
            }
    return result


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.2f} s"


def render_markdown(report: dict[str, Any]) -> str:
    m, s, shape = report["machine"], report["sections"], report["seed"]
    batch = report["size"]["batch_size"] or shape["batch_size"]
    where = f"{m['gpu']} (CUDA {m['cuda']}, {m['gpus']} GPU(s))" if m.get("gpu") else "NO GPU: the CPU fallback"
    lines = [
        f"# gpu-check: {m.get('gpu') or 'no GPU (CPU fallback)'}",
        "",
        f"`make gpu-check` on {where}, torch {m['torch']}, {report.get('seconds', 0):.0f} s. Synthetic CIFAR-shaped "
        f"data at the seed's shapes (width {report['size']['width']}, batch {batch}); an epoch is "
        f"{shape['train_images']:,} training images plus {shape['eval_images']:,} evaluated, extrapolated from "
        f"{report['size']['steps']}-step samples.",
        "",
        "| arch | run | ms/step | train img/s | first call s | epoch (extrapolated) |",
        "|---|---|---|---|---|---|",
    ]
    for key, t in s.items():
        kind, *rest = key.split("/")
        if kind in ("train", "finetune") and "step_seconds" in t:
            run = rest[1] if kind == "train" else f"fine-tune {rest[1]}-pruned (bf16_channels_last)"
            lines.append(
                f"| {rest[0]} | {run} | {t['step_seconds'] * 1e3:.1f} | {t['train_images_per_second']:,.0f} | "
                f"{t['first_call_seconds']:.1f} | {_duration(t.get('epoch_seconds', math.nan))} |"
            )
    checks = []
    for key, t in s.items():
        kind = key.split("/")[0]
        if kind == "prune":
            checks.append(
                f"- {key}: params {t[vocab.of_sparse(vocab.NUM_PARAMS)]:,} → {t[vocab.NUM_PARAMS]:,}, MACs ratio "
                f"{t[vocab.MACS_RATIO]:.2f}×, eager speedup "
                + " and ".join(
                    f"{t.get(vocab.per_batch(vocab.EAGER_SPEEDUP, b), math.nan):.2f}× at batch {b}" for b in (1, 64)
                )
            )
        elif kind == "l1_autocast":
            checks.append(
                f"- {key}: logits {t['logits_dtype']}, γ grads {', '.join(t['gamma_grad_dtypes'])}, |error| "
                f"{t['max_error']:.1e}: {'pass' if t['passed'] else 'FAIL'}"
            )
        elif kind == "export":
            row = t["cpu_speed"][-1]
            cuda = t["cuda_provider"]
            cuda_text = cuda if isinstance(cuda, str) else f"{cuda['speedup']:.2f}× at batch {cuda['batch_size']}"
            checks.append(
                f"- {key}: exported in {t['unpruned_export_seconds']:.0f} s / {t['pruned_export_seconds']:.0f} s, "
                f"ONNX Runtime CPU ({t['threads']} threads) pruned speedup {row[vocab.ONNX_SPEEDUP]:.2f}× at batch "
                f"{row['batch_size']}; CUDA provider: {cuda_text}"
            )
        elif kind == "fit":
            checks.append(
                f"- {key}: one epoch of engine.fit in {t['epoch_seconds']:.2f} s, loss {t['train_loss']:.3f}: "
                f"{'pass' if t['passed'] else 'FAIL'}"
            )
        elif kind == "torchrun":
            checks.append(
                f"- {key}: {t['world_size']} ranks ({t['backend']}), {t['images_per_second']:,.0f} img/s in "
                f"its second epoch: {'pass' if t['passed'] else 'FAIL'}"
            )
        elif kind == "cuda_tests":
            verdict = "FAIL" if not t["passed"] else "pass" if t.get("tests_passed") else "all skipped: no CUDA"
            checks.append(f"- {key} ({', '.join(t['files'])}): {t['summary']}: {verdict}")
    lines += ["", *checks]
    lines += [f"- {k}: skipped, {v}" for k, v in report["skipped"].items()]
    lines += [f"- {k}: **failed**, {v}" for k, v in report["errors"].items()]
    lines += ["", "## The seed experiment on this machine", "", *estimate_lines(report), ""]
    return "\n".join(lines)


def estimate_lines(report: dict[str, Any]) -> list[str]:
    shape, est = report["seed"], report["estimate"]
    configured = f"{shape['arch']}/{report['configured_variant']}"
    runs = (
        f"{shape['lambdas']} λ × {shape['train_epochs']} epochs + {len(shape['ratios'])} pruned models × "
        f"{shape['finetune_epochs']} fine-tuning epochs"
    )
    if configured not in est:
        return [f"No estimate: the timings it needs ({configured}) were not measured."]
    lines = []
    for key, e in est.items():
        mark = " (the seed's runtime settings)" if key == configured else ""
        lines.append(
            f"- {key}{mark}: {runs} = {shape['lambdas'] * shape['train_epochs']} × "
            f"{_duration(e['train_epoch_seconds'])} + fine-tuning {_duration(e['finetune_seconds'])} ≈ "
            f"**{_duration(e['total_seconds'])}**"
        )
    if report["fallback"]:
        lines.append("- These are CPU times of tiny models: they check the arithmetic, not a GPU.")
    lines.append(
        "- Pruned models here are cut from random γ, not from a sparsity-trained model: their widths, and so their "
        "fine-tuning time, differ from the real run's. Pruning, export and the report add minutes."
    )
    return lines
