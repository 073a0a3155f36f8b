"""`netslim <stage>`: one thin subcommand per pipeline stage.

Each subcommand loads and validates params.yaml once (plus `--set section.key=value` overrides), then
calls its stage module. Bad input of any kind (params, data, checkpoints), a diverged training, a failed
export check, a full or read-only disk and a second run of a running stage end with one line on stderr
naming the key or file, the bad value and the fix, and exit code 2; `--debug` (or NETSLIM_DEBUG=1) shows
the traceback instead. SIGINT and SIGTERM unwind the stage as an exception (so every `with` block closes:
the staged outputs are dropped, the lock released, the MLflow run ended), child processes are terminated
and waited for, and one line says what was interrupted and how to continue; exit code 128 + the signal.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import time

from ruamel.yaml import YAMLError

from netslim.config import ConfigError, load_config, read_yaml
from netslim.io import describe_os_error

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
    "study": ("netslim.stages.study", "one of the studies: controls, ratio sweep or multi-pass slimming"),
    "study-report": ("netslim.stages.study_report", "reports/studies/README.md from the studies' results"),
}


# Exceptions a user can cause or meet, reported as one line with exit code 2, by module. Only the modules the stage
# imported are looked at (an exception of a class implies its module was imported), so `netslim report` never
# imports torch to learn what a TrainingDiverged is.
USER_ERRORS = {
    "netslim.config": ("ConfigError",),
    "netslim.data": ("DataError",),
    "netslim.io": ("CheckpointError", "MetricsError", "StageBusy"),
    "netslim.slimming.threshold": ("PruneError",),
    "netslim.tracking": ("TrackingError",),
    "netslim.engine": ("TrainingDiverged",),
    "netslim.export": ("ExportError",),
}
DEBUG_ENV = "NETSLIM_DEBUG"
RESUMABLE = ("train", "finetune")  # the stages whose --resume continues after the last finished epoch


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception classes of USER_ERRORS that are importable now, without importing anything."""
    found = [getattr(sys.modules[m], name) for m, names in USER_ERRORS.items() if m in sys.modules for name in names]
    return tuple(found)


class StageInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the stage was: a KeyboardInterrupt, so every `with` block sees it
    (tracking ends the MLflow run as KILLED) and no `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, _frame: object) -> None:
    # A second signal while the stage unwinds would cut its cleanup short; SIGKILL still ends it at once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _signal_children(signal.SIGTERM)
    raise StageInterrupted(signum)


def _children() -> list[int]:
    """This process's child processes (Linux /proc; none found elsewhere)."""
    pids: list[int] = []
    for task in os.listdir(f"/proc/{os.getpid()}/task") if os.path.isdir("/proc") else ():
        try:
            with open(f"/proc/{os.getpid()}/task/{task}/children") as f:
                pids += [int(pid) for pid in f.read().split()]
        except OSError:
            continue
    return pids


def _signal_children(signum: int) -> None:
    for pid in _children():
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _reap_children(timeout: float = 10.0) -> None:
    """Wait for the children told to stop; SIGKILL the ones still running after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while _children() and time.monotonic() < deadline:
        for pid in _children():
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped by its own Popen object meanwhile
                pass
        time.sleep(0.05)
    _signal_children(signal.SIGKILL)
    for pid in _children():
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _handle_interrupts() -> dict[int, object]:
    """Install `_interrupt` for SIGINT and SIGTERM; the handlers it replaced (none off the main thread, where
    Python allows no handler: a test calling main() from a thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}


def interrupted_line(argv: list[str], signum: int) -> str:
    """What was interrupted and how to continue."""
    command = " ".join(["netslim", *argv])
    if argv[0] in RESUMABLE:
        again = command if "--resume" in argv else f"{command} --resume"
        how = f"rerun `{again}` (or `dvc repro`) to continue after the last finished epoch"
    else:
        how = f"rerun `{command}` (or `dvc repro`) to run it again"
    return (
        f"interrupted by {signal.Signals(signum).name}: `{command}` stopped; its outputs are as they were before it "
        f"started; {how}"
    )


def parse_overrides(items: list[str]) -> dict[str, object]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {item!r}: write section.key=value, e.g. --set finetune.lr=1e-3")
        try:
            overrides[key.strip()] = read_yaml(value)
        except YAMLError:
            raise ConfigError(f"--set {item!r}: {value!r} is not a YAML value; quote it") from None
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
    parser.add_argument("--debug", action="store_true", help=f"show tracebacks (as {DEBUG_ENV}=1 does)")
    return parser


def stage_parser(name: str, module) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"netslim {name}", description=STAGES[name][1], parents=[common_parser()])
    module.add_arguments(parser)
    return parser


def use_threads(threads: int | None) -> None:
    """runtime.threads: this process's CPU threads (`make demo` runs stages side by side, one thread each).

    Set before the stage imports torch, which sizes its thread pool from OMP_NUM_THREADS (processes the stage starts
    inherit it); a torch already imported (a stage called in-process) is told directly.
    """
    if threads is None:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in STAGES:
        print(f"error: unknown stage {argv[0]!r}; use one of {', '.join(STAGES)}", file=sys.stderr)
        return 2
    debug = "--debug" in argv[1:] or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    previous = _handle_interrupts()
    try:
        config = None
        if not {"-h", "--help"} & set(argv[1:]):
            # params first: a bad key or value is reported before the stage's imports (torch: seconds) are paid for.
            common, _ = common_parser().parse_known_args(argv[1:])
            config = load_config(common.params, parse_overrides(common.set))
            use_threads(config.runtime.threads)
        module = importlib.import_module(STAGES[argv[0]][0])  # only the chosen stage's imports are paid for
        args = stage_parser(argv[0], module).parse_args(argv[1:])
        args.stage = argv[0]
        return int(module.run(args, config) or 0)
    except StageInterrupted as e:
        _reap_children()
        if debug:
            raise
        print(f"error: {interrupted_line(argv, e.signum)}", file=sys.stderr)
        return 128 + e.signum
    except (*user_errors(), OSError) as e:
        if debug:
            raise
        message = describe_os_error(e) if isinstance(e, OSError) else str(e)
        print(f"error: {message}", file=sys.stderr)
        return 2
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _exiting_line(argv: list[str], signum: int) -> str:
    """What a signal that arrives once the stage's work is done says."""
    command = " ".join(["netslim", *argv])
    return (
        f"error: interrupted by {signal.Signals(signum).name} as `{command}` exited; its outputs are written but "
        "not recorded: rerun it (or `dvc repro`)"
    )


def _exit_on_signal(argv: list[str]) -> None:
    """From here on a signal ends the process at once, with 128 + the signal and one line. The stage's work is
    done, so only the interpreter's shutdown is cut short (torch's finalizers run in atexit, where a
    KeyboardInterrupt prints a traceback). It must still fail: DVC goes on to the next stage when this one
    exits 0, so an interrupted `dvc repro` would not stop."""

    def stop(signum: int, _frame: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.write(2, (_exiting_line(argv, signum) + "\n").encode())
        os._exit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


def run(argv: list[str]) -> int:
    """main(argv), then an exit that a signal ends in one line, not a traceback (the exit code to leave with)."""
    code = 0
    try:
        code = main(argv)
    except KeyboardInterrupt as e:  # arrived after main() put the previous handlers back
        signum = getattr(e, "signum", signal.SIGINT)
        print(_exiting_line(argv, signum), file=sys.stderr)
        code = 128 + signum
    finally:
        _exit_on_signal(argv)
    return code


def entry() -> None:
    """`netslim` run in this process (the console script tries the demo's stage server first: netslim.stage_server)."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    entry()
