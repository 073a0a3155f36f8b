"""One MLflow run per stage execution, and what a stage logs into it (`Tracker`).

A leaf: it is handed numbers, files, figures, checkpoint hashes and provenance, and the process rank. The torch
side (saving checkpoints, running a model for its signature, reading γ) is the stages' (netslim.stages.model_tracking).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netslim.config import Config, lambda_label
from netslim.digest import file_sha256
from netslim.tracking.description import NOTE_TAG, headline_table, run_link
from netslim.tracking.dvc_params import dvc_stage, param_text, rounded, stage_params
from netslim.tracking.identity import PROJECT_RUN_ENV, pipeline_id, source_tags
from netslim.tracking.store import HTTP_DEFAULTS, TrackingError, check_reachable, open_experiment, tracking_uri
from netslim.vocabulary import curve

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

CHAMPION = "champion"
# What a stage's logged model is, from the run's tags: `sparse-1e-4`, `pruned-0_9`, `finetuned-0_9` (MLflow
# refuses "." in a logged model's name, so a ratio's point is written "_").
MODEL_NAMES = {"train": "sparse-{lambda}", "prune": "pruned-{ratio}", "finetune": "finetuned-{ratio}"}
RUN_ID_KEY = "mlflow_run_id"  # in a checkpoint's provenance: the run that wrote it


def registered_model_name(arch: str, dataset: str) -> str:
    """One registered model per architecture and dataset; each fine-tuned model is a version of it."""
    return f"netslim-{arch}-{dataset}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:120]}" if text else type(e).__name__


class Tracker:
    """What a stage logs; every call survives a lost server (recorded, warned about at once and at the end)."""

    def __init__(
        self,
        mlflow_module: Any | None,
        log_models: bool = True,
        register: bool = True,
        uri: str = "",
        tags: dict[str, str] | None = None,
    ) -> None:
        self._mlflow = mlflow_module
        self._log_models = log_models
        self._register = register
        self.uri = uri
        self.tags = dict(tags or {})  # the run's tags (stage, arch, dataset, lambda, ratio, ...)
        self.lost: list[str] = []
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.headlines: dict[str, float] = {}  # the numbers the run's description shows
        self.sources: list[dict[str, str]] = []  # the runs whose checkpoints this run read

    @property
    def enabled(self) -> bool:
        return self._mlflow is not None

    @property
    def logs_models(self) -> bool:
        """Whether `model` logs anything: tracking is on and `tracking.model_stages` names this stage."""
        return self._mlflow is not None and self._log_models

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        if self._mlflow is None:
            return None
        if self.lost:  # the server went away once already: don't stall training on timeouts again
            self.lost.append(what)
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - any client/server failure must not kill the stage
            self.lost.append(f"{what} ({_first_line(e)})")
            print(
                f"warning: MLflow at {self.uri} failed on {what} ({_first_line(e)}); the stage goes on "
                "without tracking",
                file=sys.stderr,
            )
            return None

    def params(self, params: dict[str, Any]) -> None:
        clean = {k: ("null" if v is None else v) for k, v in params.items()}
        self._call("log_params", lambda: self._mlflow.log_params(clean))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._call("set_tags", lambda: self._mlflow.set_tags({k: str(v) for k, v in tags.items()}))

    def metrics(self, metrics: dict[str, Any], step: int | None = None, headline: tuple[str, ...] = ()) -> None:
        """Log the numeric values (bools as 0/1, 12 significant digits).

        Args:
            headline: the keys the run is judged by: its description shows them (see `note`).
        """
        numeric = {k: rounded(float(v)) for k, v in metrics.items() if isinstance(v, int | float)}
        self.headlines |= {k: numeric[k] for k in headline if k in numeric}
        self._call(f"log_metrics(step={step})", lambda: self._mlflow.log_metrics(numeric, step=step))

    def epoch(self, record: dict[str, float]) -> None:
        """Every per-epoch value as `epoch/<key>` with step = epoch, so the UI draws the curves (and the best
        epoch's values keep their plain names)."""
        self.metrics({curve(k): v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))

    def dict(self, obj: Any, filename: str) -> None:
        self._call(f"log_dict({filename})", lambda: self._mlflow.log_dict(obj, filename))

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call(f"log_artifact({path})", lambda: self._mlflow.log_artifact(str(path), artifact_path))

    def table(self, rows: list[dict[str, Any]], filename: str) -> None:
        """Rows as an MLflow table (the UI's artifact view shows it as one; mlflow.load_table reads it)."""
        import pandas as pd

        self._call(f"log_table({filename})", lambda: self._mlflow.log_table(pd.DataFrame(rows), filename))

    def image(self, key: str, draw: Callable[[], Figure], step: int) -> None:
        """The figure `draw` returns as the image `key` at `step`: the UI's image chart walks through the steps
        with a slider. Drawn only when it can be logged (not for a server that is gone)."""
        if self._mlflow is None:
            return
        if self.lost:
            self.lost.append(f"log_image({key}, step={step})")
            return
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(draw())
        canvas.draw()
        pixels = np.asarray(canvas.buffer_rgba())[..., :3].copy()
        self._call(
            f"log_image({key}, step={step})",
            lambda: self._mlflow.log_image(pixels, key=key, step=step, synchronous=True),
        )

    def datasets(self, prepared: Path) -> None:
        """The prepared splits as the run's dataset inputs: name, a digest of the split's file, its size."""
        if self._mlflow is None or not (prepared / "meta.json").is_file():
            return
        meta = json.loads((prepared / "meta.json").read_text())
        splits = list(meta["sizes"])
        found = [
            _split_dataset(
                prepared / f"{split}.pt",
                name=str(meta["dataset"]),
                digest=file_sha256(prepared / f"{split}.pt")[:12],
                profile={"num_images": int(meta["sizes"][split]), "num_classes": int(meta["num_classes"])},
            )
            for split in splits
        ]
        self._call("log_inputs", lambda: self._mlflow.log_inputs(found, splits, [None] * len(splits)))

    def stamped(self, provenance: Mapping[str, Any]) -> dict[str, Any]:
        """The provenance of a checkpoint this run writes, with this run's id (the stage that loads the checkpoint
        tags this run as its source); without tracking, a run id inherited from the source is dropped."""
        own = {RUN_ID_KEY: self.run_id} if self.run_id else {}
        return {k: v for k, v in provenance.items() if k != RUN_ID_KEY} | own

    def checkpoint(self, path: str | Path, sha256: str) -> None:
        """Tag the hash of a checkpoint this run wrote (`checkpoint_sha256/<file name>`)."""
        self.set_tags({f"checkpoint_sha256/{Path(path).name}": sha256})

    def source(self, path: str | Path, sha256: str, provenance: Mapping[str, Any]) -> None:
        """Tag the checkpoint this stage loads: its path and hash, and the run and stage that wrote it (from the
        checkpoint's provenance)."""
        if self._mlflow is None:
            return
        tags = {"source_checkpoint": str(path), "source_sha256": sha256}
        if provenance.get(RUN_ID_KEY):
            tags |= {"source_run_id": provenance[RUN_ID_KEY], "source_stage": provenance.get("stage", "")}
            self.sources.append({"run_id": provenance[RUN_ID_KEY], "checkpoint": str(path)})
        self.set_tags(tags)

    def linked_sources(self, provenances: Mapping[str | Path, Mapping[str, Any]]) -> None:
        """Link the runs that wrote these checkpoints (path -> its provenance) in the description, without the
        `source_*` tags (which name one source): a stage that reads several (export)."""
        if self._mlflow is None:
            return
        for path, provenance in provenances.items():
            if provenance.get(RUN_ID_KEY):
                self.sources.append({"run_id": provenance[RUN_ID_KEY], "checkpoint": str(path)})

    def model_name(self) -> str:
        try:
            return MODEL_NAMES[self.tags["stage"]].format_map(self.tags).replace(".", "_")
        except KeyError:
            return self.tags.get("stage", "model")

    def model(
        self,
        model: Any,
        example: np.ndarray,
        output: np.ndarray,
        register: bool = False,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        """Log a PyTorch model with signature and input example, named after what it is (`pruned-0_9`; MODEL_NAMES).
        The caller prepares the model and runs it (stages.model_tracking.log_model); mlflow.pytorch imports torch.

        Args:
            model: a CPU copy of the model in eval mode.
            example: its input, a normalized float32 NCHW batch of more than one image (so the batch dimension stays
                dynamic); output: the model's output for it. Both give the signature.
            register: add it as a version of its architecture's and dataset's registered model, tagged
                with `metrics`; the best feasible version (by val_acc, among those whose
                `meets_constraints` is true) holds the alias `champion`.
        """
        if not self.logs_models:
            return
        name = self.model_name()
        registered = None
        if register and self._register:
            registered = registered_model_name(self.tags.get("arch", "model"), self.tags.get("dataset", "data"))

        def log() -> Any:
            from mlflow.models import infer_signature

            # pt2 (torch.export): loading runs no pickled code and needs no netslim, only torch.
            # Explicit requirements skip MLflow's inference, which reloads the model in a subprocess, and
            # validate_serving_input=False its reload-and-predict check of the example (5-10 s a model on a
            # 2-core CPU); tests/test_tracking.py loads logged models and compares their outputs instead.
            # torch's pt2 packager warns "No complete tensor found in the group" for every model: the warning
            # is about weights off the CPU, and this copy of the model is on the CPU.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="No complete tensor found", category=UserWarning)
                return self._mlflow.pytorch.log_model(
                    model,
                    name=name,
                    signature=infer_signature(example, output),
                    input_example=example,
                    serialization_format="pt2",
                    pip_requirements=self._mlflow.pytorch.get_default_pip_requirements(),
                    registered_model_name=registered,
                    validate_serving_input=False,
                )

        info = self._call(f"log_model({name})", log)
        if info is not None and registered:
            self._call(f"{CHAMPION} alias", lambda: self._register_version(registered, info, metrics or {}))

    def note(self, run_name: str, status: str, pipeline_runs: bool = False) -> None:
        """The run's description (markdown): its headline numbers and links to the runs it came from.

        Args:
            pipeline_runs: also link the other runs of this pipeline (the report, which reads no checkpoint).
        """

        def write() -> None:
            client = self._mlflow.MlflowClient()
            lines = [f"**{run_name}**" + ("" if status == "FINISHED" else f" ({status})")]
            for source in self.sources:  # first: the UI shows a description's first lines until "Show more"
                try:
                    lines += ["", f"from {run_link(client.get_run(source['run_id']))}: `{source['checkpoint']}`"]
                except self._mlflow.exceptions.MlflowException:  # written while tracking to another store
                    lines += ["", f"from run `{source['run_id']}` (not in this store): `{source['checkpoint']}`"]
            if self.headlines:
                lines += ["", *headline_table(self.headlines)]
            if pipeline_runs and self.experiment_id:
                query = f"tags.pipeline_id = '{self.tags['pipeline_id']}'"
                found = client.search_runs([self.experiment_id], query, order_by=["attributes.start_time ASC"])
                others = [f"- {run_link(run)}" for run in found if run.info.run_id != self.run_id]
                lines += ["", "Runs of this pipeline:", "", *others] if others else []
            client.set_tag(self.run_id, NOTE_TAG, "\n".join(lines))

        if self._mlflow is not None and self.run_id:
            self._call("set_tag(mlflow.note.content)", write)

    def _register_version(self, registered: str, info: Any, metrics: dict[str, Any]) -> None:
        """Tag the new version with its metrics and constraint verdict; move `champion` to it if it is
        feasible and its val_acc is at least the current champion's (ties go to the newer version)."""
        client = self._mlflow.MlflowClient()
        version = str(info.registered_model_version)
        feasible = bool(metrics.get("meets_constraints"))
        tags = {k: param_text(v) for k, v in metrics.items() if isinstance(v, int | float)}
        tags |= {k: self.tags[k] for k in ("lambda", "ratio") if k in self.tags}
        tags["meets_constraints"] = param_text(feasible)
        for key, value in tags.items():
            client.set_model_version_tag(registered, version, key, value)
        if not feasible:
            return
        score = float(metrics.get("val_acc", -math.inf))
        try:
            current = client.get_model_version_by_alias(registered, CHAMPION)
            current_score = float(current.tags.get("val_acc", "-inf"))
        except self._mlflow.exceptions.MlflowException:  # no champion yet
            current_score = -math.inf
        if not math.isnan(score) and score >= current_score:
            client.set_registered_model_alias(registered, CHAMPION, version)


def _split_dataset(path: Path, name: str, digest: str, profile: dict[str, int]) -> Any:
    """An MLflow dataset that only describes a prepared split (its file stays where it is)."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    class PreparedSplit(MetaDataset):
        @property
        def profile(self) -> dict[str, int]:
            return profile

        def to_dict(self) -> dict[str, str]:
            return super().to_dict() | {"profile": json.dumps(profile)}

    return PreparedSplit(LocalArtifactDatasetSource(str(path.resolve())), name=name, digest=digest)


@contextlib.contextmanager
def stage_run(
    config: Config,
    stage: str,
    run_name: str,
    nested: bool = False,
    params: dict[str, Any] | None = None,
    main_process: bool = True,
    **tags: Any,
) -> Iterator[Tracker]:
    """One MLflow run around a stage; FAILED if the stage raises, KILLED if it is interrupted (Ctrl-C, or a
    SIGTERM, which the CLI turns into a KeyboardInterrupt; or sys.exit with an error code), FINISHED otherwise.

    When dvc.yaml (in the working directory) has the stage, the run logs the params it lists for it, and
    the prepared splits as dataset inputs if the stage reads them (or, after it succeeds, writes them).

    Args:
        nested: start the run under the active run of this process (search trials under the study).
        params: what tells this stage's runs apart (`lambda`, `ratio`, ...), logged as params as given.
        main_process: False on every rank but the first of a distributed stage (distributed.is_main_process):
            those log nothing, so a torchrun stage is one run.
        tags: more tags (lambda, ratio, ...); arch and dataset here override the config's.

    Raises:
        TrackingError: before the stage's work starts, when the tracking URI cannot be used.
    """
    if not config.tracking.enabled or not main_process:
        yield Tracker(None)
        return
    uri = tracking_uri(config)
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    check_reachable(uri)
    # Under `mlflow run`, the project's run is this stage run's parent rather than the run itself, so
    # `mlflow run . -e main` shows one parent with a child per stage (start_run would adopt it).
    project_run = os.environ.pop(PROJECT_RUN_ENV, None)
    all_tags = (
        {
            "stage": stage,
            "pipeline_id": pipeline_id(),
            "dataset": config.data.dataset,
            "arch": config.model.arch,
        }
        | source_tags(stage, project=bool(project_run))
        | {k: str(v) for k, v in tags.items()}
    )
    if "lambda" in tags:  # one spelling per λ ("1e-4", not "0.0001"), so the UI can filter on it
        with contextlib.suppress(ValueError):
            all_tags["lambda"] = lambda_label(tags["lambda"])
    if project_run and not nested:
        all_tags["mlflow.parentRunId"] = project_run
    spec = dvc_stage(stage, config)
    prepared = Path(config.paths.prepared)
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        experiment = open_experiment(mlflow, uri, config.tracking.experiment)
        active = mlflow.start_run(run_name=run_name, tags=all_tags, nested=nested)
    except Exception as e:  # noqa: BLE001 - whatever the store raises, the stage must stop here with the URI
        raise TrackingError(f"MLflow tracking URI {uri}: cannot start a run ({_first_line(e)})") from None
    log_models = config.tracking.log_models and stage in config.tracking.model_stages
    tracker = Tracker(mlflow, log_models, config.tracking.register_models, uri, all_tags)
    tracker.run_id = active.info.run_id
    tracker.experiment_id = experiment.experiment_id
    if spec is not None or params:
        tracker.params((stage_params(spec, config) if spec is not None else {}) | dict(params or {}))
    if spec is not None and prepared in spec.deps:
        tracker.datasets(prepared)
    status = "FINISHED"
    try:
        yield tracker
        if spec is not None and prepared in spec.outs:
            tracker.datasets(prepared)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except SystemExit as e:  # sys.exit inside a stage: an interruption unless it says success
        status = "FINISHED" if e.code in (0, None) else "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        tracker.note(run_name, status, pipeline_runs=stage == "report")
        _end_run(mlflow, tracker, status)


def _end_run(mlflow: Any, tracker: Tracker, status: str) -> None:
    """End the run even after the server went away: end_run also pops the process's active-run stack."""
    try:
        mlflow.end_run(status=status)
    except Exception as e:  # noqa: BLE001
        tracker.lost.append(f"end_run({status}) ({_first_line(e)})")
    if tracker.lost:
        lost = tracker.lost
        # The first entry says why; the last ones say how far the stage got (a failed end_run comes last).
        shown = lost if len(lost) <= 8 else [*lost[:4], f"... {len(lost) - 7} more ...", *lost[-3:]]
        print(
            f"warning: MLflow at {tracker.uri} stopped answering; {len(lost)} call(s) lost: {'; '.join(shown)}",
            file=sys.stderr,
        )
