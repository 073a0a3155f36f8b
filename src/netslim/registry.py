"""Every architecture netslim builds, by `model.arch` name: the one place that names them.

Adding an architecture is one file (its model and its `Architecture` entry, see models/architecture.py) plus its
name and that entry's place in ENTRIES; nothing else in netslim names architectures (tests/test_registry.py checks).

Torch-free: the config checks `model.arch` against these names, and a stage that needs no torch (report, ci-report)
must not pay 2-3 s for importing it there. An entry's module (its model, and so torch) is imported when the entry
is first used.

The registry knows no more of an entry than where it lives, so this floor names no model type: netslim.models hands
the same registry on as `ARCHITECTURES: Registry[Architecture]`, with `architecture(name) -> Architecture`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from typing import TypeVar

Entry = TypeVar("Entry")

# name -> "module:attribute" of its Architecture entry
ENTRIES = {
    "resnet50": "netslim.models.resnet:RESNET50",
    "vgg19": "netslim.models.vgg:VGG19",
    "resnet56": "netslim.models.resnet56:RESNET56",
}


class Registry(MutableMapping[str, Entry]):
    """name -> entry, each imported from its module on first use; names need no import at all."""

    def __init__(self, entries: dict[str, str]) -> None:
        self._places = dict(entries)
        self._loaded: dict[str, Entry] = {}

    def __getitem__(self, name: str) -> Entry:
        if name not in self._loaded:
            module, _, attribute = self._places[name].partition(":")  # KeyError: not registered
            self._loaded[name] = getattr(importlib.import_module(module), attribute)
        return self._loaded[name]

    def __setitem__(self, name: str, entry: Entry) -> None:
        """Register an entry built elsewhere (a test's own architecture)."""
        self._places[name] = f"{type(entry).__module__}:<registered>"
        self._loaded[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._places[name]
        self._loaded.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._places  # Mapping's own would look the entry up, importing its model

    def __iter__(self) -> Iterator[str]:
        return iter(self._places)

    def __len__(self) -> int:
        return len(self._places)


ARCHITECTURES = Registry(ENTRIES)
