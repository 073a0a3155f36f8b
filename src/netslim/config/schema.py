"""What params.yaml may hold: one frozen dataclass per section, its defaults, and the limits its values are checked
against (netslim.config.validation checks them; netslim.config.loading reads the file into these classes)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from netslim.vocabulary import SPARSE, UNPRUNED

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
                flat[f"{section.name}.{yaml_key(f.name)}"] = list(value) if isinstance(value, tuple) else value
        return flat


def yaml_key(field_name: str) -> str:
    """The params.yaml key of a dataclass field."""
    return field_name.rstrip("_")  # `lambda` is a Python keyword, so the field is `lambda_`
