"""The only module that imports mlflow: one MLflow run per stage execution.

- Where: MLFLOW_TRACKING_URI when set, else params `tracking.uri`, else a SQLite file in the project
  (no server needed; `make ui` shows it). An http(s) URI is checked before any work starts.
- Runs: readable names (`train λ=1e-4`, `prune 90%`), tags for stage, arch, dataset, λ, ratio, a pipeline
  id shared by every stage of one `dvc repro` (or `mlflow run`, or `make demo`), and MLflow's own source
  tags (`mlflow.source.git.commit`, `mlflow.source.name`, `mlflow.source.type`).
- Params: the keys `dvc.yaml` lists for the stage (a section expands to its keys), with the values as
  written in params.yaml, plus what tells the stage's runs apart (`lambda`, `ratio`, ...) under short
  names, so MLflow's compare view and `params.lambda` filters have something to work with.
- Lineage: a checkpoint records the run that wrote it; the run that loads it tags that run's id and
  the file's hash (`source_run_id`, `source_sha256`). The prepared splits are the runs' dataset inputs.
  The run's description (`mlflow.note.content`) holds its headline numbers and links to its source runs.
- Failure: a run whose stage raises is ended FAILED, one interrupted (Ctrl-C, SIGTERM) KILLED. If the
  server goes away mid-run, the stage goes on (its DVC outputs matter more than its charts); the calls
  that were lost are listed in one warning.
- mlflow itself is imported only when a run is opened (1-3 s), after the config has been validated.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import hashlib
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ruamel.yaml import YAML, YAMLError

from netslim.config import Config, lambda_label, load_config, read_yaml
from netslim.vocabulary import MEETS_CONSTRAINTS, NUM_PARAMS, SPARSITY, TEST_ACC, curve

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_URI = "sqlite:///mlflow.db"
PIPELINE_ENV = "NETSLIM_PIPELINE_ID"
PROJECT_RUN_ENV = "MLFLOW_RUN_ID"  # set by `mlflow run` for its entry point's command
CHAMPION = "champion"
# A lost server must not stall training for minutes: MLflow's defaults are 7 retries and 120 s timeouts.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
NOTE_TAG = "mlflow.note.content"  # the run's description in the UI (markdown)
# The runs table opens with these columns (MLflow's shared view state, an experiment tag the UI link names):
# the numbers a run is judged by and what tells runs apart, instead of no metric column out of 170.
VIEW_KEY = "netslim-headline"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
HEADLINE_COLUMNS = (
    "params.`lambda`",
    "params.`ratio`",
    *(f"metrics.`{key}`" for key in (TEST_ACC, NUM_PARAMS, SPARSITY, MEETS_CONSTRAINTS)),
)
HEADLINE_VIEW = json.dumps({"selectedColumns": list(HEADLINE_COLUMNS)})

_process_pipeline_id: str | None = None


class TrackingError(RuntimeError):
    """The tracking server cannot be used; raised before any training starts."""


def tracking_uri(config: Config) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or config.tracking.uri or DEFAULT_URI


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the URI, when an http(s) tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(
            f"MLflow tracking URI {uri} cannot be reached ({reason}); start the server, fix MLFLOW_TRACKING_URI "
            f"(or tracking.uri), or unset both to track to the local {DEFAULT_URI}"
        ) from None
    if status >= 500:
        raise TrackingError(f"MLflow tracking URI {uri}: the server answered HTTP {status} on /health; check its log")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _process_start(pid: int) -> str | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[19]  # starttime, in clock ticks since boot
    except (OSError, IndexError):
        return None


def _is_dvc(cmdline: list[bytes]) -> bool:
    """`dvc ...` or `python .../bin/dvc ...` (the console script run by its interpreter)."""
    return any(Path(part.decode(errors="ignore")).name in ("dvc", "dvc.exe") for part in cmdline[:2])


def _dvc_ancestor_id() -> str | None:
    """An id for the nearest ancestor `dvc` process (every stage of one repro is its child), or None."""
    pid = os.getppid()
    for _ in range(12):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None
        if _is_dvc(cmdline):
            blob = f"{os.uname().nodename}:{pid}:{_process_start(pid)}"  # pids are reused; start times are not
            return "dvc-" + hashlib.sha256(blob.encode()).hexdigest()[:12]
        pid = int(next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), "0"))
        if pid <= 1:
            return None
    return None


def pipeline_id() -> str:
    """One id for all stages of one pipeline execution.

    NETSLIM_PIPELINE_ID wins (`make demo` sets it). Otherwise the `mlflow run` project run that launched
    this process, else the nearest ancestor `dvc` process (by pid and start time); a lone stage gets
    its own id. Computed once per process, so nested runs (search trials) share their parent's id.
    """
    if os.environ.get(PIPELINE_ENV):
        return os.environ[PIPELINE_ENV]
    global _process_pipeline_id
    if _process_pipeline_id is None:
        _process_pipeline_id = os.environ.get(PROJECT_RUN_ENV) or _dvc_ancestor_id() or "run-" + uuid.uuid4().hex[:12]
    return _process_pipeline_id


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:120]}" if text else type(e).__name__


# ---- what dvc.yaml says a stage reads and writes ---------------------------------------------------------

_TEMPLATE = re.compile(r"\$\{\s*([\w.-]+)\s*\}")


@dataclass(frozen=True)
class StageSpec:
    """A dvc.yaml stage as tracking needs it: its params keys as listed, its deps and outs with ${} resolved."""

    params: tuple[str, ...]
    deps: tuple[Path, ...]
    outs: tuple[Path, ...]


def dvc_stage(stage: str, config: Config, dvc_yaml: str | Path = "dvc.yaml") -> StageSpec | None:
    """The stage's entry in dvc.yaml (for a foreach stage, its `do`); None without such a file or stage."""
    path = Path(dvc_yaml)
    if not path.is_file():
        return None
    try:
        stages = (read_yaml(path.read_text()) or {}).get("stages") or {}
    except (YAMLError, AttributeError):
        return None  # DVC itself reports a broken dvc.yaml; tracking just logs no params
    entry = stages.get(stage)
    if not isinstance(entry, dict):
        return None
    entry = entry.get("do", entry)
    flat = config.to_flat_dict()

    def resolve(text: str) -> Path:  # ${paths.prepared} -> data/prepared; ${item} stays as written
        return Path(_TEMPLATE.sub(lambda m: str(flat.get(m.group(1), m.group(0))), str(text)))

    def paths(key: str) -> tuple[Path, ...]:  # an entry is a path, or {path: {cache: false, ...}}
        return tuple(resolve(p) for item in entry.get(key) or [] for p in (item if isinstance(item, dict) else [item]))

    keys: list[str] = []
    for item in entry.get("params") or []:
        if not isinstance(item, dict):
            keys.append(str(item))
            continue
        for file, listed in item.items():  # {params file: [keys]}; only params.yaml feeds the config
            if Path(file).name == "params.yaml":
                keys.extend(listed if listed else sorted({k.split(".")[0] for k in flat}))
    return StageSpec(tuple(keys), paths("deps"), paths("outs") + paths("metrics") + paths("plots"))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (tree or {}).items() if isinstance(tree, dict) else ():
        name = f"{prefix}{key}"
        out |= _flatten(value, f"{name}.") if isinstance(value, dict) else {name: value}
    return out


