"""One vocabulary: the names of every model, metric, repair variant and per-stage output file.

Stdlib only (no torch), so the stages, tracking, the report, the PR diff (ci_report.py) and the tests all read the
names from here: a rename is one edit, and a stale spelling elsewhere breaks a test. The rules:

- A model has one role: `unpruned` (trained with λ = 0), `sparse` (sparsity-trained with λ > 0; the one of
  `prune.lambda` is pruned, and every pruned and fine-tuned model is compared with it), `pruned` (right after
  surgery and its repairs) and `finetuned`. Its key names the role and the run: "sparse_lambda_1e-2", "pruned_0.9".
- A metric has one name for one quantity, in a stage's metrics.json, MLflow, reports/ and the PR diff. A model's
  test accuracy is `test_acc` whichever stage made the model (the best epoch's, for a trained model).
- `<metric>_sparse`: the same quantity of the sparse model that a pruned model was cut from and timed against.
- `<metric>_b<B>`: measured at batch size B. Images/s are `<runtime>_images_per_s`, runtime `eager` or `onnx`.
- An MLflow run's per-epoch curves are `epoch/<history column>` (`<role>/epoch/<column>` where a run trains two
  models, as a search trial does), so they never share a name with the trained model's metrics.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Model roles.
UNPRUNED = "unpruned"
SPARSE = "sparse"
PRUNED = "pruned"
FINETUNED = "finetuned"
ROLES = (UNPRUNED, SPARSE, PRUNED, FINETUNED)

BUDGET = "budget"  # a prune.ratios entry that means "the smallest ratio fitting prune.target_params"


def train_model(lam: str) -> str:
    """The key of a sparsity-training run's model, by λ label: λ = 0 trains the unpruned baseline."""
    return f"{UNPRUNED}_lambda_0" if lam == "0" else f"{SPARSE}_lambda_{lam}"


def pruned_model(ratio: str) -> str:
    return f"{PRUNED}_{ratio}"


def finetuned_model(ratio: str) -> str:
    return f"{FINETUNED}_{ratio}"


BASELINE = train_model("0")  # what the other models are measured against in the report


def role_of(model: str) -> str:
    """The role of a model key: "finetuned_0.9" -> "finetuned"."""
    return model.partition("_")[0]


def ratio_percent(label: str) -> str:
    """A prune ratio label as text: "0.9" -> "90%"; "budget" stays "budget"."""
    return label if label == BUDGET else f"{float(label) * 100:g}%"


# What every model measures (reports/metrics/<model>.json holds HEADLINE, in this order).
TEST_ACC = "test_acc"
VAL_ACC = "val_acc"
NUM_PARAMS = "num_params"
MACS = "macs"  # conv + linear multiply-accumulates of one image
FLOPS = "flops"  # 2 × MACS
THOP_MACS = "thop_macs"  # thop's count: BatchNorm and pooling included
MEETS_CONSTRAINTS = "meets_constraints"
HEADLINE = (TEST_ACC, NUM_PARAMS, MACS, MEETS_CONSTRAINTS)
SIZE = (NUM_PARAMS, MACS, FLOPS, THOP_MACS)  # measure.model_summary's keys

# Training (reports/train/<λ>/metrics.json, reports/finetune/<ratio>/metrics.json): test_acc, val_acc and sparsity
# are the best epoch's (by validation accuracy), the epoch whose weights are saved.
LAMBDA = "lambda"
BEST_EPOCH = "best_epoch"
SPARSITY = "sparsity"  # share of prunable |γ| below train.sparsity_threshold
FINAL_TEST_ACC = "final_test_acc"  # the last epoch's, to show what choosing the best epoch changed
FINAL_TRAIN_ACC = "final_train_acc"
STEPS = "steps"  # optimizer steps of the whole run
TRAIN_METRICS = (LAMBDA, BEST_EPOCH, VAL_ACC, TEST_ACC, FINAL_TEST_ACC, FINAL_TRAIN_ACC, SPARSITY, STEPS, NUM_PARAMS)
FINETUNE_METRICS = (BEST_EPOCH, VAL_ACC, TEST_ACC, FINAL_TEST_ACC, *SIZE, MEETS_CONSTRAINTS)

# Pruning (reports/prune/<ratio>/metrics.json): the saved pruned model's test_acc, val_acc and SIZE, the sparse
# model's (`<metric>_sparse`), and the accuracy of each repair variant that was not saved.
RATIO_USED = "ratio_used"
CHANNELS_REMOVED = "channels_removed"  # share of the prunable channels
THRESHOLD = "threshold"  # the global |γ| threshold
PARAMS_RATIO = "params_ratio"  # the sparse model's / the pruned model's
MACS_RATIO = "macs_ratio"

# Repair variants of a pruned model: bias compensation (the removed channels' relu(β) folded into the next layer)
# and BN recalibration, each on or off. The index is int(compensated) + 2 * int(recalibrated).
VARIANTS = ("plain", "compensated", "recalibrated", "compensated_recalibrated")


def variant_name(compensated: bool, recalibrated: bool) -> str:
    """How a pruned model was repaired after surgery: one of VARIANTS."""
    return VARIANTS[int(compensated) + 2 * int(recalibrated)]


