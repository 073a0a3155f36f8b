"""`netslim study-report`: the studies' figures and reports/studies/README.md from their JSON files (studies/dvc.yaml).

Drawn here, not in the experiments' stages, so that a figure or a sentence can change without training again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from netslim import tracking
from netslim.config import Config
from netslim.io import atomic_write_text
from netslim.studies.figures import FIGURES, save_figure
from netslim.studies.markdown import load_results, report_markdown
from netslim.studies.parts import PARTS, load_studies


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--studies-params", default="studies/params.yaml", help="the studies' settings (default: studies/params.yaml)"
    )


def run(args: argparse.Namespace, config: Config) -> int:
    out = Path(load_studies(args.studies_params).reports)
    results = load_results(out)
    with tracking.stage_run(config, "study-report", "study report") as run:
        for part in PARTS:
            save_figure(FIGURES[part](results[part]), out / f"{part}.png")
            run.artifact(out / f"{part}.png")
        atomic_write_text(out / "README.md", report_markdown(results))
        run.artifact(out / "README.md")
    print(f"study report -> {out}/README.md and {', '.join(f'{p}.png' for p in PARTS)}")
    return 0
