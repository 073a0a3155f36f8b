"""`netslim prune --ratio R`: sparse checkpoint -> a genuinely smaller model + its measurements.

Writes models/pruned/<R>.pt (cfg and provenance inside) and reports/prune/<R>/{metrics.json,channels.csv}.
"""

from __future__ import annotations

import argparse

from netslim import vocabulary as vocab
from netslim.config import Config, lambda_label, parse_lambda, parse_ratio, ratio_label
from netslim.io import write_csv
from netslim.measure import channels_per_layer
from netslim.models import count_params
from netslim.stages.model_tracking import log_model, save_checkpoint
from netslim.stages.shell import StageShell, commit_with_metrics
from netslim.steps.prune import LatencyOf, prune_step


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ratio", required=True, help='share of prunable channels to remove (e.g. 0.9), or "budget"')
    parser.add_argument("--lambda", dest="lam", help="prune the sparse model of this λ (default: prune.lambda)")


def run(args: argparse.Namespace, config: Config) -> int:
    shell = StageShell(config, "prune")
    layout = shell.layout
    target = parse_ratio(args.ratio, "--ratio")
    label = ratio_label(target)
    lam = lambda_label(parse_lambda(args.lam or config.prune.lambda_, "--lambda"))
    device = shell.device
    source = shell.source_model(layout.sparse_best(lam))
    sparse = source.model
    data = shell.data
    tags = {"ratio": label, "lambda": lam, "arch": sparse.arch, "dataset": config.data.dataset}
    params = {"ratio": label, "lambda": lam}
    out, reports = layout.pruned(label), layout.prune_reports(label)
    files = [out, reports / vocab.CHANNELS_FILE, reports / vocab.METRICS_FILE]
    needs = 4 * count_params(sparse) + 2**20  # the pruned checkpoint is at most the sparse model's size
    writing = shell.writing(
        label, f"--ratio {label}", files, f"prune {vocab.ratio_percent(label)}", needs, params, source, **tags
    )
    with writing as (outputs, run):
        outcome = prune_step(sparse, data, config, device, target, _latency_of(config, target, data.image_shape))
        result, chosen, acc = outcome.result, outcome.variant, outcome.test_acc
        provenance = {
            "stage": "prune",
            "ratio": float(result.ratio),
            "target": label,
            "threshold": float(result.threshold),
            "lambda": float(lam),
            "bias_compensation": config.prune.bias_compensation,
            "recalibration_batches": config.prune.recalibration_batches,
            "source": str(source.path),
            "source_sha256": source.sha256,
        }
        save_checkpoint(run, outputs.path(out), result.model, provenance)
        channels = channels_per_layer(result.model)
        before = channels_per_layer(sparse)
        write_csv(
            outputs.path(reports / vocab.CHANNELS_FILE),
            [{"layer": n, "channels_before": before[n], "channels_kept": k} for n, k in channels.items()],
        )
        metrics = outcome.metrics()
        headline = (vocab.TEST_ACC, vocab.NUM_PARAMS, vocab.MACS, vocab.RATIO_USED, vocab.THRESHOLD)
        commit_with_metrics(outputs, run, reports / vocab.METRICS_FILE, metrics, headline)
        run.dict({"cfg": result.model.cfg, "channels": channels}, "cfg.json")
        log_model(run, result.model, data.test.images[:2], data.mean, data.std)
    sparse_params, sparse_macs = (metrics[vocab.of_sparse(k)] for k in (vocab.NUM_PARAMS, vocab.MACS))
    speedup = {b: metrics[vocab.per_batch(vocab.EAGER_SPEEDUP, b)] for b in (1, 64)}
    print(
        f"prune {label} (λ={lam}): ratio {result.ratio:.4f}, threshold {result.threshold:.4g}\n"
        f"  params {sparse_params:,} -> {metrics[vocab.NUM_PARAMS]:,}, "
        f"MACs {sparse_macs:,} -> {metrics[vocab.MACS]:,} (FLOPs = 2×MACs: {metrics[vocab.FLOPS]:,})\n"
        f"  test acc {outcome.sparse_test_acc:.4f} -> {acc[chosen]:.4f} before fine-tuning ({chosen}; "
        + ", ".join(f"{name} {value:.4f}" for name, value in acc.items())
        + ")\n"
        f"  measured speedup {speedup[1]:.2f}× at batch 1, {speedup[64]:.2f}× at batch 64 "
        f"(MACs ratio {metrics[vocab.MACS_RATIO]:.2f}×) -> {out}"
    )
    return 0


def _latency_of(config: Config, target: float | str, image_shape: tuple[int, ...]) -> LatencyOf | None:
    """How a latency budget measures a candidate: exported and timed in ONNX Runtime as `netslim export` runs it
    (export.threads, export.pad_to); None without one."""
    if target != vocab.BUDGET or config.prune.target_latency_ms is None:
        return None
    from netslim.export import latency_resolver  # ONNX Runtime is loaded only for a latency budget

    return latency_resolver(config.export.threads, config.export.pad_to, image_shape)
