"""`netslim prune --ratio R`: sparse checkpoint -> a genuinely smaller model + its measurements.

Writes models/pruned/<R>.pt (cfg and provenance inside) and reports/prune/<R>/{metrics.json,channels.csv}.
"""

from __future__ import annotations

import argparse
import copy

import torch

from netslim import tracking
from netslim.config import BUDGET, Config, lambda_label, parse_lambda, parse_ratio, ratio_label
from netslim.data import PreparedData, load_prepared
from netslim.engine import evaluate, resolve_device
from netslim.io import file_sha256, write_csv, write_json
from netslim.measure import channels_per_layer, compare_models
from netslim.models import load_model
from netslim.slimming.recalibrate import calibration_batches, recalibrate_batchnorm
from netslim.slimming.surgery import PruneResult, prune
from netslim.stages.common import Layout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ratio", required=True, help='share of prunable channels to remove (e.g. 0.9), or "budget"')
    parser.add_argument("--lambda", dest="lam", help="prune the sparse model of this λ (default: prune.lambda)")


def run(args: argparse.Namespace, config: Config) -> int:
    target = parse_ratio(args.ratio, "--ratio")
    label = ratio_label(target)
    lam = lambda_label(parse_lambda(args.lam or config.prune.lambda_, "--lambda"))
    layout = Layout(config.paths)
    device = resolve_device(config.experiment.device)
    source = layout.sparse_best(lam)
    sparse = load_model(source)
    data = load_prepared(layout.prepared, config.data.dataset)
    by = {"target_params": config.prune.target_params} if target == BUDGET else {"ratio": target}
    if target == BUDGET and config.prune.target_latency_ms is not None:
        from netslim.export import budget_ratio  # ONNX Runtime is loaded only for a latency budget

        by = {"ratio": budget_ratio(sparse, config.prune, config.export.threads)}  # measured by exporting candidates
    tags = {"ratio": label, "lambda": lam, "arch": sparse.arch, "dataset": config.data.dataset}
    with tracking.stage_run(config, "prune", f"prune {_percent(label)}", **tags) as run:
        run.source(source)
        results = {
            compensate: prune(
                sparse,
                min_channels=config.prune.min_channels,
                bias_compensation=compensate,
                round_to=config.prune.round_to,
                **by,
            )
            for compensate in (True, False)
        }
        variants = four_ways(results, data, config, device)
        chosen = variant_name(config.prune.bias_compensation, config.prune.recalibration_batches > 0)
        result = results[config.prune.bias_compensation]
        result.model = variants[chosen]  # the saved model is the one fine-tuning starts from
        ev = dict(device=device, batch_size=config.runtime.eval_batch_size, amp=config.runtime.amp)
        _, unpruned_acc = evaluate(sparse, data.test, data.mean, data.std, **ev)
        acc = {name: evaluate(m, data.test, data.mean, data.std, **ev)[1] for name, m in variants.items()}
        _, val_acc = evaluate(result.model, data.val, data.mean, data.std, **ev) if len(data.val) else (0, float("nan"))
        speed = compare_models(
            sparse, result.model, device, batch_sizes=(1, 64), repeats=config.runtime.throughput_repeats
        )
        provenance = {
            "stage": "prune",
            "ratio": float(result.ratio),
            "target": label,
            "threshold": float(result.threshold),
            "lambda": float(lam),
            "bias_compensation": config.prune.bias_compensation,
            "recalibration_batches": config.prune.recalibration_batches,
            "source": str(source),
            "source_sha256": file_sha256(source),
        }
        out = layout.pruned(label)
        run.save_model(out, result.model, provenance)
        channels = channels_per_layer(result.model)
        before = channels_per_layer(sparse)
        write_csv(
            layout.prune_reports(label) / "channels.csv",
            [{"layer": n, "channels_before": before[n], "channels_kept": k} for n, k in channels.items()],
        )
        metrics = {
            "ratio_used": float(result.ratio),
            "threshold": float(result.threshold),
            "test_acc_before_finetune": acc[chosen],
            **{f"test_acc_{name}": value for name, value in acc.items()},
            "val_acc_before_finetune": val_acc,
            "unpruned_test_acc": unpruned_acc,
        } | speed_metrics(speed)
        write_json(layout.prune_reports(label) / "metrics.json", metrics)
        run.metrics(metrics)
        run.dict({"cfg": result.model.cfg, "channels": channels}, "cfg.json")
        run.model(result.model, data.test.images[:2], data.mean, data.std)
    print(
        f"prune {label} (λ={lam}): ratio {result.ratio:.4f}, threshold {result.threshold:.4g}\n"
        f"  params {metrics['num_params_unpruned']:,} -> {metrics['num_params']:,}, "
        f"MACs {metrics['macs_unpruned']:,} -> {metrics['macs']:,} (FLOPs = 2×MACs: {metrics['flops']:,})\n"
        f"  test acc {unpruned_acc:.4f} -> {acc[chosen]:.4f} before fine-tuning ({chosen}; "
        + ", ".join(f"{name} {value:.4f}" for name, value in acc.items())
        + ")\n"
        f"  measured speedup {metrics['speedup_b1']:.2f}× at batch 1, {metrics['speedup_b64']:.2f}× at batch 64 "
        f"(MACs ratio {metrics['macs_ratio']:.2f}×) -> {out}"
    )
    return 0


VARIANTS = ("plain", "compensated", "recalibrated", "compensated_recalibrated")


def variant_name(compensated: bool, recalibrated: bool) -> str:
    """How a pruned model was repaired after surgery: one of VARIANTS."""
    return VARIANTS[int(compensated) + 2 * int(recalibrated)]


def four_ways(results: dict[bool, PruneResult], data: PreparedData, config: Config, device: torch.device) -> dict:
    """The pruned model four ways: plain surgery, + bias compensation, + BN recalibration, + both.

    `results` maps bias_compensation to its pruned model; the recalibrated ones are copies re-estimated on the
    same `prune.recalibration_batches` training batches (at least one, so that the comparison always exists).
    """
    variants = {}
    for recalibrated in (False, True):
        for compensated in (False, True):
            model = results[compensated].model
            if recalibrated:
                batches = calibration_batches(
                    data.train,
                    data.mean,
                    data.std,
                    max(1, config.prune.recalibration_batches),
                    config.train.batch_size,
                    device,
                    config.experiment.seed,
                )
                model = recalibrate_batchnorm(copy.deepcopy(model).to(device), batches)
            variants[variant_name(compensated, recalibrated)] = model
    return variants


def _percent(label: str) -> str:
    return label if label == BUDGET else f"{float(label) * 100:g}%"


def speed_metrics(speed: dict) -> dict[str, float]:
    """compare_models' nested result as flat metric names: `<what>` of the pruned model, `<what>_unpruned`."""
    flat = {
        "num_params": speed["pruned"]["params"],
        "num_params_unpruned": speed["reference"]["params"],
        "macs": speed["pruned"]["macs"],
        "macs_unpruned": speed["reference"]["macs"],
        "flops": speed["pruned"]["flops"],
        "flops_unpruned": speed["reference"]["flops"],
        "params_ratio": speed["params_ratio"],
        "macs_ratio": speed["macs_ratio"],
    }
    for row in speed["throughput"]:
        b = row["batch_size"]
        flat |= {
            f"throughput_b{b}": row["pruned_images_per_s"],
            f"throughput_b{b}_unpruned": row["reference_images_per_s"],
            f"speedup_b{b}": row["speedup"],
        }
    return flat
