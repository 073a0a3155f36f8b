"""The torch side of tracking: what the stages hand the MLflow run from a model.

netslim.tracking is a leaf that never imports torch or the model code; here a checkpoint is saved with the run's
id in its provenance and its hash tagged, a model is copied to the CPU and run once for its logged signature, and
the prunable γ are read and drawn as the run's histogram images.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from netslim.data import normalize
from netslim.digest import file_sha256
from netslim.models import save_model, unwrap
from netslim.slimming.sparsity import prunable_gammas
from netslim.tracking import Tracker

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def save_checkpoint(run: Tracker, path: str | Path, model: nn.Module, provenance: dict[str, Any]) -> None:
    """Write the checkpoint with this run's id in its provenance (the stage that loads it tags this run as its
    source) and tag its hash on the run."""
    save_model(path, model, run.stamped(provenance))
    if run.enabled:
        run.checkpoint(path, file_sha256(path))


def log_model(
    run: Tracker,
    model: nn.Module,
    example_images: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    register: bool = False,
    metrics: dict[str, Any] | None = None,
) -> None:
    """Log the model with its signature and input example (Tracker.model), when this stage logs models.

    Args:
        example_images: a few uint8 NHWC images (more than one, so the batch dimension stays dynamic).
        register, metrics: as Tracker.model (a registered version, and the champion alias by val_acc).
    """
    if not run.logs_models:
        return
    model = copy.deepcopy(unwrap(model)).cpu().eval()  # the caller's model stays where it was
    example = normalize(example_images.cpu(), mean, std).contiguous()
    with torch.inference_mode():
        output = model(example).numpy()
    run.model(model, example.numpy(), output, register=register, metrics=metrics)


def log_gamma_histogram(run: Tracker, model: nn.Module, epoch: int, label: str, x_max: float) -> None:
    """The prunable |γ| at this epoch (0: as initialised) as the image `gamma_histogram` with step = epoch, and the
    raw values as a file."""
    if not run.enabled:
        return
    gammas = prunable_gammas(model).numpy()
    run.image("gamma_histogram", lambda: gamma_histogram(gammas, epoch, label, x_max), step=epoch)
    run.dict({"epoch": epoch, "gammas": gammas.tolist()}, f"gamma_values/epoch_{epoch:03d}.json")


def gamma_histogram(gammas: np.ndarray, epoch: int, label: str, x_max: float) -> Figure:
    """The UI's image chart walks through the epochs with a slider, so every image has the same axes: |γ| from 0 to
    `x_max` (larger values counted in the last bin) and channels on a log scale up to all of them (at epoch 0 they
    share one bin)."""
    from matplotlib.figure import Figure  # here: a stage with tracking off never pays for matplotlib

    fig = Figure(figsize=(5, 3.2), dpi=100, layout="tight")
    ax = fig.subplots()
    ax.hist(np.clip(np.abs(gammas), 0, x_max), bins=80, range=(0, x_max), color="tab:blue")
    ax.set_yscale("log")
    ax.set(xlim=(0, x_max), ylim=(0.8, 2 * len(gammas)), xlabel="|γ| (BN scaling factor)", ylabel="channels")
    ax.set_title(f"λ={label}, " + ("initial γ" if epoch == 0 else f"epoch {epoch}"))
    return fig
