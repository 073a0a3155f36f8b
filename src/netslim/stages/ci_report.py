"""`netslim ci-report --base REV [--out FILE]`: markdown of how metrics and params differ from REV.

The workspace (after `dvc repro` or `make demo`) against a git revision, e.g. the pull request's base
branch; the GitHub workflow .github/workflows/pr-metrics.yml posts it as one pull-request comment.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from netslim.ci_report import CIReportError, build_report
from netslim.config import Config
from netslim.io import atomic_write_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="git revision to compare with (e.g. origin/main or a SHA)")
    parser.add_argument("--out", help="write the markdown to this file (default: print it)")


def run(args: argparse.Namespace, config: Config) -> int:
    # The diff reads params.yaml and the metrics files through dvc, at both revisions; the config names only the
    # report stage's timings folder, which is no DVC metric and so must be named to dvc.
    try:
        markdown = build_report(args.base, timings=str(Path(config.paths.reports) / "timings"))
    except CIReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        atomic_write_text(args.out, markdown)
        print(f"ci-report against {args.base} -> {args.out}")
    else:
        sys.stdout.write(markdown)
    return 0
