"""One typed config, read from params.yaml and validated once, before any work.

Every section of params.yaml is a frozen dataclass below. `load_config` rejects unknown keys, wrong
types and out-of-range values with a `ConfigError` whose message is one line naming the key, the bad
value and what is allowed; the CLI turns it into exit code 2 before anything is written.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.constructor import ConstructorError, DuplicateKeyError

from netslim.registry import ARCHITECTURES
from netslim.vocabulary import BUDGET, SPARSE, UNPRUNED

DATASETS = ("cifar10", "fashion-mnist")
MAX_WIDTH = 4.0  # the largest model.width (and checkpoint width): 16× the parameters of the paper's models
MAX_CLASSES = 1000  # the datasets here have 10; more in a checkpoint or meta.json means a broken or crafted file
# Adam's step is lr-sized: far past 1 every run diverges, and past ~1e38 the step overflows float32 (a RuntimeError
# inside the optimizer, not a divergence)
MAX_LR = 10.0
MAX_SEED = 2**32 - 1  # engine.epoch_generator seeds with seed × 1,000,003 + epoch, which must stay below 2^63
TEACHERS = (SPARSE, UNPRUNED)  # finetune.distill_teacher
SCHEDULES = ("step", "cosine")  # lr schedules of train and finetune (netslim.engine.make_optimizer)


class ConfigError(ValueError):
    """A bad value in params.yaml (or a CLI override); the message is one line with the fix."""


def read_yaml(text: str) -> Any:
    """Parse YAML the way DVC does (YAML 1.2, ruamel): an unquoted 1e-4 is the number 0.0001 here
    exactly as in DVC's `${item}`, so a λ label that DVC would turn into another folder name is
    caught by validation instead of surfacing as a missing DVC output."""
    return YAML(typ="safe", pure=True).load(text)


def parse_lambda(text: str | float, key: str = "lambda") -> float:
    """λ is written as a label like "1e-4" in params.yaml (it names files); this is its value."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ConfigError(f'{key}: {text!r} is not a number; write it like "1e-4" or "0"') from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{key}: {text!r} must be a finite number >= 0 (0 turns the L1 penalty off)")
    return value


def lambda_label(value: float | str) -> str:
    """The canonical file-name label of a λ: 1e-4 -> "1e-4", 0 -> "0", 3.2e-5 -> "3.2e-5" (the report writes lrs so)."""
    v = float(value)
    if v == 0:
        return "0"
    mantissa, exponent = f"{v:.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def ratio_label(value: float | str) -> str:
    """The file-name label of a prune target: 0.9 -> "0.9", "budget" -> "budget"."""
    return BUDGET if value == BUDGET else f"{float(value):g}"


def parse_ratio(text: float | str, key: str = "ratio") -> float | str:
    """A prune target from the CLI or params: a ratio in [0, 1), or "budget"."""
    if text == BUDGET:
        return BUDGET
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ConfigError(f'{key}: {text!r} must be a ratio in [0, 1) like 0.9, or "budget"') from None
    if not 0 <= value < 1:
        raise ConfigError(f"{key}: {text!r} is outside [0, 1); 0.9 removes 90% of the prunable channels")
    return value


@dataclass(frozen=True)
class ExperimentConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False  # bit-exact reruns (and resumes) on the CPU; slower on CUDA


@dataclass(frozen=True)
class PathsConfig:
    """Every file location of the pipeline, declared once; dvc.yaml reads the same keys."""

    raw: str = "data/raw"
    prepared: str = "data/prepared"
    sparse: str = "models/sparse"
    pruned: str = "models/pruned"
    finetuned: str = "models/finetuned"
    train_reports: str = "reports/train"
    prune_reports: str = "reports/prune"
    finetune_reports: str = "reports/finetune"
    exported: str = "models/exported"  # <model>.onnx, BatchNorm folded
    export_reports: str = "reports/export"
    search_reports: str = "reports/search"
    reports: str = "reports"
    state: str = ".netslim/state"  # per-epoch resume states; outside DVC outs so a crash keeps them


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "cifar10"
    cifar10_path: str | None = None  # a cifar-10-batches-py folder or cifar-10-python.tar.gz
    fashion_mnist_path: str | None = None  # a folder with the four idx files (.gz or not)
    download: bool = True  # let torchvision download when no local copy is found
    val_size: int = 5000  # held out of the training set; λ and lr are chosen on it
    train_subset: int | None = None  # first N training images after the val split; None = all
    test_subset: int | None = None
    # Prepared images are scaled down (area averaging) to this height and width; 32 = as read (Fashion-MNIST: its
    # 28×28 images zero-padded to 32×32; smaller sizes scale the 28×28 image itself).
    image_size: int = 32


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet50"
    width: float = 1.0  # scales every default channel count; < 1 for quick runs
    # Initial BN scale γ before sparsity training; None = PyTorch's 1.0. The reference code fills every γ with 0.5:
    # the L1 term then starts nearer zero, so fewer steps drive unimportant channels there.
    bn_init: float | None = None


