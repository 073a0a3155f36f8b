"""λ and prune-ratio labels: the strings in params.yaml and on the CLI that name the pipeline's files, and their values.

A λ is written "1e-4" and names models/sparse/1e-4.pt; a ratio is 0.9 or "budget". Stages, the report and the search
turn values into labels here, so a folder name is spelled one way everywhere.
"""

from __future__ import annotations

import math

from netslim.config.schema import ConfigError
from netslim.vocabulary import BUDGET


def parse_lambda(text: str | float, key: str = "lambda") -> float:
    """λ is written as a label like "1e-4" in params.yaml (it names files); this is its value."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ConfigError(f'{key}: {text!r} is not a number; write it like "1e-4" or "0"') from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{key}: {text!r} must be a finite number >= 0 (0 turns the L1 penalty off)")
    return value


def lambda_label(value: float | str) -> str:
    """The canonical file-name label of a λ: 1e-4 -> "1e-4", 0 -> "0", 3.2e-5 -> "3.2e-5" (the report writes lrs so)."""
    v = float(value)
    if v == 0:
        return "0"
    mantissa, exponent = f"{v:.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def ratio_label(value: float | str) -> str:
    """The file-name label of a prune target: 0.9 -> "0.9", "budget" -> "budget"."""
    return BUDGET if value == BUDGET else f"{float(value):g}"


def parse_ratio(text: float | str, key: str = "ratio") -> float | str:
    """A prune target from the CLI or params: a ratio in [0, 1), or "budget"."""
    if text == BUDGET:
        return BUDGET
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ConfigError(f'{key}: {text!r} must be a ratio in [0, 1) like 0.9, or "budget"') from None
    if not 0 <= value < 1:
        raise ConfigError(f"{key}: {text!r} is outside [0, 1); 0.9 removes 90% of the prunable channels")
    return value
