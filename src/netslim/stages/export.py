"""`netslim export`: the sparse model of prune.lambda and every fine-tuned model as ONNX (BatchNorm folded), checked
and timed.

Each model is exported with a dynamic batch size, checked by onnx.checker, and run in ONNX Runtime on real test
images: its logits must equal PyTorch's to within export.atol, or the stage fails and writes nothing. Each
fine-tuned model is then timed against the sparse one it was pruned from (interleaved, in ONNX Runtime and in
eager PyTorch, at export.batch_sizes, with export.threads threads). With export.pad_to set, each exported graph
has its pruned widths padded with zero channels to multiples of pad_to (export.pad_channels: the same logits,
faster kernels); its PyTorch model, the eager timing and the MACs ratio stay the pruned model's. With
export.compare_round_to set, plain pruning (unpadded) and pruning with round_to = compare_round_to are compared
side by side at each ratio, right after pruning.

Writes <paths.exported>/<model>.onnx and <paths.export_reports>/{metrics.json,widths.json}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from netslim import tracking
from netslim import vocabulary as vocab
from netslim.config import Config, ConfigError, lambda_label, ratio_label
from netslim.data import PreparedData, normalize
from netslim.engine import evaluate
from netslim.export import (
    OPSET,
    Deployable,
    check_matches,
    default_threads,
    onnx_accuracy,
    onnx_model,
    ort_session,
    pad_channels,
    speed_table,
    write_onnx,
)
from netslim.io import load_checkpoint, write_metrics
from netslim.measure import count_conv_linear_macs, model_summary
from netslim.models import count_params, model_from_checkpoint
from netslim.stages.shell import StageShell
from netslim.steps.prune import prune_configured

CPU = torch.device("cpu")  # ONNX Runtime runs on the CPU here, so the eager models it is compared with do too


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: which models, and how they are timed, come from params.yaml (prune and export)."""


def _flat(rows: list[dict[str, float]]) -> dict[str, float]:
    """One model's speed_table rows as metric names with the batch size as a suffix (onnx_speedup_b64, ...); the
    MACs ratio is kept once."""
    per_batch = [(row["batch_size"], key, value) for row in rows for key, value in row.items()]
    once = ("batch_size", vocab.MACS_RATIO)
    return {vocab.per_batch(key, b): value for b, key, value in per_batch if key not in once}


def _ratios(sparse: dict[str, float], pruned: dict[str, float]) -> dict[str, float]:
    return {
        vocab.PARAMS_RATIO: sparse[vocab.NUM_PARAMS] / pruned[vocab.NUM_PARAMS],
        vocab.MACS_RATIO: sparse[vocab.MACS] / pruned[vocab.MACS],
    }


def _deployable(
    model: nn.Module,
    metadata: dict[str, str],
    threads: int,
    image_shape: Sequence[int],
    graph: nn.Module | None = None,
) -> tuple[onnx.ModelProto, Deployable]:
    """The ONNX export of `graph` (default: `model`) and its session, paired with `model`: the PyTorch side of every
    check, of the eager timing and of the MACs ratio is the model as pruned, whatever its export's widths are."""
    proto = onnx_model(model if graph is None else graph, metadata, image_shape=image_shape)
    return proto, Deployable(model, ort_session(proto, threads))


