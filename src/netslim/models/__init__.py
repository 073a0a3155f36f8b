"""Models built from a cfg, and the one checkpoint format that rebuilds any of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from netslim import registry
from netslim.config import MAX_CLASSES, MAX_WIDTH
from netslim.io import CheckpointError, load_checkpoint, save_torch
from netslim.models.architecture import Architecture

CHECKPOINT_FORMAT = "netslim-checkpoint/1"
# The torch-free registry, typed: its entries are Architectures, which the registry's floor cannot name.
ARCHITECTURES: registry.Registry[Architecture] = registry.ARCHITECTURES


def architecture(name: str) -> Architecture:
    """The registry entry of `name`; ValueError naming the known ones otherwise."""
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise ValueError(f"arch {name!r} is unknown; use one of {', '.join(ARCHITECTURES)}") from None


def default_cfg(arch: str, width: float = 1.0) -> list:
    return architecture(arch).default_cfg(width)


def build_model(arch: str, num_classes: int = 10, cfg: list | None = None, width: float = 1.0) -> nn.Module:
    """Args:
    arch: a name in the registry (netslim.registry).
    cfg: per-layer widths (see each model); None = unpruned.
    width: scales the unpruned widths (and the fixed ones, e.g. block outputs) for quick runs.
    """
    return architecture(arch).build(num_classes, cfg, width)


def architecture_of(model: nn.Module) -> Architecture:
    """The registry entry that built `model` (through DDP / compile wrappers)."""
    return architecture(unwrap(model).arch)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def make_checkpoint(model: nn.Module, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one file format: arch, width, num_classes, cfg, state_dict and provenance (plain data only)."""
    model = unwrap(model)
    return {
        "format": CHECKPOINT_FORMAT,
        "arch": model.arch,
        "width": float(model.width),
        "num_classes": int(model.num_classes),
        "cfg": [list(p) if isinstance(p, list | tuple) else p for p in model.cfg],
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "provenance": dict(provenance or {}),
    }


def non_finite(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def save_model(path: str | Path, model: nn.Module, provenance: dict[str, Any] | None = None) -> None:
    """The checkpoint of `model`; CheckpointError (nothing written) when a weight is NaN or infinite."""
    checkpoint = make_checkpoint(model, provenance)
    bad = non_finite(checkpoint["state_dict"])
    if bad:
        raise CheckpointError(
            f"{path}: not written: {len(bad)} tensors hold NaN or inf (e.g. {bad[0]}); the training diverged, "
            "lower its lr (train.lr or finetune.lr)"
        )
    save_torch(path, checkpoint)


def model_from_checkpoint(
    checkpoint: dict[str, Any], path: str | Path = "<checkpoint>", arch: str | None = None
) -> nn.Module:
    """Rebuild a model from a checkpoint dict; any mismatch is a CheckpointError naming `path`.

    Every size the file states (num_classes, width, each cfg width) is checked, and the model is first built on
    the meta device (no memory) and compared with the weights, before anything is allocated: a crafted cfg cannot
    make it allocate more than the weights the file already holds.

    Args:
        arch: the `model.arch` the stage expects; a checkpoint of another architecture is refused.
    """
    for key in ("arch", "num_classes", "cfg", "state_dict"):
        if key not in checkpoint:
            raise CheckpointError(f"{path}: not a netslim model checkpoint (no {key!r}); pass a file netslim wrote")
    if not isinstance(checkpoint.setdefault("provenance", {}), dict):  # the stages read it as a mapping
        raise CheckpointError(f"{path}: its provenance is a {type(checkpoint['provenance']).__name__}, not a mapping")
    found = checkpoint["arch"]
    if not isinstance(found, str) or found not in ARCHITECTURES:
        raise CheckpointError(f"{path}: arch {found!r} is unknown; this netslim builds {', '.join(ARCHITECTURES)}")
    if arch is not None and found != arch:
        raise CheckpointError(
            f"{path}: holds a {found} but model.arch is {arch}; rerun the stage that writes it (`dvc repro`) "
            f"or set model.arch: {found}"
        )
    num_classes, width, cfg = checkpoint["num_classes"], checkpoint.get("width", 1.0), checkpoint["cfg"]
    _check_sizes(found, num_classes, width, cfg, path)
    state_dict = checkpoint["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: its state_dict is not a mapping of names to tensors; pass a file netslim wrote")
    try:
        with torch.device("meta"):
            shapes = build_model(found, num_classes, cfg, float(width))
    except (ValueError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path}: its cfg does not build a {found}: {e}") from None
    mismatch = _state_dict_mismatch(shapes, state_dict)
    if mismatch:
        raise CheckpointError(f"{path}: weights do not match its arch {found} and cfg: {mismatch}")
    bad = non_finite(state_dict)
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} tensors hold NaN or inf (e.g. {bad[0]}); the run that wrote it diverged: rerun it "
            "with a lower lr (train.lr or finetune.lr)"
        )
    model = build_model(found, num_classes, cfg, float(width))
    model.load_state_dict(state_dict)
    return model


