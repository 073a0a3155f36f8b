"""Parameter, MAC/FLOP and throughput measurements."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch
from torch import nn

from netslim.measure import (
    channels_per_layer,
    compare_models,
    count_conv_linear_macs,
    count_params,
    count_thop_macs,
    flops_from_macs,
    interleaved_seconds,
    interleaved_throughput,
    model_summary,
    throughput,
)
from netslim.models import build_model, prunable_batchnorms
from netslim.slimming.surgery import prune
from netslim.vocabulary import FLOPS, MACS, NUM_PARAMS, THOP_MACS


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 32 * 32, 10))


def test_count_params_is_the_sum_of_numels() -> None:
    model = build_model("resnet50", width=0.25)
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    assert count_params(tiny_net()) == 3 * 8 * 9 + 8192 * 10 + 10


def bn_pool_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


@pytest.mark.parametrize("batch", [1, 3])
def test_conv_linear_macs_of_a_small_net_are_the_hand_computed_value(batch: int) -> None:
    conv = 8 * 32 * 32 * (3 * 3 * 3)  # output elements × (in_channels × kernel) each
    linear = 8 * 10
    assert count_conv_linear_macs(bn_pool_net(), (batch, 3, 32, 32)) == conv + linear == 221_264  # per image


@pytest.mark.parametrize("batch", [1, 3])
def test_thop_macs_add_four_per_batchnorm_element_and_the_average_pool(batch: int) -> None:
    batchnorm = 4 * 8 * 32 * 32
    pool = 8 * (32 * 32 + 1)  # thop: the window's elements plus one per output element
    assert count_thop_macs(bn_pool_net(), (batch, 3, 32, 32)) == 221_264 + batchnorm + pool


@pytest.mark.parametrize("count", [count_conv_linear_macs, count_thop_macs])
def test_counting_macs_leaves_the_model_unmodified(count: Callable[[nn.Module], int]) -> None:
    model = build_model("vgg19", width=0.125).train()
    keys = list(model.state_dict())
    count(model)
    assert list(model.state_dict()) == keys  # thop's total_ops/total_params buffers went to the copy
    assert model.training and next(model.parameters()).device.type == "cpu"
    assert not any(m._forward_hooks for m in model.modules())


def test_summary_flops_are_twice_the_conv_linear_macs_and_thop_macs_sit_beside_them() -> None:
    assert flops_from_macs(221_264) == 442_528
    summary = model_summary(bn_pool_net())
    assert summary == {
        NUM_PARAMS: count_params(bn_pool_net()),
        MACS: 221_264,
        FLOPS: 442_528,
        THOP_MACS: count_thop_macs(bn_pool_net()),
    }


def test_channels_per_layer_lists_prunable_bns() -> None:
    model = build_model("resnet50", width=0.25)
    channels = channels_per_layer(model)
    assert list(channels) == list(prunable_batchnorms(model))
    assert channels["layer1.0.bn1"] == 16 and channels["layer4.2.bn2"] == 128


def test_throughput_is_positive_and_restores_train_mode() -> None:
    model = build_model("vgg19", width=0.125).train()
    assert throughput(model, "cpu", batch_size=2, repeats=2, warmup=1) > 0
    assert model.training


def test_compare_models_reports_both_models_and_measured_speedup() -> None:
    torch.manual_seed(0)
    reference = build_model("vgg19", width=0.125)
    with torch.no_grad():
        for bn in prunable_batchnorms(reference).values():
            bn.weight.uniform_(0, 1)
    pruned = prune(reference, ratio=0.7).model
    report = compare_models(reference, pruned, "cpu", batch_sizes=(1, 4), repeats=2)
    assert report["device"] == "cpu"
    for side, model in (("reference", reference), ("pruned", pruned)):
        assert report[side] == model_summary(model)
    assert report["macs_ratio"] == report["reference"]["macs"] / report["pruned"]["macs"] > 1
    assert report["params_ratio"] == report["reference"][NUM_PARAMS] / report["pruned"][NUM_PARAMS] > 1
    assert [row["batch_size"] for row in report["throughput"]] == [1, 4]
    for row in report["throughput"]:
        assert row["reference_images_per_s"] > 0 and row["pruned_images_per_s"] > 0
        assert row["speedup"] == row["pruned_images_per_s"] / row["reference_images_per_s"]
        assert row["macs_ratio"] == report["macs_ratio"]


def test_interleaved_seconds_times_every_runner_in_rotating_order() -> None:
    calls: list[str] = []
    runners = [lambda name=name: calls.append(name) for name in "abc"]
    seconds = interleaved_seconds(runners, repeats=2, warmup=1)
    assert calls == list("abcbcacab")  # each round starts one runner later
    assert [len(samples) for samples in seconds] == [2, 2, 2]
    assert all(s >= 0 for samples in seconds for s in samples)


def test_interleaved_seconds_synchronizes_around_every_timed_and_warmup_call() -> None:
    synced: list[int] = []
    interleaved_seconds([lambda: None], repeats=3, warmup=2, synchronize=lambda: synced.append(1))
    assert len(synced) == 2 * (3 + 2)


def test_interleaved_throughput_is_images_over_the_median_timed_seconds() -> None:
    def sleeper(seconds: float) -> Callable[[], None]:
        return lambda: time.sleep(seconds)

    delays = iter([0.01, 0.3, 0.01])  # one sample slowed by something else on the machine

    fast, slow = interleaved_throughput(
        [lambda: time.sleep(next(delays)), sleeper(0.03)], batch_size=8, repeats=3, warmup=0
    )
    assert 8 / 0.01 * 0.5 < fast <= 8 / 0.01  # the median: the 0.3 s outlier does not count
    assert 8 / 0.03 * 0.5 < slow <= 8 / 0.03  # sleep never returns early; the slack is scheduler jitter
    assert fast > slow


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"runners": [], "batch_size": 1, "repeats": 1, "warmup": 0}, "runners is empty"),
        ({"runners": [print], "batch_size": 0, "repeats": 1, "warmup": 0}, "batch_size 0"),
        ({"runners": [print], "batch_size": 1, "repeats": 0, "warmup": 0}, "repeats 0"),
        ({"runners": [print], "batch_size": 1, "repeats": 1, "warmup": -1}, "warmup -1"),
    ],
)
def test_interleaved_throughput_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        interleaved_throughput(**kwargs)
