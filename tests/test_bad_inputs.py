"""Bad params, data files and checkpoints through the real CLI: one clear line, exit code 2, nothing written.

Every case copies one small prepared project (tiny Fashion-MNIST idx files, prepared splits, a sparse
checkpoint and earlier outputs that must not be overwritten), breaks one thing, snapshots every file
and folder (name, size, mtime, sha256), runs `python -m netslim.cli ...` in it and snapshots again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import run_process, tiny_params, write_fashion_mnist, write_idx_labels, write_params

pytestmark = pytest.mark.slow  # every case starts a real CLI process

SPARSE = Path("models/sparse/1e-4/best.pt")
PRUNED = Path("models/pruned/0.5.pt")
FMNIST = Path("fmnist")  # relative in params.yaml, so each copied project reads its own idx files


def run_cli(project: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real command line, run in `project` (every path in params.yaml is relative to it)."""
    return run_process([sys.executable, "-m", "netslim.cli", *args], cwd=project, timeout=timeout)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under root: (size, mtime_ns, sha256) for files, mtime_ns for folders."""
    found: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        if path.is_dir():
            found[f"{path.relative_to(root)}/"] = (stat.st_mtime_ns,)
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns, digest)
    return found


def make_project(root: Path, **sections) -> Path:
    """A prepared tiny project: params.yaml, idx files, prepared splits, a sparse checkpoint, old outputs."""
    from netslim.config import load_config
    from netslim.data import prepare
    from netslim.io import write_json
    from netslim.models import build_model, save_model

    write_fashion_mnist(root / FMNIST, n_train=120, n_test=40)
    params = tiny_params(root, FMNIST, **sections)
    write_params(root / "params.yaml", params)
    config = load_config(root / "params.yaml")
    data = dataclasses.replace(config.data, fashion_mnist_path=str(root / FMNIST))
    prepare(data, config.experiment.seed, root / config.paths.raw, root / config.paths.prepared)
    model = build_model(config.model.arch, 10, width=config.model.width)
    save_model(root / SPARSE, model, {"stage": "train", "lambda": 1e-4})
    save_model(root / PRUNED, model, {"stage": "prune", "ratio": 0.5})
    # Outputs of an earlier run: a failing stage must leave them exactly as they are.
    write_json(root / "reports/train/1e-4/metrics.json", {"test_acc": 0.5})
    write_json(root / "reports/prune/0.5/metrics.json", {"params": 1})
    return root


# ---- ways to break a project ----------------------------------------------------------------------


def set_param(section: str, key: str, value) -> Callable[[Path], None]:
    def mutate(project: Path) -> None:
        params = yaml.safe_load((project / "params.yaml").read_text())
        params[section][key] = value
        write_params(project / "params.yaml", params)

    return mutate


def write_text(relative: str, text: str) -> Callable[[Path], None]:
    return lambda project: (project / relative).write_text(text)


def truncate(relative: str | Path, keep: float = 0.5) -> Callable[[Path], None]:
    def mutate(project: Path) -> None:
        data = (project / relative).read_bytes()
        (project / relative).write_bytes(data[: int(len(data) * keep)])

    return mutate


def relabel(prefix: str, labels: np.ndarray) -> Callable[[Path], None]:
    return lambda project: write_idx_labels(project / FMNIST / f"{prefix}-labels-idx1-ubyte.gz", labels)


def edit_checkpoint(relative: Path, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def mutate(project: Path) -> None:
        from netslim.io import load_checkpoint, save_torch

        checkpoint = load_checkpoint(project / relative)
        change(checkpoint)
        save_torch(project / relative, checkpoint)

    return mutate


def weights_of(arch: str, width: float) -> Callable[[dict], None]:
    """Keep the checkpoint's arch and cfg but put another model's state_dict in."""

    def change(checkpoint: dict) -> None:
        from netslim.models import build_model

        checkpoint["state_dict"] = build_model(arch, 10, width=width).state_dict()

    return change


def cfg_of(width: float) -> Callable[[dict], None]:
    def change(checkpoint: dict) -> None:
        from netslim.models import default_cfg

        checkpoint["cfg"] = default_cfg(checkpoint["arch"], width)

    return change


def edit_json(relative: str, **changes) -> Callable[[Path], None]:
    def mutate(project: Path) -> None:
        path = project / relative
        path.write_text(json.dumps(json.loads(path.read_text()) | changes))

    return mutate


def delete(relative: Path) -> Callable[[Path], None]:
    return lambda project: (project / relative).unlink()


# ---- the table --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    mutate: Callable[[Path], None] | None
    expected: tuple[str, ...]  # fragments of the one error line: the key or file, the bad value, the fix


TRAIN = ("train", "--lambda", "1e-4")
PRUNE = ("prune", "--ratio", "0.5")
CASES = [
    # params.yaml
    Case("unknown-key", TRAIN, set_param("train", "epoch", 3), ("train.epoch: unknown key", "allowed keys are")),
    Case("wrong-type", TRAIN, set_param("train", "epochs", "ten"), ("train.epochs: 'ten' must be a whole number",)),
    Case("negative-lambda", TRAIN, set_param("train", "lambdas", ["-1e-4"]), ("train.lambdas[0]: '-1e-4'", ">= 0")),
    Case("ratio-one", TRAIN, set_param("prune", "ratios", [0.5, 1.0]), ("prune.ratios[1]: 1.0", "outside [0, 1)")),
    Case("ratio-one-flag", ("prune", "--ratio", "1.0"), None, ("--ratio: '1.0' is outside [0, 1)",)),
    Case("epochs-zero", TRAIN, set_param("finetune", "epochs", 0), ("finetune.epochs: 0 must be >= 1",)),
    Case("lr-zero", TRAIN, set_param("train", "lr", 0), ("train.lr: 0.0 must be in (0, 10]",)),
    Case("lr-1e300", (*TRAIN, "--set", "train.lr=1e300"), None, ("train.lr: 1e+300 must be in (0, 10]",)),
    Case("unknown-arch", TRAIN, set_param("model", "arch", "resnet18"), ("model.arch: 'resnet18'", "resnet50, vgg19")),
    Case("unknown-dataset", TRAIN, set_param("data", "dataset", "mnist"), ("data.dataset: 'mnist'", "fashion-mnist")),
    Case("min-channels-zero", PRUNE, set_param("prune", "min_channels", 0), ("prune.min_channels: 0 must be >= 1",)),
    Case(
        "milestone-past-end",
        TRAIN,
        set_param("train", "milestones", [0.5, 1.2]),
        ("train.milestones: 1.2 is past the last epoch", "(0, 1)"),
    ),
    Case(
        "min-accuracy-above-one",
        TRAIN,
        set_param("constraints", "min_accuracy", 1.5),
        ("constraints.min_accuracy: 1.5 must be in (0, 1]",),
    ),
    Case("malformed-yaml", TRAIN, write_text("params.yaml", "train: [epochs: 1\n"), ("params.yaml: not valid YAML",)),
    Case(
        "duplicate-key",
        TRAIN,
        write_text("params.yaml", "train:\n  lr: 1e-3\n  lr: 1e-2\n"),
        ("params.yaml: duplicate key 'lr' (line 3)", "keep one"),
    ),
    Case(
        "python-tag",
        TRAIN,
        write_text("params.yaml", "train:\n  lr: !!python/object/apply:os.system [id]\n"),
        ("params.yaml: tags are not allowed", "python/object/apply:os.system"),
    ),
    Case(
        "list-params-with-set",
        (*TRAIN, "--set", "train.epochs=1"),
        write_text("params.yaml", "- train\n"),
        ("params.yaml: the file must hold a mapping of sections, not a list",),
    ),
    Case("params-is-a-folder", (*TRAIN, "--params", "data"), None, ("data: is a folder, not a params file",)),
    Case("seed-2-64", TRAIN, set_param("experiment", "seed", 2**64), ("experiment.seed: 18446744073709551616",)),
    Case("lr-inf", (*TRAIN, "--set", "train.lr=.inf"), None, ("train.lr: inf must be a finite number",)),
    Case("bad-override", (*TRAIN, "--set", "train.batch_size=abc"), None, ("train.batch_size: 'abc' must be",)),
    # a CPU-only test machine (or one with fewer than 8 GPUs) has no cuda:7
    Case(
        "absent-cuda-device",
        PRUNE,
        set_param("experiment", "device", "cuda:7"),
        ("experiment.device: 'cuda:7'", "use auto"),
    ),
    # dataset files
    Case(
        "missing-dataset-folder",
        ("prepare",),
        set_param("data", "fashion_mnist_path", "no-such-folder"),
        ("data.fashion_mnist_path: no-such-folder", "dataset-fashion-mnist", "data.download: true"),
    ),
    Case(
        "truncated-idx-gz",
        ("prepare",),
        truncate(FMNIST / "train-images-idx3-ubyte.gz"),
        ("fmnist/train-images-idx3-ubyte.gz", "truncated", "replace it"),
    ),
    Case(
        "labels-out-of-range",
        ("prepare",),
        relabel("train", np.full(120, 12)),
        ("fmnist/train-labels-idx1-ubyte.gz", "labels outside 0..9"),
    ),
    Case(
        "labels-count-mismatch",
        ("prepare",),
        relabel("t10k", np.zeros(39)),
        ("fmnist/t10k-labels-idx1-ubyte.gz", "39 labels for 40 images"),
    ),
    Case(
        "prepared-for-another-dataset",
        TRAIN,
        set_param("data", "dataset", "cifar10"),
        ("data/prepared/meta.json", "is fashion-mnist but data.dataset is cifar10", "netslim prepare", "dvc repro"),
    ),
    Case(
        "corrupt-prepared-split",
        TRAIN,
        write_text("data/prepared/train.pt", "not a tensor file"),
        ("data/prepared/train.pt", "netslim prepare"),
    ),
    # checkpoints
    Case("truncated-checkpoint", PRUNE, truncate(SPARSE), (f"{SPARSE}: not a readable checkpoint", "truncated")),
    Case(
        "other-arch-weights",
        PRUNE,
        edit_checkpoint(SPARSE, weights_of("vgg19", 0.0625)),
        (f"{SPARSE}: weights do not match its arch resnet50", "another arch"),
    ),
    Case(
        "cfg-not-matching-weights",
        PRUNE,
        edit_checkpoint(SPARSE, cfg_of(0.03125)),
        (f"{SPARSE}: weights do not match", "the cfg was not saved with these weights"),
    ),
    Case("not-a-checkpoint", PRUNE, write_text(str(SPARSE), "hello\n"), (f"{SPARSE}: not a readable checkpoint",)),
    Case("missing-checkpoint", PRUNE, delete(SPARSE), (f"{SPARSE}: checkpoint not found",)),
    Case(
        "checkpoint-is-a-folder",
        PRUNE,
        lambda project: (delete(SPARSE)(project), (project / SPARSE).mkdir()),
        (f"{SPARSE}: is a folder where a checkpoint file is expected",),
    ),
    Case(
        "huge-checkpoint-width",
        PRUNE,
        edit_checkpoint(SPARSE, lambda checkpoint: checkpoint.update(width=1e6)),
        (f"{SPARSE}: width 1000000.0 is outside (0, 4]",),
    ),
    Case(
        "checkpoint-of-another-arch",
        PRUNE,
        set_param("model", "arch", "vgg19"),
        (f"{SPARSE}: holds a resnet50 but model.arch is vgg19", "set model.arch: resnet50"),
    ),
    Case(
        "huge-num-classes-in-meta",
        TRAIN,
        edit_json("data/prepared/meta.json", num_classes=10**8),
        ("data/prepared/meta.json", "num_classes 100000000 must be 2..1000"),
    ),
    Case(
        "truncated-pruned-model",
        ("finetune", "--ratio", "0.5"),
        truncate(PRUNED, keep=0.9),
        (f"{PRUNED}: not a readable checkpoint",),
    ),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, dict, dict]]:
    """Every case run once, three at a time (each in its own copy of the project): id -> (process, before, after).

    Most of a case's time is Python importing torch, so running them side by side keeps the table fast.
    """
    root = tmp_path_factory.mktemp("bad-inputs")
    base = make_project(root / "base")

    def run_case(case: Case) -> tuple[subprocess.CompletedProcess, dict, dict]:
        project = root / case.id
        shutil.copytree(base, project)
        if case.mutate is not None:
            case.mutate(project)
        before = snapshot(project)
        process = run_cli(project, *case.args)
        return process, before, snapshot(project)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip([c.id for c in CASES], pool.map(run_case, CASES), strict=True))


def test_the_table_has_at_least_15_distinct_cases():
    assert len({c.id for c in CASES}) == len(CASES) >= 15


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line_exit_2_and_nothing_written(case: Case, outcomes):
    process, before, after = outcomes[case.id]
    output = f"stdout:\n{process.stdout}\nstderr:\n{process.stderr}"
    assert process.returncode == 2, output
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    for fragment in case.expected:
        assert fragment in lines[0], f"{fragment!r} missing from: {lines[0]}"
    assert "Traceback" not in output
    assert after == before, f"files changed: {sorted(set(after.items()) ^ set(before.items()))}"


def test_a_bad_params_key_is_reported_before_torch_is_imported(tmp_path: Path) -> None:
    """Bad params fail at once: the check runs before the stage module and its torch import (seconds)."""
    params = tiny_params(tmp_path, tmp_path / "fmnist")
    params["train"]["epoch"] = 3
    write_params(tmp_path / "params.yaml", params)
    script = (
        "import sys\n"
        "from netslim.cli import main\n"
        "code = main(['train', '--lambda', '0'])\n"
        "print(code, 'torch' in sys.modules)\n"
    )
    result = run_process([sys.executable, "-c", script], cwd=tmp_path, timeout=120)
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    assert result.stderr.startswith("error: train.epoch: unknown key"), result.stderr