def _check_sizes(arch: str, num_classes: Any, width: Any, cfg: Any, path: str | Path) -> None:
    """CheckpointError unless num_classes, width and every cfg width are within what netslim ever writes."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= MAX_CLASSES:
        raise CheckpointError(f"{path}: num_classes {num_classes!r} is not a class count in 2..{MAX_CLASSES}")
    if isinstance(width, bool) or not isinstance(width, int | float) or not 0 < width <= MAX_WIDTH:
        raise CheckpointError(f"{path}: width {width!r} is outside (0, {MAX_WIDTH:g}] (model.width)")
    unpruned = _leaves(default_cfg(arch, float(width)))
    given = _leaves(cfg) if isinstance(cfg, list) else []
    if len(given) != len(unpruned):
        raise CheckpointError(f"{path}: its cfg has {len(given)} entries, a {arch} has {len(unpruned)}")
    for i, (value, limit) in enumerate(zip(given, unpruned, strict=True)):
        if isinstance(limit, str):
            ok = value == limit
        else:
            ok = not isinstance(value, bool) and isinstance(value, int) and 1 <= value <= limit
        if not ok:
            allowed = repr(limit) if isinstance(limit, str) else f"a width in 1..{limit} (the unpruned one)"
            raise CheckpointError(f"{path}: cfg entry {i} is {value!r:.20}, not {allowed} of a {arch} at width {width}")


def _leaves(cfg: Any) -> list:
    """A cfg's entries in order, nested lists flattened."""
    return [leaf for item in cfg for leaf in _leaves(item)] if isinstance(cfg, list | tuple) else [cfg]


def _state_dict_mismatch(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> str:
    """One line on how `state_dict` differs from what `model` expects ("" when it fits)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = [f"{len(missing)} missing keys (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})"] if unexpected else []
        return ", ".join(parts) + "; the weights belong to another arch or model"
    for key, tensor in expected.items():
        if state_dict[key].shape != tensor.shape:
            return (
                f"{key} has shape {list(state_dict[key].shape)} in the file but the cfg builds "
                f"{list(tensor.shape)}; the cfg was not saved with these weights"
            )
    return ""


def load_model(path: str | Path, arch: str | None = None) -> nn.Module:
    """Rebuild any unpruned, pruned or fine-tuned model from its file alone (weights_only=True).

    Args:
        arch: the `model.arch` the caller expects; a checkpoint of another architecture is refused.
    """
    return model_from_checkpoint(load_checkpoint(path), path, arch)


def memory_format(channels_last: bool) -> torch.memory_format:
    """NHWC when `channels_last` (`runtime.channels_last`), on the CPU as on CUDA: faster on both (params.yaml says
    by how much here), except for models with 4-channel convolutions, whose NHWC training stalls on the CPU: they run
    with `runtime.channels_last: false`."""
    return torch.channels_last if channels_last else torch.contiguous_format


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in unwrap(model).parameters())


def batchnorms(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    return {n: m for n, m in unwrap(model).named_modules() if isinstance(m, nn.BatchNorm2d)}


def prunable_batchnorms(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """The BNs whose channels Network Slimming may remove, by name, in forward order (the registry says which)."""
    model = unwrap(model)
    bns = batchnorms(model)
    return {name: bns[name] for name in architecture(model.arch).prunable(model)}


__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "architecture",
    "architecture_of",
    "CHECKPOINT_FORMAT",
    "build_model",
    "default_cfg",
    "load_model",
    "save_model",
    "make_checkpoint",
    "model_from_checkpoint",
    "count_params",
    "prunable_batchnorms",
    "batchnorms",
    "unwrap",
]
