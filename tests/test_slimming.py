"""Network Slimming's pruning step: threshold math, channel surgery, bias compensation and budgets (parameters
and latency)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from netslim.config import PruneConfig
from netslim.measure import count_conv_linear_macs
from netslim.models import build_model, count_params, load_model, prunable_batchnorms, save_model
from netslim.slimming.budget import budget_ratio, ratio_for_latency
from netslim.slimming.surgery import (
    cfg_from_masks,
    check_masks,
    params_for_cfg,
    prune,
    prune_model,
    ratio_for_budget,
)
from netslim.slimming.threshold import PruneError, channel_masks, gather_gammas, global_threshold, select_channels

NARROW = [("vgg19", 0.125), ("resnet50", 0.25)]


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def randomised(arch: str, width: float, seed: int = 0) -> nn.Module:
    """A model whose every BN has random γ, β and running statistics, so that no check passes trivially."""
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=10, width=width)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.05, 1.0)
                m.bias.normal_(0.0, 0.3)
                m.running_mean.normal_(0.0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def zero_removed_channels(model: nn.Module, masks: dict[str, torch.Tensor], zero_beta: bool = True) -> nn.Module:
    """A copy of `model` with γ (and, if zero_beta, β) of removed channels set to 0.

    With both zeroed a removed channel outputs exactly 0, which is what the pruned model (without bias
    compensation) computes; with β kept it is the model that bias compensation approximates.
    """
    masked = copy.deepcopy(model)
    masks = check_masks(masked, masks)
    with torch.no_grad():
        for name, bn in prunable_batchnorms(masked).items():
            removed = ~masks[name].to(bn.weight.device)
            bn.weight[removed] = 0
            if zero_beta:
                bn.bias[removed] = 0
    return masked


def pruned_params_for_ratio(model: nn.Module, ratio: float, min_channels: int, round_to: int = 1) -> int:
    """Parameters of the model `prune` would build with these arguments, without building it."""
    masks, _ = select_channels(model, ratio, min_channels, round_to)
    return params_for_cfg(model, cfg_from_masks(model, masks))


# ---- threshold math ---------------------------------------------------------------------------

GAMMAS = {"a": t(0.1, 0.5, 0.3), "b": t(0.2, 0.4)}  # sorted: 0.1 0.2 0.3 0.4 0.5


@pytest.mark.parametrize(
    ("ratio", "value"),
    [(0.2, 0.2), (0.39, 0.2), (0.4, 0.3), (0.5, 0.3), (0.6, 0.4), (0.99, 0.5)],  # index int(5 * ratio)
)
def test_global_threshold_is_sorted_value_at_int_total_times_ratio(ratio: float, value: float) -> None:
    assert global_threshold(GAMMAS, ratio) == float(t(value))


def test_masks_keep_strictly_greater_than_threshold() -> None:
    masks = channel_masks(GAMMAS, global_threshold(GAMMAS, 0.4), min_channels=1)
    assert masks["a"].tolist() == [False, True, False]  # 0.3 == threshold is removed
    assert masks["b"].tolist() == [False, True]


def test_ratio_zero_keeps_every_channel() -> None:
    assert global_threshold(GAMMAS, 0.0) == -math.inf
    masks = channel_masks(GAMMAS, global_threshold(GAMMAS, 0), min_channels=1)
    assert all(m.all() for m in masks.values())  # the reference would drop the minimum (0.1) here


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, float("nan")])
def test_ratio_outside_unit_interval_is_refused(ratio: float) -> None:
    with pytest.raises(PruneError, match=r"prune\.ratios: .* is outside \[0, 1\)"):
        global_threshold(GAMMAS, ratio)


def test_min_channels_keeps_the_largest_gammas() -> None:
    gammas = {"a": t(0.1, 0.9, 0.05, 0.8), "b": t(5.0, 6.0)}  # sorted: .05 .1 .8 .9 5 6
    threshold = global_threshold(gammas, 0.6)  # index 3 -> 0.9: nothing in "a" is above it
    assert threshold == float(t(0.9))
    assert channel_masks(gammas, threshold, 2)["a"].tolist() == [False, True, False, True]
    assert channel_masks(gammas, threshold, 3)["a"].tolist() == [True, True, False, True]
    assert channel_masks(gammas, threshold, 1)["a"].tolist() == [False, True, False, False]
    assert channel_masks(gammas, threshold, 9)["b"].tolist() == [True, True]  # capped at the layer size
    with pytest.raises(PruneError, match="prune.min_channels"):
        channel_masks(gammas, threshold, 0)


def test_gather_gammas_are_abs_detached_and_in_forward_order() -> None:
    model = randomised("vgg19", 0.125)
    bns = prunable_batchnorms(model)
    with torch.no_grad():
        bns["features.1"].weight[0] = -0.7
    gammas = gather_gammas(model)
    assert list(gammas) == list(bns)
    assert gammas["features.1"][0].item() == pytest.approx(0.7)
    assert all(not g.requires_grad and g.device.type == "cpu" for g in gammas.values())


def test_resnet_prunes_only_inner_bottleneck_channels() -> None:
    masks, _ = select_channels(randomised("resnet50", 0.25), 0.5, 2)
    assert len(masks) == 32 and all(name.rsplit(".", 1)[-1] in ("bn1", "bn2") for name in masks)


# ---- surgery ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "width"), NARROW)
@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_pruned_model_equals_masked_model_without_compensation(arch: str, width: float, ratio: float) -> None:
    model = randomised(arch, width)
    masks, _ = select_channels(model, ratio, min_channels=2)
    pruned = prune_model(model, masks, bias_compensation=False)
    masked = zero_removed_channels(model, masks, zero_beta=True)
    x = images()
    expected = output(masked, x)
    assert count_params(pruned) < count_params(model)
    assert not torch.allclose(expected, output(model, x), atol=1e-3)  # the removed channels did matter
    torch.testing.assert_close(output(pruned, x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("arch", "width"), NARROW)
def test_prune_leaves_the_original_unchanged(arch: str, width: float) -> None:
    model = randomised(arch, width)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prune(model, ratio=0.5)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def with_removed_beta_positive(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Removed channels get a clearly positive β, so relu(β) is a real constant that compensation must carry."""
    with torch.no_grad():
        for name, bn in prunable_batchnorms(model).items():
            removed = ~masks[name]
            bn.bias[removed] = torch.rand(int(removed.sum())) + 0.5
    return model


