"""Every architecture netslim builds, by `model.arch` name.

Adding an architecture is one file (its model and its `Architecture` entry, see architecture.py) plus
its import and name here; nothing else in netslim names architectures (tests/test_registry.py checks).
"""

from __future__ import annotations

from netslim.models.architecture import Architecture
from netslim.models.resnet import RESNET50
from netslim.models.resnet56 import RESNET56
from netslim.models.vgg import VGG19

ARCHITECTURES: dict[str, Architecture] = {entry.name: entry for entry in (RESNET50, VGG19, RESNET56)}


def architecture(name: str) -> Architecture:
    """The registry entry of `name`; ValueError naming the known ones otherwise."""
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise ValueError(f"arch {name!r} is unknown; use one of {', '.join(ARCHITECTURES)}") from None
