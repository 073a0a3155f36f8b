"""CIFAR ResNet-50 whose Bottleneck inner widths come from a cfg.

The CIFAR variant: 3×3 stem conv with stride 1, no max-pool, Bottleneck blocks [3, 4, 6, 3] with
expansion 4, global average pool, linear head. Only each block's conv1/conv2 output widths (its "inner"
channels) are set by the cfg; conv3 outputs and the downsample path stay at the unpruned widths so that
every residual addition matches, whatever was pruned.
"""

from __future__ import annotations

import torch
from torch import nn

from netslim.models.architecture import Architecture, ConvLink, Links, scaled

BLOCKS_PER_STAGE = (3, 4, 6, 3)
STAGE_PLANES = (64, 128, 256, 512)
EXPANSION = 4

# A ResNet cfg is one [conv1_out, conv2_out] pair per bottleneck, in forward order (16 pairs).
ResNetCfg = list[list[int]]


def default_resnet50_cfg(width: float = 1.0) -> ResNetCfg:
    return [
        [scaled(planes, width), scaled(planes, width)]
        for planes, blocks in zip(STAGE_PLANES, BLOCKS_PER_STAGE, strict=True)
        for _ in range(blocks)
    ]


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """A residual block's shortcut: None (the identity) when the shape stays, else a 1×1 conv + BN projection."""
    if stride == 1 and in_channels == out_channels:
        return None
    projection = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
    return nn.Sequential(projection, nn.BatchNorm2d(out_channels))


class Bottleneck(nn.Module):
    def __init__(self, in_channels: int, inner: tuple[int, int], out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inner[0], 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner[0])
        self.conv2 = nn.Conv2d(inner[0], inner[1], 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner[1])
        self.conv3 = nn.Conv2d(inner[1], out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = projection_shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """Args:
    num_classes: size of the linear head.
    cfg: 16 [conv1_out, conv2_out] pairs; None = the unpruned widths (scaled by `width`).
    width: scales the stem, the block outputs and the default inner widths.
    """

    def __init__(self, num_classes: int = 10, cfg: ResNetCfg | None = None, width: float = 1.0) -> None:
        super().__init__()
        cfg = default_resnet50_cfg(width) if cfg is None else [list(map(int, pair)) for pair in cfg]
        if len(cfg) != sum(BLOCKS_PER_STAGE) or any(len(p) != 2 or min(p) < 1 for p in cfg):
            raise ValueError(f"resnet50 cfg must be {sum(BLOCKS_PER_STAGE)} pairs of positive widths, got {cfg}")
        self.cfg = cfg
        self.width = float(width)  # kept so a checkpoint can rebuild the fixed widths
        self.num_classes = num_classes
        self.arch = "resnet50"
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(3, stem, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        in_channels, block_index, stages = stem, 0, []
        for stage, (planes, blocks) in enumerate(zip(STAGE_PLANES, BLOCKS_PER_STAGE, strict=True)):
            out_channels = scaled(planes * EXPANSION, width)
            layers = []
            for b in range(blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(Bottleneck(in_channels, tuple(cfg[block_index]), out_channels, stride))
                in_channels, block_index = out_channels, block_index + 1
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def blocks(self) -> list[Bottleneck]:
        return [m for m in self.modules() if isinstance(m, Bottleneck)]


# ---- the registry entry: which BN masks select which channels ----------------------------------


def _bottlenecks(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, Bottleneck)]


def prunable(model: nn.Module) -> list[str]:
    """Each bottleneck's bn1 and bn2; the stem, bn3 and downsample keep the residual additions matching."""
    return [f"{block}.{bn}" for block in _bottlenecks(model) for bn in ("bn1", "bn2")]


def links(model: nn.Module) -> Links:
    convs: list[ConvLink] = []
    for block in _bottlenecks(model):
        bn1, bn2 = f"{block}.bn1", f"{block}.bn2"
        convs += [
            ConvLink(f"{block}.conv1", bn1, out_mask=bn1, in_mask=None),
            ConvLink(f"{block}.conv2", bn2, out_mask=bn2, in_mask=bn1),
            # conv3/bn3 keep every output channel so that the residual addition still matches.
            ConvLink(f"{block}.conv3", f"{block}.bn3", out_mask=None, in_mask=bn2),
        ]
    return convs, None  # stem, downsample and fc keep all their channels


def cfg_from_kept(model: nn.Module, kept: dict[str, int]) -> ResNetCfg:
    return [[kept[f"{block}.bn1"], kept[f"{block}.bn2"]] for block in _bottlenecks(model)]


RESNET50 = Architecture(
    name="resnet50",
    build=ResNet50,
    default_cfg=default_resnet50_cfg,
    prunable=prunable,
    links=links,
    cfg_from_kept=cfg_from_kept,
)
