"""Preparation: a raw dataset read (`sources`), checked, split (a seeded validation share of the training set),
scaled to `data.image_size` and written to the prepared store, with the train split's channel statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from netslim.config import DataConfig
from netslim.data.sources import (
    FASHION_MNIST_BORDER,
    locate_cifar10,
    locate_fashion_mnist,
    read_cifar10,
    read_fashion_mnist,
)
from netslim.data.store import SPLITS, DataError, Split, write_prepared


def _take(split: Split, index: torch.Tensor | slice) -> Split:
    # clone: torch.save of a slice would otherwise write the whole parent storage
    return Split(split.images[index].clone(), split.labels[index].clone())


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 NHWC images, in [0, 1] pixel units.

    From exact per-channel histograms of the 256 values, so it needs no float copy of the images.
    """
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(images.shape[-1]):
        counts = torch.bincount(images[..., c].reshape(-1), minlength=256).to(torch.float64)
        mean = float((counts * values).sum() / counts.sum())
        var = float((counts * (values - mean) ** 2).sum() / counts.sum())
        means.append(mean)
        stds.append(var**0.5 or 1.0)  # a constant channel: 1.0 instead of dividing by zero
    return tuple(means), tuple(stds)


def prepare(data: DataConfig, seed: int, raw_root: str | Path, out_dir: str | Path, progress: bool = False) -> dict:
    """Raw dataset -> out_dir/{train,val,test}.pt and meta.json; returns the meta dict.

    Everything is read and checked (`read_and_split`) before the first write, so a failure leaves out_dir as it
    was. `progress` is accepted for symmetry with the other stages; preparing takes about a second, so there is no
    bar.
    """
    del progress
    splits, meta = read_and_split(data, seed, raw_root)
    write_prepared(out_dir, splits, meta)
    return meta


def read_and_split(data: DataConfig, seed: int, raw_root: str | Path) -> tuple[dict[str, Split], dict[str, Any]]:
    """The raw dataset read, checked, split and scaled: ({train, val, test}, meta); nothing is written.

    Validation is a seeded random `data.val_size` of the training set.
    """
    raw_root = Path(raw_root)
    if data.dataset == "cifar10":
        location, source = locate_cifar10(data.cifar10_path, raw_root, data.download)
        train_full, test, classes = read_cifar10(location)
    elif data.dataset == "fashion-mnist":
        files, source = locate_fashion_mnist(data.fashion_mnist_path, raw_root, data.download)
        train_full, test, classes = read_fashion_mnist(files)
    else:
        raise DataError(f"data.dataset: {data.dataset!r} is unknown; use cifar10 or fashion-mnist")

    if data.val_size >= len(train_full):
        raise DataError(f"data.val_size: {data.val_size} leaves no training images out of {len(train_full)}; lower it")
    order = torch.randperm(len(train_full), generator=torch.Generator().manual_seed(seed))
    splits = {
        "val": _take(train_full, order[: data.val_size]),
        "train": _take(train_full, order[data.val_size :][: data.train_subset]),  # [:None] keeps all
        "test": _take(test, slice(data.test_subset)),
    }
    # Scaled down, Fashion-MNIST's images are scaled from their own 28×28 pixels: the padding would only take pixels.
    border = FASHION_MNIST_BORDER if data.dataset == "fashion-mnist" else 0
    splits = {name: Split(resize_images(s.images, data.image_size, border), s.labels) for name, s in splits.items()}
    mean, std = channel_stats(splits["train"].images)
    meta = {
        "dataset": data.dataset,
        "num_classes": len(classes),
        "classes": classes,
        "sizes": {name: len(splits[name]) for name in SPLITS},
        "mean": list(mean),
        "std": list(std),
        "seed": seed,
        "source": source,
        "image_size": data.image_size,
    }
    return splits, meta


def resize_images(images: torch.Tensor, size: int, border: int = 0) -> torch.Tensor:
    """uint8 N×H×W×C images scaled to N×size×size×C by area averaging (each output pixel the mean of the input
    pixels it covers: 32 -> 16 averages 2×2 blocks), after cutting `border` pixels off each side; unchanged when
    already that size."""
    if images.shape[1:3] == (size, size):
        return images
    h, w = images.shape[1:3]
    inner = images[:, border : h - border, border : w - border].permute(0, 3, 1, 2).float()
    scaled = torch.nn.functional.interpolate(inner, size=(size, size), mode="area")
    return scaled.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
