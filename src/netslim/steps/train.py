"""Sparsity training: the unpruned model trained with λ·sign(γ) added to the gradient of every BN γ."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from netslim import distributed
from netslim import vocabulary as vocab
from netslim.config import Config
from netslim.data import PreparedData
from netslim.engine import FitResult, FitSettings, fit
from netslim.models import build_model, count_params
from netslim.slimming.sparsity import init_bn_scale
from netslim.steps import RunOptions


@dataclass
class SparseResult:
    """A finished sparsity training.

    Attributes:
        model: holds the weights of the last epoch; `fit.best_state` those of the best one (by validation accuracy).
        fit: the trainer's result (history, best epoch and state).
        fingerprint: identifies what was trained (settings, architecture, data), for caches and resumes.
        lam: λ of the penalty (`settings.sparsity_lambda`).
        steps: optimizer steps of the whole run: how far λ could push γ (a short run needs a larger λ).
    """

    model: nn.Module
    fit: FitResult
    fingerprint: str
    lam: float
    steps: int

    def best_model(self) -> nn.Module:
        """The model with the best epoch's weights loaded (in place)."""
        self.model.load_state_dict(self.fit.best_state)
        return self.model

    def metrics(self) -> dict[str, float]:
        """The train stage's metrics (vocabulary.TRAIN_METRICS): the best epoch's accuracies and sparsity, the last
        epoch's accuracies next to them."""
        best, last = self.fit.history[self.fit.best_epoch - 1], self.fit.history[-1]
        return {
            vocab.LAMBDA: self.lam,
            vocab.BEST_EPOCH: self.fit.best_epoch,
            vocab.VAL_ACC: self.fit.best_val_acc,
            vocab.TEST_ACC: best["test_acc"],
            vocab.FINAL_TEST_ACC: last["test_acc"],
            vocab.FINAL_TRAIN_ACC: last["train_acc"],
            vocab.SPARSITY: best["sparsity"],
            vocab.STEPS: self.steps,
            vocab.NUM_PARAMS: count_params(self.model),
        }


def sparse_identity(config: Config, data_hash: str) -> dict[str, Any]:
    """What besides the trainer's settings decides the trained weights: the architecture and the data."""
    return {"arch": config.model.arch, "width": config.model.width, "data": data_hash}


def sparse_fingerprint(config: Config, settings: FitSettings, data_hash: str) -> str:
    return settings.fingerprint(sparse_identity(config, data_hash))


def initial_model(config: Config, num_classes: int, cfg: list | None = None, width: float | None = None) -> nn.Module:
    """The model of `config.model` before training, γ initialised to `model.bn_init` (the caller seeds torch).

    Args:
        cfg: per-layer widths (a pruned model's, to train its architecture from scratch); None = unpruned.
        width: replaces `model.width` (a uniformly narrower network); None keeps it.
    """
    model = build_model(config.model.arch, num_classes, cfg, width=config.model.width if width is None else width)
    return init_bn_scale(model, config.model.bn_init)


def sparsity_train(
    config: Config,
    data: PreparedData,
    settings: FitSettings,
    device: torch.device,
    data_hash: str,
    options: RunOptions,
) -> SparseResult:
    """Build the unpruned model of `config.model` (seeded, γ initialised to `model.bn_init`) and sparsity-train it.

    Args:
        settings: from `fit_settings(config, config.train, λ, ...)`; λ is `settings.sparsity_lambda`.
        data_hash: the prepared data's meta.json hash, part of the fingerprint that guards a resume and caches.
        options: the training state, resume, per-epoch callback and label (RunOptions).

    Raises:
        TrainingDiverged: the loss became NaN or exceeded `settings.divergence_loss`.
    """
    torch.manual_seed(config.experiment.seed)
    model = initial_model(config, data.num_classes)
    model = distributed.maybe_sync_batchnorm(model, config.runtime.sync_bn, device)
    result = fit(
        model, data, settings, device, fingerprint_extra=sparse_identity(config, data_hash), **options.fit_kwargs()
    )
    steps = settings.epochs * max(1, len(data.train) // settings.batch_size)
    return SparseResult(model, result, sparse_fingerprint(config, settings, data_hash), settings.sparsity_lambda, steps)
