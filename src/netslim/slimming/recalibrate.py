"""BN recalibration after pruning ("adaptive BN", Li et al., EagleEye, ECCV 2020).

Surgery copies each surviving channel's running mean and variance from the unpruned model, but a conv that lost
input channels no longer produces the activations those statistics describe, so the next BN normalises with the
wrong mean and variance and the pruned model can fall to chance before any fine-tuning. Re-estimating the
statistics on a few training batches (train mode, no gradients, weights untouched) repairs most of that.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from netslim.data import Split, normalize
from netslim.models import batchnorms, unwrap


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Replace every BN's running statistics by those of `batches`, then return the model in eval mode.

    Each BN's running mean becomes the average of its per-batch input means and its running variance the average
    of its per-batch (unbiased) variances: `momentum=None` makes PyTorch keep this cumulative average instead of
    an exponential one. No parameter changes. With no batches the model is returned unchanged.

    Args:
        model: changed in place (running statistics only).
        batches: normalised float NCHW inputs on the model's device.
    """
    model = unwrap(model)
    bns = batchnorms(model)
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        return model.eval()
    momenta = {name: bn.momentum for name, bn in bns.items()}
    for bn in bns.values():
        bn.reset_running_stats()
        bn.momentum = None
    try:
        model.train()
        model(first)
        for x in batches:
            model(x)
    finally:
        for name, bn in bns.items():
            bn.momentum = momenta[name]
    return model.eval()


def calibration_batches(
    split: Split,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    n_batches: int,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
) -> Iterator[torch.Tensor]:
    """Up to `n_batches` full batches of `split`, drawn by a seeded permutation, normalised, without augmentation.

    Only full batches: a small last batch would weigh as much as a full one in the cumulative average (a split
    smaller than one batch is one batch).
    """
    batch_size = min(batch_size, len(split))
    if batch_size < 2:  # BatchNorm in train mode needs more than one value per channel
        return
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    for b in range(min(n_batches, len(split) // batch_size)):
        idx = order[b * batch_size : (b + 1) * batch_size]
        yield normalize(split.images[idx].to(device), mean, std)
