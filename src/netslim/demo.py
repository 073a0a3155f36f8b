"""`make demo`: the whole DVC pipeline offline on Fashion-MNIST, then the comparison table.

The demo is the same dvc.yaml as the seed experiment with the overrides in profiles/demo.yaml, run
as a DVC experiment (`dvc exp run -S key=value ...`), so no stage is defined twice and `dvc exp show`
lists it beside later experiments.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from netslim.config import read_yaml

PROFILE = Path("profiles/demo.yaml")


def set_args(profile: Path = PROFILE) -> list[str]:
    """`-S key=value` arguments for `dvc exp run`, one per override in the profile."""
    overrides = read_yaml(profile.read_text()) or {}
    args: list[str] = []
    for key, value in overrides.items():
        args += ["-S", f"{key}={json.dumps(value)}"]
    return args


def main() -> int:
    env = os.environ | {"NETSLIM_PIPELINE_ID": f"demo-{uuid.uuid4().hex[:8]}"}
    cmd = ["dvc", "exp", "run", *set_args()]
    print("+", " ".join(cmd), flush=True)
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
