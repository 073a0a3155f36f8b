"""Which channels survive: Network Slimming's global ranking of BN scaling factors |γ|.

As in the reference code (Eric-mingjie/network-slimming): all prunable |γ| are sorted together, the
threshold is the value at index int(total * ratio), and a channel survives when |γ| > threshold (strict).
Two deliberate departures, both documented where they happen: ratio 0 keeps every channel, and every
layer keeps at least `min_channels` channels so that no layer is emptied. Optionally (`round_to` > 1) each
layer's kept count is rounded up to a multiple of `round_to`, for hardware-aligned widths.

`max_layer_ratio` < 1 caps what one pass may take from any layer (Torch-Pruning's `max_pruning_ratio`): only
each layer's smallest floor(max_layer_ratio × size) |γ| may go, and the global ranking runs over those, so the
channels a capped layer keeps are taken from the other layers instead (the requested count still goes when the
caps leave enough). At 90% the uncapped threshold empties the deep layers, whose |γ| is small after BatchNorm
without the channels being unimportant; the cap spreads the cut.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from netslim.models import prunable_batchnorms


class PruneError(ValueError):
    """A pruning request that cannot be met; the message is one line with the key, the bad value and the fix."""


def check_ratio(ratio: float) -> float:
    """The ratio as a float, or PruneError when it is outside [0, 1)."""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 <= ratio < 1:
        raise PruneError(f"prune.ratios: {ratio!r} is outside [0, 1); 0.9 removes 90% of the prunable channels")
    return float(ratio)


def check_min_channels(min_channels: int) -> int:
    if isinstance(min_channels, bool) or not isinstance(min_channels, numbers.Integral) or min_channels < 1:
        raise PruneError(f"prune.min_channels: {min_channels!r} must be a whole number >= 1, e.g. 2")
    return int(min_channels)


def check_round_to(round_to: int) -> int:
    if isinstance(round_to, bool) or not isinstance(round_to, numbers.Integral) or round_to < 1:
        raise PruneError(f"prune.round_to: {round_to!r} must be a whole number >= 1 (1 = off), e.g. 8")
    return int(round_to)


def check_max_layer_ratio(max_layer_ratio: float) -> float:
    if isinstance(max_layer_ratio, bool) or not isinstance(max_layer_ratio, numbers.Real):
        raise PruneError(f"prune.max_layer_ratio: {max_layer_ratio!r} must be a number in (0, 1], e.g. 0.5 (1 = off)")
    if not 0 < max_layer_ratio <= 1:
        raise PruneError(f"prune.max_layer_ratio: {max_layer_ratio!r} is outside (0, 1]; 0.5 = at most half a layer")
    return float(max_layer_ratio)


def gather_gammas(model: nn.Module) -> dict[str, torch.Tensor]:
    """|γ| of every prunable BN, by name in forward order (detached float32 copies on the CPU)."""
    return {name: bn.weight.detach().abs().float().cpu().clone() for name, bn in prunable_batchnorms(model).items()}


def global_threshold(gammas: dict[str, torch.Tensor], ratio: float) -> float:
    """The reference code's threshold: all |γ| sorted ascending, the value at index int(total * ratio).

    Args:
        gammas: |γ| per layer (see `gather_gammas`).
        ratio: fraction of channels to remove, in [0, 1).

    Returns -inf for ratio 0: the reference would return the minimum |γ| and, with the strict `>`, still drop
    the smallest channel(s), so "prune 0%" would not be the unpruned model.
    """
    ratio = check_ratio(ratio)
    if not gammas or sum(g.numel() for g in gammas.values()) == 0:
        raise PruneError("prune: the model has no prunable BatchNorm channels; check model.arch")
    if ratio == 0:
        return -math.inf
    ranked, _ = torch.sort(torch.cat([g.flatten() for g in gammas.values()]))
    return float(ranked[int(ranked.numel() * ratio)])


def layer_mask(gamma: torch.Tensor, threshold: float, min_channels: int) -> torch.Tensor:
    """Keep |γ| > threshold; if that leaves fewer than min(min_channels, size), keep that many largest |γ|."""
    keep = gamma > threshold
    floor = min(min_channels, gamma.numel())
    if int(keep.sum()) < floor:
        # A stable sort makes ties between equal |γ| resolve to the lower index, so the result is reproducible.
        largest = torch.sort(gamma, descending=True, stable=True).indices[:floor]
        keep[largest] = True
    return keep


def round_up_mask(gamma: torch.Tensor, keep: torch.Tensor, round_to: int) -> torch.Tensor:
    """`keep` grown to the next multiple of `round_to` channels (at most the layer's size) by the largest |γ| left.

    Vector units and blocked conv kernels work on channel groups (8 fp32 lanes in AVX2, blocks of 8 or 16 in
    oneDNN), so a layer of 37 channels costs about what 40 cost; keeping those 3 extra channels is nearly free
    in time and buys back accuracy. The kept channels stay a superset of `keep`, so with `keep` the top-k by
    |γ| (as `layer_mask` returns) the result is the top-k' by |γ|.
    """
    kept, size = int(keep.sum()), gamma.numel()
    target = min(math.ceil(kept / round_to) * round_to, size)
    if target <= kept:
        return keep
    # Among the dropped channels, the largest |γ| first; a stable sort resolves ties to the lower index.
    candidates = torch.where(keep, -math.inf, gamma.float())
    extra = torch.sort(candidates, descending=True, stable=True).indices[: target - kept]
    grown = keep.clone()
    grown[extra] = True
    return grown


def channel_masks(
    gammas: dict[str, torch.Tensor], threshold: float, min_channels: int, round_to: int = 1
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks per layer.

    Args:
        gammas: |γ| per layer (see `gather_gammas`).
        threshold: from `global_threshold`; a channel is kept when |γ| > threshold.
        min_channels: no layer keeps fewer than this (or all of it when it is smaller).
        round_to: each layer's kept count rounded up to a multiple of this (capped at the layer's size); 1 = off.
    """
    min_channels, round_to = check_min_channels(min_channels), check_round_to(round_to)
    masks = {name: layer_mask(g, threshold, min_channels) for name, g in gammas.items()}
    if round_to == 1:
        return masks
    return {name: round_up_mask(gammas[name], mask, round_to) for name, mask in masks.items()}


def capped_masks(
    gammas: dict[str, torch.Tensor], ratio: float, min_channels: int, max_layer_ratio: float
) -> tuple[dict[str, torch.Tensor], float]:
    """Keep-masks that remove int(total × ratio) channels by global |γ| rank, no layer losing more than
    floor(max_layer_ratio × size) channels nor going below min(min_channels, size).

    Returns the masks and the largest removed |γ| (-inf when nothing goes). Fewer channels go when the caps
    leave fewer candidates than requested; `PruneResult.channels_removed` reports what went.
    """
    ratio, min_channels = check_ratio(ratio), check_min_channels(min_channels)
    max_layer_ratio = check_max_layer_ratio(max_layer_ratio)
    names, values, positions = [], [], []
    for index, gamma in enumerate(gammas.values()):
        size = gamma.numel()
        allowed = min(math.floor(max_layer_ratio * size), size - min(min_channels, size))
        # A stable sort makes ties between equal |γ| resolve to the lower index, so the result is reproducible.
        smallest = torch.sort(gamma, stable=True).indices[:allowed]
        names += [index] * len(smallest)
        values.append(gamma[smallest].float())
        positions.append(smallest)
    masks = {name: torch.ones(g.numel(), dtype=torch.bool) for name, g in gammas.items()}
    total = sum(g.numel() for g in gammas.values())
    candidates = torch.cat(values) if values else torch.empty(0)
    count = min(int(total * ratio), candidates.numel())
    if count == 0:
        return masks, -math.inf
    order = torch.sort(candidates, stable=True).indices[:count]
    layer_of, position = torch.tensor(names), torch.cat(positions)
    keys = list(gammas)
    for i in order.tolist():
        masks[keys[int(layer_of[i])]][position[i]] = False
    return masks, float(candidates[order[-1]])


def masks_for_ratio(
    gammas: dict[str, torch.Tensor], ratio: float, min_channels: int, round_to: int = 1, max_layer_ratio: float = 1.0
) -> tuple[dict[str, torch.Tensor], float]:
    """Masks and threshold for pruning `ratio` of the channels whose |γ| are `gammas` (global ranking).

    With `round_to` > 1 each layer keeps the next multiple of `round_to` channels, so a little less than `ratio`
    of the channels goes (see `round_up_mask`). With `max_layer_ratio` < 1 no layer loses more than that share
    (see `capped_masks`); 1 is the reference code's uncapped threshold.
    """
    if check_max_layer_ratio(max_layer_ratio) == 1:
        threshold = global_threshold(gammas, ratio)
        return channel_masks(gammas, threshold, min_channels, round_to), threshold
    masks, threshold = capped_masks(gammas, ratio, min_channels, max_layer_ratio)
    round_to = check_round_to(round_to)
    if round_to > 1:
        masks = {name: round_up_mask(gammas[name], mask, round_to) for name, mask in masks.items()}
    return masks, threshold


def select_channels(
    model: nn.Module, ratio: float, min_channels: int, round_to: int = 1, max_layer_ratio: float = 1.0
) -> tuple[dict[str, torch.Tensor], float]:
    """Masks and threshold for pruning `ratio` of the model's prunable channels (see `masks_for_ratio`)."""
    return masks_for_ratio(gather_gammas(model), ratio, min_channels, round_to, max_layer_ratio)