@pytest.mark.parametrize(("arch", "width"), NARROW)
def test_bias_compensation_brings_pruned_model_closer_to_gamma_zeroed_model(arch: str, width: float) -> None:
    model = randomised(arch, width)
    masks, _ = select_channels(model, 0.5, min_channels=2)
    model = with_removed_beta_positive(model, masks)
    target = output(zero_removed_channels(model, masks, zero_beta=False), images())  # γ = 0, β kept
    error_on = (output(prune_model(model, masks, bias_compensation=True), images()) - target).abs().mean()
    error_off = (output(prune_model(model, masks, bias_compensation=False), images()) - target).abs().mean()
    assert error_on < 0.25 * error_off


def only_pruning(model: nn.Module, layers: list[str]) -> dict[str, torch.Tensor]:
    """Masks that remove every other channel of `layers` and keep everything else."""
    masks = {name: torch.ones(bn.num_features, dtype=torch.bool) for name, bn in prunable_batchnorms(model).items()}
    for name in layers:
        masks[name][1::2] = False
    return masks


@pytest.mark.parametrize(("arch", "width"), NARROW)
def test_bias_compensation_is_exact_where_no_padding_is_involved(arch: str, width: float) -> None:
    # bn2 -> 1x1 conv3 -> bn3, and the last VGG BN -> avgpool -> linear, pass a constant on exactly.
    model = randomised(arch, width)
    names = list(prunable_batchnorms(model))
    masks = only_pruning(model, [n for n in names if n.endswith("bn2")] if arch == "resnet50" else names[-1:])
    model = with_removed_beta_positive(model, masks)
    target = output(zero_removed_channels(model, masks, zero_beta=False), images())
    torch.testing.assert_close(output(prune_model(model, masks), images()), target, atol=1e-5, rtol=0)


