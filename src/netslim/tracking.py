"""The only module that imports mlflow: one MLflow run per stage execution.

- Where: MLFLOW_TRACKING_URI when set, else params `tracking.uri`, else a SQLite file in the project
  (no server needed; `make ui` shows it). An http(s) URI is checked before any work starts.
- Runs: readable names (`train λ=1e-4`, `prune 90%`), tags for stage, arch, dataset, λ, ratio, the git
  commit and a pipeline id shared by every stage of one `dvc repro` (or `mlflow run`, or `make demo`).
- Failure: a run whose stage raises is ended FAILED. If the server goes away mid-run, the stage goes
  on (its DVC outputs matter more than its charts); the calls that were lost are listed in one warning.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netslim.config import Config, lambda_label

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_URI = "sqlite:///mlflow.db"
PIPELINE_ENV = "NETSLIM_PIPELINE_ID"
PROJECT_RUN_ENV = "MLFLOW_RUN_ID"  # set by `mlflow run` for its entry point's command
CHAMPION = "champion"
# A lost server must not stall training for minutes: MLflow's defaults are 7 retries and 120 s timeouts.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}

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


class Tracker:
    """What a stage logs; every call survives a lost server (recorded, warned about at once and at the end)."""

    def __init__(
        self, mlflow_module: Any | None, log_models: bool = True, register: bool = True, uri: str = ""
    ) -> None:
        self._mlflow = mlflow_module
        self._log_models = log_models
        self._register = register
        self.uri = uri
        self.lost: list[str] = []
        self.run_id: str | None = None

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

    def metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        self._call(f"log_metrics(step={step})", lambda: self._mlflow.log_metrics(numeric, step=step))

    def epoch(self, record: dict[str, float]) -> None:
        """Every per-epoch value with step = epoch, so the UI draws the curves."""
        self.metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))

    def dict(self, obj: Any, filename: str) -> None:
        self._call(f"log_dict({filename})", lambda: self._mlflow.log_dict(obj, filename))

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call(f"log_artifact({path})", lambda: self._mlflow.log_artifact(str(path), artifact_path))

    def figure(self, figure: Any, filename: str) -> None:
        self._call(f"log_figure({filename})", lambda: self._mlflow.log_figure(figure, filename))

    def gamma_histogram(self, model: nn.Module, epoch: int, label: str) -> None:
        """A figure of the prunable γ at this epoch, and the raw values as a file."""
        if self._mlflow is None:
            return
        if self.lost:  # no figure to draw for a server that is gone
            self.lost.append(f"gamma_histogram(epoch={epoch})")
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from netslim.slimming.sparsity import prunable_gammas

        gammas = prunable_gammas(model).numpy()
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.hist(gammas, bins=80, color="tab:blue")
        ax.set(xlabel="γ (BN scaling factor)", ylabel="channels", title=f"λ={label}, epoch {epoch}")
        fig.tight_layout()
        self.figure(fig, f"gamma_hist/epoch_{epoch:03d}.png")
        plt.close(fig)
        self.dict({"epoch": epoch, "gammas": gammas.tolist()}, f"gamma_values/epoch_{epoch:03d}.json")

    def model(
        self,
        model: nn.Module,
        name: str,
        example_images: torch.Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        register_as: str | None = None,
        feasible: bool | None = None,
        score: float | None = None,
    ) -> None:
        """Log with signature and input example; optionally register and maintain the `champion` alias.

        Args:
            example_images: a few uint8 NHWC images (more than one, so the batch dimension stays dynamic).
            register_as: registered model name; None logs without registering.
            feasible: whether the model meets the constraints (tagged on the version; only feasible
                versions can hold `champion`).
            score: what ranks feasible versions for `champion` (validation accuracy).
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
        register = register_as if self._register else None

        def log() -> Any:
            from mlflow.models import infer_signature

            # pt2 (torch.export): loading runs no pickled code and needs no netslim, only torch.
            # Explicit requirements skip MLflow's inference, which reloads the model in a subprocess.
            return self._mlflow.pytorch.log_model(
                model,
                name=name,
                signature=infer_signature(example.numpy(), output),
                input_example=example.numpy(),
                serialization_format="pt2",
                pip_requirements=self._mlflow.pytorch.get_default_pip_requirements(),
                registered_model_name=register,
            )

        info = self._call(f"log_model({name})", log)
        if info is not None and register and feasible is not None:
            if score is not None and not math.isfinite(score):
                score = None
            self._call(f"{CHAMPION} alias", lambda: self._update_champion(register, info, feasible, score))

    def _update_champion(self, registered: str, info: Any, feasible: bool, score: float | None) -> None:
        """Tag the new version; the best feasible version (by score) holds `champion`."""
        client = self._mlflow.MlflowClient()
        version = str(info.registered_model_version)
        client.set_model_version_tag(registered, version, "meets_constraints", str(bool(feasible)).lower())
        if score is not None:
            client.set_model_version_tag(registered, version, "val_acc", f"{score:.6f}")
        if not feasible:
            return
        try:
            current = client.get_model_version_by_alias(registered, CHAMPION)
            current_score = float(current.tags.get("val_acc", "-inf"))
        except self._mlflow.exceptions.MlflowException:  # no champion yet
            current_score = -math.inf
        if score is None or score >= current_score:  # ties go to the newer version
            client.set_registered_model_alias(registered, CHAMPION, version)


@contextlib.contextmanager
def stage_run(config: Config, stage: str, run_name: str, nested: bool = False, **tags: Any) -> Iterator[Tracker]:
    """One MLflow run around a stage; FAILED if the stage raises, FINISHED otherwise.

    Args:
        nested: start the run under the active run of this process (search trials under the study).
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
    all_tags = {
        "stage": stage,
        "pipeline_id": pipeline_id(),
        "git_commit": git_commit(),
        "dataset": config.data.dataset,
        "arch": config.model.arch,
    } | {k: str(v) for k, v in tags.items()}
    if "lambda" in tags:  # one spelling per λ ("1e-4", not "0.0001"), so the UI can filter on it
        with contextlib.suppress(ValueError):
            all_tags["lambda"] = lambda_label(tags["lambda"])
    # Under `mlflow run`, the project's run is this stage run's parent rather than the run itself, so
    # `mlflow run . -e main` shows one parent with a child per stage (start_run would adopt it).
    project_run = os.environ.pop(PROJECT_RUN_ENV, None)
    if project_run and not nested:
        all_tags["mlflow.parentRunId"] = project_run
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment(config.tracking.experiment)
        active = mlflow.start_run(run_name=run_name, tags=all_tags, nested=nested)
    except Exception as e:  # noqa: BLE001 - whatever the store raises, the stage must stop here with the URI
        raise TrackingError(f"MLflow tracking URI {uri}: cannot start a run ({_first_line(e)})") from None
    tracker = Tracker(mlflow, config.tracking.log_models, config.tracking.register_models, uri)
    tracker.run_id = active.info.run_id
    status = "FINISHED"
    try:
        yield tracker
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
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
