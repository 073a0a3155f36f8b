"""`make demo` and `make seed`: the DVC pipeline run as a named experiment, then what to look at.

params.yaml is the embedded offline run, so `make demo` reproduces the committed file as it is, as the DVC
experiment "demo-<UTC time>": the committed dvc.lock, metrics and reports are that run's, and after it `dvc status`
has nothing to say. `make seed` applies profiles/seed.yaml on top (`dvc exp run -S key=value ...`) as
"seed-<UTC time>" and leaves the workspace as DVC leaves any experiment: params.yaml, dvc.lock and the outputs are
the seed's until `git checkout params.yaml dvc.lock && dvc checkout` (or `dvc exp apply`) brings another back.

Ctrl-C or a kill reaches this process, not DVC: DVC runs in a process group of its own and is handed a SIGINT, which
DVC passes to the running stage (it ignores SIGINT itself while a stage runs). The stage ends where it is (training
keeps its last epoch for `--resume`), DVC records nothing for it and releases its lock, and only a group that
outlives `GRACE_SECONDS` is terminated, then killed. git's index and params.yaml are then put back as they were, so
the next `make demo` starts cleanly and reuses every stage that had finished.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from netslim.config import read_yaml
from netslim.io import atomic_write_bytes

PARAMS = Path("params.yaml")
GRACE_SECONDS = 60.0  # a stage that ignores SIGINT this long is terminated (then killed 10 s later)


def set_args(profile: Path) -> list[str]:
    """`-S key=value` arguments for `dvc exp run`, one per override in the profile."""
    overrides = read_yaml(profile.read_text()) or {}
    args: list[str] = []
    for key, value in overrides.items():
        args += ["-S", f"{key}={json.dumps(value)}"]
    return args


def experiment_name(prefix: str) -> str:
    """A name `dvc exp show` lists and sorts: the prefix and the UTC time, e.g. demo-20261205-0712."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal is still a member
        return True
    return True


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def run_interruptible(cmd: list[str], env: dict[str, str]) -> tuple[int, int | None]:
    """Run `cmd` in its own process group; a SIGINT or SIGTERM to us is passed on to it as SIGINT.

    Returns (exit code, the signal received or None). Returns only once no process of the group is left, so no
    stage outlives the demo and writes after it.
    """
    process = subprocess.Popen(cmd, env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if not received:
            print(f"\n{signal.Signals(signum).name}: stopping the running stage...", file=sys.stderr, flush=True)
        received.append(signum)
        _signal_group(process.pid, signal.SIGINT)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        first_signal: float | None = None
        while True:
            try:
                code = process.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if received and first_signal is None:
                    first_signal = time.monotonic()
                if first_signal is not None and time.monotonic() - first_signal > GRACE_SECONDS:
                    _signal_group(process.pid, signal.SIGTERM)
                    try:
                        code = process.wait(timeout=10.0)
                    except subprocess.TimeoutExpired:
                        _signal_group(process.pid, signal.SIGKILL)
                        code = process.wait()
                    break
        # a stage that DVC started may outlive DVC: end it too, and wait until it has, so nothing writes after us
        if _group_alive(process.pid):
            _signal_group(process.pid, signal.SIGTERM)
            end = time.monotonic() + 10.0
            while _group_alive(process.pid) and time.monotonic() < end:
                time.sleep(0.1)
            _signal_group(process.pid, signal.SIGKILL)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return code, (received[0] if received else None)


def _git(*args: str) -> str | None:
    """git's output, or None outside a git checkout (the demo also runs from an unpacked archive)."""
    result = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netslim.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, help="overrides (section.key: value) for `dvc exp run -S`")
    parser.add_argument("--name", default="demo", help="the experiment's name before its time (default: demo)")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="one more override")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.profile is not None and not args.profile.is_file():
        print(f"--profile {args.profile}: no such file; name a profile such as profiles/seed.yaml", file=sys.stderr)
        return 2

    # dvc and the stages' `netslim` come from this interpreter's venv, also when it is not on PATH
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    name = experiment_name(args.name)
    env = os.environ | {"NETSLIM_PIPELINE_ID": name, "PATH": path}
    overrides = set_args(args.profile) if args.profile else []
    cmd = ["dvc", "exp", "run", "-n", name, *overrides, *(word for s in args.set for word in ("-S", s))]
    print("+", " ".join(cmd), flush=True)
    index = _git("write-tree")  # git's index as it is, to put back after an interrupt
    params = PARAMS.read_bytes()

    code, interrupted = run_interruptible(cmd, env)
    if interrupted is not None:
        if index is not None:
            _git("read-tree", index)
        if PARAMS.read_bytes() != params:
            atomic_write_bytes(PARAMS, params)
        again = f"make {args.name}" if args.name in ("demo", "seed") else " ".join(["python -m netslim.demo", *argv])
        print(
            f"{args.name}: interrupted ({signal.Signals(interrupted).name}); every stage that had finished is kept, "
            f"params.yaml and git's index are as they were: run `{again}` again to continue",
            file=sys.stderr,
        )
        return 128 + interrupted
    if code != 0:
        return code
    summary = Path("reports/summary.csv")
    if summary.is_file():
        import pandas as pd

        print("\n" + pd.read_csv(summary).to_string(index=False))
    print(
        f"\nExperiment {name}: `dvc exp show` lists it; `dvc metrics show`, `dvc plots show` show its results"
        "\nReport: reports/report.md (figures in reports/figures/)"
        "\nMLflow UI: `make ui` (it prints the link to the runs table)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
