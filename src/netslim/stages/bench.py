"""`netslim bench`: speed figures measured on this machine -> reports/benchmarks.{json,md}.

Runs on the device of `experiment.device` with the `runtime` switches of params.yaml; the model is
chosen here (a small one by default, so it takes minutes on a 2-core CPU), not by `model`.
"""

from __future__ import annotations

import argparse
import sys

from netslim.config import Config
from netslim.models import ARCHITECTURES
from netslim.tools.bench import BenchSettings, run_benchmarks, write_reports

DEFAULTS = BenchSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default=DEFAULTS.arch, help=f"{' | '.join(ARCHITECTURES)} (default: %(default)s)")
    parser.add_argument("--width", type=float, default=DEFAULTS.width, help="channel width (default: %(default)s)")
    parser.add_argument("--images", type=int, default=DEFAULTS.images, help="images an epoch (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="(default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=DEFAULTS.repeats, help="samples each (default: %(default)s)")
    parser.add_argument(
        "--workers", type=int, default=DEFAULTS.workers, help="seed loader workers (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--out-dir", default="reports", help="for benchmarks.json/.md (default: %(default)s)")


def run(args: argparse.Namespace, config: Config) -> int:
    settings = BenchSettings(
        arch=args.arch,
        width=args.width,
        images=args.images,
        batch_size=args.batch_size,
        repeats=args.repeats,
        workers=args.workers,
        threads=args.threads,
        seed=config.experiment.seed,
    ).check()  # bad flags fail here, before minutes of measuring

    result = run_benchmarks(settings, config, log=lambda line: print(line, file=sys.stderr))
    json_path, md_path = write_reports(result, args.out_dir)
    for f in result["figures"]:
        verdict = "" if "passed" not in f else (" pass" if f["passed"] else " SHORT")
        print(f"{f['title']}: {f['ratio']:.3f}{verdict}")
    print(f"wrote {json_path} and {md_path}")
    return 0
