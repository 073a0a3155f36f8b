"""What netslim needs to know about one architecture, as data: one `Architecture` entry per model file.

Surgery, checkpoints and the CLI read these entries through netslim.models' `architecture(name)`, the config check
their names through the torch-free `netslim.registry`; none of them names an architecture. A model built by an entry
carries `arch` (the entry's name), `cfg`, `width` and `num_classes` as attributes, which is all a checkpoint needs to
rebuild it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ConvLink:
    """A conv and the BN right after it, with the prunable BNs whose masks select its channels.

    out_mask: the BN whose mask picks this conv's output channels (None = all kept).
    in_mask: the BN (before a ReLU) that feeds this conv (None = all its input channels kept).
    """

    conv: str
    bn: str
    out_mask: str | None
    in_mask: str | None


@dataclass(frozen=True)
class LinearLink:
    """The linear head and the prunable BN (before ReLU and average pooling) that feeds it, if any."""

    linear: str
    in_mask: str | None


Links = tuple[list[ConvLink], LinearLink | None]


@dataclass(frozen=True)
class Architecture:
    """One architecture's entry in the registry.

    Args:
        name: the `model.arch` value, and the `arch` of its checkpoints.
        build: (num_classes, cfg, width) -> the model; cfg None = the unpruned widths scaled by `width`.
            A bad cfg raises ValueError (a checkpoint loader reports it as a CheckpointError).
        default_cfg: width -> the unpruned cfg.
        prunable: model -> names of the BNs whose channels Network Slimming may remove, in forward order.
        links: model -> which prunable BN's mask selects each conv's output and input channels, and the head's.
        cfg_from_kept: (model, kept channels per prunable BN name) -> the cfg of the pruned model.
    """

    name: str
    build: Callable[[int, list | None, float], nn.Module]
    default_cfg: Callable[[float], list]
    prunable: Callable[[nn.Module], list[str]]
    links: Callable[[nn.Module], Links]
    cfg_from_kept: Callable[[nn.Module, dict[str, int]], list]


def scaled(channels: int, width: float) -> int:
    """A default channel count scaled by `model.width`, never below 1."""
    return max(1, int(round(channels * width)))
