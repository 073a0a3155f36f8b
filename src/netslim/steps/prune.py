"""Pruning: surgery at a global |γ| threshold, the repairs after it, and what the pruned model measures.

A pruned model can be repaired two ways before fine-tuning: bias compensation (surgery folds relu(β) of the
removed channels into the next layer) and BN recalibration (the running statistics re-estimated on a few
training batches). `prune.bias_compensation` and `prune.recalibration_batches` choose the repairs of the model
that is saved and fine-tuned; the prune stage measures all four combinations next to it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from netslim import vocabulary as vocab
from netslim.config import Config, PruneConfig
from netslim.data import PreparedData
from netslim.engine import evaluate
from netslim.measure import compare_models
from netslim.slimming.budget import budget_ratio
from netslim.slimming.recalibrate import calibration_batches, recalibrate_batchnorm
from netslim.slimming.surgery import PruneResult, prune
from netslim.slimming.threshold import PruneError
from netslim.vocabulary import BUDGET, VARIANTS, variant_name

LatencyOf = Callable[[nn.Module], float]  # milliseconds of a pruned model, measured

SPEED_BATCH_SIZES = (1, 64)


def configured_variant(prune_config: PruneConfig) -> str:
    """The variant that `prune.bias_compensation` and `prune.recalibration_batches` ask for."""
    return variant_name(prune_config.bias_compensation, prune_config.recalibration_batches > 0)


def pruned_variants(
    sparse: nn.Module,
    data: PreparedData,
    config: Config,
    device: torch.device,
    by: dict[str, float | int | None],
    names: tuple[str, ...] = VARIANTS,
) -> dict[str, PruneResult]:
    """The pruned model of `sparse`, repaired each way that `names` lists, on `device`.

    Args:
        by: how many channels go, as surgery.prune takes it: {"ratio": share of prunable channels} or
            {"target_params": largest parameter count} (see `prune_by`).
        names: which of VARIANTS to build. Each surgery runs once and its recalibrated variant is a copy, re-estimated
            on the same `prune.recalibration_batches` training batches (at least one, so that the comparison exists).
    """
    surgeries: dict[bool, PruneResult] = {}
    variants = {}
    for name in names:
        compensated, recalibrated = vocab.variant_repairs(name)
        if compensated not in surgeries:
            surgeries[compensated] = prune(
                sparse,
                min_channels=config.prune.min_channels,
                bias_compensation=compensated,
                round_to=config.prune.round_to,
                max_layer_ratio=config.prune.max_layer_ratio,
                **by,
            )
        result = surgeries[compensated]
        model = result.model.to(device)
        if recalibrated:
            batches = calibration_batches(
                data.train,
                data.mean,
                data.std,
                max(1, config.prune.recalibration_batches),
                config.train.batch_size,
                device,
                config.experiment.seed,
            )
            model = recalibrate_batchnorm(copy.deepcopy(model), batches)
        variants[name] = dataclasses.replace(result, model=model)
    return variants


def prune_by(
    sparse: nn.Module, config: Config, target: float | str, latency_of: LatencyOf | None = None
) -> dict[str, float | int | None]:
    """A --ratio value as surgery's keyword: a share of channels, or BUDGET for `prune.target_params` (and, with
    `prune.target_latency_ms`, the smallest ratio whose pruned model meets that latency as `latency_of` measures
    it: see `slimming.budget.budget_ratio`)."""
    if target != BUDGET:
        return {"ratio": float(target)}
    if config.prune.target_latency_ms is not None:
        return {"ratio": budget_ratio(sparse, config.prune, latency_of)}
    return {"target_params": config.prune.target_params}


def prune_configured(
    sparse: nn.Module, data: PreparedData, config: Config, device: torch.device, ratio: float
) -> PruneResult:
    """The pruned model at `ratio`, repaired as `prune` configures (as the prune stage saves it for fine-tuning)."""
    name = configured_variant(config.prune)
    return pruned_variants(sparse, data, config, device, {"ratio": ratio}, (name,))[name]


@dataclass
class PruneOutcome:
    """The prune stage's step: the configured pruned model and what it and the other variants measure.

    Attributes:
        result: the configured variant (`variant`); its model is the one to save.
        test_acc: test accuracy before fine-tuning of every variant, by name.
        sparse_test_acc, val_acc: the sparse model's test accuracy; the configured variant's validation accuracy
            (NaN without a validation split).
        speed: `measure.compare_models` of the sparse against the configured pruned model.
    """

    result: PruneResult
    variant: str
    test_acc: dict[str, float]
    sparse_test_acc: float
    val_acc: float
    speed: dict[str, Any]

    def metrics(self) -> dict[str, float]:
        """The flat metrics the prune stage writes to metrics.json and MLflow: the saved pruned model's accuracy is
        `test_acc` (as every model's is), the other variants' `test_acc_<variant>`."""
        return {
            vocab.RATIO_USED: float(self.result.ratio),
            vocab.CHANNELS_REMOVED: self.result.channels_removed,
            vocab.THRESHOLD: float(self.result.threshold),
            **vocab.variant_metrics(self.test_acc, self.variant),
            vocab.VAL_ACC: self.val_acc,
            vocab.of_sparse(vocab.TEST_ACC): self.sparse_test_acc,
        } | speed_metrics(self.speed)


def prune_step(
    sparse: nn.Module,
    data: PreparedData,
    config: Config,
    device: torch.device,
    target: float | str,
    latency_of: LatencyOf | None = None,
) -> PruneOutcome:
    """Prune `sparse` four ways, keep the configured one, and measure accuracy, size and speed.

    Throughput is timed by measure.py's one timer, under the `runtime` switches (see `measure.compare_models`).
    `latency_of` measures a candidate's latency when `target` is BUDGET with `prune.target_latency_ms` set (the
    prune stage passes `netslim.export.latency_resolver`).
    """
    by = prune_by(sparse, config, target, latency_of)
    variants = pruned_variants(sparse, data, config, device, by)
    chosen = configured_variant(config.prune)
    result = variants[chosen]
    if by.get("ratio"):
        check_removed(float(by["ratio"]), result.channels_removed, config.prune)
    sparse = sparse.to(device)
    ev = dict(device=device, batch_size=config.runtime.eval_batch_size, amp=config.runtime.amp)
    test_acc = {name: evaluate(p.model, data.test, data.mean, data.std, **ev)[1] for name, p in variants.items()}
    sparse_acc = evaluate(sparse, data.test, data.mean, data.std, **ev)[1]
    val_acc = evaluate(result.model, data.val, data.mean, data.std, **ev)[1] if len(data.val) else math.nan
    speed = compare_models(
        sparse,
        result.model,
        device,
        batch_sizes=SPEED_BATCH_SIZES,
        repeats=config.runtime.throughput_repeats,
        image_shape=data.image_shape,
        amp=config.runtime.amp,
        channels_last=config.runtime.channels_last,
    )
    return PruneOutcome(result, chosen, test_acc, sparse_acc, val_acc, speed)


def check_removed(asked: float, removed: float, p: PruneConfig) -> None:
    """PruneError when pruning `asked` of the channels removed none (prune.min_channels, round_to or max_layer_ratio
    keep every channel); a note on stderr when it removed less than half of what was asked."""
    keys = f"prune.min_channels {p.min_channels} and prune.round_to {p.round_to}"
    if p.max_layer_ratio < 1:  # a cap per layer also keeps channels, when the other layers cannot give them
        keys = keys.replace(" and ", ", ") + f" and prune.max_layer_ratio {p.max_layer_ratio:g}"
    if removed == 0:
        raise PruneError(
            f"prune: a ratio of {asked:g} removes no channel: {keys} keep every channel of every layer; lower them"
        )
    if removed < asked / 2:
        print(
            f"note: prune: a ratio of {asked:g} removes only {removed:.1%} of the prunable channels: {keys} keep the "
            "rest; lower them to prune more",
            file=sys.stderr,
        )


def speed_metrics(speed: dict[str, Any]) -> dict[str, float]:
    """compare_models' nested result as flat metric names: `<what>` of the pruned model, `<what>_sparse` of the
    sparse model it was cut from and timed against."""
    flat = {}
    for key in vocab.SIZE:
        flat |= {key: speed["pruned"][key], vocab.of_sparse(key): speed["reference"][key]}
    flat |= {vocab.PARAMS_RATIO: speed["params_ratio"], vocab.MACS_RATIO: speed["macs_ratio"]}
    for row in speed["throughput"]:
        b = row["batch_size"]
        flat |= {
            vocab.per_batch(vocab.EAGER_IMAGES_PER_S, b): row["pruned_images_per_s"],
            vocab.per_batch(vocab.of_sparse(vocab.EAGER_IMAGES_PER_S), b): row["reference_images_per_s"],
            vocab.per_batch(vocab.EAGER_SPEEDUP, b): row["speedup"],
        }
    return flat
