"""`netslim train --lambda L`: sparsity training with λ·sign(γ) on every BN γ.

Writes models/sparse/<λ>/{best,last}.pt and reports/train/<λ>/{history.csv,metrics.json,gammas.csv}.
"""

from __future__ import annotations

import argparse

import torch

from netslim import vocabulary as vocab
from netslim.config import Config, lambda_label, parse_lambda
from netslim.io import file_sha256, write_csv
from netslim.models import build_model, count_params, prunable_batchnorms
from netslim.stages.model_tracking import log_gamma_histogram, log_model, save_checkpoint
from netslim.stages.shell import StageShell, commit_with_metrics, distributed_stage, training_bytes
from netslim.steps import RunOptions, fit_settings
from netslim.steps.train import initial_model, sparsity_train

GAMMA_HISTOGRAM_EPOCHS = 4  # γ histograms logged at the start, about this many evenly spaced epochs, and the last


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lambda", dest="lam", required=True, help='λ of the L1 penalty, e.g. "1e-4"')
    parser.add_argument("--resume", action="store_true", help="continue from the last finished epoch if saved")


def gamma_rows(model: torch.nn.Module) -> list[dict]:
    return [
        {"layer": name, "channel": i, "gamma": float(g)}
        for name, bn in prunable_batchnorms(model).items()
        for i, g in enumerate(bn.weight.detach().cpu())
    ]


def run(args: argparse.Namespace, config: Config) -> int:
    with distributed_stage(config, "train", config.experiment.deterministic) as shell:
        return _train(args, shell)


def _train(args: argparse.Namespace, shell: StageShell) -> int:
    config, layout = shell.config, shell.layout
    lam = parse_lambda(args.lam, "--lambda")
    label = lambda_label(lam)
    device, data = shell.device, shell.data
    settings = fit_settings(config, config.train, lam)
    every = max(1, settings.epochs // GAMMA_HISTOGRAM_EPOCHS)
    tags = {"lambda": label, "arch": config.model.arch, "dataset": config.data.dataset}
    # every histogram on one |γ| axis: twice the initial γ (PyTorch's 1.0 without model.bn_init) holds nearly all
    gamma_max = 2 * (config.model.bn_init or 1.0)
    out, reports = layout.sparse_dir(label), layout.train_reports(label)
    files = [
        out / "last.pt",
        out / "best.pt",
        *(reports / f for f in (vocab.HISTORY_FILE, vocab.GAMMAS_FILE, vocab.METRICS_FILE)),
    ]
    with torch.device("meta"):  # counts without allocating
        needs = training_bytes(count_params(build_model(config.model.arch, data.num_classes, width=config.model.width)))
    writing = shell.writing(label, f"--lambda {label}", files, f"train λ={label}", needs, {"lambda": label}, **tags)
    with writing as (outputs, run):
        if run.enabled:
            log_gamma_histogram(run, initial_model(config, data.num_classes), 0, label, gamma_max)

        def on_epoch(record: dict, m: torch.nn.Module) -> None:
            run.epoch(record)
            if record["epoch"] % every == 0 or record["epoch"] == settings.epochs:
                log_gamma_histogram(run, m, record["epoch"], label, gamma_max)

        sparse = sparsity_train(
            config,
            data,
            settings,
            device,
            file_sha256(layout.prepared / "meta.json"),
            RunOptions(shell.state(label), args.resume, on_epoch, f"train λ={label}", "train.lr"),
        )
        if not shell.main_process:
            return 0
        provenance = {"stage": "train", "lambda": lam, "dataset": config.data.dataset, "epochs": settings.epochs}
        save_checkpoint(run, outputs.path(out / "last.pt"), sparse.model, provenance | {"epoch": settings.epochs})
        model = sparse.best_model()
        save_checkpoint(run, outputs.path(out / "best.pt"), model, provenance | {"epoch": sparse.fit.best_epoch})
        log_model(run, model, data.test.images[:2], data.mean, data.std)
        write_csv(outputs.path(reports / vocab.HISTORY_FILE), sparse.fit.history)
        write_csv(outputs.path(reports / vocab.GAMMAS_FILE), gamma_rows(model))
        metrics = sparse.metrics()
        headline = (vocab.TEST_ACC, vocab.SPARSITY, vocab.NUM_PARAMS, vocab.BEST_EPOCH)
        commit_with_metrics(outputs, run, reports / vocab.METRICS_FILE, metrics, headline, params=(vocab.LAMBDA,))
        run.artifact(reports / vocab.GAMMAS_FILE, "gammas")
    shell.state(label).unlink(missing_ok=True)
    print(
        f"train λ={label}: best val {metrics[vocab.VAL_ACC]:.4f} at epoch {metrics[vocab.BEST_EPOCH]}, "
        f"test {metrics[vocab.TEST_ACC]:.4f}, sparsity {metrics[vocab.SPARSITY]:.3f} -> {out}"
    )
    return 0