def test_full_width_resnet50_at_ratio_0_9_fits_the_4m_budget() -> None:
    torch.manual_seed(0)
    model = build_model("resnet50", num_classes=10)
    with torch.no_grad():
        for bn in prunable_batchnorms(model).values():
            bn.weight.uniform_(0.0, 1.0)
    result = prune(model, ratio=0.9)
    assert result.params_before == 23_520_842
    assert 2_800_000 <= result.params_after <= 4_000_000
    assert result.params_after == count_params(result.model)
    assert output(result.model, images(2)).shape == (2, 10)


@pytest.mark.parametrize(("arch", "width"), NARROW)
@pytest.mark.parametrize("min_channels", [1, 2])
def test_extreme_ratio_empties_no_layer(arch: str, width: float, min_channels: int) -> None:
    model = randomised(arch, width)
    result = prune(model, ratio=0.999, min_channels=min_channels)
    kept = {name: int(m.sum()) for name, m in result.masks.items()}
    sizes = {name: bn.num_features for name, bn in prunable_batchnorms(model).items()}
    assert all(kept[n] >= min(min_channels, sizes[n]) for n in kept)
    assert output(result.model, images(2)).shape == (2, 10)


@pytest.mark.parametrize(("arch", "width"), NARROW)
def test_channels_removed_is_the_share_actually_gone_below_the_ratio_when_min_channels_keeps_more(
    arch: str, width: float
) -> None:
    model = randomised(arch, width)
    total = sum(bn.num_features for bn in prunable_batchnorms(model).values())
    plain = prune(model, ratio=0.5, min_channels=1)
    assert plain.channels_removed == pytest.approx(1 - sum(int(m.sum()) for m in plain.masks.values()) / total)
    assert plain.channels_removed == pytest.approx(0.5, abs=2 / total)  # the strict > also drops the threshold channel
    floored = prune(model, ratio=0.95, min_channels=6)
    kept = sum(bn.num_features for bn in prunable_batchnorms(floored.model).values())
    assert floored.channels_removed == pytest.approx(1 - kept / total)
    assert floored.channels_removed < 0.95 and floored.ratio == 0.95


@pytest.mark.parametrize(("arch", "width"), NARROW)
def test_cfg_from_masks_matches_the_rebuilt_model(arch: str, width: float) -> None:
    model = randomised(arch, width)
    masks, _ = select_channels(model, 0.6, 2)
    cfg = cfg_from_masks(model, masks)
    pruned = prune_model(model, masks)
    assert pruned.cfg == cfg
    assert [bn.num_features for bn in prunable_batchnorms(pruned).values()] == [int(m.sum()) for m in masks.values()]
    if arch == "vgg19":
        assert [i for i, v in enumerate(cfg) if v == "M"] == [i for i, v in enumerate(model.cfg) if v == "M"]
    else:
        assert len(cfg) == 16 and all(len(pair) == 2 for pair in cfg)


def test_bad_masks_are_refused() -> None:
    model = randomised("vgg19", 0.125)
    masks, _ = select_channels(model, 0.5, 2)
    with pytest.raises(PruneError, match="missing"):
        cfg_from_masks(model, {k: v for k, v in masks.items() if k != "features.1"})
    empty = dict(masks, **{"features.1": torch.zeros_like(masks["features.1"])})
    with pytest.raises(PruneError, match="features.1 would keep 0 channels"):
        prune_model(model, empty)


