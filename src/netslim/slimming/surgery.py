"""Channel surgery: build the genuinely smaller model that the keep-masks describe, and copy its weights.

The pruned model is rebuilt with `build_model(arch, num_classes, cfg, width)`, so it has exactly the module
names of the original; weights are copied name by name through the state dict, sliced along the kept
channels, and loaded strictly (a missing name or a wrong shape is an error, never a silent mis-copy).

Bias compensation (beyond the reference code): a removed channel c, once its γ is ~0, still emits the
constant relu(β_c) after BN + ReLU. Removing it drops that constant from the next layer's input, so it is
folded into what the next layer sees: into the running mean of the BN after the next conv, or into the bias
of the linear head. This is exact when γ_c = 0, except at the zero-padded borders of a 3×3 conv.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import nn

from netslim.models import architecture_of, build_model, count_params, prunable_batchnorms, unwrap
from netslim.models.architecture import ConvLink, LinearLink
from netslim.slimming.threshold import (
    PruneError,
    check_min_channels,
    check_round_to,
    gather_gammas,
    masks_for_ratio,
    select_channels,
)

Masks = dict[str, torch.Tensor]
BN_TENSORS = ("weight", "bias", "running_mean", "running_var")  # num_batches_tracked is per layer, copied whole


# ---- pure tensor math -------------------------------------------------------------------------


def kept_index(mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if mask is None else mask.nonzero().flatten()


def select(t: torch.Tensor, out_keep: torch.Tensor | None, in_keep: torch.Tensor | None = None) -> torch.Tensor:
    """Rows `out_keep` and columns `in_keep` of a weight (None = all)."""
    if out_keep is not None:
        t = t.index_select(0, out_keep)
    if in_keep is not None:
        t = t.index_select(1, in_keep)
    return t


def emitted_constant(beta: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """relu(β) of the removed channels: what each emits after BN + ReLU once its γ is 0, whatever its input."""
    return torch.relu(beta[removed])


def conv_shift(weight: torch.Tensor, constant: torch.Tensor) -> torch.Tensor:
    """Per output channel, what a conv adds when its input channels are the constant maps `constant`.

    Args:
        weight: [out, in, kh, kw], only the input channels that hold constants.
        constant: [in] the constant of each of those channels.
    """
    return weight.sum(dim=(2, 3)) @ constant


def linear_shift(weight: torch.Tensor, constant: torch.Tensor) -> torch.Tensor:
    """What a linear layer adds when the input features `weight`'s columns read are the constants `constant`."""
    return weight @ constant


def pruned_state_dict(
    state: dict[str, torch.Tensor],
    convs: list[ConvLink],
    head: LinearLink | None,
    masks: Masks,
    bias_compensation: bool,
) -> dict[str, torch.Tensor]:
    """The original state dict with every linked conv/BN/linear sliced to the kept channels.

    Args:
        state: the unpruned model's state dict (CPU tensors); names are unchanged by pruning.
        convs, head: how the masks apply (see `links`); everything else is copied whole.
        masks: keep-mask per prunable BN name.
        bias_compensation: fold relu(β) of removed input channels into the next BN's running mean / head bias.
    """
    out = dict(state)
    for link in convs:
        out_keep = kept_index(masks[link.out_mask]) if link.out_mask else None
        in_keep = kept_index(masks[link.in_mask]) if link.in_mask else None
        weight = select(state[f"{link.conv}.weight"], out_keep)
        out[f"{link.conv}.weight"] = select(weight, None, in_keep)
        for key in BN_TENSORS:
            out[f"{link.bn}.{key}"] = select(state[f"{link.bn}.{key}"], out_keep)
        if bias_compensation and link.in_mask:
            removed = ~masks[link.in_mask]
            constant = emitted_constant(state[f"{link.in_mask}.bias"], removed)
            # The BN normalises x - running_mean; the pruned conv's output lacks `shift`, so lower the mean by it.
            shift = conv_shift(weight[:, removed], constant)
            out[f"{link.bn}.running_mean"] = out[f"{link.bn}.running_mean"] - shift
    if head is not None and head.in_mask:
        keep = masks[head.in_mask]
        weight = state[f"{head.linear}.weight"]
        out[f"{head.linear}.weight"] = select(weight, None, kept_index(keep))
        if bias_compensation:
            # Global average pooling keeps a constant map constant, so the head saw W[:, c] * relu(β_c) exactly.
            constant = emitted_constant(state[f"{head.in_mask}.bias"], ~keep)
            out[f"{head.linear}.bias"] = state[f"{head.linear}.bias"] + linear_shift(weight[:, ~keep], constant)
    return out


