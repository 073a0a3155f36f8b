"""Fine-tuning: a pruned model trained again without the penalty, kept at its best epoch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from netslim import vocabulary as vocab
from netslim.config import ConstraintsConfig, FinetuneConfig
from netslim.data import PreparedData
from netslim.engine import FitResult, FitSettings, fit
from netslim.measure import model_summary
from netslim.steps import RunOptions


@dataclass
class FinetuneResult:
    """A finished fine-tuning.

    Attributes:
        model: the fine-tuned model with the best epoch's weights (by validation accuracy).
        fit: the trainer's result (history, best epoch and state).
        best: the history record of the best epoch (its val_acc, test_acc, ...).
        image_shape: one input image's (channels, height, width), which the model's MACs are counted for.
    """

    model: nn.Module
    fit: FitResult
    best: dict[str, float]
    image_shape: tuple[int, ...]

    def metrics(self, constraints: ConstraintsConfig) -> dict[str, Any]:
        """The finetune stage's metrics (vocabulary.FINETUNE_METRICS): the best epoch's accuracies, the last epoch's
        test accuracy, the model's size and whether it meets `constraints`.

        The size is measured here, not by `finetune`: the search, which fine-tunes too, measured the pruned model
        (the same architecture) before training it.
        """
        size = model_summary(self.model, (1, *self.image_shape))
        return {
            vocab.BEST_EPOCH: self.fit.best_epoch,
            vocab.VAL_ACC: self.best["val_acc"],
            vocab.TEST_ACC: self.best["test_acc"],
            vocab.FINAL_TEST_ACC: self.fit.history[-1]["test_acc"],
            **size,
            vocab.MEETS_CONSTRAINTS: constraints.met_by(self.best["test_acc"], size[vocab.NUM_PARAMS]),
        }


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
    return FinetuneResult(model, result, result.history[result.best_epoch - 1], data.image_shape)