def compare_widths(
    sparse: nn.Module, data: PreparedData, config: Config, reference: Deployable, threads: int
) -> dict[str, dict[str, float]]:
    """Plain pruning against pruning rounded to export.compare_round_to, at each numeric prune ratio.

    Right after pruning, repaired as the prune stage repairs (`prune.bias_compensation`,
    `prune.recalibration_batches`), before fine-tuning: params, MACs, test accuracy in PyTorch, and ONNX Runtime
    speed, each pruned export timed interleaved with the sparse one (`reference`).
    """
    p, e = config.prune, config.export
    ratios = [r for r in p.ratios if r != vocab.BUDGET]
    size = (1, *data.image_shape)
    reference_summary = model_summary(reference.model, size)
    results: dict[str, dict[str, float]] = {}
    for ratio in ratios:
        name = vocab.pruned_model(ratio_label(ratio))
        variants = {name: 1, f"{name}_round{e.compare_round_to}": e.compare_round_to}
        for name, round_to in variants.items():
            rounded = dataclasses.replace(config, prune=dataclasses.replace(p, round_to=round_to))
            model = prune_configured(sparse, data, rounded, CPU, ratio).model.cpu()
            _, accuracy = evaluate(
                model, data.test, data.mean, data.std, CPU, config.runtime.eval_batch_size, amp=False
            )
            _, pruned = _deployable(model, {}, threads, data.image_shape)
            check_matches(name, model, pruned.session, _check_images(data, config), e.atol)
            (rows,) = speed_table(reference, [pruned], threads, e.batch_sizes, e.repeats, eager=False)
            summary = model_summary(model, size)
            results[name] = {vocab.ROUND_TO: round_to, vocab.TEST_ACC: accuracy} | summary
            results[name] |= _ratios(reference_summary, summary)
            results[name] |= _flat(rows)
    return results


def _check_lineage(path: Path, source: object, lam: str) -> None:
    """ConfigError unless a model whose provenance names λ `source` descends from the sparse model of `lam`, the
    reference it is timed against (a λ=0 reference against the λ=1e-2 model's descendants would pass for
    the speedup of pruning). A model without a λ in its provenance (written outside the pipeline) is not checked."""
    if source is None:
        return
    try:
        label = lambda_label(source)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: its provenance names λ {source!r:.20}, not a number; rerun the stage") from None
    if label != lam:
        raise ConfigError(
            f"{path}: was pruned from the λ={label} model but the reference it is timed against is the λ={lam} model "
            "(prune.lambda); rerun prune and finetune for it (`dvc repro`)"
        )


def _check_images(data: PreparedData, config: Config) -> torch.Tensor:
    return normalize(data.test.images[: config.export.check_images], data.mean, data.std).contiguous()