def param_text(value: Any) -> str:
    """A value as YAML would write it: null, true, [0.5, 0.75], 0.001."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(param_text(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(rounded(value))
    return str(value)


def rounded(value: float) -> float:
    """12 significant digits: a value computed as 0.002000000000000001 is shown as the 0.002 it means."""
    return float(f"{value:.12g}") if math.isfinite(value) else value


def stage_params(spec: StageSpec, config: Config, params_yaml: str | Path = "params.yaml") -> dict[str, str]:
    """Each key dvc.yaml lists for the stage (a section expands to its keys) with its value as written in
    params.yaml (`1.0e-3`, not 0.001); a value the file does not hold (a default, a `--set` override) as
    the config holds it."""
    flat = config.to_flat_dict()
    path = Path(params_yaml)
    text = path.read_text() if path.is_file() else ""
    written = _flatten(YAML(typ="base").load(text)) if text else {}
    typed = _flatten(read_yaml(text)) if text else {}
    out = {}
    for key in spec.params:
        for name in (k for k in flat if k == key or k.startswith(f"{key}.")):
            value = list(flat[name]) if isinstance(flat[name], tuple) else flat[name]
            same = name in written and typed.get(name) == value
            out[name] = param_text(written[name]) if same else param_text(value)
    return out


def registered_model_name(arch: str, dataset: str) -> str:
    """One registered model per architecture and dataset; each fine-tuned model is a version of it."""
    return f"netslim-{arch}-{dataset}"


# What a stage's logged model is, from the run's tags: `sparse-1e-4`, `pruned-0_9`, `finetuned-0_9` (MLflow
# refuses "." in a logged model's name, so a ratio's point is written "_").
MODEL_NAMES = {"train": "sparse-{lambda}", "prune": "pruned-{ratio}", "finetune": "finetuned-{ratio}"}
RUN_ID_KEY = "mlflow_run_id"  # in a checkpoint's provenance: the run that wrote it


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

    def datasets(self, prepared: Path) -> None:
        """The prepared splits as the run's dataset inputs: name, a digest of the split's file, its size."""
        if self._mlflow is None or not (prepared / "meta.json").is_file():
            return
        from netslim.io import file_sha256

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

    def save_model(self, path: str | Path, model: nn.Module, provenance: dict[str, Any]) -> None:
        """Write the checkpoint with this run's id in its provenance (the stage that loads it tags this run as
        its source) and tag its hash; without tracking, a run id inherited from the source is dropped."""
        from netslim.io import file_sha256
        from netslim.models import save_model

        own = {RUN_ID_KEY: self.run_id} if self.run_id else {}
        save_model(path, model, {k: v for k, v in provenance.items() if k != RUN_ID_KEY} | own)
        if self.enabled:
            self.set_tags({f"checkpoint_sha256/{Path(path).name}": file_sha256(path)})

    def source(self, path: str | Path, provenance: dict[str, Any] | None = None) -> None:
        """Tag the checkpoint this stage loads: its path and hash, and the run and stage that wrote it.

        Args:
            provenance: the checkpoint's provenance when the caller has it (else read from the file).
        """
        if self._mlflow is None:
            return
        from netslim.io import file_sha256, load_checkpoint

        if provenance is None:
            provenance = load_checkpoint(path).get("provenance") or {}
        tags = {"source_checkpoint": str(path), "source_sha256": file_sha256(path)}
        if provenance.get(RUN_ID_KEY):
            tags |= {"source_run_id": provenance[RUN_ID_KEY], "source_stage": provenance.get("stage", "")}
            self.sources.append({"run_id": provenance[RUN_ID_KEY], "checkpoint": str(path)})
        self.set_tags(tags)

    def gamma_histogram(self, model: nn.Module, epoch: int, label: str, x_max: float) -> None:
        """The prunable |γ| at this epoch (0: as initialised) as an image with step = epoch, and the raw values
        as a file. The UI's image chart walks through the steps with a slider, so every image has the same axes:
        |γ| from 0 to `x_max` (larger values counted in the last bin) and channels on a log scale up to all of
        them (at step 0 they share one bin)."""
        if self._mlflow is None:
            return
        if self.lost:  # no figure to draw for a server that is gone
            self.lost.append(f"gamma_histogram(epoch={epoch})")
            return
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from netslim.slimming.sparsity import prunable_gammas

        gammas = prunable_gammas(model).numpy()
        fig = Figure(figsize=(5, 3.2), dpi=100, layout="tight")
        canvas = FigureCanvasAgg(fig)
        ax = fig.subplots()
        ax.hist(np.clip(np.abs(gammas), 0, x_max), bins=80, range=(0, x_max), color="tab:blue")
        ax.set_yscale("log")
        ax.set(xlim=(0, x_max), ylim=(0.8, 2 * len(gammas)), xlabel="|γ| (BN scaling factor)", ylabel="channels")
        ax.set_title(f"λ={label}, " + ("initial γ" if epoch == 0 else f"epoch {epoch}"))
        canvas.draw()
        image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
        self._call(
            f"log_image(gamma_histogram, step={epoch})",
            lambda: self._mlflow.log_image(image, key="gamma_histogram", step=epoch, synchronous=True),
        )
        self.dict({"epoch": epoch, "gammas": gammas.tolist()}, f"gamma_values/epoch_{epoch:03d}.json")

    def model_name(self) -> str:
        try:
            return MODEL_NAMES[self.tags["stage"]].format_map(self.tags).replace(".", "_")
        except KeyError:
            return self.tags.get("stage", "model")

    def model(
        self,
        model: nn.Module,
        example_images: torch.Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        register: bool = False,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        """Log with signature and input example, named after what it is (`pruned-0_9`; MODEL_NAMES).

        Args:
            example_images: a few uint8 NHWC images (more than one, so the batch dimension stays dynamic).
            register: add it as a version of its architecture's and dataset's registered model, tagged
                with `metrics`; the best feasible version (by val_acc, among those whose
                `meets_constraints` is true) holds the alias `champion`.
        """
        if self._mlflow is None or not self._log_models:
            return
        import torch

        from netslim.data import normalize
        from netslim.models import unwrap

        model = copy.deepcopy(unwrap(model)).cpu().eval()  # the caller's model stays where it was
        example = normalize(example_images.cpu(), mean, std).contiguous()
        with torch.inference_mode():
            output = model(example).numpy()
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
                    signature=infer_signature(example.numpy(), output),
                    input_example=example.numpy(),
                    serialization_format="pt2",
                    pip_requirements=self._mlflow.pytorch.get_default_pip_requirements(),
                    registered_model_name=registered,
                    validate_serving_input=False,
                )

        info = self._call(f"log_model({name})", log)
        if info is not None and registered:
            self._call(f"{CHAMPION} alias", lambda: self._register_version(registered, info, metrics or {}))

    def linked_sources(self, paths: list[Path]) -> None:
        """Link the runs that wrote these checkpoints in the description, without the `source_*` tags (which
        name one source): a stage that reads several (export)."""
        if self._mlflow is None:
            return
        from netslim.io import load_checkpoint

        for path in paths:
            run_id = (load_checkpoint(path).get("provenance") or {}).get(RUN_ID_KEY)
            if run_id:
                self.sources.append({"run_id": run_id, "checkpoint": str(path)})

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
                    lines += ["", f"from {_link(client.get_run(source['run_id']))}: `{source['checkpoint']}`"]
                except self._mlflow.exceptions.MlflowException:  # written while tracking to another store
                    lines += ["", f"from run `{source['run_id']}` (not in this store): `{source['checkpoint']}`"]
            if self.headlines:
                lines += ["", *_headline_table(self.headlines)]
            if pipeline_runs and self.experiment_id:
                query = f"tags.pipeline_id = '{self.tags['pipeline_id']}'"
                found = client.search_runs([self.experiment_id], query, order_by=["attributes.start_time ASC"])
                others = [f"- {_link(run)}" for run in found if run.info.run_id != self.run_id]
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


def _headline_table(values: dict[str, float]) -> list[str]:
    """Markdown: one row per metric, or, where every key is `model/metric` (export, report), one row per model
    and one column per metric."""
    if not all("/" in key for key in values):
        return ["| metric | value |", "|---|---|", *(f"| {key} | {_number(v)} |" for key, v in values.items())]
    rows: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        model, metric = key.rsplit("/", 1)
        rows.setdefault(model, {})[metric] = value
    columns = list(dict.fromkeys(metric for row in rows.values() for metric in row))
    cells = [[model, *(_number(row[c]) if c in row else "–" for c in columns)] for model, row in rows.items()]
    return ["| " + " | ".join(["model", *columns]) + " |", "|---" * (len(columns) + 1) + "|"] + [
        "| " + " | ".join(row) + " |" for row in cells
    ]


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() and abs(value) >= 1000 else f"{value:.4g}"


def _link(run: Any) -> str:
    """A markdown link to the run that opens it in the UI (relative, so it works on any UI address), on the
    classic ML run page (without workflowType, MLflow 3 shows a run as a GenAI evaluation run)."""
    run_page = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    return f"[{run.info.run_name}]({run_page})"


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
    **tags: Any,
) -> Iterator[Tracker]:
    """One MLflow run around a stage; FAILED if the stage raises, KILLED if it is interrupted (Ctrl-C, or a
    SIGTERM, which the CLI turns into a KeyboardInterrupt; or sys.exit with an error code), FINISHED otherwise.

    When dvc.yaml (in the working directory) has the stage, the run logs the params it lists for it, and
    the prepared splits as dataset inputs if the stage reads them (or, after it succeeds, writes them).

    Args:
        nested: start the run under the active run of this process (search trials under the study).
        params: what tells this stage's runs apart (`lambda`, `ratio`, ...), logged as params as given.
        tags: more tags (lambda, ratio, ...); arch and dataset here override the config's.

    Raises:
        TrackingError: before the stage's work starts, when the tracking URI cannot be used.
    """
    from netslim.engine import is_main_process

    if not config.tracking.enabled or not is_main_process():
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


def source_tags(stage: str, project: bool) -> dict[str, str]:
    """MLflow's own source tags, which its UI shows as the run's source and commit: the commit of the working
    directory's repository (MLflow's would be that of the `netslim` executable's, which may be another)."""
    tags = {"mlflow.source.name": f"netslim {stage}", "mlflow.source.type": "PROJECT" if project else "LOCAL"}
    commit = git_commit()
    return tags | ({"mlflow.source.git.commit": commit} if commit != "unknown" else {})


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Held while a SQLite store is opened: the first process creates its tables, the others wait and find them
    (MLflow checks for the tables and then creates them, so two stages starting together both try, and one
    fails with "table ... already exists"). The lock is on the database file's folder: no lock file is left."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    folder = Path(uri.removeprefix("sqlite:///")).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def relocate_artifacts(uri: str) -> list[tuple[str, str]]:
    """Point a moved SQLite store's artifact locations at the `mlruns/` beside it again; what moved where.

    MLflow records a local artifact root as an absolute path (SqlAlchemyStore resolves `./mlruns` when it
    creates an experiment, and each run's location extends it), so a project moved or copied elsewhere
    would show runs without artifacts. A root that no longer exists, while `mlruns/` sits beside the
    database, is the same folder moved: every location under it is rewritten to the new place.
    """
    if not uri.startswith("sqlite:///"):
        return []
    db = Path(uri.removeprefix("sqlite:///")).resolve()
    here = db.parent / "mlruns"
    if not (db.is_file() and here.is_dir()):
        return []
    import sqlite3

    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con, con:  # one transaction
        try:
            locations = [row[0] or "" for row in con.execute("SELECT artifact_location FROM experiments")]
        except sqlite3.Error:  # not (yet) an MLflow store
            return []
        roots = {Path(loc.removeprefix("file://")).parent for loc in locations if loc.startswith(("/", "file:///"))}
        moved = [
            (str(root), str(here)) for root in roots if root.name == "mlruns" and root != here and not root.exists()
        ]
        if not moved:  # the usual case: nothing more to read
            return []
        tables = [row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [
                row[1] for row in con.execute(f'PRAGMA table_info("{table}")') if "CHAR" in row[2] or "TEXT" in row[2]
            ]
            for column, (old, new), prefix in itertools.product(columns, moved, ("", "file://")):
                con.execute(
                    f'UPDATE "{table}" SET "{column}" = ? || substr("{column}", ?) WHERE substr("{column}", 1, ?) = ?',
                    (prefix + new, len(prefix + old) + 1, len(prefix + old), prefix + old),
                )
    for old, new in moved:
        print(f"MLflow artifacts: {old} was moved to {new}; the store {db} now points there", file=sys.stderr)
    return moved


def open_experiment(mlflow: Any, uri: str, name: str, attempts: int = 3) -> Any:
    """Set (creating if needed) the experiment, with the runs table's headline columns (VIEW_TAG) on it.

    A SQLite store is created under a lock; other databases, where stages on several machines can race to
    create the tables or the experiment, are retried, as search.open_storage does for Optuna's storage.
    """
    for attempt in range(attempts):
        try:
            with _store_lock(uri):
                relocate_artifacts(uri)
                experiment = mlflow.set_experiment(name)
                if experiment.tags.get(VIEW_TAG) != HEADLINE_VIEW:
                    mlflow.set_experiment_tag(VIEW_TAG, HEADLINE_VIEW)
                return experiment
        except Exception:  # noqa: BLE001 - the race's error differs by database; the last attempt's is reported
            if attempt == attempts - 1:
                raise
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


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


# ---- the UI ---------------------------------------------------------------------------------------------

# MLflow 3 opens an experiment on its GenAI traces page; this view is the runs table of classic ML runs.
RUNS_VIEW = "#/experiments/{id}/runs?workflowType=machine_learning"


def runs_view_url(base_url: str, experiment_id: str | None, headline_view: bool = False) -> str:
    """The link that opens the experiment's runs table (with the headline columns when the experiment has
    them, VIEW_TAG); the experiment list when it has no runs yet."""
    base = base_url.rstrip("/") + "/"
    if experiment_id is None:
        return base + "#/experiments"
    return base + RUNS_VIEW.format(id=experiment_id) + (f"&viewStateShareKey={VIEW_KEY}" if headline_view else "")


def find_experiment(uri: str, name: str) -> Any | None:
    """The active experiment `name` in the store at `uri`; None if it has none (a SQLite file that does not
    exist yet is left for the server to create)."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None
    from mlflow import MlflowClient

    experiment = MlflowClient(uri).get_experiment_by_name(name)
    return experiment if experiment is not None and experiment.lifecycle_stage == "active" else None


def main(argv: list[str] | None = None) -> int:
    """`python -m netslim.tracking --port 5000` (what `make ui` runs first): print the runs-view link."""
    parser = argparse.ArgumentParser(prog="python -m netslim.tracking", description=main.__doc__)
    parser.add_argument("--backend-store-uri", default=DEFAULT_URI, help=f"the UI's store (default: {DEFAULT_URI})")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--params", default="params.yaml", help="where tracking.experiment is read")
    args = parser.parse_args(argv)
    with _store_lock(args.backend_store_uri):
        relocate_artifacts(args.backend_store_uri)
    name = load_config(args.params).tracking.experiment if Path(args.params).is_file() else "netslim"
    found = find_experiment(args.backend_store_uri, name)
    url = runs_view_url(
        f"http://{args.host}:{args.port}", found and found.experiment_id, found is not None and VIEW_TAG in found.tags
    )
    note = f"the runs of experiment {name!r}" if found else f"no {name!r} runs in {args.backend_store_uri} yet"
    print(f"MLflow UI: {url}  ({note})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
