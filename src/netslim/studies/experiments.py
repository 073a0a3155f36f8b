"""The studies' experiments, each built on the pipeline's own steps (the one training loop in `engine.fit` through
`steps.finetune.finetune`, pruning through `steps.prune` and `slimming.surgery`); they start from the sparse model of
`prune.lambda` that the root pipeline trains:

- controls: at the pruned architecture of `studies.ratio`, slimming + fine-tuning against fine-tuning with
  knowledge distillation, the same architecture trained from scratch for as many epochs as sparsity training +
  fine-tuning (Scratch-E) and for the same compute (Scratch-B), random channels at the same per-layer widths
  then fine-tuned, and a uniformly narrower network of the same parameter count from scratch;
- sweep: accuracy right after pruning (repaired as `prune` configures) at many ratios, fine-tuned at a few,
  with params, conv+linear MACs and the eager batch-1 latency;
- multipass: the paper's multi-pass scheme with a per-layer cap, against single-pass pruning to the same params,
  and the cap's effect on the accuracy right after single-pass pruning at `studies.ratio`.

Their settings are studies/params.yaml's `studies` section (`netslim.studies.parts.StudiesConfig`); everything else
is params.yaml's.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netslim import vocabulary as vocab
from netslim.config import Config
from netslim.data import PreparedData
from netslim.engine import FitSettings, evaluate
from netslim.layout import Layout
from netslim.measure import count_conv_linear_macs, count_thop_macs, forward_runner, interleaved_throughput
from netslim.models import build_model, count_params, load_model
from netslim.slimming.recalibrate import calibration_batches, recalibrate_batchnorm
from netslim.slimming.surgery import PruneResult, prune_model, smallest_ratio_for_index
from netslim.steps import RunOptions, fit_settings
from netslim.steps.finetune import distilled, finetune
from netslim.steps.prune import configured_variant, pruned_variants
from netslim.steps.train import initial_model
from netslim.studies.parts import CFG_NUM_PARAMS, StudiesConfig, test_noise


@dataclass
class Study:
    """What every part works with: the configs, the data, the device and the sparse model of `prune.lambda`."""

    config: Config
    studies: StudiesConfig
    data: PreparedData
    device: torch.device
    sparse: nn.Module

    @property
    def out(self) -> Path:
        return Path(self.studies.reports)

    def evaluate(self, model: nn.Module) -> float:
        """Test accuracy of `model`."""
        ev = dict(device=self.device, batch_size=self.config.runtime.eval_batch_size, amp=self.config.runtime.amp)
        return evaluate(model, self.data.test, self.data.mean, self.data.std, **ev)[1]

    def macs(self, model: nn.Module) -> int:
        return count_conv_linear_macs(model, (1, *self.data.image_shape))

    def settings(self, optim: str, seed: int, epochs: int | None = None, sparsity_lambda: float = 0.0) -> FitSettings:
        """The trainer's settings of the `optim` section ("train" or "finetune") with another seed and epochs."""
        section = self.config.train if optim == "train" else self.config.finetune
        settings = fit_settings(self.config, section, sparsity_lambda, epochs=epochs)
        return dataclasses.replace(settings, seed=seed)

    def train(
        self, model: nn.Module, settings: FitSettings, label: str, teacher: nn.Module | None = None
    ) -> dict[str, Any]:
        """Train `model` in place with the pipeline's fine-tuning step; its best epoch (by validation accuracy)."""
        tuned = finetune(model, self.data, settings, self.device, {"study": label}, RunOptions(desc=label), teacher)
        return {
            "test_acc": tuned.best["test_acc"],
            "best_epoch": tuned.fit.best_epoch,
            "epochs": settings.epochs,
            vocab.NUM_PARAMS: count_params(model),
            "macs": self.macs(model),
        }

    def pruned(self, model: nn.Module, **by: Any) -> PruneResult:
        """`model` pruned (by {"ratio": r} or {"target_params": n}) and repaired as `prune` configures."""
        name = configured_variant(self.config.prune)
        return pruned_variants(model, self.data, self.config, self.device, by, (name,))[name]

    def repaired(self, model: nn.Module) -> nn.Module:
        """`model` with its BN statistics re-estimated as `prune.recalibration_batches` asks (none: unchanged)."""
        if not self.config.prune.recalibration_batches:
            return model
        c = self.config
        batches = calibration_batches(
            self.data.train,
            self.data.mean,
            self.data.std,
            c.prune.recalibration_batches,
            c.train.batch_size,
            self.device,
            c.experiment.seed,
        )
        return recalibrate_batchnorm(model.to(self.device), batches)


