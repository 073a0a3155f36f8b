"""`netslim study-report`: reports/studies/README.md from the studies' JSON files (studies/dvc.yaml)."""

from __future__ import annotations

import argparse
from pathlib import Path

from netslim.config import Config
from netslim.io import atomic_write_text
from netslim.study_report import load_studies, report_markdown


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--studies-params", default="studies/params.yaml", help="the studies' settings (default: studies/params.yaml)"
    )


def run(args: argparse.Namespace, config: Config) -> int:
    out = Path(load_studies(args.studies_params).reports)
    atomic_write_text(out / "README.md", report_markdown(out))
    print(f"study report -> {out / 'README.md'}")
    return 0
