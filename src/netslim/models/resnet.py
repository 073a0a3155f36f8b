"""CIFAR ResNet-50 whose Bottleneck inner widths come from a cfg.

The CIFAR variant: 3×3 stem conv with stride 1, no max-pool, Bottleneck blocks [3, 4, 6, 3] with
expansion 4, global average pool, linear head. Only each block's conv1/conv2 output widths (its "inner"
channels) are set by the cfg; conv3 outputs and the downsample path stay at the unpruned widths so that
every residual addition matches, whatever was pruned.
"""

from __future__ import annotations

import torch
from torch import nn

BLOCKS_PER_STAGE = (3, 4, 6, 3)
STAGE_PLANES = (64, 128, 256, 512)
EXPANSION = 4

# A ResNet cfg is one [conv1_out, conv2_out] pair per bottleneck, in forward order (16 pairs).
ResNetCfg = list[list[int]]


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def default_resnet50_cfg(width: float = 1.0) -> ResNetCfg:
    return [
        [_scaled(planes, width), _scaled(planes, width)]
        for planes, blocks in zip(STAGE_PLANES, BLOCKS_PER_STAGE, strict=True)
        for _ in range(blocks)
    ]


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
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

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
        stem = _scaled(64, width)
        self.conv1 = nn.Conv2d(3, stem, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        in_channels, block_index, stages = stem, 0, []
        for stage, (planes, blocks) in enumerate(zip(STAGE_PLANES, BLOCKS_PER_STAGE, strict=True)):
            out_channels = _scaled(planes * EXPANSION, width)
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