# ---- masks on a model (the registry entry of its arch says which mask selects which channels) ---


def links(model: nn.Module) -> tuple[list[ConvLink], LinearLink | None]:
    """Which mask selects the output and input channels of each conv (and the head), by module name."""
    return architecture_of(model).links(unwrap(model))


def check_masks(model: nn.Module, masks: Masks) -> Masks:
    """The masks as CPU bool tensors, one per prunable BN with its size, none empty; PruneError otherwise."""
    bns = prunable_batchnorms(model)
    if set(masks) != set(bns):
        missing, extra = sorted(set(bns) - set(masks)), sorted(set(masks) - set(bns))
        raise PruneError(f"prune: masks do not match the model's prunable BNs (missing {missing}, extra {extra})")
    checked = {}
    for name, bn in bns.items():
        mask = masks[name].detach().cpu().bool().flatten()
        if mask.numel() != bn.num_features:
            raise PruneError(f"prune: mask of {name} has {mask.numel()} entries, the layer {bn.num_features}")
        if not mask.any():
            raise PruneError(f"prune: {name} would keep 0 channels; use prune.min_channels >= 1")
        checked[name] = mask
    return checked


def cfg_from_masks(model: nn.Module, masks: Masks) -> list:
    """The cfg of the pruned model, from the number of channels each mask keeps (the registry knows the shape)."""
    model = unwrap(model)
    masks = check_masks(model, masks)
    return architecture_of(model).cfg_from_kept(model, {name: int(mask.sum()) for name, mask in masks.items()})


# ---- building pruned models -------------------------------------------------------------------


def prune_model(model: nn.Module, masks: Masks, bias_compensation: bool = True) -> nn.Module:
    """A new, smaller model keeping the masked channels, weights copied by module name.

    Args:
        model: the unpruned model (left unchanged).
        masks: keep-mask per prunable BN (see `select_channels`).
        bias_compensation: fold the constant relu(β) of removed channels into the next layer.

    Returns the pruned model on the original's device, in eval mode: its BN running statistics are what
    makes it match the original (and carry the compensation); train mode would replace them by batch statistics.
    """
    model = unwrap(model)
    masks = check_masks(model, masks)
    device = next(model.parameters()).device
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    convs, head = links(model)
    pruned = build_model(model.arch, model.num_classes, cfg_from_masks(model, masks), model.width)
    pruned.load_state_dict(pruned_state_dict(state, convs, head, masks, bias_compensation))  # strict
    return pruned.to(device).eval()


def params_for_cfg(model: nn.Module, cfg: list) -> int:
    """Parameter count of `model`'s architecture with another cfg; built on the meta device (no memory, fast)."""
    model = unwrap(model)
    with torch.device("meta"):
        return count_params(build_model(model.arch, model.num_classes, cfg, model.width))


def smallest_ratio_for_index(index: int, total: int) -> float:
    """The smallest ratio r > 0 with int(total * r) == index, i.e. whose threshold is the index-th smallest |γ|.

    index/total can land one ulp low so that int() gives index - 1; step up to the next float then.
    Any r in (0, 1/total) picks index 0 and there is no smallest, so 0.5/total stands for them.
    """
    if index == 0:
        return 0.5 / total
    ratio = index / total
    while int(total * ratio) < index:
        ratio = math.nextafter(ratio, 1.0)
    return ratio


