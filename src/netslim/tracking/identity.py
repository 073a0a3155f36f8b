"""Who ran a stage: the pipeline execution it belongs to, and the commit and command MLflow shows as its source."""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from pathlib import Path

PIPELINE_ENV = "NETSLIM_PIPELINE_ID"
PROJECT_RUN_ENV = "MLFLOW_RUN_ID"  # set by `mlflow run` for its entry point's command

_process_pipeline_id: str | None = None


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


def source_tags(stage: str, project: bool) -> dict[str, str]:
    """MLflow's own source tags, which its UI shows as the run's source and commit: the commit of the working
    directory's repository (MLflow's would be that of the `netslim` executable's, which may be another)."""
    tags = {"mlflow.source.name": f"netslim {stage}", "mlflow.source.type": "PROJECT" if project else "LOCAL"}
    commit = git_commit()
    return tags | ({"mlflow.source.git.commit": commit} if commit != "unknown" else {})
