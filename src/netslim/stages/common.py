"""What the stage CLIs share: every file location (derived from params.yaml's `paths` in one place)
and the few steps more than one stage takes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from netslim.config import Config, OptimConfig, PathsConfig, lambda_label, ratio_label
from netslim.engine import FitSettings


@dataclass(frozen=True)
class Layout:
    """Where each stage reads and writes; dvc.yaml spells the same paths from the same keys."""

    paths: PathsConfig

    @property
    def prepared(self) -> Path:
        return Path(self.paths.prepared)

    def sparse_dir(self, lam: str | float) -> Path:
        return Path(self.paths.sparse) / lambda_label(lam)

    def sparse_best(self, lam: str | float) -> Path:
        return self.sparse_dir(lam) / "best.pt"

    def train_reports(self, lam: str | float) -> Path:
        return Path(self.paths.train_reports) / lambda_label(lam)

    def pruned(self, ratio: float | str) -> Path:
        return Path(self.paths.pruned) / f"{ratio_label(ratio)}.pt"

    def prune_reports(self, ratio: float | str) -> Path:
        return Path(self.paths.prune_reports) / ratio_label(ratio)

    def finetuned(self, ratio: float | str) -> Path:
        return Path(self.paths.finetuned) / f"{ratio_label(ratio)}.pt"

    def finetune_reports(self, ratio: float | str) -> Path:
        return Path(self.paths.finetune_reports) / ratio_label(ratio)

    def exported(self, name: str) -> Path:
        return Path(self.paths.exported) / f"{name}.onnx"

    @property
    def export_reports(self) -> Path:
        return Path(self.paths.export_reports)

    def state(self, stage: str, label: str) -> Path:
        return Path(self.paths.state) / f"{stage}-{label}.pt"


def fit_settings(
    config: Config,
    optim: OptimConfig,
    sparsity_lambda: float,
    epochs: int | None = None,
    lr: float | None = None,
    divergence_loss: float = math.inf,
) -> FitSettings:
    """The trainer's settings for one run from the config's optimiser section and runtime switches."""
    return FitSettings(
        epochs=epochs or optim.epochs,
        batch_size=optim.batch_size,
        lr=lr or optim.lr,
        weight_decay=optim.weight_decay,
        milestones=optim.milestones,
        lr_gamma=optim.lr_gamma,
        sparsity_lambda=sparsity_lambda,
        sparsity_threshold=config.train.sparsity_threshold,
        seed=config.experiment.seed,
        amp=config.runtime.amp,
        channels_last=config.runtime.channels_last,
        compile=config.runtime.compile,
        eval_batch_size=config.runtime.eval_batch_size,
        divergence_loss=divergence_loss,
    )
