"""The one vocabulary: torch-free, and its composed names parse back to the names they were built from."""

from __future__ import annotations

import subprocess
import sys

import pytest

from netslim import vocabulary as vocab


def test_the_vocabulary_imports_no_torch_and_nothing_else_of_netslim() -> None:
    code = (
        "import sys, netslim.vocabulary\n"
        "loaded = {m for m in sys.modules if m == 'torch' or m.startswith('netslim.')}\n"
        "assert loaded == {'netslim.vocabulary'}, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", vocab.VARIANTS)
def test_a_variant_name_and_its_repairs_are_inverses(name: str) -> None:
    assert vocab.variant_name(*vocab.variant_repairs(name)) == name


def test_the_saved_variants_accuracy_is_test_acc_and_no_accuracy_is_written_twice() -> None:
    accuracies = dict(zip(vocab.VARIANTS, (0.5, 0.6, 0.7, 0.7), strict=True))
    metrics = vocab.variant_metrics(accuracies, "recalibrated")
    assert metrics[vocab.TEST_ACC] == 0.7 and vocab.variant_test_acc("recalibrated") not in metrics
    assert len(metrics) == len(accuracies) and all(vocab.is_metric(key) for key in metrics)
    assert vocab.variant_accuracies(metrics, "recalibrated") == accuracies


def test_composed_names_are_vocabulary_names_and_stale_ones_are_not() -> None:
    speedup = vocab.per_batch(vocab.ONNX_SPEEDUP, 64)
    assert vocab.batch_of(speedup) == 64 and vocab.batch_of(vocab.MACS) is None
    composed = [speedup, vocab.per_batch(vocab.of_sparse(vocab.EAGER_IMAGES_PER_S), 1), vocab.of_sparse(vocab.TEST_ACC)]
    assert all(vocab.is_metric(key) for key in composed + list(vocab.HEADLINE) + list(vocab.TRAIN_METRICS))
    # the names this vocabulary replaced
    stale = ["unpruned_test_acc", "test_acc_before_finetune", "best_test_acc", "params", "throughput_b64", "speedup_b1"]
    assert not any(vocab.is_metric(key) for key in stale)


def test_model_keys_name_their_role() -> None:
    assert vocab.train_model("0") == vocab.BASELINE == "unpruned_lambda_0"
    assert vocab.train_model("1e-2") == "sparse_lambda_1e-2"  # a sparse model is never called unpruned
    keys = [vocab.train_model("0"), vocab.train_model("1e-2"), vocab.pruned_model("0.9"), vocab.finetuned_model("0.9")]
    assert [vocab.role_of(key) for key in keys] == list(vocab.ROLES)
    assert vocab.ratio_percent("0.9") == "90%" and vocab.ratio_percent(vocab.BUDGET) == vocab.BUDGET
