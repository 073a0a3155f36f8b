"""Augmentation and normalisation of whole uint8 batches on their device: a random crop and flip that equals the seed
recipe's per-image PIL transforms for the same offsets, and (x/255 - mean)/std as float32 NCHW."""

from __future__ import annotations

import functools
from typing import Any

import torch

from netslim.data.store import SIZE


def crop_flip_params(
    n: int, generator: torch.Generator, pad: int = 4, size: int = SIZE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, left, flip) for n images: crop offsets in [0, 2*pad] of the padded image, flip w.p. 0.5.

    Drawn on the CPU generator so the same seed gives the same augmentation on any device.
    """
    del size  # the crop is as large as the image, so the padded image leaves 2*pad+1 offsets either way
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return offsets[0], offsets[1], flip


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, pad: int | None = None) -> torch.Tensor:
    """Zero-pad by `pad`, crop back to the original size at random offsets, flip half: uint8 NHWC in and out.

    `pad` defaults to an eighth of the height: the seed recipe's 4 pixels of a 32×32 image, 2 of a 16×16 one.
    The whole batch is done by one advanced-indexing gather on the images' device.
    """
    n, h, w, c = images.shape
    pad = max(1, h // 8) if pad is None else pad
    top, left, flip = (_to_device(t, images.device) for t in crop_flip_params(n, generator, pad, h))
    padded = images.new_zeros(n, h + 2 * pad, w + 2 * pad, c)
    padded[:, pad : pad + h, pad : pad + w] = images
    rows = top[:, None] + torch.arange(h, device=images.device)
    cols = left[:, None] + torch.arange(w, device=images.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flipped crop reads its columns right to left
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on `device`; from pinned memory, so a CUDA host does not wait for the device."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


@functools.lru_cache(maxsize=16)
def _scale(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """255·mean and 255·std as 1×C×1×1 tensors on `device`, made once (a copy per batch would sync CUDA).

    Made outside inference mode, so that a first call from evaluation caches tensors training can use.
    """
    with torch.inference_mode(False):
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255
        return m, torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255


def normalize(images: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW (x/255 - mean)/std, on the images' device.

    The result is an NCHW-shaped view in channels-last memory (no copy for the permute); callers that
    need another memory format ask for it.
    """
    m, s = _scale(tuple(map(float, mean)), tuple(map(float, std)), images.device)
    return images.permute(0, 3, 1, 2).to(torch.float32, copy=True).sub_(m).div_(s)  # (x - 255m)/(255s) == (x/255 - m)/s
