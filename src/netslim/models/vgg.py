"""CIFAR VGG-19 with BatchNorm, every conv width from a cfg ('M' marks a 2×2 max-pool)."""

from __future__ import annotations

import torch
from torch import nn

from netslim.models.architecture import Architecture, ConvLink, LinearLink, Links, scaled

VGG19_CFG: list[int | str] = [
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
]

VGGCfg = list[int | str]


def default_vgg19_cfg(width: float = 1.0) -> VGGCfg:
    return [v if v == "M" else scaled(v, width) for v in VGG19_CFG]


class VGG(nn.Module):
    """Args:
    num_classes: size of the linear head.
    cfg: conv widths with 'M' for max-pool; None = VGG-19 (scaled by `width`).
    width: scales the default cfg.
    """

    def __init__(self, num_classes: int = 10, cfg: VGGCfg | None = None, width: float = 1.0) -> None:
        super().__init__()
        cfg = default_vgg19_cfg(width) if cfg is None else [v if v == "M" else int(v) for v in cfg]
        if not cfg or cfg[0] == "M" or any(v != "M" and v < 1 for v in cfg):
            raise ValueError(f"vgg cfg must start with a conv width and hold positive widths or 'M', got {cfg}")
        self.cfg = cfg
        self.width = float(width)  # kept so a checkpoint can rebuild the fixed widths
        self.num_classes = num_classes
        self.arch = "vgg19"
        layers: list[nn.Module] = []
        in_channels = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_channels, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(True)]
                in_channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ---- the registry entry: every conv's BN is prunable --------------------------------------------


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, BN) module names in forward order; each conv of `features` is followed by its BN."""
    modules = dict(model.named_modules())
    pairs = []
    for name, module in model.features.named_children():
        if isinstance(module, nn.Conv2d):
            bn = f"features.{int(name) + 1}"
            if not isinstance(modules.get(bn), nn.BatchNorm2d):
                raise ValueError(f"vgg19: {bn} should be the BatchNorm after features.{name}")
            pairs.append((f"features.{name}", bn))
    return pairs


def prunable(model: nn.Module) -> list[str]:
    return [bn for _, bn in _conv_bn_pairs(model)]


def links(model: nn.Module) -> Links:
    convs, previous = [], None
    for conv, bn in _conv_bn_pairs(model):
        convs.append(ConvLink(conv, bn, out_mask=bn, in_mask=previous))
        previous = bn
    return convs, LinearLink("classifier", in_mask=previous)


def cfg_from_kept(model: nn.Module, kept: dict[str, int]) -> VGGCfg:
    """The kept widths in order with every 'M' where it was."""
    cfg: VGGCfg = []
    for name, module in model.features.named_children():
        if isinstance(module, nn.MaxPool2d):
            cfg.append("M")
        elif isinstance(module, nn.BatchNorm2d):
            cfg.append(kept[f"features.{name}"])
    return cfg


VGG19 = Architecture(
    name="vgg19",
    build=VGG,
    default_cfg=default_vgg19_cfg,
    prunable=prunable,
    links=links,
    cfg_from_kept=cfg_from_kept,
)
