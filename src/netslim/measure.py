"""What a model costs: parameters, MACs/FLOPs per image, and measured throughput.

MACs (multiply-accumulates) are those of the convolutions and linear layers, counted exactly from their shapes by
`count_conv_linear_macs` (what torch.utils.flop_counter counts, halved); FLOPs are reported as 2 × MACs. thop's count
(`count_thop_macs`, reported as `thop_macs`) also adds each BatchNorm element 4 times and the average pool, which
shrink less than the convolutions when channels are pruned, so its ratios understate pruning's. Both names (MACs,
FLOPs) are spelled out everywhere, because papers use "FLOPs" for either. Throughput is images per second in eval
mode under torch.inference_mode, so that a pruned model's realised speedup can sit next to its MACs ratio.

One timing policy for every speed figure (prune's speedups, which the report shows, and `netslim bench`):
- one timer, `interleaved_seconds`, which times any callables (an eager model, an ONNX Runtime session) in turn, so
  that a busy, shared machine slows every side alike;
- the median of the timed samples, not their mean: one sample slowed by another process does not move it;
- eager models run as evaluation runs them (`engine.evaluate`): channels_last when `runtime.channels_last` is on
  (CPU and CUDA), bf16 autocast on CUDA when `runtime.amp` is on, fp32 on the CPU.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence

import thop
import torch
from torch import nn

from netslim.models import count_params, memory_format, prunable_batchnorms, unwrap
from netslim.vocabulary import FLOPS, MACS, NUM_PARAMS, THOP_MACS

IMAGE_SHAPE = (3, 32, 32)

__all__ = [
    "channels_per_layer",
    "compare_models",
    "count_conv_linear_macs",
    "count_params",
    "count_thop_macs",
    "flops_from_macs",
    "forward_runner",
    "interleaved_seconds",
    "interleaved_throughput",
    "model_summary",
    "synchronizer",
    "throughput",
]


def _first_tensor(model: nn.Module) -> torch.Tensor:
    """A parameter (else a CPU float32 stand-in) whose device and dtype the inputs should match."""
    param = next(iter(model.parameters()), None)
    return torch.empty(0) if param is None else param


def count_thop_macs(model: nn.Module, input_size: Sequence[int] = (1, *IMAGE_SHAPE)) -> int:
    """Multiply-accumulates per image of one forward pass as thop counts them: convolutions and linear layers, plus
    4 per BatchNorm element and the average pool.

    Args:
        model: left untouched; thop registers buffers and hooks, so a deep copy is profiled.
        input_size: (batch, channels, height, width); the count is divided by the batch.
    """
    probe = copy.deepcopy(unwrap(model)).eval()
    like = _first_tensor(probe)
    x = torch.zeros(tuple(input_size), device=like.device, dtype=like.dtype)
    macs, _params = thop.profile(probe, inputs=(x,), verbose=False)
    return int(round(float(macs) / input_size[0]))


def count_conv_linear_macs(model: nn.Module, input_size: Sequence[int] = (1, *IMAGE_SHAPE)) -> int:
    """Multiply-accumulates per image of the convolutions and linear layers of one forward pass, exactly.

    A conv's output element takes (in_channels / groups) × kernel height × kernel width MACs, a linear layer's
    in_features; BatchNorm, activations, pooling and additions count nothing. Counted by one forward pass of zeros
    through a CPU copy of the model (left untouched). Not on the meta device, which runs no arithmetic: its first
    use in a process registers PyTorch's meta kernels, about a second, where the forward pass takes milliseconds.
    """
    probe = copy.deepcopy(unwrap(model)).cpu().float().eval()
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    for module in probe.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(conv_hook)
        elif isinstance(module, nn.Linear):
            module.register_forward_hook(linear_hook)
    with torch.no_grad():
        probe(torch.zeros(tuple(input_size)))
    return total // input_size[0]


def flops_from_macs(macs: int) -> int:
    """FLOPs as 2 × MACs (one multiply and one add per MAC)."""
    return 2 * int(macs)


def channels_per_layer(model: nn.Module) -> dict[str, int]:
    """Channel count of every prunable BN, by name in forward order."""
    return {name: bn.num_features for name, bn in prunable_batchnorms(model).items()}


def model_summary(model: nn.Module, input_size: Sequence[int] = (1, *IMAGE_SHAPE)) -> dict[str, int]:
    """Params, conv + linear MACs, FLOPs (2 × those MACs) and thop's MACs (BatchNorm and pooling included)."""
    macs = count_conv_linear_macs(model, input_size)
    return {
        NUM_PARAMS: count_params(model),
        MACS: macs,
        FLOPS: flops_from_macs(macs),
        THOP_MACS: count_thop_macs(model, input_size),
    }


