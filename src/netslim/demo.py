"""`make demo`: the whole DVC pipeline offline on Fashion-MNIST, then the comparison table.

The demo is the same dvc.yaml as the seed experiment with the overrides in profiles/demo.yaml, run
as a DVC experiment (`dvc exp run -S key=value ...`), so no stage is defined twice and `dvc exp show`
lists it beside later experiments. `dvc exp run -S` writes the overrides into params.yaml; the demo
puts the file back byte for byte afterwards (whatever happened), so params.yaml stays the user's own
experiment: a later `dvc repro` runs that, not the demo, and `dvc status` says the outputs are the demo's.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from netslim.config import read_yaml
from netslim.io import atomic_write_bytes

PROFILE = Path("profiles/demo.yaml")
PARAMS = Path("params.yaml")


def set_args(profile: Path = PROFILE) -> list[str]:
    """`-S key=value` arguments for `dvc exp run`, one per override in the profile."""
    overrides = read_yaml(profile.read_text()) or {}
    args: list[str] = []
    for key, value in overrides.items():
        args += ["-S", f"{key}={json.dumps(value)}"]
    return args


@contextlib.contextmanager
def restored(path: Path) -> Iterator[None]:
    """Put `path` back byte for byte as it was when the block ends, however it ends."""
    before = path.read_bytes()
    try:
        yield
    finally:
        if not path.is_file() or path.read_bytes() != before:
            atomic_write_bytes(path, before)


def main() -> int:
    # dvc and the stages' `netslim` come from this interpreter's venv, also when it is not on PATH
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = os.environ | {"NETSLIM_PIPELINE_ID": f"demo-{uuid.uuid4().hex[:8]}", "PATH": path}
    cmd = ["dvc", "exp", "run", *set_args()]
    print("+", " ".join(cmd), flush=True)
    # A `kill` (SIGTERM) would end Python without running the `finally` that restores params.yaml: make it an exit.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    with restored(PARAMS):
        result = subprocess.run(cmd, env=env, check=False)
    if result.returncode != 0:
        return result.returncode
    summary = Path("reports/summary.csv")
    if summary.is_file():
        import pandas as pd

        print("\n" + pd.read_csv(summary).to_string(index=False))
    print(
        "\nReport: reports/report.md (figures in reports/figures/)"
        "\nMLflow UI: `make ui`, then open http://127.0.0.1:5000 (experiment 'netslim')"
        "\nCompare experiments: `dvc exp show`; metrics: `dvc metrics show`; curves: `dvc plots show`"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
