"""The part every stage repeats, written once: config → device → data → tracking run → step → outputs → log.

A stage makes a `StageShell` (a training stage opens `distributed_stage(...)`, which makes it inside the torchrun
session), takes the device and the prepared data from it when its own order of work reaches them, and opens
`shell.writing(...)`: the stage's files written as a unit via `stage_outputs` inside its MLflow run, ended by
`commit_with_metrics` (metrics.json last, the commit, the metrics logged). What is left in the stage file is what
differs: its arguments, its step, its files and printed lines.

`netslim prepare` opens `stage_outputs` and `tracking.stage_run` itself: it has no device, model or prepared data
to take from a shell, and this module's imports (torch, the engine, the models) would join its DVC deps, so an edit
to the training engine would rerun the data preparation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netslim import distributed, tracking
from netslim.config import Config
from netslim.data import PreparedData, load_prepared
from netslim.distributed import is_main_process, resolve_device
from netslim.engine import set_deterministic
from netslim.io import StageOutputs, file_sha256, load_checkpoint, stage_outputs, write_metrics
from netslim.layout import Layout
from netslim.models import model_from_checkpoint
from netslim.tracking import Tracker


@dataclass(frozen=True)
class SourceModel:
    """The checkpoint a stage starts from and the model built from it.

    Attributes:
        provenance: what the stage that wrote it recorded (its λ, its MLflow run); {} for a file without one.
        sha256: its hash, tagged on the run and part of a resume state's identity.
    """

    path: Path
    model: nn.Module
    provenance: dict[str, Any]
    sha256: str


class StageShell:
    """One stage run's config, paths, device and prepared data.

    Args:
        stage: the stage's name in dvc.yaml and in MLflow.
        deterministic: experiment.deterministic, for a stage whose results depend on it (engine.set_deterministic,
            applied here); None leaves torch's settings as they are. Passed in rather than read here, so the DVC
            graph sees the key read only by the stages that pass it.
        main_process: False on the ranks of a distributed stage but the first: they write and log nothing.

    The device is resolved and the data loaded when the stage first asks for them, so each stage keeps its own
    order of work: finetune and prune load their checkpoint first (a missing one is the error reported), export
    never resolves a device (ONNX Runtime and the models it is compared with run on the CPU).
    """

    def __init__(
        self, config: Config, stage: str, deterministic: bool | None = None, main_process: bool = True
    ) -> None:
        self.config, self.stage, self.main_process = config, stage, main_process
        self.layout = Layout(config.paths)
        if deterministic is not None:
            set_deterministic(deterministic)

    @cached_property
    def device(self) -> torch.device:
        return resolve_device(self.config.experiment.device)

    @cached_property
    def data(self) -> PreparedData:
        return load_prepared(self.layout.prepared, self.config.data.dataset, self.config.data.image_size)

    def source_model(self, path: Path) -> SourceModel:
        """The model in the checkpoint at `path`; a bad file, or one of another arch than model.arch, stops here."""
        checkpoint = load_checkpoint(path)
        model = model_from_checkpoint(checkpoint, path, self.config.model.arch)
        return SourceModel(path, model, checkpoint.get("provenance") or {}, file_sha256(path))

    def state(self, label: str) -> Path:
        """The resumable training state of this stage's run `label` (a training stage removes it once committed)."""
        return self.layout.state(self.stage, label)

    def tracking_run(
        self, run_name: str, params: dict[str, Any] | None = None, **tags: Any
    ) -> contextlib.AbstractContextManager[Tracker]:
        """The stage's MLflow run (tracking.stage_run); only the main process of a distributed stage logs."""
        return tracking.stage_run(
            self.config, self.stage, run_name, params=params, main_process=self.main_process, **tags
        )

    @contextlib.contextmanager
    def writing(
        self,
        label: str,
        argument: str,
        files: Iterable[str | Path],
        run_name: str,
        needs_bytes: int = 0,
        params: dict[str, Any] | None = None,
        source: SourceModel | None = None,
        **tags: Any,
    ) -> Iterator[tuple[StageOutputs, Tracker]]:
        """The stage's outputs (netslim.io.stage_outputs, under `layout.work(stage, label)`) inside its MLflow run.

        Args:
            label: which run of the stage (a λ, a ratio): its lock and staging folder.
            argument: the stage's argument as the user types it, e.g. "--lambda 1e-4", for the busy message.
            files: every file the stage writes; each is written to `outputs.path(file)`, then `outputs.commit()`.
            needs_bytes: disk the stage will write, checked before the block runs.
            params, tags: as tracking.stage_run.
            source: the checkpoint the stage starts from, tagged on the run (Tracker.source).
        """
        what = f"{self.stage} {argument}".rstrip()
        with (
            stage_outputs(self.layout.work(self.stage, label), what, files, needs_bytes, self.main_process) as outputs,
            self.tracking_run(run_name, params, **tags) as run,
        ):
            if source is not None:
                run.source(source.path, source.sha256, source.provenance)
            yield outputs, run


def commit_with_metrics(
    outputs: StageOutputs,
    run: Tracker,
    path: Path,
    metrics: dict[str, Any],
    headline: tuple[str, ...],
    params: tuple[str, ...] = (),
) -> None:
    """Write `metrics` to `path` (metrics.json: the file the stage's other files are committed with), commit the
    stage's outputs, then log the metrics to its MLflow run.

    Args:
        headline: the keys the run is judged by (Tracker.metrics).
        params: keys that are the run's params, not its results (train's λ): in the file, not logged as metrics.
    """
    write_metrics(outputs.path(path), metrics)
    outputs.commit()
    run.metrics({k: v for k, v in metrics.items() if k not in params}, headline=headline)


def training_bytes(num_params: int) -> int:
    """Disk a training stage will write, roughly: its checkpoints and the resume state (the model, its best copy and
    Adam's two moments), 4 bytes a parameter, plus a megabyte for the reports."""
    return 6 * 4 * num_params + 2**20


@contextlib.contextmanager
def distributed_stage(config: Config, stage: str, deterministic: bool | None = None) -> Iterator[StageShell]:
    """The shell of a stage that runs whole inside the torchrun process group when launched by torchrun
    (docs/distributed.md; a single process otherwise), where only the main process writes outputs and logs."""
    with distributed.session(config.experiment.device):
        yield StageShell(config, stage, deterministic, is_main_process())