def milestone_epochs(milestones: tuple[float, ...], epochs: int) -> list[int]:
    """The epochs after which a step schedule multiplies the lr by its gamma (milestones are fractions)."""
    return sorted({max(1, int(round(m * epochs))) for m in milestones})


@dataclass(frozen=True)
class OptimConfig:
    """Shared by sparsity training and fine-tuning (each has its own section)."""

    epochs: int = 40
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of `epochs` where lr is multiplied by gamma
    lr_gamma: float = 0.1
    # "step": lr ×lr_gamma at the milestones, the seeds' schedule; "cosine": lr annealed to 0 over every batch
    # (milestones and lr_gamma unused), which learns more in a run of a few hundred steps.
    schedule: str = "step"
    # Random crop (zero-padded by 4) and horizontal flip of every training batch, the seed experiment's recipe.
    # It pays off over tens of epochs; a run of a few hundred steps learns faster without it.
    augment: bool = True


@dataclass(frozen=True)
class TrainConfig(OptimConfig):
    lambdas: tuple[str, ...] = ("1e-4", "1e-5", "0")  # one sparsity run per λ (labels name the files)
    sparsity_threshold: float = 1e-2  # |γ| below this counts as "sparse" in the history


@dataclass(frozen=True)
class FinetuneConfig(OptimConfig):
    epochs: int = 20
    # Knowledge distillation while fine-tuning: loss (1 - α)·CE + α·T²·KL(teacher ‖ student); α = 0 is off.
    distill_alpha: float = 0.0
    distill_temperature: float = 4.0
    distill_teacher: str = "sparse"  # sparse: the model that was pruned (prune.lambda); unpruned: the λ = 0 model


@dataclass(frozen=True)
class PruneConfig:
    lambda_: str = "1e-4"  # which sparse model is pruned (`lambda` in params.yaml)
    ratios: tuple[float | str, ...] = (0.5, 0.9)  # one prune per entry; "budget" = fit target_params/latency
    target_params: int | None = None  # for a "budget" entry: the smallest ratio whose model fits this many params
    target_latency_ms: float | None = None  # for a "budget" entry: ... whose exported model runs within this (batch 1)
    min_channels: int = 2  # no prunable layer keeps fewer channels than this
    round_to: int = 1  # every prunable layer keeps a multiple of this many channels (or all); 1 = off, 8 = AVX2 lanes
    # No prunable layer loses more than this share of its channels in one pruning (Torch-Pruning's max_pruning_ratio);
    # the global ranking takes the rest from other layers. 1.0 = off (the reference code's uncapped threshold).
    max_layer_ratio: float = 1.0
    bias_compensation: bool = True  # fold relu(β) of removed channels into the next layer
    # Training batches (no augmentation, no gradients) that re-estimate every BN's running mean and variance after
    # surgery ("adaptive BN", EagleEye 2020); 0 keeps the statistics copied from the unpruned model.
    recalibration_batches: int = 20


@dataclass(frozen=True)
class ExportConfig:
    """`netslim export`: ONNX files of the fine-tuned models and their speed in ONNX Runtime."""

    threads: int | None = None  # ONNX Runtime intra-op threads (eager PyTorch gets as many); null = all usable CPUs
    batch_sizes: tuple[int, ...] = (1, 64)
    repeats: int = 10  # timed samples per model and batch size, each of about 64 images
    check_images: int = 256  # test images on which ONNX Runtime's logits must equal PyTorch's
    atol: float = 1e-4  # the largest allowed |ONNX Runtime logit - PyTorch logit|
    compare_round_to: int | None = 8  # plain pruning next to pruning with round_to = this; null = no comparison
    pad_to: int | None = 8  # exported models' pruned widths padded with zero channels to multiples of this; null = off


