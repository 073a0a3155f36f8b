"""The studies' parts, their settings (studies/params.yaml's `studies` section) and the files each part writes.

Torch-free and apart from the figures and the report's text: the experiments' stages import this module and not
those, so a figure or a sentence can change without training again (netslim.studies.markdown, .figures).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netslim.config import ConfigError, read_yaml, section_from_dict
from netslim.io import write_csv, write_json

PARTS = ("controls", "sweep", "multipass")
# the controls' architecture: the parameter count of the cfg every control trains (vocabulary.NUM_PARAMS of it)
CFG_NUM_PARAMS = "cfg_num_params"


@dataclass(frozen=True)
class StudiesConfig:
    """studies/params.yaml's `studies` section."""

    reports: str = "reports/studies"  # where every part writes its JSON, CSV and figures
    ratio: float = 0.9  # the controls' and the cap's pruning ratio
    seeds: tuple[int, ...] = (0,)  # the controls' training seeds (the sparse model is experiment.seed's)
    kd_alpha: float = 0.5  # the distillation control's α (its temperature is finetune.distill_temperature)
    sweep_ratios: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
    sweep_finetune_ratios: tuple[float, ...] = (0.5, 0.8)  # the sweep's ratios also fine-tuned
    latency_repeats: int = 20  # timed batch-1 forward passes per model (median)
    caps: tuple[float, ...] = (1.0, 0.95, 0.92, 0.9)  # max_layer_ratio values tried at `ratio` in one pass
    passes: int = 4  # multi-pass: prunings, each taking at most `pass_cap` of any layer
    pass_cap: float = 0.5
    pass_target: float = 0.9  # share of the prunable channels removed after the last pass
    pass_epochs: int = 1  # sparsity-training epochs (train.lr, λ = prune.lambda) after every pass but the last


def load_studies(path: str | Path) -> StudiesConfig:
    """The `studies` section of `path`, validated; ConfigError (one line) on a bad file, key or value."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: studies params file not found; run from the project root (studies/params.yaml)")
    raw = read_yaml(path.read_text()) or {}
    if not isinstance(raw, dict) or set(raw) - {"studies"}:
        raise ConfigError(f"{path}: must hold only a `studies:` section")
    s = section_from_dict(StudiesConfig, raw.get("studies"), "studies")
    for key in ("ratio", "pass_target"):
        value = getattr(s, key)
        if not 0 < value < 1:
            raise ConfigError(f"studies.{key}: {value} is outside (0, 1); e.g. 0.9")
    for key in ("sweep_ratios", "sweep_finetune_ratios"):
        for value in getattr(s, key):
            if not 0 < value < 1:
                raise ConfigError(f"studies.{key}: {value} is outside (0, 1); ratios like 0.5")
    for value in (*s.caps, s.pass_cap):
        if not 0 < value <= 1:
            raise ConfigError(f"studies.caps/pass_cap: {value} is outside (0, 1]; 1 = uncapped")
    if not s.seeds:
        raise ConfigError("studies.seeds: [] must list at least one seed, e.g. [0]")
    if not 0 <= s.kd_alpha <= 1:
        raise ConfigError(f"studies.kd_alpha: {s.kd_alpha} must be in [0, 1], e.g. 0.5")
    if s.passes < 1 or s.pass_epochs < 1 or s.latency_repeats < 1:
        raise ConfigError("studies.passes/pass_epochs/latency_repeats: must be >= 1")
    return s


def test_noise(accuracy: float, images: int) -> float:
    """One standard error of an accuracy measured on `images` test images (binomial), e.g. 0.008 at 85% on 2,000."""
    return math.sqrt(accuracy * (1 - accuracy) / images)


def write_part(out: Path, name: str, result: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """`name`.json (everything) and `name`.csv (the rows, list-valued columns left out) under `out`."""
    write_json(out / f"{name}.json", result)
    write_csv(out / f"{name}.csv", [{k: v for k, v in r.items() if not isinstance(v, list)} for r in rows])


def load_part(out: Path, name: str) -> dict[str, Any]:
    return json.loads((out / f"{name}.json").read_text())
