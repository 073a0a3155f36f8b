"""The pipeline's steps (netslim.steps): the stages and the search run the same functions on the same inputs, and
the library never reaches back into the stage CLIs."""

from __future__ import annotations

import ast
from dataclasses import replace

import torch

from conftest import ROOT
from netslim import vocabulary as vocab
from netslim.config import Config, ExperimentConfig, FinetuneConfig, ModelConfig, RuntimeConfig, TrainConfig
from netslim.data import PreparedData, Split
from netslim.models import build_model, prunable_batchnorms
from netslim.steps import RunOptions, fit_settings
from netslim.steps.finetune import finetune
from netslim.steps.prune import prune_by, prune_configured, prune_step, pruned_variants
from netslim.steps.train import sparse_fingerprint, sparsity_train

PACKAGE = ROOT / "src" / "netslim"
CPU = torch.device("cpu")
CONFIG = Config(
    experiment=ExperimentConfig(device="cpu"),
    model=ModelConfig(arch="vgg19", width=0.0625),
    train=TrainConfig(epochs=1, batch_size=32, lr=3e-3),
    finetune=FinetuneConfig(epochs=1, batch_size=32, lr=3e-3),
    runtime=RuntimeConfig(eval_batch_size=256, throughput_repeats=1),
)


def imports(path) -> set[tuple[str, str]]:
    """(module, name) of every `from module import name`, and (module, "") of every `import module`, in a file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {(node.module, a.name) for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {(a.name, "") for a in node.names}
    return found


def test_the_library_never_imports_the_stage_clis():
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "stages" or relative.name == "cli.py":  # the CLI layer itself
            continue
        modules = {module for module, _ in imports(path)}
        assert not {m for m in modules if m.split(".")[:2] == ["netslim", "stages"]}, relative


def test_the_search_trains_prunes_and_finetunes_only_through_the_steps():
    imported = set().union(*(imports(path) for path in (PACKAGE / "search").glob("*.py")))
    own_loops = {
        ("netslim.engine", "fit"),
        ("netslim.engine", "train_one_epoch"),
        ("netslim.models", "build_model"),
        ("netslim.slimming.surgery", "prune"),
        ("netslim.slimming.recalibrate", "recalibrate_batchnorm"),
    }
    assert not imported & own_loops
    steps = {("netslim.steps.train", "sparsity_train"), ("netslim.steps.prune", "prune_configured")}
    assert steps | {("netslim.steps.finetune", "finetune")} <= imported


def _few_steps(data: PreparedData) -> PreparedData:
    """The easy data cut to two training batches, so each training here takes two optimizer steps."""
    return replace(data, train=Split(data.train.images[:64], data.train.labels[:64]))


def _random_gamma_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("vgg19", 4, width=0.0625)
    with torch.no_grad():
        for bn in prunable_batchnorms(model).values():
            bn.weight.uniform_(0, 1)
    return model


def test_the_search_prunes_the_model_the_prune_stage_saves(tiny_data):
    config = replace(CONFIG, prune=replace(CONFIG.prune, recalibration_batches=2))
    sparse = _random_gamma_model()

    outcome = prune_step(sparse, tiny_data, config, CPU, 0.5)
    searched = prune_configured(sparse, tiny_data, config, CPU, 0.5)

    assert outcome.variant == "compensated_recalibrated"  # prune.bias_compensation and recalibration_batches > 0
    assert searched.cfg == outcome.result.cfg and searched.ratio == outcome.result.ratio == 0.5
    saved, trial = outcome.result.model.state_dict(), searched.model.state_dict()
    assert saved.keys() == trial.keys() and all(torch.equal(saved[k], trial[k]) for k in saved)
    metrics = outcome.metrics()
    # the saved variant's accuracy is the pruned model's test_acc; the others' are named by variant, none twice
    assert vocab.variant_accuracies(metrics, outcome.variant) == outcome.test_acc
    assert vocab.variant_test_acc(outcome.variant) not in metrics and len(outcome.test_acc) == len(vocab.VARIANTS)
    eager = vocab.EAGER_IMAGES_PER_S
    timed = {vocab.per_batch(k, b) for b in (1, 64) for k in (vocab.EAGER_SPEEDUP, eager, vocab.of_sparse(eager))}
    assert timed | {vocab.MACS_RATIO} <= metrics.keys()
    assert [key for key in metrics if not vocab.is_metric(key)] == []  # every name is the vocabulary's


def test_bias_compensation_changes_nothing_once_recalibration_re_estimates_the_running_means(tiny_data):
    config = replace(CONFIG, prune=replace(CONFIG.prune, recalibration_batches=2))
    sparse = _random_gamma_model()
    variants = pruned_variants(sparse, tiny_data, config, CPU, prune_by(sparse, config, 0.5))
    both, recalibrated = (variants[k].model.state_dict() for k in ("compensated_recalibrated", "recalibrated"))
    assert both.keys() == recalibrated.keys() and all(torch.equal(both[k], recalibrated[k]) for k in both)


def test_the_prune_step_reports_conv_linear_macs_with_thops_count_beside_them(tiny_data):
    metrics = prune_step(_random_gamma_model(), tiny_data, CONFIG, CPU, 0.5).metrics()
    macs, thop = vocab.MACS, vocab.THOP_MACS
    assert metrics[vocab.MACS_RATIO] == metrics[vocab.of_sparse(macs)] / metrics[macs] > 1
    assert metrics[vocab.FLOPS] == 2 * metrics[macs]
    # thop adds BatchNorm and the average pool, which the conv + linear count leaves out
    assert metrics[thop] > metrics[macs] and metrics[vocab.of_sparse(thop)] > metrics[vocab.of_sparse(macs)]


def test_sparsity_training_is_seeded_by_the_config_and_finetuning_keeps_the_best_epoch(tiny_data):
    data = _few_steps(tiny_data)
    settings = fit_settings(CONFIG, CONFIG.train, 1e-4)
    first, again = (sparsity_train(CONFIG, data, settings, CPU, "data-hash", RunOptions()) for _ in range(2))
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in first.model.state_dict().items())
    assert first.fingerprint == again.fingerprint
    assert sparse_fingerprint(CONFIG, settings, "other-data") != first.fingerprint

    epochs: list[int] = []
    tuned = finetune(
        first.best_model(),
        data,
        fit_settings(CONFIG, CONFIG.finetune, 0.0, epochs=2),
        CPU,
        {},
        RunOptions(on_epoch=lambda record, _m: epochs.append(record["epoch"])),
    )
    assert epochs == [1, 2]
    assert tuned.best == tuned.fit.history[tuned.fit.best_epoch - 1]
    assert all(torch.equal(v, tuned.fit.best_state[k]) for k, v in tuned.model.state_dict().items())


def test_the_training_steps_results_hold_their_stages_metrics_under_the_vocabularys_names(tiny_data):
    data = _few_steps(tiny_data)
    sparse = sparsity_train(CONFIG, data, fit_settings(CONFIG, CONFIG.train, 1e-4), CPU, "data-hash", RunOptions())
    metrics = sparse.metrics()
    assert list(metrics) == list(vocab.TRAIN_METRICS)
    best = sparse.fit.history[sparse.fit.best_epoch - 1]
    assert (metrics[vocab.LAMBDA], metrics[vocab.TEST_ACC], metrics[vocab.SPARSITY]) == (
        1e-4,
        best["test_acc"],
        best["sparsity"],
    )
    assert metrics[vocab.STEPS] == CONFIG.train.epochs * max(1, len(data.train) // CONFIG.train.batch_size)

    tuned = finetune(sparse.best_model(), data, fit_settings(CONFIG, CONFIG.finetune, 0.0), CPU, {}, RunOptions())
    unreachable = replace(CONFIG.constraints, min_accuracy=1.0)
    metrics = tuned.metrics(unreachable)
    assert list(metrics) == list(vocab.FINETUNE_METRICS)
    assert metrics[vocab.TEST_ACC] == tuned.best["test_acc"] and metrics[vocab.MACS] > 0
    assert metrics[vocab.MEETS_CONSTRAINTS] is (tuned.best["test_acc"] >= 1.0)