@dataclass(frozen=True)
class ConstraintsConfig:
    min_accuracy: float = 0.90  # test accuracy of the fine-tuned model
    max_params: int = 4_000_000

    def met_by(self, accuracy: float, params: float) -> bool:
        """Whether a model with this accuracy and parameter count meets both constraints."""
        return accuracy >= self.min_accuracy and params <= self.max_params


@dataclass(frozen=True)
class RuntimeConfig:
    """How to run, not what to compute: none of it changes the results' meaning (threads and amp change the last
    bits: sums taken in another order)."""

    amp: bool = True  # bf16 autocast on CUDA; always fp32 on the CPU
    channels_last: bool = True  # NHWC memory layout, on the CPU and CUDA
    compile: bool = False  # torch.compile the model
    sync_bn: bool = False  # SyncBatchNorm under DDP
    eval_batch_size: int = 1024
    throughput_repeats: int = 5  # timed batches per measurement
    threads: int | None = None  # intra-op CPU threads per stage process; None = torch's default (OMP_NUM_THREADS)


MODEL_STAGES = ("train", "prune", "finetune")  # the stages that have a model of their own to log


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    experiment: str = "netslim"
    uri: str | None = None  # MLFLOW_TRACKING_URI wins; None = sqlite:///mlflow.db in the project
    register_models: bool = True
    log_models: bool = True
    # Which stages' runs log their model (pt2 via torch.export: 6-14 s a model on a 2-core CPU, the first in a
    # process the slowest). The fine-tuned models are the ones registered; all are DVC outputs either way.
    model_stages: tuple[str, ...] = MODEL_STAGES


@dataclass(frozen=True)
class SearchConfig:
    study_name: str = "netslim"
    n_trials: int = 20
    storage: str | None = None  # None = sqlite:///<search_reports>/study.db
    lambda_min: float = 1e-6
    lambda_max: float = 1e-3
    lambda_steps_per_decade: int = 4  # λ on a log grid, so trials share sparse checkpoints
    lr_min: float = 1e-4
    lr_max: float = 1e-2
    ratio: float = 0.9
    train_epochs: int = 40
    finetune_epochs: int = 20
    heartbeat_interval: int = 60  # seconds; a dead worker's trial is failed after 2 intervals
    divergence_loss: float = 1e3  # a training loss above this (or NaN) ends the trial