def ratio_for_budget(
    model: nn.Module, target_params: int, min_channels: int, round_to: int = 1, max_layer_ratio: float = 1.0
) -> float:
    """The smallest ratio in [0, 1) whose pruned model has at most `target_params` parameters.

    The pruned model only changes where int(total * ratio) changes, so the search bisects over those
    candidates exactly (ratio 0 first, then one per sorted |γ|); params fall monotonically along them.
    PruneError when even every prunable layer at `min_channels` is over the budget.
    """
    if isinstance(target_params, bool) or not isinstance(target_params, numbers.Integral) or target_params < 1:
        raise PruneError(f"prune.target_params: {target_params!r} must be a positive whole number of parameters")
    target_params, min_channels = int(target_params), check_min_channels(min_channels)
    round_to = check_round_to(round_to)
    gammas = gather_gammas(model)
    total = sum(g.numel() for g in gammas.values())
    candidates = [0.0] + [smallest_ratio_for_index(i, total) for i in range(total)]

    def params_at(candidate: int) -> int:
        masks, _ = masks_for_ratio(gammas, candidates[candidate], min_channels, round_to, max_layer_ratio)
        return params_for_cfg(model, cfg_from_masks(model, masks))

    lo, hi = 0, len(candidates) - 1
    smallest = params_at(hi)  # the threshold is the largest |γ|: every layer falls back to min_channels
    if smallest > target_params:
        raise PruneError(
            f"prune.target_params: {target_params} is below the smallest reachable {smallest} parameters "
            f"(every prunable layer at prune.min_channels={min_channels}, rounded to prune.round_to={round_to}); "
            "raise target_params or lower min_channels or round_to"
        )
    if params_at(lo) <= target_params:
        return candidates[lo]
    while hi - lo > 1:  # invariant: candidate lo is over the budget, candidate hi fits
        mid = (lo + hi) // 2
        if params_at(mid) <= target_params:
            hi = mid
        else:
            lo = mid
    return candidates[hi]


@dataclass
class PruneResult:
    model: nn.Module
    masks: Masks
    cfg: list
    threshold: float
    ratio: float
    params_before: int
    params_after: int

    @property
    def channels_removed(self) -> float:
        """The share of prunable channels actually removed: `ratio` less what `min_channels` and `round_to` kept."""
        kept = sum(int(mask.sum()) for mask in self.masks.values())
        return 1 - kept / sum(mask.numel() for mask in self.masks.values())


def prune(
    model: nn.Module,
    ratio: float | None = None,
    target_params: int | None = None,
    min_channels: int = 2,
    bias_compensation: bool = True,
    round_to: int = 1,
    max_layer_ratio: float = 1.0,
) -> PruneResult:
    """Network Slimming's pruning step: a fixed `ratio` of channels, or the smallest ratio fitting `target_params`.

    Args:
        model: the sparsity-trained model (left unchanged).
        ratio: fraction of prunable channels to remove, in [0, 1).
        target_params: instead of ratio, the largest parameter count allowed.
        min_channels: no prunable layer keeps fewer channels.
        bias_compensation: fold relu(β) of removed channels into the next layer.
        round_to: every prunable layer keeps a multiple of this many channels (or all it has); 1 = off.
        max_layer_ratio: no prunable layer loses more than this share of its channels; 1 = off.
    """
    if (ratio is None) == (target_params is None):
        raise PruneError(
            f"prune: ratio={ratio!r}, target_params={target_params!r}; set exactly one of the two (target_params "
            "null to prune by ratio)"
        )
    if target_params is not None:
        ratio = ratio_for_budget(model, target_params, min_channels, round_to, max_layer_ratio)
    masks, threshold = select_channels(model, ratio, min_channels, round_to, max_layer_ratio)
    pruned = prune_model(model, masks, bias_compensation)
    return PruneResult(
        model=pruned,
        masks=masks,
        cfg=pruned.cfg,
        threshold=threshold,
        ratio=float(ratio),
        params_before=count_params(model),
        params_after=count_params(pruned),
    )