def run(args: argparse.Namespace, config: Config) -> int:
    shell = StageShell(config, "export")  # no device: everything here runs on the CPU
    layout = shell.layout
    lam = lambda_label(config.prune.lambda_)
    sparse_key = vocab.train_model(lam)  # the model every fine-tuned one is compared with
    sources = {sparse_key: layout.sparse_best(lam)} | {
        vocab.finetuned_model(ratio_label(r)): layout.finetuned(r) for r in config.prune.ratios
    }
    checkpoints = {name: load_checkpoint(path) for name, path in sources.items()}
    # a bad file, or one of another arch than model.arch, stops here
    models = {
        name: model_from_checkpoint(checkpoint, sources[name], config.model.arch).cpu().eval()
        for name, checkpoint in checkpoints.items()
    }
    for name, checkpoint in checkpoints.items():
        _check_lineage(sources[name], checkpoint["provenance"].get("lambda"), lam)
    data = shell.data
    size = (1, *data.image_shape)
    e = config.export
    threads = e.threads or default_threads()
    check_images = _check_images(data, config)
    metadata = {
        "input": f"images: float32 NCHW, N×{'×'.join(map(str, data.image_shape))}, (pixel/255 - mean)/std per channel",
        "mean": json.dumps(list(data.mean)),
        "std": json.dumps(list(data.std)),
        "classes": json.dumps(data.classes),
        "dataset": data.dataset,
    }
    # what an export run compares: the sparse model of one λ and its fine-tuned models, one per ratio
    compared = {"lambda": lam, "ratios": tracking.param_text([ratio_label(r) for r in config.prune.ratios])}
    reports = [layout.export_reports / vocab.METRICS_FILE, layout.export_reports / vocab.WIDTHS_FILE]
    files = [*(layout.exported(name) for name in models), *reports]
    needs = sum(4 * count_params(model) for model in models.values()) + 2**20
    with shell.writing("all", "", files, "export", needs, compared, **{"lambda": lam}) as (outputs, run):
        run.set_tags({"ort_threads": threads, "opset": OPSET})  # stage_run itself logs the params dvc.yaml lists
        run.linked_sources({sources[name]: checkpoint["provenance"] for name, checkpoint in checkpoints.items()})
        exported, metrics = {}, {}
        for name, model in models.items():  # each checked right after its export: a wrong file stops the stage early
            info = metadata | {"model": name, "arch": model.arch, "cfg": json.dumps(model.cfg)}
            graph = pad_channels(model, e.pad_to)
            if e.pad_to:
                info |= {"padded_to": str(e.pad_to), "padded_cfg": json.dumps(graph.cfg)}
            proto, deployable = exported[name] = _deployable(model, info, threads, data.image_shape, graph)
            metrics[name] = {
                vocab.MAX_ABS_DIFF: check_matches(name, model, deployable.session, check_images, e.atol),
                vocab.ONNX_TEST_ACC: onnx_accuracy(deployable.session, data.test, data.mean, data.std),
                vocab.ONNX_BYTES: proto.ByteSize(),
                vocab.ONNX_MACS: count_conv_linear_macs(graph, size),  # padding included
            } | model_summary(model, size)
        reference = exported[sparse_key][1]
        pruned = [name for name in exported if name != sparse_key]
        table = speed_table(
            reference,
            [exported[name][1] for name in pruned],
            threads,
            e.batch_sizes,
            e.repeats,
            channels_last=config.runtime.channels_last,
        )
        for name, rows in zip(pruned, table, strict=True):
            metrics[name] |= _ratios(metrics[sparse_key], metrics[name]) | _flat(rows)
        widths = compare_widths(models[sparse_key], data, config, reference, threads) if e.compare_round_to else {}
        for name, (proto, _) in exported.items():
            write_onnx(outputs.path(layout.exported(name)), proto)
        setting = {"threads": threads, "opset": OPSET, "pad_to": e.pad_to}
        write_metrics(outputs.path(layout.export_reports / vocab.METRICS_FILE), setting | metrics)
        write_metrics(outputs.path(layout.export_reports / vocab.WIDTHS_FILE), setting | widths)
        outputs.commit()
        first_speedup = vocab.per_batch(vocab.ONNX_SPEEDUP, e.batch_sizes[0])
        headline = [vocab.model_metric(model, vocab.ONNX_TEST_ACC) for model in metrics]
        headline += [vocab.model_metric(model, first_speedup) for model in metrics if model != sparse_key]
        run.metrics(
            {vocab.model_metric(m, k): v for m, values in (metrics | widths).items() for k, v in values.items()},
            headline=tuple(headline),
        )
        for name in exported:
            run.artifact(layout.exported(name), "onnx")
    print(
        f"export: {len(exported)} ONNX models (opset {OPSET}, BatchNorm folded"
        + (f", widths padded to multiples of {e.pad_to}" if e.pad_to else "")
        + f") -> {layout.exported(sparse_key).parent}"
    )
    for name, m in metrics.items():
        line = f"  {name}: max |Δ logit| {m[vocab.MAX_ABS_DIFF]:.1e}, ONNX test acc {m[vocab.ONNX_TEST_ACC]:.4f}"
        for b in e.batch_sizes if name != sparse_key else ():
            speedup, eager = m[vocab.per_batch(vocab.ONNX_SPEEDUP, b)], m[vocab.per_batch(vocab.EAGER_SPEEDUP, b)]
            line += f"; batch {b}: {speedup:.2f}× (MACs {m[vocab.MACS_RATIO]:.2f}×, eager PyTorch {eager:.2f}×)"
        print(line)
    print(f"  ({threads} threads; speedups against the sparse λ={lam} model they were pruned from, both exported)")
    return 0