def variant_repairs(name: str) -> tuple[bool, bool]:
    """(compensated, recalibrated) of one of VARIANTS; the inverse of `variant_name`."""
    index = VARIANTS.index(name)
    return bool(index % 2), index >= 2


def variant_test_acc(name: str) -> str:
    """The prune metrics key of a repair variant's test accuracy (the saved variant's is plain TEST_ACC)."""
    return f"{TEST_ACC}_{name}"


def variant_metrics(accuracies: Mapping[str, Any], saved: str) -> dict[str, Any]:
    """Each variant's test accuracy under its prune metrics key: `saved`'s as TEST_ACC, the others' `test_acc_<name>`
    (no metric twice); the inverse of `variant_accuracies`."""
    return {TEST_ACC if name == saved else variant_test_acc(name): acc for name, acc in accuracies.items()}


def variant_accuracies(metrics: Mapping[str, Any], saved: str) -> dict[str, Any]:
    """Every variant's test accuracy from prune metrics, by name: `saved`'s is the pruned model's TEST_ACC."""
    return {name: metrics.get(TEST_ACC if name == saved else variant_test_acc(name)) for name in VARIANTS}


def of_sparse(key: str) -> str:
    """The name of `key` measured on the sparse model a pruned model is compared with: "num_params_sparse"."""
    return f"{key}_{SPARSE}"


def per_batch(key: str, batch_size: int) -> str:
    """The name of `key` measured at one batch size: "onnx_speedup_b64"."""
    return f"{key}_b{batch_size}"


_BATCH = re.compile(r"_b(\d+)$")


def batch_of(key: str) -> int | None:
    """The batch size a `per_batch` name was measured at, or None: "onnx_speedup_b64" -> 64."""
    found = _BATCH.search(key)
    return int(found.group(1)) if found else None


# Timings, per batch size (`per_batch`): the pruned model's and the sparse model's images/s (`of_sparse`), timed
# interleaved, and their ratio. The prune stage times eager PyTorch on its device; the export stage ONNX Runtime
# (and eager PyTorch next to it) on the CPU.
EAGER_IMAGES_PER_S = "eager_images_per_s"
EAGER_SPEEDUP = "eager_speedup"
ONNX_IMAGES_PER_S = "onnx_images_per_s"
ONNX_SPEEDUP = "onnx_speedup"
ONNX_SPEEDUP_OVER_MACS_RATIO = "onnx_speedup_over_macs_ratio"  # how much of the MACs ratio the ONNX speedup realises
ONNX_OVER_EAGER = "onnx_over_eager"  # the pruned model's ONNX images/s over its eager images/s
PRUNE_TIMINGS = (EAGER_IMAGES_PER_S, of_sparse(EAGER_IMAGES_PER_S), EAGER_SPEEDUP)
EXPORT_TIMINGS = (ONNX_IMAGES_PER_S, of_sparse(ONNX_IMAGES_PER_S), ONNX_SPEEDUP, EAGER_SPEEDUP)

# Export (reports/export/metrics.json, per model key; widths.json per compared pruning).
MAX_ABS_DIFF = "max_abs_diff"  # largest |ONNX logit - PyTorch logit| on the check images
ONNX_TEST_ACC = "onnx_test_acc"
ONNX_BYTES = "onnx_bytes"
ONNX_MACS = "onnx_macs"  # what the exported graph computes, padding included
ROUND_TO = "round_to"


EXPORT_SETTINGS = ("threads", "opset", "pad_to")  # the top level of the export stage's metrics.json and widths.json

# Every metric name a stage writes, before `of_sparse` and `per_batch` compose them.
METRICS = frozenset(
    {*SIZE, TEST_ACC, VAL_ACC, MEETS_CONSTRAINTS, *TRAIN_METRICS, *FINETUNE_METRICS}
    | {RATIO_USED, CHANNELS_REMOVED, THRESHOLD, PARAMS_RATIO, MACS_RATIO, *(variant_test_acc(v) for v in VARIANTS)}
    | {EAGER_IMAGES_PER_S, EAGER_SPEEDUP, ONNX_IMAGES_PER_S, ONNX_SPEEDUP, ONNX_SPEEDUP_OVER_MACS_RATIO}
    | {ONNX_OVER_EAGER, MAX_ABS_DIFF, ONNX_TEST_ACC, ONNX_BYTES, ONNX_MACS, ROUND_TO}
)


def is_metric(key: str) -> bool:
    """Whether `key` is a vocabulary name: one of METRICS, or one composed of it by `of_sparse` and `per_batch`."""
    return _BATCH.sub("", key).removesuffix(f"_{SPARSE}") in METRICS


def curve(key: str, role: str = "") -> str:
    """The MLflow name of a per-epoch value: "epoch/test_acc", or "sparse/epoch/val_acc" with a role."""
    return f"{role}/epoch/{key}" if role else f"epoch/{key}"


def model_metric(model: str, key: str) -> str:
    """The MLflow name of one model's metric in a run that measures several: "finetuned_0.9/test_acc"."""
    return f"{model}/{key}"


# Per-stage output files, inside the stage's reports folder (Layout names the folders).
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
GAMMAS_FILE = "gammas.csv"
CHANNELS_FILE = "channels.csv"
WIDTHS_FILE = "widths.json"
SUMMARY_FILE = "summary.csv"
REPORT_FILE = "report.md"