@dataclass(frozen=True)
class Config:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    constraints: ConstraintsConfig = field(default_factory=ConstraintsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def to_flat_dict(self) -> dict[str, Any]:
        """All values as one flat {"section.key": value} dict (for MLflow params)."""
        flat: dict[str, Any] = {}
        for section in dataclasses.fields(self):
            for f in dataclasses.fields(getattr(self, section.name)):
                value = getattr(getattr(self, section.name), f.name)
                flat[f"{section.name}.{_yaml_key(f.name)}"] = list(value) if isinstance(value, tuple) else value
        return flat


def _yaml_key(field_name: str) -> str:
    return field_name.rstrip("_")  # `lambda` is a Python keyword, so the field is `lambda_`


# ---- reading and checking -------------------------------------------------------------------


def _check_type(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(key, value, option)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: {value!r} must be a list")
        (item_hint, _ellipsis) = typing.get_args(hint)
        return tuple(_check_type(f"{key}[{i}]", v, item_hint) for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: {value!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: {value!r} must be a whole number")
        return value
    if hint is float:
        number = _float(value)
        if number is None:
            raise ConfigError(f"{key}: {value!r} must be a number")
        if not math.isfinite(number):
            raise ConfigError(f"{key}: {value!r} must be a finite number")
        return number
    if hint is str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{key}: {value!r} must be a string")
        return value
    raise TypeError(f"unsupported config type {hint} for {key}")  # a bug in this file, not in params


def _float(value: Any) -> float | None:
    """A number as a float; None for what is not plainly one (a bool, a word, a number too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:  # PyYAML reads `1e-4` (no dot) as a string; accept what is plainly a number
        return float(value)
    except (ValueError, OverflowError):
        return None


def _section_from_dict(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}: {raw!r} must be a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    fields = {_yaml_key(f.name): f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise ConfigError(f"{prefix}.{key}: unknown key; allowed keys are: {allowed}")
        name = fields[key]
        kwargs[name] = _check_type(f"{prefix}.{key}", value, hints[name])
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any] | None) -> Config:
    """Build and validate a Config from the parsed params.yaml mapping."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"params: the file must hold a mapping of sections, not {type(raw).__name__}")
    hints = typing.get_type_hints(Config)
    sections = {}
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(f"{key}: unknown section; allowed sections are: {', '.join(hints)}")
        sections[key] = _section_from_dict(hints[key], value, key)
    config = Config(**sections)
    validate(config)
    return config


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _validate_optim(section: str, o: OptimConfig) -> None:
    _require(o.epochs >= 1, f"{section}.epochs: {o.epochs} must be >= 1")
    _require(o.batch_size >= 1, f"{section}.batch_size: {o.batch_size} must be >= 1")
    _require(0 < o.lr <= MAX_LR, f"{section}.lr: {o.lr} must be in (0, {MAX_LR:g}] (Adam's lr; 1e-3 is typical)")
    _require(o.weight_decay >= 0, f"{section}.weight_decay: {o.weight_decay} must be >= 0")
    _require(0 < o.lr_gamma <= 1, f"{section}.lr_gamma: {o.lr_gamma} must be in (0, 1]")
    _require(
        o.schedule in SCHEDULES,
        f"{section}.schedule: {o.schedule!r} is not one of {', '.join(SCHEDULES)}; use step (milestones) or cosine",
    )
    for m in o.milestones:
        _require(
            0 < m < 1,
            f"{section}.milestones: {m} is past the last epoch; milestones are fractions of "
            f"{section}.epochs in (0, 1), e.g. [0.5, 0.75]",
        )
    _require(
        list(o.milestones) == sorted(o.milestones),
        f"{section}.milestones: {list(o.milestones)} must be increasing",
    )


def _validate_export(e: ExportConfig) -> None:
    _require(e.threads is None or e.threads >= 1, f"export.threads: {e.threads} must be >= 1, or null for all CPUs")
    _require(len(e.batch_sizes) >= 1, "export.batch_sizes: [] must list at least one batch size, e.g. [1, 64]")
    for b in e.batch_sizes:
        _require(b >= 1, f"export.batch_sizes: {b} must be >= 1")
    _require(e.repeats >= 1, f"export.repeats: {e.repeats} must be >= 1")
    _require(e.check_images >= 1, f"export.check_images: {e.check_images} must be >= 1")
    _require(math.isfinite(e.atol) and e.atol > 0, f"export.atol: {e.atol} must be a positive number, e.g. 1e-4")
    _require(
        e.compare_round_to is None or e.compare_round_to >= 2,
        f"export.compare_round_to: {e.compare_round_to} must be >= 2 (e.g. 8), or null for no comparison",
    )
    _require(
        e.pad_to is None or e.pad_to >= 1,
        f"export.pad_to: {e.pad_to} must be >= 1 (8 for AVX2's 8-float registers), or null to export widths as pruned",
    )


def validate(c: Config) -> None:
    """Range checks across the whole config; raises ConfigError on the first problem."""
    _require(
        c.model.arch in ARCHITECTURES,
        f"model.arch: {c.model.arch!r} is unknown; use one of {', '.join(ARCHITECTURES)}",
    )
    _require(
        c.data.dataset in DATASETS,
        f"data.dataset: {c.data.dataset!r} is unknown; use one of {', '.join(DATASETS)}",
    )
    _require(0 < c.model.width <= MAX_WIDTH, f"model.width: {c.model.width} must be in (0, {MAX_WIDTH:g}]")
    _require(
        0 <= c.experiment.seed <= MAX_SEED,
        f"experiment.seed: {c.experiment.seed} must be in 0..{MAX_SEED} (torch's generators take 32-bit seeds here)",
    )
    _require(c.data.val_size >= 0, f"data.val_size: {c.data.val_size} must be >= 0")
    _require(
        8 <= c.data.image_size <= 32,
        f"data.image_size: {c.data.image_size} must be in 8..32 (32 = CIFAR-10's size; images are only scaled down)",
    )
    for key in ("train_subset", "test_subset"):
        v = getattr(c.data, key)
        _require(v is None or v >= 1, f"data.{key}: {v} must be >= 1, or null for all images")
    _require(
        c.experiment.device == "auto" or c.experiment.device.split(":")[0] in ("cpu", "cuda"),
        f"experiment.device: {c.experiment.device!r} must be auto, cpu, cuda or cuda:N",
    )
    _validate_optim("train", c.train)
    _validate_optim("finetune", c.finetune)
    f = c.finetune
    _require(0 <= f.distill_alpha <= 1, f"finetune.distill_alpha: {f.distill_alpha} must be in [0, 1] (0 = off)")
    _require(
        math.isfinite(f.distill_temperature) and f.distill_temperature > 0,
        f"finetune.distill_temperature: {f.distill_temperature} must be a positive number, e.g. 4",
    )
    _require(
        f.distill_teacher in TEACHERS,
        f"finetune.distill_teacher: {f.distill_teacher!r} is not one of {', '.join(TEACHERS)}",
    )
    _require(
        not f.distill_alpha or f.distill_teacher != "unpruned" or 0.0 in {float(v) for v in c.train.lambdas},
        'finetune.distill_teacher: "unpruned" is the λ = 0 model; add "0" to train.lambdas or use sparse',
    )
    _require(len(c.train.lambdas) >= 1, 'train.lambdas: [] must list at least one λ, e.g. ["1e-4"]')
    for i, lam in enumerate(c.train.lambdas):
        parse_lambda(lam, f"train.lambdas[{i}]")
        _require(
            lambda_label(lam) == str(lam),
            f'train.lambdas[{i}]: {lam!r} must be written as the quoted label "{lambda_label(lam)}" '
            "(the label names its folders, and DVC reads an unquoted 1e-4 as 0.0001)",
        )
    _require(len(set(map(float, c.train.lambdas))) == len(c.train.lambdas), "train.lambdas: values repeat")
    _require(c.train.sparsity_threshold > 0, f"train.sparsity_threshold: {c.train.sparsity_threshold} must be > 0")
    parse_lambda(c.prune.lambda_, "prune.lambda")
    _require(
        lambda_label(c.prune.lambda_) == str(c.prune.lambda_),
        f'prune.lambda: {c.prune.lambda_!r} must be written as the quoted label "{lambda_label(c.prune.lambda_)}"',
    )
    _require(
        float(c.prune.lambda_) in {float(v) for v in c.train.lambdas},
        f"prune.lambda: {c.prune.lambda_!r} is not among train.lambdas {list(c.train.lambdas)}; "
        "add it there or pick one of them",
    )
    _require(len(c.prune.ratios) >= 1, "prune.ratios: [] must list at least one ratio, e.g. [0.5, 0.9]")
    for i, r in enumerate(c.prune.ratios):
        parse_ratio(r, f"prune.ratios[{i}]")
    labels = [ratio_label(r) for r in c.prune.ratios]
    _require(len(set(labels)) == len(labels), f"prune.ratios: {list(c.prune.ratios)} has repeats")
    _require(
        BUDGET not in labels or c.prune.target_params is not None or c.prune.target_latency_ms is not None,
        'prune.ratios: "budget" needs prune.target_params set to a parameter count, e.g. 4000000 '
        "(or prune.target_latency_ms to milliseconds)",
    )
    _require(
        c.model.bn_init is None or 0 < c.model.bn_init <= 10,
        f"model.bn_init: {c.model.bn_init} must be in (0, 10], e.g. 0.5, or null for PyTorch's 1.0",
    )
    _require(
        c.prune.recalibration_batches >= 0,
        f"prune.recalibration_batches: {c.prune.recalibration_batches} must be >= 0 (0 turns recalibration off)",
    )
    _require(c.prune.min_channels >= 1, f"prune.min_channels: {c.prune.min_channels} must be >= 1")
    _require(c.prune.round_to >= 1, f"prune.round_to: {c.prune.round_to} must be >= 1 (1 = off), e.g. 8")
    _require(
        0 < c.prune.max_layer_ratio <= 1,
        f"prune.max_layer_ratio: {c.prune.max_layer_ratio} is outside (0, 1]; e.g. 0.5 (at most half a layer), 1 = off",
    )
    _require(
        c.prune.target_latency_ms is None
        or (math.isfinite(c.prune.target_latency_ms) and c.prune.target_latency_ms > 0),
        f"prune.target_latency_ms: {c.prune.target_latency_ms} must be a positive number of milliseconds or null",
    )
    _validate_export(c.export)
    _require(
        c.prune.target_params is None or c.prune.target_params >= 1,
        f"prune.target_params: {c.prune.target_params} must be a positive parameter count or null",
    )
    _require(
        0 < c.constraints.min_accuracy <= 1,
        f"constraints.min_accuracy: {c.constraints.min_accuracy} must be in (0, 1], e.g. 0.90",
    )
    _require(c.constraints.max_params >= 1, f"constraints.max_params: {c.constraints.max_params} must be >= 1")
    for stage in c.tracking.model_stages:
        _require(
            stage in MODEL_STAGES,
            f"tracking.model_stages: {stage!r} has no model to log; list some of {', '.join(MODEL_STAGES)}, or []",
        )
    _require(c.runtime.eval_batch_size >= 1, f"runtime.eval_batch_size: {c.runtime.eval_batch_size} must be >= 1")
    _require(c.runtime.throughput_repeats >= 1, "runtime.throughput_repeats: must be >= 1")
    _require(
        c.runtime.threads is None or c.runtime.threads >= 1,
        f"runtime.threads: {c.runtime.threads} must be >= 1, or null for torch's default",
    )
    s = c.search
    _require(s.n_trials >= 1, f"search.n_trials: {s.n_trials} must be >= 1")
    _require(0 < s.lambda_min < s.lambda_max, "search.lambda_min/lambda_max: need 0 < lambda_min < lambda_max")
    _require(0 < s.lr_min < s.lr_max <= MAX_LR, f"search.lr_min/lr_max: need 0 < lr_min < lr_max <= {MAX_LR:g}")
    _require(s.lambda_steps_per_decade >= 1, "search.lambda_steps_per_decade: must be >= 1")
    _require(0 <= s.ratio < 1, f"search.ratio: {s.ratio} is outside [0, 1)")
    _require(s.train_epochs >= 1 and s.finetune_epochs >= 1, "search.train_epochs/finetune_epochs: must be >= 1")
    _require(s.heartbeat_interval >= 1, "search.heartbeat_interval: must be >= 1 second")


def load_config(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Config:
    """Read params.yaml (plus optional {"section.key": value} overrides) into a validated Config."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a params file; pass --params PATH to a YAML file")
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; run from the project root or pass --params PATH")
    try:
        raw = read_yaml(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; pass --params PATH to a YAML file") from None
    except YAMLError as e:
        raise ConfigError(f"{path}: {_yaml_problem(e)}") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; it must hold the pipeline's sections (see the committed one)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the file must hold a mapping of sections, not a {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"{dotted}: an override must be section.key=value")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{path}: section {section} is a {type(raw[section]).__name__}; it must be a mapping")
        raw[section][key] = value
    return config_from_dict(raw)


def _yaml_problem(error: YAMLError) -> str:
    """What is wrong with a YAML text, in words, with its line: a duplicate key and a tag are named as such."""
    mark = getattr(error, "problem_mark", None)
    where = f" (line {mark.line + 1})" if mark is not None else ""
    problem = getattr(error, "problem", None) or ""
    if isinstance(error, DuplicateKeyError):
        key = problem.split('"')[1] if problem.count('"') >= 2 else "?"
        return f"duplicate key {key!r}{where}; keep one of the two"
    if isinstance(error, ConstructorError) and "tag" in problem:
        tag = problem.split("'")[1] if problem.count("'") >= 2 else "?"
        return f"tags are not allowed ({tag!r}{where}); write a plain value"
    return f"not valid YAML{where}; fix the syntax"
