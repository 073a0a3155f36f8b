"""The only module that imports mlflow: one MLflow run per stage execution.

- Where: MLFLOW_TRACKING_URI when set, else params `tracking.uri`, else a SQLite file in the project
  (no server needed; `make ui` shows it). An http(s) URI is checked before any work starts.
- Runs: readable names (`train λ=1e-4`, `prune 90%`), tags for stage, arch, dataset, λ, ratio, the git
  commit and a pipeline id shared by every stage of one `dvc repro`.
- Failure: a run whose stage raises is ended FAILED. If the server goes away mid-run, the stage goes
  on (its DVC outputs matter more than its charts); the calls that were lost are listed in one warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netslim.config import Config

DEFAULT_URI = "sqlite:///mlflow.db"
PIPELINE_ENV = "NETSLIM_PIPELINE_ID"


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
            if response.status >= 500:
                raise TrackingError(f"MLflow tracking URI {uri}: server answered HTTP {response.status}")
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(
            f"MLflow tracking URI {uri} cannot be reached ({reason}); start the server "
            "(e.g. `make ui`) or unset MLFLOW_TRACKING_URI to use the local sqlite:///mlflow.db"
        ) from None


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


def pipeline_id() -> str:
    """One id for all stages of one `dvc repro` (or one `mlflow run`, or one `make demo`).

    NETSLIM_PIPELINE_ID wins. Otherwise the nearest ancestor process running dvc (every stage of one
    repro is its child) names the pipeline by its pid and start time; a lone stage gets its own id.
    """
    if os.environ.get(PIPELINE_ENV):
        return os.environ[PIPELINE_ENV]
    pid = os.getppid()
    for _ in range(12):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            break
        if any(Path(part.decode(errors="ignore")).name in ("dvc", "dvc.exe") for part in cmdline[:2]) or (
            len(cmdline) > 2 and cmdline[1].endswith(b"dvc")
        ):
            blob = f"{os.uname().nodename}:{pid}:{_process_start(pid)}"
            return "dvc-" + hashlib.sha256(blob.encode()).hexdigest()[:12]
        ppid = next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), "0")
        pid = int(ppid)
        if pid <= 1:
            break
    return "run-" + uuid.uuid4().hex[:12]


class Tracker:
    """What a stage logs; every call survives a lost server (recorded, warned about once at the end)."""

    def __init__(self, mlflow_module: Any | None, log_models: bool = True, register: bool = True) -> None:
        self._mlflow = mlflow_module
        self._log_models = log_models
        self._register = register
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
            self.lost.append(f"{what} ({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})")
            return None

    def params(self, params: dict[str, Any]) -> None:
        clean = {k: ("null" if v is None else v) for k, v in params.items()}
        self._call("log_params", lambda: self._mlflow.log_params(clean))

    def metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, str)}
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
        """Log with signature and input example; optionally register and maintain the `champion` alias."""
        if self._mlflow is None or not self._log_models:
            return
        from netslim.data import normalize

        model = model.cpu().eval()
        example = normalize(example_images.cpu(), mean, std)
        with torch.inference_mode():
            output = model(example).numpy()
        register = register_as if self._register else None

        def log() -> Any:
            from mlflow.models import infer_signature

            signature = infer_signature(example.numpy(), output)
            return self._mlflow.pytorch.log_model(
                model, name=name, signature=signature, input_example=example.numpy(), registered_model_name=register
            )

        info = self._call(f"log_model({name})", log)
        if info is not None and register and feasible is not None:
            self._call("champion alias", lambda: self._update_champion(register, info, feasible, score))

    def _update_champion(self, registered: str, info: Any, feasible: bool, score: float | None) -> None:
        """Tag the new version; the best feasible version (by validation accuracy) holds `champion`."""
        client = self._mlflow.MlflowClient()
        version = getattr(info, "registered_model_version", None)
        if version is None:
            return
        client.set_model_version_tag(registered, version, "meets_constraints", str(bool(feasible)).lower())
        if score is not None:
            client.set_model_version_tag(registered, version, "val_acc", f"{score:.6f}")
        if not feasible:
            return
        try:
            current = client.get_model_version_by_alias(registered, "champion")
            current_score = float(current.tags.get("val_acc", "-1"))
        except Exception:  # noqa: BLE001 - no champion yet
            current_score = -1.0
        if score is None or score >= current_score:
            client.set_registered_model_alias(registered, "champion", version)


@contextlib.contextmanager
def stage_run(config: Config, stage: str, run_name: str, **tags: Any) -> Iterator[Tracker]:
    """One MLflow run around a stage; FAILED if the stage raises, FINISHED otherwise."""
    from netslim.engine import is_main_process

    if not config.tracking.enabled or not is_main_process():
        yield Tracker(None)
        return
    uri = tracking_uri(config)
    check_reachable(uri)
    # Fail fast instead of retrying for minutes when the server goes away mid-run.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment(config.tracking.experiment)
        all_tags = {
            "stage": stage,
            "pipeline_id": pipeline_id(),
            "git_commit": git_commit(),
            "dataset": config.data.dataset,
            "arch": config.model.arch,
        } | {k: str(v) for k, v in tags.items()}
        active = mlflow.start_run(run_name=run_name, tags=all_tags)
    except Exception as e:  # noqa: BLE001
        raise TrackingError(f"MLflow tracking URI {uri}: cannot start a run ({type(e).__name__}: {e})") from None
    tracker = Tracker(mlflow, config.tracking.log_models, config.tracking.register_models)
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
        tracker._call("end_run", lambda: mlflow.end_run(status=status))
        if tracker.lost:
            shown = "; ".join(tracker.lost[:5]) + (
                f"; and {len(tracker.lost) - 5} more" if len(tracker.lost) > 5 else ""
            )
            print(
                f"warning: MLflow at {uri} stopped answering; {len(tracker.lost)} call(s) lost: {shown}",
                file=sys.stderr,
            )
