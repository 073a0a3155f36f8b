"""The only package that calls MLflow: one MLflow run per stage execution.

A leaf adapter: it imports mlflow, the config and its own torch-free helpers, never torch or the model, data,
engine or slimming code (tests/test_architecture.py checks). Stages hand it numbers, files, figures, checkpoint
hashes and provenance, and the process rank; they save checkpoints and run models themselves
(netslim.stages.model_tracking is that torch side).

- Where: MLFLOW_TRACKING_URI when set, else params `tracking.uri`, else a SQLite file in the project
  (no server needed; `make ui` shows it). An http(s) URI is checked before any work starts (store.py).
- Runs: readable names (`train λ=1e-4`, `prune 90%`), tags for stage, arch, dataset, λ, ratio, a pipeline
  id shared by every stage of one `dvc repro` (or `mlflow run`, or `make demo`), and MLflow's own source
  tags (`mlflow.source.git.commit`, `mlflow.source.name`, `mlflow.source.type`) (identity.py).
- Params: the keys `dvc.yaml` lists for the stage (a section expands to its keys), with the values as
  written in params.yaml, plus what tells the stage's runs apart (`lambda`, `ratio`, ...) under short
  names, so MLflow's compare view and `params.lambda` filters have something to work with (dvc_params.py).
- Lineage: a checkpoint records the run that wrote it; the run that loads it tags that run's id and
  the file's hash (`source_run_id`, `source_sha256`). The prepared splits are the runs' dataset inputs.
  The run's description (`mlflow.note.content`) holds its headline numbers and links to its source runs.
- Failure: a run whose stage raises is ended FAILED, one interrupted (Ctrl-C, SIGTERM) KILLED. If the
  server goes away mid-run, the stage goes on (its DVC outputs matter more than its charts); the calls
  that were lost are listed in one warning (run.py).
- mlflow itself is imported only when a run is opened (1-3 s), after the config has been validated.
"""

# What the stages, the search and the tests use, as `tracking.<name>`.
from netslim.tracking.dvc_params import dvc_stage, param_text, stage_params
from netslim.tracking.identity import PIPELINE_ENV, PROJECT_RUN_ENV, pipeline_id
from netslim.tracking.run import RUN_ID_KEY, Tracker, stage_run
from netslim.tracking.store import HTTP_DEFAULTS, VIEW_KEY, VIEW_TAG, TrackingError, runs_view_url

__all__ = [
    "HTTP_DEFAULTS",
    "PIPELINE_ENV",
    "PROJECT_RUN_ENV",
    "RUN_ID_KEY",
    "VIEW_KEY",
    "VIEW_TAG",
    "Tracker",
    "TrackingError",
    "dvc_stage",
    "param_text",
    "pipeline_id",
    "runs_view_url",
    "stage_params",
    "stage_run",
]
