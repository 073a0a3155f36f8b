"""CIFAR ResNet-56 (He et al. 2016, section 4.2) whose blocks' inner widths come from a cfg.

A 3×3 stem conv with 16 channels, three stages of 9 BasicBlocks at 16, 32 and 64 channels (stride 2 in
the first block of stages 2 and 3), global average pool, linear head: 6·9 + 2 = 56 weighted layers and
855,770 parameters for 10 classes. It is the model Torch-Pruning reports its slimming baseline on.

Shortcut: the identity inside a stage; where a block changes the width or stride, a 1×1 conv + BN
projection (the paper's option B). Option A (a strided identity zero-padded to the new width) saves these
2,752 parameters but is an op without weights, which surgery, checkpoints and exporters would have to
special-case; the projection is plain conv + BN like ResNet-50's downsample here.

Pruning: only each block's bn1, the BN between its two 3×3 convs, so the cfg is one inner width per block.
conv2/bn2 and the shortcut keep the stage width, so every residual addition matches whatever was pruned.
"""

from __future__ import annotations

import torch
from torch import nn

from netslim.models.architecture import Architecture, ConvLink, Links, scaled
from netslim.models.resnet import projection_shortcut

BLOCKS_PER_STAGE = 9
STAGE_WIDTHS = (16, 32, 64)

# A ResNet-56 cfg is one conv1 output width per BasicBlock, in forward order (27 widths).
ResNet56Cfg = list[int]


def default_resnet56_cfg(width: float = 1.0) -> ResNet56Cfg:
    return [scaled(planes, width) for planes in STAGE_WIDTHS for _ in range(BLOCKS_PER_STAGE)]


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, inner: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inner, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = projection_shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet56(nn.Module):
    """Args:
    num_classes: size of the linear head.
    cfg: 27 inner widths, one per block; None = the stage widths (scaled by `width`).
    width: scales the stem, the stage widths and the default inner widths.
    """

    def __init__(self, num_classes: int = 10, cfg: ResNet56Cfg | None = None, width: float = 1.0) -> None:
        super().__init__()
        cfg = default_resnet56_cfg(width) if cfg is None else [int(v) for v in cfg]
        if len(cfg) != len(STAGE_WIDTHS) * BLOCKS_PER_STAGE or min(cfg) < 1:
            raise ValueError(f"resnet56 cfg must be {len(STAGE_WIDTHS) * BLOCKS_PER_STAGE} positive widths, got {cfg}")
        self.cfg = cfg
        self.width = float(width)  # kept so a checkpoint can rebuild the fixed widths
        self.num_classes = num_classes
        self.arch = "resnet56"
        in_channels = scaled(STAGE_WIDTHS[0], width)
        self.conv1 = nn.Conv2d(3, in_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        inner = iter(cfg)
        stages = []
        for stage, planes in enumerate(STAGE_WIDTHS):
            out_channels = scaled(planes, width)
            blocks = []
            for b in range(BLOCKS_PER_STAGE):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(BasicBlock(in_channels, next(inner), out_channels, stride))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---- the registry entry: each block's bn1 is prunable ------------------------------------------


def _blocks(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, BasicBlock)]


def prunable(model: nn.Module) -> list[str]:
    return [f"{block}.bn1" for block in _blocks(model)]


def links(model: nn.Module) -> Links:
    convs: list[ConvLink] = []
    for block in _blocks(model):
        bn1 = f"{block}.bn1"
        convs += [
            ConvLink(f"{block}.conv1", bn1, out_mask=bn1, in_mask=None),
            ConvLink(f"{block}.conv2", f"{block}.bn2", out_mask=None, in_mask=bn1),
        ]
    return convs, None  # stem, shortcuts and fc keep all their channels


def cfg_from_kept(model: nn.Module, kept: dict[str, int]) -> ResNet56Cfg:
    return [kept[f"{block}.bn1"] for block in _blocks(model)]


RESNET56 = Architecture(
    name="resnet56",
    build=ResNet56,
    default_cfg=default_resnet56_cfg,
    prunable=prunable,
    links=links,
    cfg_from_kept=cfg_from_kept,
)
