"""Fine-tuning: a pruned model trained again without the penalty, kept at its best epoch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from netslim.config import FinetuneConfig
from netslim.data import PreparedData
from netslim.engine import FitResult, FitSettings, fit
from netslim.steps import RunOptions


@dataclass
class FinetuneResult:
    """A finished fine-tuning.

    Attributes:
        model: the fine-tuned model with the best epoch's weights (by validation accuracy).
        fit: the trainer's result (history, best epoch and state).
        best: the history record of the best epoch (its val_acc, test_acc, ...).
    """

    model: nn.Module
    fit: FitResult
    best: dict[str, float]


def distilled(settings: FitSettings, alpha: float, temperature: float) -> FitSettings:
    """`settings` with knowledge distillation at weight `alpha` and `temperature` (alpha 0: unchanged)."""
    return dataclasses.replace(settings, distill_alpha=alpha, distill_temperature=temperature)


def configured_distillation(settings: FitSettings, finetune_config: FinetuneConfig) -> FitSettings:
    """`settings` with the distillation that `finetune.distill_alpha` and `finetune.distill_temperature` ask for."""
    return distilled(settings, finetune_config.distill_alpha, finetune_config.distill_temperature)


def finetune(
    model: nn.Module,
    data: PreparedData,
    settings: FitSettings,
    device: torch.device,
    identity: dict[str, Any],
    options: RunOptions,
    teacher: nn.Module | None = None,
) -> FinetuneResult:
    """Train `model` (in place) with `settings` and load its best epoch's weights.

    Args:
        settings: from `fit_settings(config, config.finetune, 0.0, ...)`.
        identity: what besides `settings` decides the result (the pruned checkpoint's hash, the data's), part of
            the fingerprint that guards a resume.
        options: the training state, resume, per-epoch callback and label (RunOptions).
        teacher: the model distilled from when `settings.distill_alpha` > 0 (see `distilled`); its identity
            belongs in `identity`.

    Raises:
        TrainingDiverged: the loss became NaN or exceeded `settings.divergence_loss`.
    """
    result = fit(model, data, settings, device, fingerprint_extra=identity, teacher=teacher, **options.fit_kwargs())
    model.load_state_dict(result.best_state)
    return FinetuneResult(model, result, result.history[result.best_epoch - 1])