@pytest.mark.parametrize(("arch", "width"), NARROW)
def test_macs_and_params_drop_after_pruning(arch: str, width: float) -> None:
    model = randomised(arch, width)
    pruned = prune(model, ratio=0.5).model
    assert count_params(pruned) < count_params(model)
    assert count_conv_linear_macs(pruned) < count_conv_linear_macs(model)


@pytest.mark.parametrize(("arch", "width"), NARROW)
def test_pruned_model_reloads_from_its_file_alone(arch: str, width: float, tmp_path) -> None:
    pruned = prune(randomised(arch, width), ratio=0.6).model
    path = tmp_path / "pruned.pt"
    save_model(path, pruned)
    loaded = load_model(path)
    assert loaded.cfg == pruned.cfg
    assert torch.equal(output(loaded, images()), output(pruned, images()))


# ---- parameter budgets ------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "width"), NARROW)
def test_pruned_params_for_ratio_matches_the_built_model(arch: str, width: float) -> None:
    model = randomised(arch, width)
    for ratio in (0.0, 0.25, 0.8):
        assert pruned_params_for_ratio(model, ratio, 2) == count_params(prune(model, ratio=ratio).model)


@pytest.mark.parametrize(("arch", "width"), NARROW)
def test_budget_mode_fits_and_its_ratio_is_minimal(arch: str, width: float) -> None:
    model = randomised(arch, width)
    full = count_params(model)
    for fraction in (0.9, 0.6, 0.35, 0.2):
        budget = int(full * fraction)
        result = prune(model, target_params=budget)
        assert result.params_after <= budget
        assert result.params_after == count_params(result.model)
        assert 0 < result.ratio < 1
        assert pruned_params_for_ratio(model, result.ratio - 1e-6, 2) > budget  # a smaller ratio would not fit


def test_budget_at_or_above_full_size_prunes_nothing() -> None:
    model = randomised("vgg19", 0.125)
    assert ratio_for_budget(model, count_params(model), 2) == 0.0
    assert prune(model, target_params=count_params(model) + 1).params_after == count_params(model)


def test_unreachable_budget_names_the_smallest_reachable_count() -> None:
    model = randomised("resnet50", 0.25)
    smallest = pruned_params_for_ratio(model, 0.9999, 2)
    with pytest.raises(PruneError, match=rf"prune.target_params: 1000 .* smallest reachable {smallest}"):
        prune(model, target_params=1000)
    assert ratio_for_budget(model, smallest, 2) < 1


def test_prune_needs_exactly_one_of_ratio_and_target() -> None:
    model = randomised("vgg19", 0.125)
    with pytest.raises(PruneError, match="exactly one"):
        prune(model)
    with pytest.raises(PruneError, match="exactly one"):
        prune(model, ratio=0.5, target_params=10_000)


def macs_latency(model: nn.Module) -> float:
    """A deterministic stand-in for a measured latency, falling with the MACs as a measured one does."""
    return count_conv_linear_macs(model) / 1e6


def test_latency_budget_picks_the_smallest_grid_ratio_that_meets_it() -> None:
    model = randomised("vgg19", 0.0625)
    target = macs_latency(prune(model, ratio=0.37).model)
    ratio, ms = ratio_for_latency(model, target, macs_latency)
    assert ms == macs_latency(prune(model, ratio=ratio).model) <= target
    assert ratio <= 0.37 and round(ratio * 100) == ratio * 100  # on the 1% grid
    assert macs_latency(prune(model, ratio=ratio - 0.01).model) > target  # the ratio below misses it


def test_latency_budget_starts_at_lowest_and_refuses_an_unreachable_target() -> None:
    model = randomised("vgg19", 0.0625)
    assert ratio_for_latency(model, 1e9, macs_latency, lowest=0.123) == (0.123, macs_latency(prune(model, 0.123).model))
    with pytest.raises(PruneError, match="prune.target_latency_ms: 1e-09 ms is below"):
        ratio_for_latency(model, 1e-9, macs_latency)
    with pytest.raises(PruneError, match="positive number of milliseconds"):
        ratio_for_latency(model, 0, macs_latency)


