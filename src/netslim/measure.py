"""What a model costs: parameters, MACs/FLOPs per image, and measured throughput.

MACs (multiply-accumulates) are counted by thop; FLOPs are reported as 2 × MACs. Both names are spelled out
everywhere, because papers use "FLOPs" for either. Throughput is images per second in eval mode under
torch.inference_mode, so that a pruned model's realised speedup can sit next to its MACs ratio.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import thop
import torch
from torch import nn

from netslim.models import count_params, prunable_batchnorms, unwrap

IMAGE_SHAPE = (3, 32, 32)

__all__ = [
    "channels_per_layer",
    "compare_models",
    "count_macs",
    "count_params",
    "flops_from_macs",
    "model_summary",
    "throughput",
]


def _first_tensor(model: nn.Module) -> torch.Tensor:
    """A parameter (else a CPU float32 stand-in) whose device and dtype the inputs should match."""
    param = next(iter(model.parameters()), None)
    return torch.empty(0) if param is None else param


def count_macs(model: nn.Module, input_size: Sequence[int] = (1, *IMAGE_SHAPE)) -> int:
    """Multiply-accumulates per image of one forward pass, counted by thop.

    Args:
        model: left untouched; thop registers buffers and hooks, so a deep copy is profiled.
        input_size: (batch, channels, height, width); the count is divided by the batch.
    """
    probe = copy.deepcopy(unwrap(model)).eval()
    like = _first_tensor(probe)
    x = torch.zeros(tuple(input_size), device=like.device, dtype=like.dtype)
    macs, _params = thop.profile(probe, inputs=(x,), verbose=False)
    return int(round(float(macs) / input_size[0]))


def flops_from_macs(macs: int) -> int:
    """FLOPs as 2 × MACs (one multiply and one add per MAC)."""
    return 2 * int(macs)


def channels_per_layer(model: nn.Module) -> dict[str, int]:
    """Channel count of every prunable BN, by name in forward order."""
    return {name: bn.num_features for name, bn in prunable_batchnorms(model).items()}


def model_summary(model: nn.Module, input_size: Sequence[int] = (1, *IMAGE_SHAPE)) -> dict[str, int]:
    macs = count_macs(model, input_size)
    return {"params": count_params(model), "macs": macs, "flops": flops_from_macs(macs)}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(model: nn.Module, x: torch.Tensor, device: torch.device) -> float:
    """Wall time of one forward pass, the device drained before and after so queued work is not mistimed."""
    _synchronize(device)
    start = time.perf_counter()
    model(x)
    _synchronize(device)
    return time.perf_counter() - start


def _batch(model: nn.Module, batch_size: int, image_shape: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.randn(batch_size, *image_shape, device=device, dtype=_first_tensor(model).dtype)


def _timed_throughputs(
    models: Sequence[nn.Module],
    device: torch.device | str,
    batch_size: int,
    repeats: int,
    warmup: int,
    image_shape: Sequence[int],
) -> list[float]:
    """Images/s of each model, their timed batches interleaved so drifting clocks or load hit all alike."""
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"batch_size {batch_size} and repeats {repeats} must be >= 1, warmup {warmup} >= 0")
    device = torch.device(device)
    models = [unwrap(m) for m in models]
    was_training = [m.training for m in models]
    try:
        for m in models:
            m.to(device).eval()
        inputs = [_batch(m, batch_size, image_shape, device) for m in models]
        seconds = [0.0] * len(models)
        with torch.inference_mode():
            for _ in range(warmup):
                for m, x in zip(models, inputs, strict=True):
                    _seconds(m, x, device)
            for _ in range(repeats):
                for i, (m, x) in enumerate(zip(models, inputs, strict=True)):
                    seconds[i] += _seconds(m, x, device)
    finally:
        for m, training in zip(models, was_training, strict=True):
            m.train(training)
    return [batch_size * repeats / s for s in seconds]


def throughput(
    model: nn.Module,
    device: torch.device | str,
    batch_size: int,
    repeats: int = 5,
    warmup: int = 2,
    image_shape: Sequence[int] = IMAGE_SHAPE,
) -> float:
    """Images per second of forward passes on random inputs.

    Args:
        model: moved to `device` in place (as Module.to does); its train/eval mode is restored afterwards.
        batch_size: images per timed forward pass.
        repeats: timed passes; warmup: untimed passes first (allocator, cuDNN autotuning).
    """
    return _timed_throughputs([model], device, batch_size, repeats, warmup, image_shape)[0]


def compare_models(
    reference: nn.Module,
    pruned: nn.Module,
    device: torch.device | str,
    batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 5,
    warmup: int = 2,
    image_shape: Sequence[int] = IMAGE_SHAPE,
) -> dict:
    """Params, MACs and FLOPs of both models, and their measured throughput at each batch size.

    Args:
        reference, pruned: the models (moved to `device` in place; modes restored).
        batch_sizes: one interleaved throughput measurement of both models per batch size.

    `speedup` is the measured pruned/reference throughput; `macs_ratio` (reference MACs / pruned MACs) is the
    speedup the MACs alone promise, so the two can be compared directly.
    """
    before, after = model_summary(reference, (1, *image_shape)), model_summary(pruned, (1, *image_shape))
    macs_ratio = before["macs"] / after["macs"]
    rows = []
    for batch_size in batch_sizes:
        ref_ips, pruned_ips = _timed_throughputs([reference, pruned], device, batch_size, repeats, warmup, image_shape)
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
        "params_ratio": before["params"] / after["params"],
        "macs_ratio": macs_ratio,
        "flops_ratio": before["flops"] / after["flops"],
        "throughput": rows,
    }
