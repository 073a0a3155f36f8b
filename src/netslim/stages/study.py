"""`netslim study --part P`: one part of the studies pipeline (studies/dvc.yaml, `make study`).

controls, sweep and multipass each write reports/studies/<part>.{json,csv,png} and log the table and figure to
MLflow; report writes reports/studies/README.md from the three.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from netslim import tracking
from netslim.config import Config
from netslim.engine import set_deterministic
from netslim.io import atomic_write_text
from netslim.studies import PARTS, load_studies


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--part", required=True, choices=PARTS, help="which part of the studies to run")
    parser.add_argument(
        "--studies-params", default="studies/params.yaml", help="the studies' settings (default: studies/params.yaml)"
    )


def run(args: argparse.Namespace, config: Config) -> int:
    from netslim import studies

    settings = load_studies(args.studies_params)
    out = Path(settings.reports)
    if args.part == "report":
        atomic_write_text(out / "README.md", studies.report_markdown(out))
        print(f"study report -> {out / 'README.md'}")
        return 0
    set_deterministic(config.experiment.deterministic)
    study = studies.open_study(config, settings)
    part = {"controls": studies.controls, "sweep": studies.sweep, "multipass": studies.multipass}[args.part]
    figure = {"controls": studies.controls_figure, "sweep": studies.sweep_figure, "multipass": studies.multipass_figure}
    with tracking.stage_run(config, f"study-{args.part}", f"study {args.part}", part=args.part) as run:
        result = part(study)
        rows = result["rows"] if "rows" in result else result["passes"]
        studies.write_part(out, args.part, result, rows)
        studies.save_figure(figure[args.part](result), out / f"{args.part}.png")
        run.table([{k: v for k, v in r.items() if not isinstance(v, list)} for r in rows], f"study_{args.part}.json")
        run.artifact(out / f"{args.part}.png")
        for step, r in enumerate(rows):
            run.metrics({k: v for k, v in r.items() if k.startswith("test_acc") or k in ("params", "macs")}, step=step)
    print(f"study {args.part} -> {out}/{args.part}.{{json,csv,png}}")
    return 0
