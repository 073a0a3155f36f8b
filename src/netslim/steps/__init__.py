"""The pipeline's steps as plain functions with typed inputs and results: sparsity training
(`steps.train`), pruning (`steps.prune`) and fine-tuning (`steps.finetune`).

A stage CLI (`netslim.stages`) is a shell around one step: arguments, config, call, write files, track.
The Optuna search (`netslim.search`) composes the same steps with its λ cache. Nothing here imports
`netslim.stages`, and nothing here writes a file except the resumable training state it is handed.
Each step is a module of its own so that DVC reruns a stage only when the step it runs changed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from torch import nn

from netslim.config import Config, OptimConfig
from netslim.engine import FitSettings

EpochCallback = Callable[[dict[str, float], nn.Module], None]


@dataclass(frozen=True)
class RunOptions:
    """How a training step runs, apart from what it computes.

    Attributes:
        state_path: where the full training state is saved after every epoch (None: nowhere).
        resume: continue from `state_path` when it holds a state of this same run.
        on_epoch: called after every epoch with the history record and the model (tracking, a trial's pruner);
            an exception it raises (e.g. optuna.TrialPruned) stops the training.
        desc: the label of progress bars and log lines.
        lr_key: the params key of the lr, which a TrainingDiverged tells the user to lower.
    """

    state_path: Path | None = None
    resume: bool = False
    on_epoch: EpochCallback | None = None
    desc: str = "train"
    lr_key: str = "the lr"

    def fit_kwargs(self) -> dict[str, Any]:
        """These options as `engine.fit`'s keyword arguments (the field names are fit's)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def fit_settings(
    config: Config,
    optim: OptimConfig,
    sparsity_lambda: float,
    epochs: int | None = None,
    lr: float | None = None,
    divergence_loss: float = math.inf,
) -> FitSettings:
    """The trainer's settings for one run from the config's optimiser section and runtime switches.

    Args:
        optim: `config.train` for sparsity training, `config.finetune` for fine-tuning.
        epochs, lr: replace the section's values (the search's trial settings); None keeps them.
        divergence_loss: a train loss above this ends the run with TrainingDiverged.
    """
    return FitSettings(
        epochs=epochs or optim.epochs,
        batch_size=optim.batch_size,
        lr=lr or optim.lr,
        weight_decay=optim.weight_decay,
        milestones=optim.milestones,
        lr_gamma=optim.lr_gamma,
        schedule=optim.schedule,
        augment=optim.augment,
        sparsity_lambda=sparsity_lambda,
        sparsity_threshold=config.train.sparsity_threshold,
        seed=config.experiment.seed,
        amp=config.runtime.amp,
        channels_last=config.runtime.channels_last,
        compile=config.runtime.compile,
        eval_batch_size=config.runtime.eval_batch_size,
        divergence_loss=divergence_loss,
    )
