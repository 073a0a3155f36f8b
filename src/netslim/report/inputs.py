"""What the report reads (`ReportInputs`: everything the earlier stages wrote), and how it names a model and reads
and prints a number: a value a stage did not write is None, printed as "n/a", never a failure."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from netslim import vocabulary as vocab
from netslim.config import Config, ConstraintsConfig
from netslim.vocabulary import BUDGET

NA = "n/a"

# How a pruned model was repaired right after surgery: repair variant -> column title.
TITLES = ("plain surgery", "+ bias compensation", "+ BN recalibration", "+ both")
REPAIRS = dict(zip(vocab.VARIANTS, TITLES, strict=True))


@dataclass(frozen=True)
class ReportInputs:
    """Everything the earlier stages wrote, keyed by λ label (train) or ratio label (prune, finetune)."""

    train_history: dict[str, pd.DataFrame]
    train_metrics: dict[str, dict[str, Any]]
    gammas: dict[str, pd.DataFrame]
    prune_metrics: dict[str, dict[str, Any]]
    channels: dict[str, pd.DataFrame]
    finetune_history: dict[str, pd.DataFrame]
    finetune_metrics: dict[str, dict[str, Any]]
    export_metrics: dict[str, Any] = field(default_factory=dict)  # reports/export/*.json, when the export stage ran
    export_widths: dict[str, Any] = field(default_factory=dict)


def ratio_text(label: str) -> str:
    """ "0.9" -> "90%", "budget" -> "(budget)": how a prune target reads in a model name."""
    return f"({BUDGET})" if label == BUDGET else vocab.ratio_percent(label)


def model_name(label: str, finetuned: bool) -> str:
    return f"pruned {ratio_text(label)}" + (" + fine-tuned" if finetuned else "")


def train_name(lam: str) -> str:
    return f"{vocab.role_of(vocab.train_model(lam))} (λ = {lam})"


def number(values: Mapping[str, Any], key: str) -> float | None:
    """A finite number from a metrics dict, or None when missing, NaN or not a number."""
    value = values.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def batch_sizes(models: Mapping[str, Mapping[str, Any]]) -> list[int]:
    """The batch sizes a stage timed, from its metric names (onnx_speedup_b1, eager_speedup_b64, ...)."""
    found = {vocab.batch_of(k) for m in models.values() for k in m}
    return sorted(b for b in found if b is not None)


def meets_constraints(constraints: ConstraintsConfig, test_acc: float | None, params: float | None) -> bool | None:
    """Accuracy AND params within the constraints; None when either is unknown (shown as n/a, never as a pass)."""
    if test_acc is None or params is None:
        return None
    return constraints.met_by(test_acc, params)


def saved_repair(config: Config) -> str:
    """The repair variant of the pruned model the prune stage saves (and fine-tuning starts from)."""
    return vocab.variant_name(config.prune.bias_compensation, config.prune.recalibration_batches > 0)


def fmt_pct(value: float | None, digits: int = 2) -> str:
    """A share as a percentage: two decimals in tables, one (digits=1) in the running text under the figures."""
    return NA if value is None else f"{value * 100:.{digits}f}%"


def fmt_int(value: float | None) -> str:
    return NA if value is None else f"{round(value):,}"


def fmt_millions(value: float | None) -> str:
    return NA if value is None else f"{value / 1e6:,.1f} M"


def fmt_ratio(value: float | None) -> str:
    return NA if value is None else f"{value:.2f}×"


def fmt_rate(value: float | None) -> str:
    """Images/s: whole numbers, except that a slow rate keeps three significant digits."""
    return NA if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def fmt_bool(value: bool | None) -> str:
    return NA if value is None else ("yes" if value else "no")
