"""Deployable models: every BatchNorm folded into its conv, exported to ONNX, run and timed with ONNX Runtime.

Eager PyTorch pays a dispatch per layer and a separate pass per BatchNorm, so a pruned model's measured speedup
falls far short of its MACs ratio. An ONNX Runtime session runs one pre-planned graph with fused kernels; there
the speedup comes much closer to what the MACs promise: docs/export.md and `netslim export`'s metrics say by how
much on this machine.

The exported graph takes normalised float32 NCHW images (x/255 - mean)/std, named `images`, with a dynamic batch
size, and returns `logits`; the mean and std are in the file's metadata.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import fx, nn

from netslim import vocabulary as vocab
from netslim.data import Split, normalize
from netslim.io import atomic_write_bytes
from netslim.measure import IMAGE_SHAPE, count_conv_linear_macs, interleaved_seconds, interleaved_throughput
from netslim.models import architecture, memory_format, unwrap

OPSET = 20  # the ai.onnx opset torch 2.14's exporter (dynamo=True) targets by default; ONNX Runtime 1.2x runs it
INPUT_NAME, OUTPUT_NAME = "images", "logits"
EXAMPLE_BATCH = 2  # torch.export specialises a size-1 dimension, so the example batch must be > 1 to stay dynamic


class ExportError(RuntimeError):
    """An exported model that does not compute what the PyTorch model computes."""


# ---- BatchNorm folding ------------------------------------------------------------------------


def fold_conv_bn(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (weight, bias) of one conv that computes bn(conv(x)) with the BN in eval mode.

    bn(y) = γ (y - μ) / sqrt(σ² + ε) + β, and y = W x + b, so per output channel the conv's weight scales by
    s = γ / sqrt(σ² + ε) and its bias becomes s (b - μ) + β. Computed in float64, returned in weight's dtype.
    """
    scale = gamma.double() / torch.sqrt(running_var.double() + eps)
    conv_bias = torch.zeros_like(running_mean, dtype=torch.float64) if bias is None else bias.double()
    folded_weight = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    folded_bias = scale * (conv_bias - running_mean.double()) + beta.double()
    return folded_weight.to(weight.dtype), folded_bias.to(weight.dtype)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module names where a BatchNorm2d reads only a Conv2d's output and nothing else reads it.

    Found from the traced graph rather than from names, so any architecture in the registry is covered.
    """
    graph = fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        source = node.args[0]
        if (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], nn.Conv2d)
            and len(source.users) == 1
        ):
            pairs.append((source.target, node.target))
    return pairs


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every BatchNorm2d folded into the conv before it (the BN -> Identity).

    Raises ValueError when a BatchNorm2d does not directly follow a conv (it could not be folded).
    """
    folded = copy.deepcopy(unwrap(model)).eval()
    pairs = conv_bn_pairs(folded)
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
            weight, bias = fold_conv_bn(
                conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps
            )
            conv.weight.copy_(weight)
            conv.bias = nn.Parameter(bias)
            _replace(folded, bn_name, nn.Identity())
    left = [name for name, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        raise ValueError(f"BatchNorm2d {', '.join(left)} follow no conv and cannot be folded")
    return folded


# ---- channel padding ---------------------------------------------------------------------------


def pad_channels(model: nn.Module, multiple: int | None) -> nn.Module:
    """A copy of a pruned `model` whose prunable layers have channel counts rounded up to a multiple of `multiple`
    (never past the layer's unpruned width), the added channels all zero: it computes exactly what `model` does.
    `multiple` None (export.pad_to: null) returns `model` itself, unpadded.

    Why: ONNX Runtime's blocked (NCHWc) convolutions work on 8 channels at a time on AVX2 CPUs; a pruned model's
    odd widths fall back to plain kernels and lose most of what pruning saved (docs/export.md). Padding is the
    deployment-side fix, `prune.round_to` the pruning-side one (it keeps real channels where padding adds zeros).
    Exact because an added channel's filters are zero and its BatchNorm has γ = β = 0 (it emits 0 whatever comes
    in; running variance 1), so it is 0 after the ReLU, and the layer after it has zero weights on it.
    """
    if multiple is None:
        return model
    entry = architecture(model.arch)
    unpruned = dict(entry.build(model.num_classes, None, model.width).named_modules())
    layers = dict(model.named_modules())
    kept = {
        name: min(unpruned[name].num_features, -(-layers[name].num_features // multiple) * multiple)
        for name in entry.prunable(model)
    }
    padded = entry.build(model.num_classes, entry.cfg_from_kept(model, kept), model.width)
    source = model.state_dict()
    state = {}
    for key, target in padded.state_dict().items():
        value = torch.ones_like(target) if key.endswith("running_var") else torch.zeros_like(target)
        value[tuple(slice(0, size) for size in source[key].shape)] = source[key]
        state[key] = value
    padded.load_state_dict(state)
    return padded.eval()


# ---- ONNX export and ONNX Runtime -------------------------------------------------------------


def onnx_model(
    model: nn.Module,
    metadata: Mapping[str, str] | None = None,
    opset: int = OPSET,
    image_shape: Sequence[int] = IMAGE_SHAPE,
) -> onnx.ModelProto:
    """`model` with its BatchNorms folded, exported by torch.export (dynamo) with a dynamic batch, checked.

    Args:
        model: a CPU float32 model (left unchanged).
        metadata: strings stored in the file (e.g. the normalisation mean and std).
        image_shape: (channels, height, width) of one input, fixed in the graph (`PreparedData.image_shape`).
    """
    folded = fold_batchnorms(model).cpu().float()
    example = torch.zeros(EXAMPLE_BATCH, *image_shape)
    program = torch.onnx.export(
        folded,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        optimize=True,
        verbose=False,
    )
    proto = program.model_proto
    _drop_stack_traces(proto)
    for key, value in (metadata or {}).items():
        proto.metadata_props.add(key=key, value=str(value))
    onnx.checker.check_model(proto, full_check=True)  # also infers every shape: a malformed graph fails here
    return proto


STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"


def _drop_stack_traces(proto: onnx.ModelProto) -> None:
    """Remove the Python stack trace the exporter stores on every node: it names the source files by absolute path,
    so the same model exported from two checkouts gave two files (another hash for DVC, another onnx_bytes), and
    it was a tenth of a file's bytes. The nodes keep their module names (`namespace`, `name_scopes`)."""
    for node in [*proto.graph.node, *(n for f in proto.functions for n in f.node)]:
        kept = [prop for prop in node.metadata_props if prop.key != STACK_TRACE_KEY]
        if len(kept) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(kept)


def write_onnx(path: str | Path, proto: onnx.ModelProto) -> None:
    """One self-contained file (weights inside, not external data), written atomically."""
    atomic_write_bytes(path, proto.SerializeToString())


def default_threads() -> int:
    """The CPUs this process may run on (what ONNX Runtime and PyTorch would use by default)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ort_session(
    model: onnx.ModelProto | str | Path, threads: int, provider: str = "CPUExecutionProvider"
) -> ort.InferenceSession:
    """A session with `threads` intra-op threads (stated, not left to the runtime) and every graph optimisation, on
    the CPU unless `provider` names another (`netslim.tools.gpu_check` tries "CUDAExecutionProvider").

    Its threads sleep between runs instead of spinning: sessions are timed in turn, and a session's spinning
    threads took the CPU from the next one's run (on 2 cores, about half the throughput with spinning on).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1  # one graph, run sequentially: parallelism is inside each op
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=[provider])


def ort_logits(session: ort.InferenceSession, images: torch.Tensor) -> np.ndarray:
    """Logits of normalised float32 NCHW `images` from an exported model."""
    x = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def max_abs_difference(
    model: nn.Module, session: ort.InferenceSession, images: torch.Tensor, batch_size: int = 256
) -> float:
    """Largest |ONNX Runtime logit - PyTorch logit| / (1 + |PyTorch logit|) over `images` (normalised float32 NCHW),
    the model in eval mode: an absolute difference for ordinary logits, a relative one for huge ones (a diverged
    fine-tuning can leave logits of 1e9, where float32 alone differs by far more than any fixed tolerance).
    NaN when either side's logits hold a NaN or an infinity (Python's max(0.0, nan) is 0.0: a NaN is never
    folded into the running maximum)."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    worst = 0.0
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size].float().contiguous()
                expected = model(batch.to(next(model.parameters()).device)).float().cpu().numpy()
                exported = ort_logits(session, batch)
                if not (np.isfinite(expected).all() and np.isfinite(exported).all()):
                    return math.nan
                scaled = np.abs(exported - expected) / (1 + np.abs(expected))
                worst = max(worst, float(scaled.max()))
    finally:
        model.train(was_training)
    return worst


def check_matches(
    name: str, model: nn.Module, session: ort.InferenceSession, images: torch.Tensor, atol: float
) -> float:
    """The max abs difference of `max_abs_difference`, or ExportError when it exceeds `atol`."""
    difference = max_abs_difference(model, session, images)
    if math.isnan(difference):
        raise ExportError(
            f"export: {name}: its logits on {len(images)} test images hold NaN or inf, in PyTorch or ONNX Runtime; "
            "the model is not usable: rerun the stage that trained it with a lower lr (train.lr or finetune.lr)"
        )
    if not difference <= atol:
        raise ExportError(
            f"export: {name}: ONNX Runtime's logits differ from PyTorch's by up to {difference:.3g} × (1 + |logit|) "
            f"on {len(images)} test images (allowed {atol:g}); the exported file is wrong, do not ship it"
        )
    return difference


# ---- speed ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployable:
    """One model in both forms: eager PyTorch and its ONNX Runtime session."""

    model: nn.Module
    session: ort.InferenceSession


def _threads(threads: int) -> Callable[[], None]:
    """Set PyTorch's intra-op threads to `threads` (as ONNX Runtime's) and return what restores them."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    return lambda: torch.set_num_threads(before)


def _runners(
    model: Deployable, batch_size: int, channels_last: bool
) -> tuple[Callable[[int], None], Callable[[int], None]]:
    """(ONNX Runtime, eager) runners, each doing as many forward passes of one random batch as it is told.

    Eager PyTorch runs in the layout `runtime.channels_last` asks for, as the prune stage times it (NHWC: 1.6×
    faster evaluation of the demo's ResNet-50 on a 2-core CPU), so the export is compared with PyTorch at its best.
    """
    x = torch.randn(batch_size, *input_shape(model.session))
    feeds = {INPUT_NAME: x.numpy()}
    layout = memory_format(channels_last)
    eager = copy.deepcopy(unwrap(model.model)).cpu().eval().to(memory_format=layout)
    x = x.contiguous(memory_format=layout)

    def run_ort(calls: int) -> None:
        for _ in range(calls):
            model.session.run([OUTPUT_NAME], feeds)

    def run_eager(calls: int) -> None:
        for _ in range(calls):
            eager(x)

    return run_ort, run_eager


SAMPLE_SECONDS = 0.1  # a timed sample of slow calls need not cover `images` images to be far above timer noise


def calls_per_sample(batch_size: int, images: int = 64, seconds_per_call: float | None = None) -> int:
    """Forward passes per timed sample: enough to cover about `images` images (timer noise small at batch 1), but
    no more than make the sample last SAMPLE_SECONDS when one call takes `seconds_per_call` (eager PyTorch at batch 1:
    about 12 calls of 8 ms instead of 64, which made eager timing two thirds of the export stage's time)."""
    calls = max(1, images // batch_size)
    if seconds_per_call is not None and seconds_per_call > 0:
        calls = min(calls, max(1, math.ceil(SAMPLE_SECONDS / seconds_per_call)))
    return calls


def _seconds_of_one_call(run: Callable[[int], None]) -> float:
    """How long one call of `run` takes, after a first (warm-up) call; only sizes the timed samples."""
    [[seconds]] = interleaved_seconds([functools.partial(run, 1)], repeats=1, warmup=1)
    return seconds


def speed_table(
    reference: Deployable,
    pruned: Sequence[Deployable],
    threads: int,
    batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 10,
    warmup: int = 2,
    eager: bool = True,
    channels_last: bool = False,
) -> list[list[dict[str, float]]]:
    """Throughput of a reference (the sparse model) and of each pruned model, in ONNX Runtime and eager PyTorch,
    timed interleaved; for each pruned model one row per batch size, named as netslim.vocabulary names them
    (`<runtime>_images_per_s`, `_sparse` for the reference's).

    At each batch size the reference and every pruned model (their ONNX Runtime sessions, then their eager models)
    are timed in the same rounds by measure.interleaved_throughput, so each speedup compares numbers taken under
    the same load, and the reference is timed once for all of them. The two runtimes are timed in separate rounds,
    since one's worker threads still hold the CPU for a moment after a call (PyTorch's OpenMP threads spin before
    they sleep) and would slow the other's next call. PyTorch gets as many threads as ONNX Runtime.
    `onnx_speedup` is ONNX Runtime's pruned/reference throughput and `onnx_speedup_over_macs_ratio` how much of the MACs
    ratio it realises; with `eager`, `eager_speedup` is the same in eager PyTorch and `onnx_over_eager` what
    the export gains for the pruned model; `channels_last` is the eager runs' layout (`runtime.channels_last`).
    """
    size = (1, *input_shape(reference.session))
    reference_macs = count_conv_linear_macs(reference.model, size)
    macs_ratios = [reference_macs / count_conv_linear_macs(model.model, size) for model in pruned]
    restore = _threads(threads)
    table: list[list[dict[str, float]]] = [[] for _ in pruned]
    try:
        with torch.inference_mode():
            for batch_size in batch_sizes:
                runners = [_runners(m, batch_size, channels_last) for m in (reference, *pruned)]
                ort_runs, eager_runs = zip(*runners, strict=True)
                calls = calls_per_sample(batch_size)
                onnx = interleaved_throughput(
                    [functools.partial(run, calls) for run in ort_runs], batch_size * calls, repeats, warmup
                )
                if eager:  # sized by the slower, reference model's call
                    calls = calls_per_sample(batch_size, seconds_per_call=_seconds_of_one_call(eager_runs[0]))
                    timed = interleaved_throughput(
                        [functools.partial(run, calls) for run in eager_runs], batch_size * calls, repeats, warmup
                    )
                for i, macs_ratio in enumerate(macs_ratios):
                    row = {
                        "batch_size": int(batch_size),
                        vocab.ONNX_IMAGES_PER_S: onnx[i + 1],
                        vocab.of_sparse(vocab.ONNX_IMAGES_PER_S): onnx[0],
                        vocab.ONNX_SPEEDUP: onnx[i + 1] / onnx[0],
                        vocab.MACS_RATIO: macs_ratio,
                        vocab.ONNX_SPEEDUP_OVER_MACS_RATIO: onnx[i + 1] / onnx[0] / macs_ratio,
                    }
                    if eager:
                        row |= {
                            vocab.EAGER_IMAGES_PER_S: timed[i + 1],
                            vocab.of_sparse(vocab.EAGER_IMAGES_PER_S): timed[0],
                            vocab.EAGER_SPEEDUP: timed[i + 1] / timed[0],
                            vocab.ONNX_OVER_EAGER: onnx[i + 1] / timed[i + 1],
                        }
                    table[i].append(row)
    finally:
        restore()
    return table


def onnx_accuracy(
    session: ort.InferenceSession, split: Split, mean: Sequence[float], std: Sequence[float], batch_size: int = 256
) -> float:
    """Top-1 accuracy of an exported model on a prepared split (uint8 NHWC images, normalised as in training)."""
    correct = 0
    for start in range(0, len(split), batch_size):
        logits = ort_logits(session, normalize(split.images[start : start + batch_size], mean, std))
        correct += int((logits.argmax(1) == split.labels[start : start + batch_size].numpy()).sum())
    return correct / max(1, len(split))


def input_shape(session: ort.InferenceSession) -> tuple[int, ...]:
    """(channels, height, width) of one image as the exported graph fixes them (its batch is dynamic)."""
    return tuple(int(d) for d in session.get_inputs()[0].shape[1:])


def latency_ms(session: ort.InferenceSession, repeats: int = 30, warmup: int = 5) -> float:
    """Median milliseconds of one batch-1 forward pass in ONNX Runtime (median: robust to a busy machine)."""
    shape = (1, *input_shape(session))
    feeds = {INPUT_NAME: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    (seconds,) = interleaved_seconds([lambda: session.run([OUTPUT_NAME], feeds)], repeats, warmup)
    return 1000 * float(np.median(seconds))


# ---- a latency budget's measurement -------------------------------------------------------------


def exported_latency_ms(
    model: nn.Module, threads: int, pad_to: int | None = None, image_shape: Sequence[int] = IMAGE_SHAPE
) -> float:
    """Batch-1 milliseconds of `model` exported (padded to multiples of `pad_to`, as the export stage pads it) and
    run in ONNX Runtime with `threads` threads (`latency_ms`) on images of `image_shape`."""
    return latency_ms(ort_session(onnx_model(pad_channels(model, pad_to), image_shape=image_shape), threads))


def latency_resolver(
    threads: int | None = None, pad_to: int | None = None, image_shape: Sequence[int] = IMAGE_SHAPE
) -> Callable[[nn.Module], float]:
    """What `slimming.budget.budget_ratio` measures a candidate with: `exported_latency_ms` with `threads` ONNX
    Runtime threads (None = all usable CPUs), padded to multiples of `pad_to` as `netslim export` pads it."""
    threads = threads or default_threads()
    return lambda m: exported_latency_ms(m, threads, pad_to, image_shape)