def test_budget_ratio_without_a_latency_target_is_the_params_budget() -> None:
    model = randomised("vgg19", 0.0625)
    target = prune(model, ratio=0.6).params_after
    assert budget_ratio(model, PruneConfig(target_params=target, round_to=4)) == ratio_for_budget(model, target, 2, 4)


def test_a_latency_target_without_a_way_to_measure_it_is_refused() -> None:
    with pytest.raises(ValueError, match="needs latency_of"):
        budget_ratio(randomised("vgg19", 0.0625), PruneConfig(target_latency_ms=2.5))


# ---- hardware-aligned widths (prune.round_to) -------------------------------------------------


def top_k(gamma: torch.Tensor, k: int) -> set[int]:
    return set(torch.sort(gamma, descending=True, stable=True).indices[:k].tolist())


@pytest.mark.parametrize("round_to", [1, 2, 3, 8, 16])
@pytest.mark.parametrize("seed", range(5))
def test_rounding_never_empties_or_overfills_a_layer_and_keeps_the_top_gammas(round_to: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    sizes = [1, 3, 7, 8, 9, 20, 33]  # smaller than, equal to and between multiples of round_to
    gammas = {f"bn{i}": torch.rand(n, generator=g) for i, n in enumerate(sizes)}
    for ratio in (0.0, 0.3, 0.6, 0.9, 0.99):
        threshold = global_threshold(gammas, ratio)
        plain = channel_masks(gammas, threshold, min_channels=1)
        rounded = channel_masks(gammas, threshold, min_channels=1, round_to=round_to)
        for name, gamma in gammas.items():
            kept, size = int(rounded[name].sum()), gamma.numel()
            assert 1 <= kept <= size
            assert kept == min(math.ceil(int(plain[name].sum()) / round_to) * round_to, size)
            assert set(rounded[name].nonzero().flatten().tolist()) == top_k(gamma, kept)
            assert bool((rounded[name] | ~plain[name]).all())  # every plainly kept channel is still kept


def test_rounding_takes_the_next_largest_gammas_and_resolves_ties_to_the_lower_index() -> None:
    gammas = {"a": t(0.9, 0.1, 0.5, 0.5, 0.2, 0.8)}
    masks = channel_masks(gammas, threshold=0.85, min_channels=1, round_to=4)  # keeps 0.9, then 0.8 0.5 0.5
    assert masks["a"].tolist() == [True, False, True, True, False, True]
    masks = channel_masks(gammas, threshold=0.85, min_channels=1, round_to=3)  # the tie 0.5 0.5: index 2 first
    assert masks["a"].tolist() == [True, False, True, False, False, True]


@pytest.mark.parametrize("round_to", [0, -8, 2.5, True])
def test_bad_round_to_is_refused(round_to) -> None:
    with pytest.raises(PruneError, match="prune.round_to"):
        channel_masks(GAMMAS, threshold=0.2, min_channels=1, round_to=round_to)


@pytest.mark.parametrize(("arch", "width"), NARROW)
def test_pruned_model_with_round_to_has_multiples_of_it_and_fits_its_budget(arch: str, width: float) -> None:
    model = randomised(arch, width)
    result = prune(model, ratio=0.7, round_to=8)
    sizes = {n: bn.num_features for n, bn in prunable_batchnorms(model).items()}
    for name, bn in prunable_batchnorms(result.model).items():
        assert bn.num_features % 8 == 0 or bn.num_features == sizes[name]
    plain = prune(model, ratio=0.7)
    assert plain.params_after < result.params_after < count_params(model)
    assert pruned_params_for_ratio(model, 0.7, 2, round_to=8) == result.params_after
    budget = (plain.params_after + result.params_after) // 2
    fitted = prune(model, target_params=budget, round_to=8)
    assert fitted.params_after <= budget
    assert all(
        bn.num_features % 8 == 0 or bn.num_features == sizes[n] for n, bn in prunable_batchnorms(fitted.model).items()
    )
