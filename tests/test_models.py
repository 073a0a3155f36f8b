"""Models built from a cfg, and the checkpoint format that rebuilds them."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from netslim.io import CheckpointError, load_checkpoint, save_torch
from netslim.models import build_model, count_params, default_cfg, load_model, save_model
from netslim.models.resnet import BLOCKS_PER_STAGE, EXPANSION, STAGE_PLANES, Bottleneck

ARCHES = ("resnet50", "vgg19")


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHES)
def test_default_model_forwards(arch: str) -> None:
    model = build_model(arch, num_classes=10).eval()
    assert model.arch == arch and model.num_classes == 10 and model.width == 1.0
    assert model.cfg == default_cfg(arch)
    with torch.no_grad():
        assert model(images()).shape == (2, 10)


@pytest.mark.parametrize(("arch", "params"), [("resnet50", 23_520_842), ("vgg19", 20_035_018)])
def test_default_param_counts_are_pinned(arch: str, params: int) -> None:
    assert count_params(build_model(arch, num_classes=10)) == params


def test_custom_vgg_cfg_builds_the_given_widths() -> None:
    cfg = [8, "M", 16, 12, "M", 4]
    model = build_model("vgg19", num_classes=7, cfg=cfg).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 12, 4]
    assert [c.in_channels for c in convs] == [3, 8, 16, 12]
    assert model.classifier.in_features == 4 and model.cfg == cfg
    with torch.no_grad():
        assert model(images()).shape == (2, 7)


def test_resnet_with_random_narrow_inner_widths_keeps_residual_widths() -> None:
    rng = random.Random(0)
    width = 0.5
    cfg = [[rng.randint(1, 20), rng.randint(1, 20)] for _ in range(sum(BLOCKS_PER_STAGE))]
    model = build_model("resnet50", num_classes=10, cfg=cfg, width=width).eval()
    assert model.cfg == cfg
    expected_out = [
        round(p * EXPANSION * width) for p, n in zip(STAGE_PLANES, BLOCKS_PER_STAGE, strict=True) for _ in range(n)
    ]
    widths: list[int] = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: widths.append(out.shape[1])) for b in model.blocks()]
    with torch.no_grad():
        out = model(images())
    for h in hooks:
        h.remove()
    assert out.shape == (2, 10)
    assert widths == expected_out  # every block's output (the residual sum) keeps the fixed width
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert [[b.conv1.out_channels, b.conv2.out_channels] for b in blocks] == cfg


@pytest.mark.parametrize("arch", ARCHES)
def test_width_quarter_builds_and_forwards(arch: str) -> None:
    model = build_model(arch, num_classes=10, width=0.25).eval()
    assert model.width == 0.25
    assert count_params(model) < count_params(build_model(arch, num_classes=10)) / 8
    with torch.no_grad():
        assert model(images()).shape == (2, 10)


@pytest.mark.parametrize(
    ("arch", "cfg"),
    [
        ("resnet50", [[4, 4]] * 15),  # 15 pairs, needs 16
        ("resnet50", [[4, 0]] * 16),  # a zero width
        ("resnet50", [[4, 4, 4]] * 16),  # triples
        ("vgg19", ["M", 8, 8]),  # starts with a pool
        ("vgg19", [8, -1, "M"]),  # a negative width
        ("vgg19", []),
    ],
)
def test_bad_cfg_raises_value_error(arch: str, cfg: list) -> None:
    with pytest.raises(ValueError, match="cfg"):
        build_model(arch, num_classes=10, cfg=cfg)


def test_unknown_arch_raises_value_error() -> None:
    with pytest.raises(ValueError, match="resnet50"):
        build_model("alexnet")


@pytest.mark.parametrize("arch", ARCHES)
def test_save_load_round_trip_gives_identical_outputs(arch: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, width=0.25)
    for m in model.modules():  # non-default BN state, so that a dropped buffer would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    model.eval()
    path = tmp_path / f"{arch}.pt"
    save_model(path, model, {"note": "test"})
    loaded = load_model(path).eval()
    assert (loaded.arch, loaded.cfg, loaded.width, loaded.num_classes) == (arch, model.cfg, 0.25, 10)
    assert load_checkpoint(path)["provenance"] == {"note": "test"}
    with torch.no_grad():
        assert torch.equal(loaded(images()), model(images()))


def test_load_model_with_weights_of_another_cfg_names_the_file(tmp_path) -> None:
    path = tmp_path / "narrow.pt"
    save_model(path, build_model("resnet50", num_classes=10, width=0.25))
    checkpoint = load_checkpoint(path)
    checkpoint["cfg"] = [[3, 5]] * 16  # weights are for the default cfg
    bad = tmp_path / "mismatch.pt"
    save_torch(bad, checkpoint)
    with pytest.raises(CheckpointError, match="mismatch.pt") as info:
        load_model(bad)
    assert "do not match" in str(info.value)


def test_load_model_with_weights_of_another_arch_names_the_file(tmp_path) -> None:
    path = tmp_path / "resnet.pt"
    save_model(path, build_model("resnet50", num_classes=10, width=0.25))
    checkpoint = load_checkpoint(path)
    checkpoint["arch"], checkpoint["cfg"] = "vgg19", default_cfg("vgg19", 0.25)
    bad = tmp_path / "other_arch.pt"
    save_torch(bad, checkpoint)
    with pytest.raises(CheckpointError, match="other_arch.pt"):
        load_model(bad)
