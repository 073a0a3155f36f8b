"""`netslim <stage>`: one thin subcommand per pipeline stage.

Each subcommand loads and validates params.yaml once (plus `--set section.key=value` overrides), then
calls its stage module. Bad input of any kind (params, data, checkpoints) ends with one line on stderr
naming the key or file, the bad value and the fix, and exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from netslim.config import ConfigError, load_config, read_yaml

# subcommand -> (module, help); modules import lazily so `netslim --help` stays fast.
STAGES = {
    "prepare": ("netslim.stages.prepare", "prepare the dataset into uint8 tensors"),
    "train": ("netslim.stages.train", "sparsity training with an L1 penalty on BN γ"),
    "prune": ("netslim.stages.prune", "prune channels by a global |γ| threshold and rebuild a smaller model"),
    "finetune": ("netslim.stages.finetune", "fine-tune a pruned model"),
    "export": ("netslim.stages.export", "fine-tuned models to ONNX (BatchNorm folded), checked and timed"),
    "report": ("netslim.stages.report", "figures, tables and reports/report.md from all stages"),
    "search": ("netslim.stages.search", "Optuna study over λ and the fine-tune lr under constraints"),
    "ci-report": ("netslim.stages.ci_report", "markdown diff of metrics and params against a git revision"),
    "bench": ("netslim.stages.bench", "speed benchmarks, written to reports/benchmarks.{json,md}"),
}


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input, reported as one line with exit code 2."""
    from netslim.data import DataError
    from netslim.io import CheckpointError
    from netslim.slimming.threshold import PruneError
    from netslim.tracking import TrackingError

    return ConfigError, DataError, CheckpointError, PruneError, TrackingError


def parse_overrides(items: list[str]) -> dict[str, object]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {item!r}: write section.key=value, e.g. --set finetune.lr=1e-3")
        overrides[key.strip()] = read_yaml(value)
    return overrides


def usage() -> str:
    lines = ["usage: netslim STAGE [--params params.yaml] [--set SECTION.KEY=VALUE ...] [stage options]", "", "stages:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in STAGES.items()]
    lines += ["", "`netslim STAGE --help` lists a stage's options."]
    return "\n".join(lines)


def common_parser() -> argparse.ArgumentParser:
    """The options every stage takes: where params come from (no -h: it is a parent of each stage's parser)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one params value for this run (repeatable)",
    )
    return parser


def stage_parser(name: str, module) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"netslim {name}", description=STAGES[name][1], parents=[common_parser()])
    module.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in STAGES:
        print(f"error: unknown stage {argv[0]!r}; use one of {', '.join(STAGES)}", file=sys.stderr)
        return 2
    config = None
    if not {"-h", "--help"} & set(argv[1:]):
        # params first: a bad key or value is reported before the stage's imports (torch: seconds) are paid for.
        common, _ = common_parser().parse_known_args(argv[1:])
        try:
            config = load_config(common.params, parse_overrides(common.set))
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    module = importlib.import_module(STAGES[argv[0]][0])  # only the chosen stage's imports are paid for
    args = stage_parser(argv[0], module).parse_args(argv[1:])
    args.stage = argv[0]
    try:
        return int(module.run(args, config) or 0)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
