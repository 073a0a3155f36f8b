"""Shared tiny fixtures: an easy learnable dataset, Fashion-MNIST idx files, a tiny params.yaml."""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]

# The test files that take longest, longest first (per-file sums of a `make test` run on 2 cores: pipeline ~220 s,
# tracking ~200, search ~105, faults ~85 (measured alone), bad_inputs ~75, engine ~70, registry ~55, export ~40,
# gpu_check ~25).
# `make test` runs two pytest-xdist workers that take whole files in this order (--no-loadscope-reorder): a long
# file handed out last would run alone while the other worker idles.
LONGEST_FIRST = (
    "test_pipeline.py",
    "test_tracking.py",
    "test_search.py",
    "test_faults.py",
    "test_bad_inputs.py",
    "test_engine.py",
    "test_registry.py",
    "test_export.py",
    "test_gpu_check.py",
    "test_slimming.py",
    "test_distributed.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order stays


# Stage commands that tests run through `dvc repro` call `netslim`: take this interpreter's, venv or not.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


# The optional pipelines as committed (out of DVC's sight) and the dvc.yaml that `make search` / `make study` copy
# them to before running them.
OPTIONAL_PIPELINES = {"search/dvc.yaml": "search/stages.yaml", "studies/dvc.yaml": "studies/stages.yaml"}


def committed_stage_file(dvc_file: str) -> Path:
    """The committed file behind a pipeline file DVC reads: dvc.yaml itself, or an optional pipeline's stages.yaml."""
    return ROOT / OPTIONAL_PIPELINES.get(dvc_file, dvc_file)


def committed_text(relative: str) -> str:
    """A project file as committed (HEAD), not as the workspace has it: `make demo`, an experiment or a user's
    edit may change params.yaml in the workspace, and no test may depend on that. Outside a git checkout (an
    unpacked sdist) the file itself is all there is."""
    try:
        return subprocess.run(
            ["git", "show", f"HEAD:{relative}"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return (ROOT / relative).read_text()


def run_process(
    cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True) in a process group of its own, killed whole when the
    test ends first (pytest-timeout, a timeout here, Ctrl-C). subprocess.run kills only its child: `dvc repro`
    runs each stage as a grandchild, which would go on training and hold a core for the tests after it."""
    with subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    """A tmpfs mounted at `folder` while the block runs (a tiny disk: "size=64k", or a read-only one: "size=64k,ro").
    Mounting needs root (CAP_SYS_ADMIN): where it is not permitted, the test is skipped, saying so."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root (CAP_SYS_ADMIN): {done.stderr.strip() or done.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def committed_params(folder: Path) -> Path:
    """The committed params.yaml (the embedded demo run), copied into `folder`; see `committed_text`."""
    path = folder / "params.yaml"
    path.write_text(committed_text("params.yaml"))
    return path


def easy_images(labels: np.ndarray, seed: int, size: int = 28, channels: int | None = None) -> np.ndarray:
    """Class k is a texture (horizontal stripes, vertical stripes, checkerboard, flat) plus noise.

    Textures survive random crops and flips, so a tiny network learns them in one epoch.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    patterns = [(yy // 2) % 2, (xx // 2) % 2, ((yy // 2) + (xx // 2)) % 2, np.full((size, size), 0.5)]
    images = np.stack([patterns[int(k) % 4] for k in labels]) * 180
    images = images + rng.integers(0, 60, size=images.shape)
    images = images.astype(np.uint8)
    if channels:
        images = np.repeat(images[..., None], channels, axis=-1)
    return images


def write_idx_images(path: Path, images: np.ndarray, compress: bool = True) -> None:
    n, h, w = images.shape
    payload = struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def write_idx_labels(path: Path, labels: np.ndarray, compress: bool = True) -> None:
    payload = struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def write_fashion_mnist(folder: Path, n_train: int = 400, n_test: int = 100, classes: int = 4, seed: int = 0) -> Path:
    """Tiny Fashion-MNIST in its own idx format (gzipped), easy to learn."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, classes, size=n)
        write_idx_images(folder / f"{prefix}-images-idx3-ubyte.gz", easy_images(labels, seed + n))
        write_idx_labels(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def write_params(path: Path, params: dict) -> Path:
    """Write a params file as YAML 1.2 (ruamel, like DVC): strings such as "1e-4" stay quoted.

    PyYAML writes "1e-4" bare, which YAML 1.2 (DVC, and netslim's loader) reads as the number 0.0001.
    """
    import io

    from ruamel.yaml import YAML

    buffer = io.StringIO()
    dumper = YAML(typ="safe", pure=True)
    dumper.default_flow_style = False
    dumper.sort_base_mapping_type_on_output = False
    dumper.dump(params, buffer)
    path.write_text(buffer.getvalue())
    return path


def seed_experiment() -> dict:
    """The seed experiment's params: the committed params.yaml with profiles/seed.yaml applied, as `make seed` does."""
    params = yaml.safe_load(committed_text("params.yaml"))
    for dotted, value in yaml.safe_load(committed_text("profiles/seed.yaml")).items():
        section, _, key = dotted.partition(".")
        params[section][key] = value
    return params


def seed_params(folder: Path) -> Path:
    """The seed experiment's params written as `folder`/params.yaml."""
    return write_params(folder / "params.yaml", seed_experiment())


def tiny_params(tmp: Path, fmnist: Path, **sections) -> dict:
    """The seed experiment's params shrunk: tiny data, a tiny ResNet-50, one epoch, CPU, no tracking."""
    params = seed_experiment()
    params["experiment"].update(device="cpu", deterministic=True)
    params["data"].update(dataset="fashion-mnist", fashion_mnist_path=str(fmnist), download=False, val_size=64)
    params["model"].update(width=0.0625)
    for key in ("train", "finetune"):
        params[key].update(epochs=1, batch_size=32, lr=3e-3)
    params["train"]["lambdas"] = ["1e-4", "0"]
    params["runtime"].update(eval_batch_size=256, throughput_repeats=1)
    params["tracking"].update(enabled=False)
    # 3 exports, not 3 + 2 per ratio; one batch size (batch 1 is 64 calls a sample: the slowest to time)
    params["export"].update(repeats=1, batch_sizes=[64], check_images=64, compare_round_to=None)
    params["search"].update(n_trials=2, train_epochs=1, finetune_epochs=1)
    for section, values in sections.items():
        params.setdefault(section, {}).update(values)
    return params


@pytest.fixture
def fmnist_dir(tmp_path: Path) -> Path:
    return write_fashion_mnist(tmp_path / "fmnist")


@pytest.fixture
def tiny_data():
    """PreparedData of the easy dataset, 4 classes, 32×32×3 uint8 (built without the data stage)."""
    from netslim.data import PreparedData, Split

    def split(n: int, seed: int) -> Split:
        labels = np.random.default_rng(seed).integers(0, 4, size=n)
        images = easy_images(labels, seed, size=32, channels=3)
        return Split(torch.from_numpy(images), torch.from_numpy(labels).long())

    return PreparedData(
        train=split(640, 1),
        val=split(64, 2),
        test=split(128, 3),
        mean=(0.2, 0.2, 0.2),
        std=(0.3, 0.3, 0.3),
        num_classes=4,
        dataset="easy",
        classes=list("abcd"),
    )


@pytest.fixture(autouse=True)
def _quiet_git_identity(monkeypatch):
    """Tests that make git repos need an identity; CI machines may have none."""
    for var, value in (
        ("GIT_AUTHOR_NAME", "netslim test"),
        ("GIT_AUTHOR_EMAIL", "test@netslim.local"),
        ("GIT_COMMITTER_NAME", "netslim test"),
        ("GIT_COMMITTER_EMAIL", "test@netslim.local"),
    ):
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    os.environ.setdefault("MPLBACKEND", "Agg")


def pil_reference_crop_flip(
    images_uint8_nhwc: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, pad: int = 4
) -> torch.Tensor:
    """The seed experiment's per-image PIL recipe at given offsets: Pad(pad), crop, hflip.

    The reference that netslim's batched augmentation on tensors must match bit for bit.
    """
    from PIL import Image
    from torchvision import transforms
    from torchvision.transforms import functional as tf

    pad_op = transforms.Pad(pad)
    out = []
    for i, array in enumerate(images_uint8_nhwc.cpu().numpy()):
        img = pad_op(Image.fromarray(array))
        img = tf.crop(img, int(top[i]), int(left[i]), array.shape[0], array.shape[1])
        if bool(flip[i]):
            img = tf.hflip(img)
        out.append(torch.from_numpy(np.array(img)))
    return torch.stack(out) if out else images_uint8_nhwc.cpu().clone()


def markdown_table(markdown: str, having: str) -> list[dict[str, str]]:
    """The rows of the first markdown table in `markdown` with a column `having`, each keyed by its column."""
    header: list[str] | None = None
    rows: list[dict[str, str]] = []
    for line in [*markdown.splitlines(), ""]:
        if not line.startswith("|"):
            if rows:
                return rows
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif having in header and not line.startswith("|:---"):
            rows.append(dict(zip(header, cells, strict=True)))
    raise AssertionError(f"no table with a column {having!r}")


def table_row(markdown: str, first_cell: str, having: str) -> dict[str, str]:
    """The row whose first cell is `first_cell` in the first table with a column `having`."""
    rows = [row for row in markdown_table(markdown, having) if next(iter(row.values())) == first_cell]
    assert rows, f"no row {first_cell!r} in the table with a column {having!r}"
    return rows[0]


def line_starting(markdown: str, start: str) -> str:
    """The first line of `markdown` that begins with `start` (a bullet's "- <model>:", a sentence's first words), so
    a test can assert the numbers said there rather than the wording around them."""
    found = [line for line in markdown.splitlines() if line.startswith(start)]
    assert found, f"no line begins with {start!r}"
    return found[0]


def caption(markdown: str, figure: str) -> str:
    """The caption report.md puts under the figure file `figure`: the paragraph after its image."""
    return markdown.split(f"](figures/{figure})", 1)[1].strip().split("\n\n", 1)[0]


def clause(prose: str, subject: str) -> str:
    """What `prose` says of `subject` (a model's name, "λ = 1e-4"): from "<subject>: " to the next "; " or the end."""
    found = [part[part.index(f"{subject}: ") :] for part in prose.split("; ") if f"{subject}: " in part]
    assert len(found) == 1, f"{len(found)} clauses about {subject!r} in {prose!r}"
    return found[0].removesuffix(".")


def numbers_in(text: str) -> list[str]:
    """The numbers of `text` as written, in order ("91.2%", "-0.8", "1.50×", "3"), its words left out."""
    return re.findall(r"[-+]?\d+(?:,\d{3})*(?:\.\d+)?[%×]?", text)
