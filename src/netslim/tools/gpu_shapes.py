"""gpu-check's definitions: what is measured (archs, runtime variants), at which size, and the seed experiment's
shapes it extrapolates to, and the packages it needs."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from netslim.config import Config


ROOT = Path(__file__).resolve().parents[3]  # the checkout: tests/ and profiles/ live there
SEED_PROFILE = Path("profiles/seed.yaml")
ARCHS = ("resnet50", "vgg19")
CIFAR10_TRAIN, CIFAR10_TEST = 50_000, 10_000
# The packages the check imports that a bare GPU image may lack (carry them as wheels: `make gpu-wheels`).
NEEDED = ("ruamel.yaml", "thop")
EXPORT_NEEDS = ("onnx", "onnxruntime", "onnxscript")
GPU_MARK = re.compile(r"^@pytest\.mark\.gpu\b", re.MULTILINE)  # a test that needs CUDA (skipped without it)

# name -> (bf16 autocast, channels_last, torch.compile): the runtime switches of params.yaml
VARIANTS = {
    "fp32_nchw": (False, False, False),
    "bf16_channels_last": (True, True, False),
    "bf16_channels_last_compile": (True, True, True),
}


@dataclass(frozen=True)
class CheckSize:
    """How big the check runs: the seed's shapes on a GPU, a tiny stand-in on the CPU.

    Attributes:
        width: channel width of the models (1.0: the paper's).
        steps: optimizer steps in one timed sample (an epoch is extrapolated from the median sample).
        repeats: timed samples per variant, after one untimed call (cuDNN autotuning, torch.compile).
        eval_images: images evaluation is timed on, scaled to the seed's validation and test images.
        batch_size: None: the seed's train.batch_size.
        compile_backend: torch.compile's backend; the CPU fallback traces with "eager" (inductor's C++ build takes
            minutes on 2 cores) so that the compiled path still runs.
        budget_seconds: what the sections may take together; one that would not fit is skipped (see NEEDS).
    """

    width: float
    steps: int
    repeats: int
    eval_images: int
    batch_size: int | None
    compile_backend: str
    budget_seconds: float


FULL = CheckSize(
    width=1.0, steps=40, repeats=3, eval_images=10_000, batch_size=None, compile_backend="inductor", budget_seconds=450
)
TINY = CheckSize(
    width=0.0625, steps=2, repeats=1, eval_images=32, batch_size=8, compile_backend="eager", budget_seconds=600
)
# about how long each section takes on a GPU at FULL size (seconds), to skip what the budget cannot hold
NEEDS = {"train": 25, "l1": 5, "prune": 30, "finetune": 20, "export": 90, "tests": 60, "torchrun": 90, "compile": 150}


def seed_config(params: Path, profile: Path | None) -> Config:
    """params.yaml with the seed experiment's overrides (profiles/seed.yaml, flat section.key lines) on top."""
    from netslim.config import ConfigError, load_config, read_yaml

    overrides = {}
    if profile is not None and profile.is_file():
        overrides = read_yaml(profile.read_text()) or {}
        if not isinstance(overrides, dict):
            raise ConfigError(f"{profile}: must be a mapping of section.key: value lines, like profiles/seed.yaml")
    return load_config(params, overrides)


def gpu_slug(name: str) -> str:
    """A file name for a device name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def missing_modules(names: tuple[str, ...]) -> list[str]:
    return [name for name in names if importlib.util.find_spec(name) is None]


# ---- the seed's sizes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedShape:
    """What one seed epoch and the whole seed experiment hold, read from the seed config."""

    arch: str
    batch_size: int
    train_images: int  # per epoch, after the validation split is held out
    eval_images: int  # validation + test, evaluated after every epoch
    train_epochs: int
    finetune_epochs: int
    lambdas: int
    ratios: tuple[float, ...]

    @classmethod
    def of(cls, config: Config) -> SeedShape:
        d = config.data
        train = min(d.train_subset or CIFAR10_TRAIN, CIFAR10_TRAIN) - d.val_size
        test = min(d.test_subset or CIFAR10_TEST, CIFAR10_TEST)
        return cls(
            arch=config.model.arch,
            batch_size=config.train.batch_size,
            train_images=train,
            eval_images=d.val_size + test,
            train_epochs=config.train.epochs,
            finetune_epochs=config.finetune.epochs,
            lambdas=len(config.train.lambdas),
            ratios=tuple(float(r) for r in config.prune.ratios if isinstance(r, int | float)),
        )


# ---- the report ----------------------------------------------------------------------------------

SIZES = {"full": FULL, "tiny": TINY}