def open_study(config: Config, studies: StudiesConfig) -> Study:
    from netslim.data import load_prepared
    from netslim.distributed import resolve_device

    layout = Layout(config.paths)
    data = load_prepared(layout.prepared, config.data.dataset, config.data.image_size)
    device = resolve_device(config.experiment.device)
    sparse = load_model(layout.sparse_best(config.prune.lambda_), config.model.arch)
    return Study(config, studies, data, device, sparse.to(device))


# ---- the controls --------------------------------------------------------------------------------


def random_masks(masks: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Masks keeping as many channels per layer as `masks` do, chosen uniformly at random."""
    chosen = {}
    for name, mask in masks.items():
        keep = torch.zeros_like(mask)
        keep[torch.randperm(mask.numel(), generator=generator)[: int(mask.sum())]] = True
        chosen[name] = keep
    return chosen


def width_for_params(arch: str, num_classes: int, target_params: int, widest: float) -> float:
    """The `model.width` in (0, widest] whose unpruned network's parameter count is closest to `target_params`.

    Parameters grow with the width in steps (channel counts are whole), so the search bisects to a 1e-4 width
    and then takes the nearer of the two bracketing widths.
    """

    def params(width: float) -> int:
        with torch.device("meta"):
            return count_params(build_model(arch, num_classes, None, width))

    lo, hi = 1e-3, widest
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        if params(mid) < target_params:
            lo = mid
        else:
            hi = mid
    return min((lo, hi), key=lambda w: abs(params(w) - target_params))


def scratch_b_epochs(config: Config, unpruned_macs: int, pruned_macs: int) -> int:
    """Epochs of the pruned architecture that cost what sparsity training + fine-tuning cost (Scratch-B).

    Sparsity training runs `train.epochs` of the unpruned network, fine-tuning `finetune.epochs` of the pruned
    one; an epoch costs in proportion to the network's MACs (conv + linear) over the same images.
    """
    return max(1, round(config.train.epochs * unpruned_macs / pruned_macs + config.finetune.epochs))


def controls(study: Study) -> dict[str, Any]:
    """The "is slimming worth it?" table at the pruned architecture of `studies.ratio`, one row set per seed."""
    c, s = study.config, study.studies
    sliced = study.pruned(study.sparse, ratio=s.ratio)
    pruned, cfg = sliced.model, sliced.cfg
    scratch_e = c.train.epochs + c.finetune.epochs
    scratch_b = scratch_b_epochs(c, study.macs(study.sparse), study.macs(pruned))
    narrow_width = width_for_params(c.model.arch, study.data.num_classes, count_params(pruned), c.model.width)
    rows = []
    for seed in s.seeds:
        finetuning = study.settings("finetune", seed)
        chance = torch.Generator().manual_seed(seed)
        random_masked = prune_model(study.sparse, random_masks(sliced.masks, chance), c.prune.bias_compensation)
        random_model = study.repaired(random_masked)
        kd = distilled(finetuning, s.kd_alpha, c.finetune.distill_temperature)
        torch.manual_seed(seed)
        scratch = initial_model(c, study.data.num_classes, cfg)
        torch.manual_seed(seed)
        narrow = initial_model(c, study.data.num_classes, width=narrow_width)
        runs = [
            ("slimming + fine-tuning", copy.deepcopy(pruned), finetuning, None),
            ("slimming + fine-tuning with distillation", copy.deepcopy(pruned), kd, study.sparse),
            ("Scratch-E: pruned architecture from scratch", scratch, None, None),
            ("Scratch-B: pruned architecture, same compute", copy.deepcopy(scratch), None, None),
            ("random channels, same widths + fine-tuning", random_model, finetuning, None),
            (f"uniformly narrower (width {narrow_width:.4f}) from scratch", narrow, None, None),
        ]
        for name, model, settings, teacher in runs:
            if settings is None:  # from scratch: the sparsity-training recipe at λ = 0
                epochs = scratch_b if name.startswith("Scratch-B") else scratch_e
                settings = study.settings("train", seed, epochs=epochs)
            before = study.evaluate(model.to(study.device))
            row = {"control": name, "seed": seed, "test_acc_before_training": before}
            row |= study.train(model, settings, f"{name} (seed {seed})", teacher)
            row["widths"] = [int(m.sum()) for m in sliced.masks.values()] if "narrower" not in name else None
            rows.append(row)
    return {
        "ratio": s.ratio,
        CFG_NUM_PARAMS: count_params(pruned),
        "test_images": len(study.data.test),
        "noise": test_noise(rows[0]["test_acc"], len(study.data.test)),
        "scratch_e_epochs": scratch_e,
        "scratch_b_epochs": scratch_b,
        "narrow_width": narrow_width,
        "kd": {"alpha": s.kd_alpha, "temperature": c.finetune.distill_temperature, "teacher": "sparse model"},
        "rows": rows,
    }


# ---- the ratio sweep -----------------------------------------------------------------------------


def latencies_ms(study: Study, models: list[nn.Module]) -> list[float]:
    """Median eager batch-1 latency of each model, timed interleaved (measure.py's one timer)."""
    runners = [
        forward_runner(
            m,
            1,
            study.device,
            amp=study.config.runtime.amp,
            channels_last=study.config.runtime.channels_last,
            image_shape=study.data.image_shape,
        )
        for m in models
    ]
    ips = interleaved_throughput(runners, 1, study.studies.latency_repeats, 3, None)
    return [1000 / v for v in ips]


def sweep(study: Study) -> dict[str, Any]:
    """Accuracy right after pruning (repaired) at every `studies.sweep_ratios`, fine-tuned at a few."""
    s = study.studies
    rows, models = [], [study.sparse]
    reference = {
        "ratio": 0.0,
        "channels_removed": 0.0,
        vocab.NUM_PARAMS: count_params(study.sparse),
        "macs": study.macs(study.sparse),
        "thop_macs": count_thop_macs(study.sparse, (1, *study.data.image_shape)),
        "test_acc_pruned": study.evaluate(study.sparse),
        "test_acc_finetuned": None,
    }
    for ratio in sorted(set(s.sweep_ratios) | set(s.sweep_finetune_ratios)):
        result = study.pruned(study.sparse, ratio=ratio)
        rows.append(
            {
                "ratio": ratio,
                "channels_removed": result.channels_removed,
                vocab.NUM_PARAMS: result.params_after,
                "macs": study.macs(result.model),
                "thop_macs": count_thop_macs(result.model, (1, *study.data.image_shape)),
                "test_acc_pruned": study.evaluate(result.model),
                "test_acc_finetuned": None,
            }
        )
        models.append(result.model)
        if ratio in s.sweep_finetune_ratios:
            settings = study.settings("finetune", study.config.experiment.seed)
            rows[-1]["test_acc_finetuned"] = study.train(copy.deepcopy(result.model), settings, f"sweep {ratio}")[
                "test_acc"
            ]
    for row, ms in zip([reference, *rows], latencies_ms(study, models), strict=True):
        row["latency_ms_b1"] = ms
    below = [r["ratio"] for r in rows if r["test_acc_pruned"] < 0.5]
    return {"unpruned": reference, "rows": rows, "first_ratio_below_half": below[0] if below else None}


# ---- multi-pass slimming -------------------------------------------------------------------------


def widths(model: nn.Module) -> list[int]:
    from netslim.measure import channels_per_layer

    return list(channels_per_layer(model).values())


def multipass(study: Study) -> dict[str, Any]:
    """Prune ≤ `pass_cap` of every layer, sparsity-train, repeat; the last pass is fine-tuned instead.

    Each pass's global ratio is what reaches `pass_target` of the original prunable channels evenly over the
    passes left. The paper's passes are sparsity training → prune → fine-tune; here the sparsity training of the
    next pass is the fine-tuning of this one (λ stays on), which halves the training of each pass.
    """
    c, s = study.config, study.studies
    capped = dataclasses.replace(c, prune=dataclasses.replace(c.prune, max_layer_ratio=s.pass_cap))
    capped_study = dataclasses.replace(study, config=capped)
    total = sum(widths(study.sparse))
    goal = math.floor((1 - s.pass_target) * total)  # channels kept after the last pass: at least pass_target go
    model, passes = study.sparse, []
    for index in range(1, s.passes + 1):
        current = sum(widths(model))
        keep = round(current * min(1.0, goal / current) ** (1 / (s.passes - index + 1)))
        # The ratio whose int(current × ratio) is exactly the count to remove (a float ratio can land one short).
        ratio = smallest_ratio_for_index(current - keep, current) if keep < current else 0.0
        result = capped_study.pruned(model, ratio=ratio)
        model = result.model
        record = {
            "pass": index,
            "ratio": ratio,
            "channels_removed": 1 - sum(widths(model)) / total,
            vocab.NUM_PARAMS: count_params(model),
            "macs": study.macs(model),
            "widths": widths(model),
            "test_acc_pruned": study.evaluate(model),
        }
        last = index == s.passes
        if last:
            settings = study.settings("finetune", c.experiment.seed)
        else:
            settings = study.settings("train", c.experiment.seed, s.pass_epochs, float(c.prune.lambda_))
        trained = study.train(model, settings, f"pass {index}")
        record |= {"test_acc_trained": trained["test_acc"], "trained": "fine-tuned" if last else "sparsity-trained"}
        passes.append(record)
    final_params = passes[-1][vocab.NUM_PARAMS]
    single = study.pruned(study.sparse, target_params=final_params)
    single_row = {
        "channels_removed": single.channels_removed,
        vocab.NUM_PARAMS: single.params_after,
        "macs": study.macs(single.model),
        "widths": widths(single.model),
        "test_acc_pruned": study.evaluate(single.model),
    }
    single_row["test_acc_finetuned"] = study.train(
        single.model, study.settings("finetune", c.experiment.seed), "single pass"
    )["test_acc"]
    caps = []
    for cap in s.caps:
        at_cap = dataclasses.replace(c, prune=dataclasses.replace(c.prune, max_layer_ratio=cap))
        result = dataclasses.replace(study, config=at_cap).pruned(study.sparse, ratio=s.ratio)
        caps.append(
            {
                "max_layer_ratio": cap,
                "channels_removed": result.channels_removed,
                vocab.NUM_PARAMS: result.params_after,
                "test_acc_pruned": study.evaluate(result.model),
                "min_width_share": min(w / n for w, n in zip(widths(result.model), widths(study.sparse), strict=True)),
            }
        )
    return {
        "passes": passes,
        "unpruned_widths": widths(study.sparse),
        "single_pass": single_row,
        "caps": caps,
        "settings": {
            "pass_cap": s.pass_cap,
            "pass_target": s.pass_target,
            "pass_epochs": s.pass_epochs,
            "finetune_epochs": c.finetune.epochs,
            "ratio": s.ratio,
        },
    }
