"""`python -m netslim.mlflow_ui --port 5000` (what `make ui` runs first): print the link to the runs table.

Apart from the tracking package, which every stage imports: an edit here reruns no stage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from netslim.config import load_config
from netslim.tracking.store import (
    DEFAULT_URI,
    VIEW_TAG,
    find_experiment,
    relocate_artifacts,
    runs_view_url,
    store_lock,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netslim.mlflow_ui", description=__doc__.splitlines()[0])
    parser.add_argument("--backend-store-uri", default=DEFAULT_URI, help=f"the UI's store (default: {DEFAULT_URI})")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--params", default="params.yaml", help="where tracking.experiment is read")
    args = parser.parse_args(argv)
    with store_lock(args.backend_store_uri):
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
