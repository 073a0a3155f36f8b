"""Stage start-up (issue 28): a stage imports only the heavy packages it uses before its first line of work, so it
starts working in seconds. Checked as import sets, not wall-clock times (this machine's load would make those flaky):
each row below is what `netslim <stage>` has imported when its `run()` is entered, params loaded and validated."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from conftest import committed_params

# Packages that each cost from a tenth of a second (thop) to several seconds (torch, mlflow) to import here.
HEAVY = {"torch", "torchvision", "mlflow", "dvc", "optuna", "sqlalchemy", "onnx", "onnxruntime", "onnxscript"}
HEAVY |= {"pandas", "matplotlib", "thop"}

# stage -> (its required arguments, the heavy packages it may have imported when its work starts)
STAGES = {
    "prepare": ([], {"torch"}),
    "train": (["--lambda", "0"], {"torch"}),
    "prune": (["--ratio", "0.5"], {"torch", "thop"}),  # thop_macs are counted by thop
    "finetune": (["--ratio", "0.5"], {"torch", "thop"}),
    "export": ([], {"torch", "thop", "onnx", "onnxruntime"}),
    "report": ([], {"pandas", "matplotlib"}),  # reads CSV and JSON: no torch
    "ci-report": (["--base", "HEAD"], set()),  # runs `dvc` as a command, imports none of it
    "search": ([], {"torch", "thop", "optuna"}),
    "bench": ([], {"torch", "thop"}),
}

# Runs `netslim <stage>` (cli.main) with the stage's run() replaced by a probe that prints the heavy packages
# imported so far; cli.main imports the stage module again (a no-op) after loading params, as it always does.
PROBE = """
import importlib, json, sys
from netslim import cli

stage, heavy = sys.argv[1], set(json.loads(sys.argv[2]))
module = importlib.import_module(cli.STAGES[stage][0])
module.run = lambda args, config: print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & heavy)))
sys.exit(cli.main(sys.argv[3:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_imports_only_the_heavy_packages_it_uses_before_it_starts_working(stage, tmp_path):
    args, expected = STAGES[stage]
    params = committed_params(tmp_path)
    cmd = [sys.executable, "-c", PROBE, stage, json.dumps(sorted(HEAVY)), stage, "--params", str(params), *args]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(json.loads(done.stdout.splitlines()[-1])) == expected


@pytest.mark.slow
def test_loading_and_validating_params_imports_no_torch(tmp_path):
    """A bad params.yaml is reported before any stage pays for torch: the arch check reads the registry's names only."""
    params = committed_params(tmp_path)
    code = "import sys; from netslim.config import load_config; load_config(sys.argv[1]); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code, str(params)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def _seconds_to_exit(cmd: list[str], cwd) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, capture_output=True, check=True, timeout=120)
    return time.perf_counter() - start


@pytest.mark.slow
def test_a_training_stage_starts_working_about_as_soon_as_torch_is_imported(tmp_path):
    """Start-up as a ratio measured in one run (this machine's load moves absolute times): the process start to the
    train stage's run(), params loaded and validated, against a bare `import torch`, the least any stage pays. The
    best of three interleaved runs each; a stage that starts importing mlflow, optuna or the export's ONNX stack
    before its work (each a second or more here) breaks the bound."""
    params = committed_params(tmp_path)
    stage = [sys.executable, "-c", PROBE, "train", json.dumps(sorted(HEAVY)), "train", "--params", str(params)]
    stage += ["--lambda", "0"]
    bare = [sys.executable, "-c", "import torch"]
    stage_s, torch_s = [], []
    for _ in range(3):
        stage_s.append(_seconds_to_exit(stage, tmp_path))
        torch_s.append(_seconds_to_exit(bare, tmp_path))
    ratio = min(stage_s) / min(torch_s)
    assert ratio < 1.5, f"train starts in {min(stage_s):.2f} s, import torch takes {min(torch_s):.2f} s: ×{ratio:.2f}"
