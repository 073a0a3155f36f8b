"""Range checks of a whole Config, across sections (a λ to prune must be one that is trained, ...).

The types were checked as the file was read (netslim.config.loading); what is left is every value's range, each
failure one ConfigError naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

import math

from netslim.config.labels import lambda_label, parse_lambda, parse_ratio, ratio_label
from netslim.config.schema import (
    DATASETS,
    MAX_LR,
    MAX_SEED,
    MAX_WIDTH,
    MODEL_STAGES,
    SCHEDULES,
    TEACHERS,
    Config,
    ConfigError,
    ExportConfig,
    OptimConfig,
)
from netslim.registry import ARCHITECTURES
from netslim.vocabulary import BUDGET


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
