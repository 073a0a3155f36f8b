"""`make demo` and `make seed`: the DVC pipeline run as a named experiment, then what to look at.

params.yaml is the embedded offline run, so `make demo` reproduces the committed file as it is, as the DVC
experiment "demo-<UTC time>": the committed dvc.lock, metrics and reports are that run's, and after it `dvc status`
has nothing to say. `make seed` applies profiles/seed.yaml on top (`dvc exp run -S key=value ...`) as
"seed-<UTC time>" and leaves the workspace as DVC leaves any experiment: params.yaml, dvc.lock and the outputs are
the seed's until `git checkout params.yaml dvc.lock && dvc checkout` (or `dvc exp apply`) brings another back.

With runtime.threads set and CPUs for more than one stage, the stages that need to run are first run side by side
(netslim.parallel_repro), each by a `dvc repro` of its own, forked from a stage server (netslim.stage_server) that
has paid their imports once; `dvc exp run` then finds them done and records the experiment. An experiment with
overrides (a profile, -S) runs its stages one after another inside `dvc exp run`, each on its own.

Ctrl-C or a kill reaches this process, not DVC: each DVC runs in a process group of its own and is handed a SIGINT,
which DVC passes to the running stage (it ignores SIGINT itself while a stage runs). The stage ends where it is
(training keeps its last epoch for `--resume`), DVC records nothing for it and releases its lock, and only a group
that outlives parallel_repro.GRACE_SECONDS is terminated, then killed. git's index and params.yaml are then put back
as they were, so the next `make demo` starts cleanly and reuses every stage that had finished.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from netslim.config import ConfigError, load_config, read_yaml
from netslim.io import atomic_write_bytes
from netslim.parallel_repro import plan, run_interruptible, run_side_by_side, workers_for
from netslim.stage_server import SERVER_ENV

PARAMS = Path("params.yaml")


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


def _git(*args: str) -> str | None:
    """git's output, or None outside a git checkout (the demo also runs from an unpacked archive)."""
    result = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


@contextlib.contextmanager
def stage_server(env: dict[str, str], threads: int | None) -> Iterator[dict[str, str]]:
    """netslim.stage_server for the stages run side by side: `env` with its address, for the DVC processes that run
    them (`dvc exp run` with overrides runs its stages on their own: a profile may change runtime.threads).

    It imports beside the first stage (which runs on its own), in a session of its own so that a Ctrl-C reaches
    the stages only through their `netslim` and DVC, and it is stopped once they are done."""
    folder = tempfile.mkdtemp(prefix="netslim-stages-")
    address = os.path.join(folder, "server.sock")
    server_env = env | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    cmd = [sys.executable, "-m", "netslim.stage_server", address]
    server = subprocess.Popen(cmd, env=server_env, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield env | {SERVER_ENV: address}
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(folder, ignore_errors=True)


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
    overrides = [*(set_args(args.profile) if args.profile else []), *(word for s in args.set for word in ("-S", s))]
    cmd = ["dvc", "exp", "run", "-n", name, *overrides]
    try:
        threads = load_config(PARAMS).runtime.threads
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    index = _git("write-tree")  # git's index as it is, to put back after an interrupt
    params = PARAMS.read_bytes()

    interrupted = None
    workers = workers_for(threads)
    if workers > 1 and not overrides:
        # The stages first, side by side; `dvc exp run` then finds them done and records the experiment. Overrides
        # are applied by `dvc exp run` itself, so an experiment with overrides runs its stages one after another.
        from dvc.exceptions import DvcException

        try:
            pipeline = plan()
        except DvcException as e:  # a broken dvc.yaml, a lock held elsewhere: said in one line
            print(f"error: dvc: {e}", file=sys.stderr)
            return 2
        if pipeline.stages:
            print(f"{len(pipeline.stages)} stages to run, {workers} at once, {threads} thread(s) each", flush=True)
        with stage_server(env, threads) if pipeline.stages else contextlib.nullcontext(env) as stage_env:
            failed, code, interrupted = run_side_by_side(pipeline, workers, stage_env)
        if failed is not None:
            print(f"{args.name}: stage {failed} failed (exit {code}); its lines above say why", file=sys.stderr)
            return code
    if interrupted is None:
        print("+", " ".join(cmd), flush=True)
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
