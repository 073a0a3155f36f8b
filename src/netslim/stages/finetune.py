"""`netslim finetune --ratio R`: the pruned model trained again (λ = 0), best by validation accuracy.

Writes models/finetuned/<R>.pt and reports/finetune/<R>/{history.csv,metrics.json}.
"""

from __future__ import annotations

import argparse

from netslim import distributed
from netslim import vocabulary as vocab
from netslim.config import Config, lambda_label, parse_ratio, ratio_label
from netslim.io import file_sha256, write_csv
from netslim.models import count_params, load_model
from netslim.stages.model_tracking import log_model, save_checkpoint
from netslim.stages.shell import StageShell, commit_with_metrics, distributed_stage, training_bytes
from netslim.steps import RunOptions, fit_settings
from netslim.steps.finetune import configured_distillation, finetune


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ratio", required=True, help='which pruned model: its ratio (e.g. 0.9) or "budget"')
    parser.add_argument("--resume", action="store_true", help="continue from the last finished epoch if saved")


def run(args: argparse.Namespace, config: Config) -> int:
    with distributed_stage(config, "finetune", config.experiment.deterministic) as shell:
        return _finetune(args, shell)


def _finetune(args: argparse.Namespace, shell: StageShell) -> int:
    config, layout = shell.config, shell.layout
    label = ratio_label(parse_ratio(args.ratio, "--ratio"))
    device = shell.device
    source = shell.source_model(layout.pruned(label))
    model = distributed.maybe_sync_batchnorm(source.model, config.runtime.sync_bn, device)
    data = shell.data
    settings = configured_distillation(fit_settings(config, config.finetune, sparsity_lambda=0.0), config.finetune)
    identity = {"source": source.sha256, "data": file_sha256(layout.prepared / "meta.json")}
    teacher = None
    if settings.distill_alpha:
        teacher_lambda = config.prune.lambda_ if config.finetune.distill_teacher == "sparse" else "0"
        teacher = load_model(layout.sparse_best(teacher_lambda), config.model.arch)
        identity["teacher"] = file_sha256(layout.sparse_best(teacher_lambda))
    prov = source.provenance
    lam = lambda_label(prov["lambda"]) if "lambda" in prov else ""  # as the train and prune runs spell it
    tags = {"ratio": label, "lambda": lam, "arch": model.arch, "dataset": config.data.dataset}
    percent = vocab.ratio_percent(label)
    params = {"ratio": label, "lambda": lam}
    out, reports = layout.finetuned(label), layout.finetune_reports(label)
    files = [out, reports / vocab.HISTORY_FILE, reports / vocab.METRICS_FILE]
    needs = training_bytes(count_params(model))
    writing = shell.writing(label, f"--ratio {label}", files, f"finetune {percent}", needs, params, source, **tags)
    with writing as (outputs, run):
        tuned = finetune(
            model,
            data,
            settings,
            device,
            identity,
            RunOptions(
                shell.state(label),
                args.resume,
                lambda record, _m: run.epoch(record),
                f"finetune {percent}",
                "finetune.lr",
            ),
            teacher,
        )
        if not shell.main_process:
            return 0
        metrics = tuned.metrics(config.constraints)
        provenance = {
            "stage": "finetune",
            "source": str(source.path),
            "source_sha256": source.sha256,
            "best_epoch": tuned.fit.best_epoch,
        }
        save_checkpoint(run, outputs.path(out), model, prov | provenance)
        write_csv(outputs.path(reports / vocab.HISTORY_FILE), tuned.fit.history)
        headline = (vocab.TEST_ACC, vocab.VAL_ACC, vocab.NUM_PARAMS, vocab.MACS, vocab.MEETS_CONSTRAINTS)
        commit_with_metrics(outputs, run, reports / vocab.METRICS_FILE, metrics, headline)
        log_model(run, model, data.test.images[:2], data.mean, data.std, register=True, metrics=metrics)
    shell.state(label).unlink(missing_ok=True)
    print(
        f"finetune {percent}: test acc {metrics[vocab.TEST_ACC]:.4f} (best epoch {metrics[vocab.BEST_EPOCH]}), "
        f"params {metrics[vocab.NUM_PARAMS]:,}, MACs {metrics[vocab.MACS]:,}, "
        f"meets constraints: {metrics[vocab.MEETS_CONSTRAINTS]}"
        f" -> {out}"
    )
    return 0
