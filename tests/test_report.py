"""The report stage on small synthetic outputs of train, prune and finetune (no training needed)."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import caption, clause, line_starting, numbers_in, table_row, write_params
from netslim import vocabulary as vocab
from netslim.cli import main as cli_main
from netslim.config import Config, ConfigError, PathsConfig, config_from_dict
from netslim.io import write_csv, write_json
from netslim.layout import Layout
from netslim.report.captions import SMALL_GAMMA, _exported_speedup, compensation_subsumed
from netslim.report.figures import FIGURES, _speedups, scaling_factor_distribution
from netslim.report.inputs import REPAIRS, ReportInputs, meets_constraints, model_name, saved_repair, train_name
from netslim.report.markdown import lr_schedule
from netslim.report.summary import timing_metrics
from netslim.stages import report as stage
from netslim.vocabulary import (
    EAGER_IMAGES_PER_S,
    EAGER_SPEEDUP,
    HEADLINE,
    METRICS_FILE,
    VARIANTS,
    of_sparse,
    per_batch,
    variant_metrics,
    variant_name,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LAMBDAS = ["1e-4", "1e-5", "0"]
LAYERS = [f"layer{i}.0.bn{j}" for i in (1, 2, 3, 4) for j in (1, 2)]
WIDTHS = [16, 16, 32, 32, 64, 64, 128, 128]
UNPRUNED_PARAMS = 23_520_842
# ratio -> (accuracy after pruning, after fine-tuning, params): 0.5 misses max_params, 0.9 meets both.
PRUNED = {"0.5": (0.81, 0.935, 6_000_000), "0.9": (0.42, 0.912, 1_200_000)}
# The prune stage's measurement of each pruned model: 2× (batch 1) and 3× (batch 64) the sparse model timed with it.
TIMED = {
    per_batch(key, b): value
    for b, (pruned, sparse) in ((1, (300.0, 150.0)), (64, (9000.0, 3000.0)))
    for key, value in (
        (EAGER_IMAGES_PER_S, pruned),
        (of_sparse(EAGER_IMAGES_PER_S), sparse),
        (EAGER_SPEEDUP, pruned / sparse),
    )
}
SAVED = variant_name(compensated=True, recalibrated=True)  # what the default prune settings save
REPAIRED = dict(zip(VARIANTS, (-0.3, -0.2, -0.05, 0.0), strict=True))  # each variant's accuracy - the saved one's


def params_dict(tmp_path: Path) -> dict:
    paths = {f.name: str(tmp_path / f.default) for f in dataclasses.fields(PathsConfig)}
    return {"paths": paths, "tracking": {"enabled": False}}


def make_config(tmp_path: Path) -> Config:
    return config_from_dict(params_dict(tmp_path))


def history(seed: int, sparsity_end: float) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "epoch": e,
            "lr": 1e-3,
            "train_loss": 2.0 / e,
            "train_acc": 0.5 + 0.13 * e,
            "val_loss": 2.1 / e,
            "val_acc": 0.48 + 0.12 * e + rng.uniform(0, 0.01),
            "test_loss": 2.1 / e,
            "test_acc": 0.47 + 0.12 * e,
            "sparsity": sparsity_end * e / 3,
            "seconds": 10.0,
        }
        for e in (1, 2, 3)
    ]


def write_inputs(config: Config) -> None:
    """What train, prune and finetune write, with the same file names and keys."""
    layout = Layout(config.paths)
    rng = np.random.default_rng(0)
    for i, lam in enumerate(LAMBDAS):
        folder = layout.train_reports(lam)
        write_csv(folder / "history.csv", history(i, sparsity_end=[0.6, 0.2, 0.0][i]))
        scale = [0.01, 0.3, 1.0][i]  # a larger λ pushes more γ towards zero
        gammas = [
            {"layer": layer, "channel": c, "gamma": float(abs(rng.normal(0, scale)))}
            for layer, width in zip(LAYERS, WIDTHS, strict=True)
            for c in range(width)
        ]
        write_csv(folder / "gammas.csv", gammas)
        metrics = {vocab.LAMBDA: float(lam), vocab.BEST_EPOCH: 3, vocab.VAL_ACC: 0.85, vocab.TEST_ACC: 0.94 - 0.01 * i}
        metrics |= {vocab.FINAL_TEST_ACC: 0.93, vocab.SPARSITY: 0.5, vocab.NUM_PARAMS: UNPRUNED_PARAMS}
        write_json(folder / METRICS_FILE, metrics)
    for label, (before, after, params) in PRUNED.items():
        macs = int(params * 40)
        prune_metrics = {
            vocab.RATIO_USED: float(label),
            vocab.CHANNELS_REMOVED: float(label) - 0.031,  # min_channels kept a few more
            vocab.THRESHOLD: 0.0123,
            **variant_metrics({name: before + d for name, d in REPAIRED.items()}, SAVED),
            vocab.VAL_ACC: before,
            of_sparse(vocab.TEST_ACC): 0.94,
            vocab.NUM_PARAMS: params,
            of_sparse(vocab.NUM_PARAMS): UNPRUNED_PARAMS,
            vocab.MACS: macs,
            of_sparse(vocab.MACS): 1_304_000_000,
            vocab.FLOPS: 2 * macs,
            of_sparse(vocab.FLOPS): 2_608_000_000,
            vocab.PARAMS_RATIO: UNPRUNED_PARAMS / params,
            vocab.MACS_RATIO: 1_304_000_000 / macs,
        } | TIMED
        if label == "0.5":  # a key a stage may not write: the report shows n/a instead of failing
            del prune_metrics[per_batch(EAGER_IMAGES_PER_S, 64)], prune_metrics[per_batch(EAGER_SPEEDUP, 64)]
        write_json(layout.prune_reports(label) / METRICS_FILE, prune_metrics)
        kept = [max(2, int(w * (1 - float(label)))) for w in WIDTHS]
        write_csv(
            layout.prune_reports(label) / "channels.csv",
            [
                {"layer": n, "channels_before": w, "channels_kept": k}
                for n, w, k in zip(LAYERS, WIDTHS, kept, strict=True)
            ],
        )
        write_csv(layout.finetune_reports(label) / "history.csv", history(7, sparsity_end=0.0))
        finetune_metrics = {
            vocab.BEST_EPOCH: 3,
            vocab.VAL_ACC: after,
            vocab.TEST_ACC: after,
            vocab.FINAL_TEST_ACC: after - 0.001,
        }
        finetune_metrics |= {vocab.NUM_PARAMS: params, vocab.MACS: macs, vocab.FLOPS: 2 * macs}
        write_json(layout.finetune_reports(label) / METRICS_FILE, finetune_metrics | {vocab.MEETS_CONSTRAINTS: False})


def tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """One report run shared by the tests that only read its outputs (rendering takes a few seconds)."""
    config = make_config(tmp_path_factory.mktemp("report"))
    write_inputs(config)
    assert stage.run(argparse.Namespace(), config) == 0
    return config


def test_every_figure_is_a_png(written: Config) -> None:
    figures = Path(written.paths.reports) / "figures"
    assert sorted(p.name for p in figures.iterdir()) == sorted(FIGURES)
    for name in FIGURES:
        data = (figures / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, name


def test_summary_csv_has_one_row_per_model_with_the_input_numbers(written: Config) -> None:
    summary = pd.read_csv(Path(written.paths.reports) / "summary.csv").set_index("model")
    assert list(summary.index) == [
        "unpruned (λ = 0)",
        "sparse (λ = 1e-4)",
        "sparse (λ = 1e-5)",
        "pruned 50%",
        "pruned 50% + fine-tuned",
        "pruned 90%",
        "pruned 90% + fine-tuned",
    ]
    assert summary.loc["pruned 90% + fine-tuned", "test_acc"] == PRUNED["0.9"][1]
    assert summary.loc["pruned 90%", "test_acc"] == PRUNED["0.9"][0]
    assert summary.loc["sparse (λ = 1e-4)", "test_acc"] == 0.94  # the train metrics of prune.lambda = 1e-4
    assert summary.loc["sparse (λ = 1e-5)", "test_acc"] == pytest.approx(0.93)
    assert summary.loc["unpruned (λ = 0)", "test_acc"] == pytest.approx(0.92)  # the train metrics of λ = 0
    assert summary.loc["sparse (λ = 1e-4)", "num_params"] == UNPRUNED_PARAMS
    assert summary.loc["pruned 90%", "macs"] == PRUNED["0.9"][2] * 40
    assert summary.loc["pruned 90%", "flops"] == 2 * summary.loc["pruned 90%", "macs"]
    assert list(summary["stage"]) == ["train", "train", "train", "prune", "finetune", "prune", "finetune"]
    # 0.9 fine-tuned meets both; 0.5 fine-tuned is accurate but too big; unpruned is too big; pruned 90% too weak
    assert summary["meets_constraints"].to_dict() == {
        "unpruned (λ = 0)": False,
        "sparse (λ = 1e-4)": False,
        "sparse (λ = 1e-5)": False,
        "pruned 50%": False,
        "pruned 50% + fine-tuned": False,
        "pruned 90%": False,
        "pruned 90% + fine-tuned": True,
    }


def test_no_table_sets_throughputs_of_different_measurements_side_by_side(written: Config) -> None:
    summary = pd.read_csv(Path(written.paths.reports) / "summary.csv")
    assert not [column for column in summary.columns if "throughput" in column or "img" in column]
    text = (Path(written.paths.reports) / "report.md").read_text()
    models = text.split("## Models")[1].split("## Pruning")[0]
    assert "img/s" not in models
    # the speed table: each pruned model's images/s next to those of the sparse model timed with it, in one row
    speed = "speedup (batch 1)"
    pruned_90, pruned_50 = table_row(text, "pruned 90%", speed), table_row(text, "pruned 50%", speed)
    assert pruned_90["img/s sparse → pruned (batch 1)"] == "150 → 300" and pruned_90[speed] == "2.00×"
    assert pruned_90["img/s sparse → pruned (batch 64)"] == "3,000 → 9,000"
    assert pruned_90["speedup (batch 64)"] == "3.00×"
    assert pruned_90["params ratio"] == "19.60×" and pruned_90["MACs ratio"] == "27.17×"
    assert pruned_50["img/s sparse → pruned (batch 64)"] == "3,000 → n/a"  # not written: n/a, no speedup made up
    assert pruned_50["speedup (batch 64)"] == "n/a"


def test_every_model_gets_a_headline_metrics_file_for_dvc(written: Config) -> None:
    folder = Path(written.paths.reports) / "metrics"
    files = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    assert set(files) == {
        "unpruned_lambda_0",
        "sparse_lambda_1e-4",
        "sparse_lambda_1e-5",
        "pruned_0.5",
        "finetuned_0.5",
        "pruned_0.9",
        "finetuned_0.9",
    }
    for model, values in files.items():
        assert list(values) == sorted(HEADLINE), model  # these four and nothing noisy
    assert files["finetuned_0.9"] == {
        "test_acc": PRUNED["0.9"][1],
        "num_params": PRUNED["0.9"][2],
        "macs": PRUNED["0.9"][2] * 40,
        "meets_constraints": True,
    }
    assert files["sparse_lambda_1e-5"]["macs"] == 1_304_000_000  # the unpruned architecture's, as measured by prune


def test_timings_get_files_of_their_own_one_measurement_each(written: Config) -> None:
    folder = Path(written.paths.reports) / "timings"
    files = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    assert set(files) == {"pruned_0.5", "pruned_0.9"}  # no export stage ran here
    assert files["pruned_0.9"] == TIMED
    assert "throughput_b64" not in files["pruned_0.5"]  # a value the stage did not write is left out


def test_the_export_stages_timings_are_one_file_per_exported_model() -> None:
    speedup, images = per_batch(vocab.ONNX_SPEEDUP, 1), per_batch(vocab.ONNX_IMAGES_PER_S, 1)
    inputs = ReportInputs(
        *({} for _ in range(7)),
        export_metrics={
            "threads": 2,
            vocab.train_model("1e-2"): {vocab.NUM_PARAMS: 10},
            vocab.finetuned_model("0.9"): {speedup: 1.5, images: 30.0, vocab.ONNX_TEST_ACC: 0.9, vocab.NUM_PARAMS: 5},
        },
    )
    assert timing_metrics(inputs) == {"exported_0.9": {speedup: 1.5, images: 30.0}}


def test_a_model_dropped_from_params_leaves_no_stale_metrics_file(tmp_path: Path) -> None:
    stage.write_json_folder(tmp_path, {"pruned_0.5": {"test_acc": 0.5}, "pruned_0.9": {"test_acc": 0.4}})
    stage.write_json_folder(tmp_path, {"pruned_0.9": {"test_acc": 0.41}})
    assert [p.name for p in tmp_path.iterdir()] == ["pruned_0.9.json"]
    assert json.loads((tmp_path / "pruned_0.9.json").read_text()) == {"test_acc": 0.41}


def test_report_md_embeds_every_figure_and_lists_every_model(written: Config) -> None:
    text = (Path(written.paths.reports) / "report.md").read_text()
    for name in FIGURES:
        assert f"](figures/{name})" in text
    models = ("unpruned (λ = 0)", "sparse (λ = 1e-4)", "sparse (λ = 1e-5)", "pruned 50%", "pruned 90% + fine-tuned")
    for model in models:
        assert f"| {model} |" in text
    assert "unpruned (λ = 1e-4)" not in text  # a sparse model is never called unpruned
    assert "23,520,842" in text and "91.20%" in text and "1,304.0 M" in text  # formatted numbers
    assert "0.0123" in text and "2.00×" in text  # threshold and realised speedup
    assert "**pruned 90% + fine-tuned**" in line_starting(text, "Best feasible model")


def test_a_missing_input_gives_one_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    write_inputs(config)
    missing = Layout(config.paths).finetune_reports("0.9") / "metrics.json"
    missing.unlink()
    before = tree(tmp_path)
    with pytest.raises(ConfigError, match=r"finetune/0\.9/metrics\.json: missing; run `dvc repro` \(the finetune"):
        stage.run(argparse.Namespace(), config)
    assert tree(tmp_path) == before
    assert not (Path(config.paths.reports) / "figures").exists()


def test_the_cli_turns_a_missing_input_into_exit_code_2(tmp_path: Path, capsys) -> None:
    params = tmp_path / "params.yaml"
    write_params(params, params_dict(tmp_path))
    assert cli_main(["report", "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "history.csv: missing" in err and "\n" not in err


def test_gamma_distribution_has_one_panel_per_lambda_on_shared_axes() -> None:
    rng = np.random.default_rng(1)
    gammas = {
        lam: pd.DataFrame({"gamma": rng.normal(0, s, 200)}) for lam, s in zip(LAMBDAS, (0.01, 0.2, 1.0), strict=True)
    }
    fig = scaling_factor_distribution(gammas, threshold=1e-2)
    axes = fig.axes
    assert len(axes) == len(LAMBDAS)
    assert [ax.get_title().split(":")[0] for ax in axes] == [f"λ = {lam}" for lam in LAMBDAS]
    assert len({ax.get_xlim() for ax in axes}) == 1 and len({ax.get_ylim() for ax in axes}) == 1
    assert all(axes[0].get_shared_x_axes().joined(axes[0], ax) for ax in axes)


@pytest.mark.parametrize(
    ("acc", "params", "expected"),
    [(0.90, 4_000_000, True), (0.8999, 1, False), (0.95, 4_000_001, False), (None, 1, None)],
)
def test_meets_constraints_needs_accuracy_and_params(acc, params, expected) -> None:
    assert meets_constraints(make_config(Path("/tmp")).constraints, acc, params) is expected


def test_model_names() -> None:
    assert model_name("0.5", finetuned=False) == "pruned 50%"
    assert model_name("budget", finetuned=False) == "pruned (budget)"
    assert model_name("0.9", finetuned=True) == "pruned 90% + fine-tuned"


def test_captions_and_pruning_table_state_this_runs_numbers(written: Config) -> None:
    text = (Path(written.paths.reports) / "report.md").read_text()
    layout = Layout(written.paths)
    shares = caption(text, "scaling_factor_distribution.png")
    for lam in LAMBDAS:
        gammas = pd.read_csv(layout.train_reports(lam) / "gammas.csv")["gamma"].abs()
        share, median = numbers_in(clause(shares, f"λ = {lam}").removeprefix(f"λ = {lam}: "))
        assert (share, float(median)) == (f"{(gammas < SMALL_GAMMA).mean():.0%}", float(f"{gammas.median():.3g}"))
    # four ways right after pruning, the saved one (compensation + recalibration by default) in bold
    row = table_row(text, "pruned 90%", "γ threshold")
    assert (row["ratio used"], row["channels removed"], row["γ threshold"]) == ("0.9000", "86.90%", "0.0123")
    assert row["sparse model"] == "94.00%"
    repairs = {variant: row[title] for variant, title in REPAIRS.items()}
    # each repair's accuracy under its own column; the saved one (compensation + recalibration) in bold
    assert saved_repair(written) == vocab.VARIANTS[-1]
    assert repairs == dict(zip(vocab.VARIANTS, ["12.00%", "22.00%", "37.00%", "**42.00%**"], strict=True))
    # under the pruning table: the sparse model's accuracy, then plain surgery's and how far it fell from it
    sparse, plain = 0.94, PRUNED["0.9"][0] + REPAIRED["plain"]
    said = line_starting(text, "- pruned 90%: ").removeprefix("- pruned 90%: ")
    assert numbers_in(said)[:3] == [f"{sparse:.1%}", f"{plain:.1%}", f"{(plain - sparse) * 100:+.1f}"]
    # the fine-tuning figure: the accuracy right after pruning, after fine-tuning, and over how many epochs
    before, after, _ = PRUNED["0.9"]
    said = clause(caption(text, "finetune_accuracy.png"), "pruned 90%").removeprefix("pruned 90%: ")
    assert numbers_in(said) == [f"{before:.1%}", f"{after:.1%}", "3"]
    # the model comparison: the fine-tuned accuracy and its distance from the unpruned baseline, named
    said = clause(caption(text, "model_comparison.png"), "pruned 90% + fine-tuned")
    unpruned = 0.94 - 0.01 * LAMBDAS.index("0")
    assert numbers_in(said.removeprefix("pruned 90% + fine-tuned: "))[:2] == [
        f"{after:.1%}",
        f"{(after - unpruned) * 100:+.1f}",
    ]
    assert train_name("0") in said


def subsumed(saved: str, both: float = 0.8) -> dict[str, dict[str, float]]:
    """Prune metrics where "+ both" scores `both` and "+ BN recalibration" 0.8, as a run saving `saved` writes them."""
    return {"0.5": variant_metrics({"recalibrated": 0.8, "compensated_recalibrated": both}, saved)}


def test_the_pruning_table_notes_that_both_repairs_equal_recalibration_when_every_model_scores_the_same() -> None:
    config = make_config(Path("/tmp"))
    (note,) = compensation_subsumed(subsumed(SAVED), config)
    assert "by construction" in note and "`prune.bias_compensation: true` changes nothing" in note
    recalibration_off = dataclasses.replace(config, prune=dataclasses.replace(config.prune, recalibration_batches=0))
    (note,) = compensation_subsumed(subsumed("compensated"), recalibration_off)
    assert "by construction" in note and "changes nothing" not in note  # the saved model is compensated only


def test_the_pruning_table_has_no_such_note_when_a_model_scores_differently_with_both() -> None:
    differing = subsumed(SAVED) | {"0.9": subsumed(SAVED, both=0.81)["0.5"]}
    assert compensation_subsumed(differing, make_config(Path("/tmp"))) == []
    assert compensation_subsumed({}, make_config(Path("/tmp"))) == []


def test_the_speedup_panel_shows_the_exported_speedups_next_to_eager_ones_when_the_export_ran() -> None:
    from matplotlib.figure import Figure

    eager, onnx = ([per_batch(key, b) for b in (1, 64)] for key in (EAGER_SPEEDUP, vocab.ONNX_SPEEDUP))
    prune_metrics = {
        "0.5": {vocab.MACS_RATIO: 1.75} | dict(zip(eager, (1.03, 1.14), strict=True)),
        "0.9": {vocab.MACS_RATIO: 2.73} | dict(zip(eager, (1.19, 1.16), strict=True)),
    }
    export_metrics = {"threads": 2, "finetuned_0.9": dict(zip(onnx, (1.33, 1.58), strict=True))}  # no 0.5 export
    ax = Figure().subplots()
    _speedups(ax, prune_metrics, export_metrics)
    bars = {
        container.get_label(): [round(float(bar.get_width()), 2) for bar in container] for container in ax.containers
    }
    assert bars == {
        "MACs ratio": [1.75, 2.73],
        "eager, batch 1": [1.03, 1.19],
        "eager, batch 64": [1.14, 1.16],
        "ONNX Runtime, batch 1": [0.0, 1.33],
        "ONNX Runtime, batch 64": [0.0, 1.58],
    }
    ax = Figure().subplots()
    _speedups(ax, prune_metrics, {})  # before the export stage has run: the prune stage's numbers only
    assert [container.get_label() for container in ax.containers] == ["MACs ratio", "eager, batch 1", "eager, batch 64"]
    # and the figure's text says it at the largest batch timed
    assert numbers_in(_exported_speedup(export_metrics["finetuned_0.9"])) == ["1.58×", "64"]  # speedup, batch
    assert _exported_speedup(None) == ""


@pytest.mark.parametrize(
    "optim, expected",
    [
        ({"lr": 1e-3, "epochs": 40, "milestones": [0.5, 0.75]}, "Adam 1e-3, ×0.1 after epochs 20, 30"),
        ({"lr": 4e-3, "epochs": 2, "milestones": [0.5], "lr_gamma": 0.2}, "Adam 4e-3, ×0.2 after epoch 1"),
        ({"lr": 2.5e-4, "epochs": 5, "milestones": []}, "Adam 2.5e-4"),
        ({"lr": 4e-3, "epochs": 2, "schedule": "cosine"}, "Adam 4e-3, cosine to 0"),  # milestones unused
    ],
)
def test_the_settings_table_says_how_the_lr_moves(optim: dict, expected: str) -> None:
    assert lr_schedule(config_from_dict({"finetune": optim}).finetune) == expected


def test_the_report_states_both_lr_schedules(written: Config) -> None:
    text = (Path(written.paths.reports) / "report.md").read_text()
    train, finetune = lr_schedule(written.train), lr_schedule(written.finetune)
    said = table_row(text, "learning rate", "setting")["value"]
    assert train in said and finetune in said and said.index(train) < said.index(finetune)
