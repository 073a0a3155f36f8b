"""`netslim study --part P`: one experiment of the studies pipeline (studies/dvc.yaml, `make study`).

controls, sweep and multipass each write reports/studies/<part>.{json,csv} and log their table and metrics to MLflow;
`netslim study-report` draws the figures and writes reports/studies/README.md from the three.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from netslim import tracking
from netslim.config import Config
from netslim.engine import set_deterministic
from netslim.studies import experiments, parts

EXPERIMENTS = {"controls": experiments.controls, "sweep": experiments.sweep, "multipass": experiments.multipass}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--part", required=True, choices=parts.PARTS, help="which study to run")
    parser.add_argument(
        "--studies-params", default="studies/params.yaml", help="the studies' settings (default: studies/params.yaml)"
    )


def run(args: argparse.Namespace, config: Config) -> int:
    settings = parts.load_studies(args.studies_params)
    out, part = Path(settings.reports), args.part
    set_deterministic(config.experiment.deterministic)
    study = experiments.open_study(config, settings)
    with tracking.stage_run(config, f"study-{part}", f"study {part}", part=part) as run:
        result = EXPERIMENTS[part](study)
        rows = result["rows"] if "rows" in result else result["passes"]
        parts.write_part(out, part, result, rows)
        run.table([{k: v for k, v in r.items() if not isinstance(v, list)} for r in rows], f"study_{part}.json")
        for step, r in enumerate(rows):
            run.metrics({k: v for k, v in r.items() if k.startswith("test_acc") or k in ("params", "macs")}, step=step)
    print(f"study {part} -> {out}/{part}.{{json,csv}}")
    return 0
