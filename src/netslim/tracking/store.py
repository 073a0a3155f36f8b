"""Where runs go: the tracking URI, a server checked before any work, a SQLite store created under a lock and
followed when its project moves, the experiment with its headline columns, and the UI's link to it."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from netslim.config import Config
from netslim.vocabulary import MEETS_CONSTRAINTS, NUM_PARAMS, SPARSITY, TEST_ACC

DEFAULT_URI = "sqlite:///mlflow.db"
# A lost server must not stall training for minutes: MLflow's defaults are 7 retries and 120 s timeouts.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
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
# MLflow 3 opens an experiment on its GenAI traces page; this view is the runs table of classic ML runs.
RUNS_VIEW = "#/experiments/{id}/runs?workflowType=machine_learning"


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


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
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
            with store_lock(uri):
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
