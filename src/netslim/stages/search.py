"""`netslim search`: the Optuna study over λ and the fine-tune lr under the constraints in params.yaml.

Writes reports/search/{best.json,trials.csv,history.png,importances.png,accuracy_vs_params.png}; the study
itself lives in search.storage (default: reports/search/study.db), so running again continues it.
"""

from __future__ import annotations

import argparse

from netslim.config import Config
from netslim.search import search, with_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        help="Optuna storage URL shared by all workers, e.g. postgresql+psycopg://user:pw@host/netslim "
        "(default: search.storage, else sqlite:///<paths.search_reports>/study.db)",
    )
    parser.add_argument(
        "--n-trials",
        type=int,
        help="run until the study holds this many trials, all workers together (search.n_trials)",
    )
    parser.add_argument("--study-name", help="the study to create or continue (default: search.study_name)")


def run(args: argparse.Namespace, config: Config) -> int:
    search(with_overrides(config, storage=args.storage, n_trials=args.n_trials, study_name=args.study_name))
    return 0