def synchronizer(device: torch.device) -> Callable[[], None] | None:
    """What drains `device`'s queue (None where calls return only when their work is done, as on the CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return None


def interleaved_seconds(
    runners: Sequence[Callable[[], object]],
    repeats: int,
    warmup: int,
    synchronize: Callable[[], None] | None = None,
) -> list[list[float]]:
    """Wall seconds of each call of each runner, the runners taken in turn: the one timer behind every speed figure.

    Each round calls every runner once, starting one runner later than the round before (A B C, B C A, C A B, ...),
    so drifting clocks or load hit all alike and no runner always runs right after the same other one.

    Args:
        runners: zero-argument callables, e.g. `lambda: model(x)` or `lambda: session.run(None, feeds)`.
        repeats: timed rounds; warmup: untimed rounds first (allocator, oneDNN/cuDNN plans, ORT arenas).
        synchronize: drains an asynchronous device (e.g. `torch.cuda.synchronize`) before and after each timed
            call, so queued work is charged to the call that queued it; None for synchronous runners.

    Returns:
        One list of `repeats` seconds per runner, in the order of `runners`.
    """
    if not runners:
        raise ValueError("runners is empty: pass at least one callable to time")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats {repeats} must be >= 1 and warmup {warmup} >= 0")
    seconds: list[list[float]] = [[] for _ in runners]
    order = list(range(len(runners)))
    for round_ in range(warmup + repeats):
        shift = round_ % len(order)
        for i in order[shift:] + order[:shift]:
            if synchronize is not None:
                synchronize()
            start = time.perf_counter()
            runners[i]()
            if synchronize is not None:
                synchronize()
            if round_ >= warmup:
                seconds[i].append(time.perf_counter() - start)
    return seconds


def interleaved_throughput(
    runners: Sequence[Callable[[], object]],
    batch_size: int,
    repeats: int,
    warmup: int,
    synchronize: Callable[[], None] | None = None,
) -> list[float]:
    """Images per second of each runner, each call processing one batch of `batch_size` images.

    The runners are timed interleaved by `interleaved_seconds` (see there for `repeats`, `warmup`, `synchronize`);
    a runner's throughput is `batch_size` over the median of its timed seconds.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} must be >= 1")
    seconds = interleaved_seconds(runners, repeats, warmup, synchronize)
    return [batch_size / statistics.median(samples) for samples in seconds]


def forward_runner(
    model: nn.Module,
    batch_size: int,
    device: torch.device,
    *,
    amp: bool = False,
    channels_last: bool = False,
    calls: int = 1,
    image_shape: Sequence[int] = IMAGE_SHAPE,
) -> Callable[[], None]:
    """A zero-argument callable for the timer: `calls` forward passes of `model` on one random batch.

    The model is moved to `device` and put in eval mode in place (the caller restores its mode); it runs in
    channels_last when asked and, on CUDA, under bf16 autocast when asked, as `engine.evaluate` runs it.
    """
    cuda = device.type == "cuda"
    fmt = memory_format(channels_last)
    model.to(device).to(memory_format=fmt).eval()
    x = torch.randn(batch_size, *image_shape, device=device, dtype=_first_tensor(model).dtype)
    x = x.contiguous(memory_format=fmt)

    def forward() -> None:
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=amp and cuda):
            for _ in range(calls):
                model(x)

    return forward


def _timed_throughputs(
    models: Sequence[nn.Module],
    device: torch.device | str,
    batch_size: int,
    repeats: int,
    warmup: int,
    image_shape: Sequence[int],
    amp: bool,
    channels_last: bool,
) -> list[float]:
    """Images/s of each eager model on random inputs (see `forward_runner`), timed interleaved."""
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"batch_size {batch_size} and repeats {repeats} must be >= 1, warmup {warmup} >= 0")
    device = torch.device(device)
    models = [unwrap(m) for m in models]
    was_training = [m.training for m in models]
    try:
        runners = [
            forward_runner(m, batch_size, device, amp=amp, channels_last=channels_last, image_shape=image_shape)
            for m in models
        ]
        return interleaved_throughput(runners, batch_size, repeats, warmup, synchronizer(device))
    finally:
        for m, training in zip(models, was_training, strict=True):
            m.train(training)


def throughput(
    model: nn.Module,
    device: torch.device | str,
    batch_size: int,
    repeats: int = 5,
    warmup: int = 2,
    image_shape: Sequence[int] = IMAGE_SHAPE,
    *,
    amp: bool = False,
    channels_last: bool = False,
) -> float:
    """Images per second of forward passes on random inputs.

    Args:
        model: moved to `device` in place (as Module.to does); its train/eval mode is restored afterwards.
        batch_size: images per timed forward pass.
        repeats: timed passes; warmup: untimed passes first (allocator, cuDNN autotuning).
        amp, channels_last: bf16 autocast on CUDA (`runtime.amp`), NHWC on any device (`runtime.channels_last`).
    """
    return _timed_throughputs([model], device, batch_size, repeats, warmup, image_shape, amp, channels_last)[0]


def compare_models(
    reference: nn.Module,
    pruned: nn.Module,
    device: torch.device | str,
    batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 5,
    warmup: int = 2,
    image_shape: Sequence[int] = IMAGE_SHAPE,
    *,
    amp: bool = False,
    channels_last: bool = False,
) -> dict:
    """Params, MACs and FLOPs of both models, and their measured throughput at each batch size.

    Args:
        reference, pruned: the models (moved to `device` in place; modes restored).
        batch_sizes: one interleaved throughput measurement of both models per batch size.
        amp, channels_last: bf16 autocast on CUDA (`runtime.amp`), NHWC on any device (`runtime.channels_last`).

    `speedup` is the measured pruned/reference throughput; `macs_ratio` (reference MACs / pruned MACs, conv + linear)
    is the speedup the MACs alone promise, so the two can be compared directly.
    """
    before, after = model_summary(reference, (1, *image_shape)), model_summary(pruned, (1, *image_shape))
    macs_ratio = before[MACS] / after[MACS]
    rows = []
    for batch_size in batch_sizes:
        ref_ips, pruned_ips = _timed_throughputs(
            [reference, pruned], device, batch_size, repeats, warmup, image_shape, amp, channels_last
        )
        rows.append(
            {
                "batch_size": int(batch_size),
                "reference_images_per_s": ref_ips,
                "pruned_images_per_s": pruned_ips,
                "speedup": pruned_ips / ref_ips,
                "macs_ratio": macs_ratio,
            }
        )
    return {
        "device": str(torch.device(device)),
        "reference": before,
        "pruned": after,
        "params_ratio": before[NUM_PARAMS] / after[NUM_PARAMS],
        "macs_ratio": macs_ratio,
        "flops_ratio": before[FLOPS] / after[FLOPS],
        "throughput": rows,
    }
