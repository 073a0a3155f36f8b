"""Export: BatchNorm folding, ONNX files that ONNX Runtime runs exactly like PyTorch, their speed, the latency
budget, and the `netslim export` stage."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import netslim
from conftest import line_starting, markdown_table, numbers_in, table_row, tiny_params, write_params
from netslim.cli import main
from netslim.config import PruneConfig
from netslim.export import (
    INPUT_NAME,
    OPSET,
    SAMPLE_SECONDS,
    Deployable,
    ExportError,
    calls_per_sample,
    check_matches,
    conv_bn_pairs,
    fold_batchnorms,
    fold_conv_bn,
    input_shape,
    latency_ms,
    latency_resolver,
    max_abs_difference,
    onnx_model,
    ort_logits,
    ort_session,
    pad_channels,
    speed_table,
    write_onnx,
)
from netslim.io import load_checkpoint, save_torch
from netslim.measure import count_conv_linear_macs
from netslim.models import architecture, batchnorms, load_model, save_model
from netslim.slimming.budget import budget_ratio
from netslim.slimming.surgery import prune
from netslim.vocabulary import (
    EAGER_IMAGES_PER_S,
    EAGER_SPEEDUP,
    MACS,
    MACS_RATIO,
    NUM_PARAMS,
    ONNX_IMAGES_PER_S,
    ONNX_OVER_EAGER,
    ONNX_SPEEDUP,
    ONNX_SPEEDUP_OVER_MACS_RATIO,
    ROUND_TO,
    TEST_ACC,
    finetuned_model,
    of_sparse,
    per_batch,
    pruned_model,
    train_model,
)
from test_slimming import randomised


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ---- BatchNorm folding ------------------------------------------------------------------------


@pytest.mark.parametrize("conv_bias", [False, True])
def test_fold_conv_bn_computes_bn_of_conv(conv_bias: bool) -> None:
    g = torch.Generator().manual_seed(0)
    weight, x = torch.randn(6, 4, 3, 3, generator=g), torch.randn(2, 4, 9, 9, generator=g)
    bias = torch.randn(6, generator=g) if conv_bias else None
    mean, var = torch.randn(6, generator=g), torch.rand(6, generator=g) + 0.1
    gamma, beta = torch.randn(6, generator=g), torch.randn(6, generator=g)
    expected = F.batch_norm(F.conv2d(x, weight, bias, padding=1), mean, var, gamma, beta, training=False, eps=1e-5)
    folded_weight, folded_bias = fold_conv_bn(weight, bias, mean, var, gamma, beta, eps=1e-5)
    torch.testing.assert_close(F.conv2d(x, folded_weight, folded_bias, padding=1), expected, atol=1e-5, rtol=1e-5)
    assert folded_weight.dtype == weight.dtype and folded_bias.shape == (6,)


@pytest.mark.parametrize(("arch", "width"), [("resnet50", 0.125), ("vgg19", 0.125)])
def test_folded_model_has_no_batchnorm_and_computes_the_same(arch: str, width: float) -> None:
    model = randomised(arch, width)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorms(model)
    assert len(conv_bn_pairs(model)) == len(batchnorms(model))  # stem, every block, downsample / every VGG conv
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = images(4)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the original is untouched
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_a_batchnorm_after_no_conv_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="follow no conv"):
        fold_batchnorms(model)


# ---- ONNX and ONNX Runtime --------------------------------------------------------------------


# ---- channel padding ---------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "width"), [("resnet50", 0.125), ("vgg19", 0.125), ("resnet56", 0.25)])
def test_padding_rounds_each_pruned_width_up_within_the_layer_and_computes_exactly_the_same(arch, width) -> None:
    unpruned = randomised(arch, width)
    pruned = prune(unpruned, ratio=0.6).model.eval()
    padded = pad_channels(pruned, 8)
    full, kept, now = (dict(m.named_modules()) for m in (unpruned, pruned, padded))
    widened = 0
    for name in architecture(arch).prunable(pruned):
        n, padded_n, limit = kept[name].num_features, now[name].num_features, full[name].num_features
        assert n <= padded_n <= limit and padded_n - n < 8, (name, n, padded_n, limit)
        assert padded_n % 8 == 0 or padded_n == limit, (name, padded_n)
        widened += padded_n > n
    assert widened, "the pruned model had no odd width to pad"
    state = padded.state_dict()
    for key, value in pruned.state_dict().items():  # the pruned weights lead, unchanged; what was added is zero
        lead = tuple(slice(0, size) for size in value.shape)
        assert torch.equal(state[key][lead], value), key
        rest = state[key].clone()
        rest[lead] = 1.0 if key.endswith("running_var") else 0.0
        assert torch.equal(rest, torch.ones_like(rest) if key.endswith("running_var") else torch.zeros_like(rest)), key
    x = images(5)
    with torch.no_grad():
        torch.testing.assert_close(padded(x), pruned(x), atol=1e-5, rtol=0)
    assert pad_channels(unpruned, 8).cfg == unpruned.cfg  # an unpruned layer is never widened past itself
    assert pad_channels(pruned, None) is pruned  # export.pad_to: null exports the widths as pruned


@pytest.fixture(scope="module")
def exported() -> dict[str, tuple[onnx.ModelProto, Deployable]]:
    """A small pruned ResNet-50 and VGG-19 (and the unpruned VGG-19), exported once for the tests below."""
    vgg = randomised("vgg19", 0.125)
    models = {
        "resnet50": prune(randomised("resnet50", 0.125), ratio=0.5).model,
        "vgg19": prune(vgg, ratio=0.5).model,
        "vgg19_unpruned": vgg,
    }
    protos = {name: onnx_model(m, {"mean": "[0.5, 0.5, 0.5]"}) for name, m in models.items()}
    return {name: (protos[name], Deployable(models[name], ort_session(protos[name], threads=1))) for name in models}


@pytest.mark.parametrize("arch", ["resnet50", "vgg19"])
def test_exported_pruned_model_is_valid_onnx_without_batchnorm_and_matches_pytorch(exported, arch: str) -> None:
    proto, deployable = exported[arch]
    onnx.checker.check_model(proto, full_check=True)
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {OPSET}
    assert "BatchNormalization" not in {node.op_type for node in proto.graph.node}
    assert {p.key: p.value for p in proto.metadata_props}["mean"] == "[0.5, 0.5, 0.5]"
    # the same bytes from any checkout: no source path (the exporter's per-node stack traces) in the file
    assert str(Path(netslim.__file__).parent).encode() not in proto.SerializeToString()
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.HasField("dim_value")  # a dynamic batch size
    for n in (1, 3, 17):
        x = images(n, seed=n)
        with torch.no_grad():
            expected = deployable.model(x).numpy()
        np.testing.assert_allclose(ort_logits(deployable.session, x), expected, atol=1e-4, rtol=0)
    assert check_matches(arch, deployable.model, deployable.session, images(16), atol=1e-4) <= 1e-4


def test_an_onnx_file_written_to_disk_loads_into_a_session(exported, tmp_path) -> None:
    proto, deployable = exported["vgg19"]
    write_onnx(tmp_path / "m.onnx", proto)
    session = ort_session(tmp_path / "m.onnx", threads=1)
    assert session.get_inputs()[0].name == INPUT_NAME
    # threads that sleep between runs: a spinning session would take the CPU from the next one timed after it
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert max_abs_difference(deployable.model, session, images(8)) <= 1e-4


def test_outputs_that_differ_from_pytorch_fail_the_check(exported) -> None:
    _, vgg = exported["vgg19"]
    _, unpruned = exported["vgg19_unpruned"]
    with pytest.raises(ExportError, match="differ from PyTorch's"):
        check_matches("vgg19", unpruned.model, vgg.session, images(8), atol=1e-4)


def test_speed_table_times_both_models_in_onnx_runtime_and_eager(exported) -> None:
    _, reference = exported["vgg19_unpruned"]
    _, pruned = exported["vgg19"]
    threads = torch.get_num_threads()
    (rows,) = speed_table(reference, [pruned], threads=1, batch_sizes=(1, 4), repeats=1, warmup=0)
    assert torch.get_num_threads() == threads  # restored
    assert [row["batch_size"] for row in rows] == [1, 4]
    for row in rows:
        onnx, eager = row[ONNX_IMAGES_PER_S], row[EAGER_IMAGES_PER_S]
        assert row[ONNX_SPEEDUP] == onnx / row[of_sparse(ONNX_IMAGES_PER_S)] > 0
        assert row[EAGER_SPEEDUP] == eager / row[of_sparse(EAGER_IMAGES_PER_S)] > 0
        assert row[ONNX_OVER_EAGER] == onnx / eager
        assert row[MACS_RATIO] == count_conv_linear_macs(reference.model) / count_conv_linear_macs(pruned.model) > 1
        assert row[ONNX_SPEEDUP_OVER_MACS_RATIO] == pytest.approx(row[ONNX_SPEEDUP] / row[MACS_RATIO])
    (onnx_only,) = speed_table(reference, [pruned], threads=1, batch_sizes=(2,), repeats=1, warmup=0, eager=False)
    assert EAGER_SPEEDUP not in onnx_only[0] and onnx_only[0][ONNX_SPEEDUP] > 0


def test_speed_table_times_the_reference_once_for_every_pruned_model(exported) -> None:
    """The export stage's table: the reference and every pruned model timed in the same rounds, so each pruned
    model's speedup divides by the same reference throughput."""
    _, reference = exported["vgg19_unpruned"]
    pruned = [exported[name][1] for name in ("vgg19", "resnet50")]
    table = speed_table(reference, pruned, threads=1, batch_sizes=(1, 4), repeats=1, warmup=0)
    assert len(table) == 2 and all([row["batch_size"] for row in rows] == [1, 4] for rows in table)
    for b in range(2):
        first, second = table[0][b], table[1][b]
        for key in (of_sparse(ONNX_IMAGES_PER_S), of_sparse(EAGER_IMAGES_PER_S)):
            assert first[key] == second[key] > 0  # one measurement of the reference
        for row in (first, second):
            assert row[ONNX_SPEEDUP] == row[ONNX_IMAGES_PER_S] / row[of_sparse(ONNX_IMAGES_PER_S)]
            assert row[EAGER_SPEEDUP] == row[EAGER_IMAGES_PER_S] / row[of_sparse(EAGER_IMAGES_PER_S)]


def test_a_timed_sample_covers_64_images_unless_fewer_calls_last_long_enough() -> None:
    assert [calls_per_sample(b) for b in (1, 4, 64, 256)] == [64, 16, 1, 1]
    assert calls_per_sample(1, seconds_per_call=0.008) == math.ceil(SAMPLE_SECONDS / 0.008) < 64  # eager at batch 1
    assert calls_per_sample(1, seconds_per_call=1e-4) == 64  # fast calls: still about 64 images
    assert calls_per_sample(1, seconds_per_call=5.0) == calls_per_sample(64, seconds_per_call=1e-4) == 1


def test_latency_is_a_positive_number_of_milliseconds(exported) -> None:
    _, vgg = exported["vgg19"]
    assert 0 < latency_ms(vgg.session, repeats=3, warmup=1) < 10_000


def test_smaller_images_are_exported_timed_and_counted_at_their_own_size() -> None:
    """data.image_size 16: the graph takes 16×16 inputs, and timing and MACs read that size from the session."""
    small = {"reference": randomised("resnet50", 0.125), "pruned": prune(randomised("resnet50", 0.125), 0.5).model}
    pair = {}
    for name, model in small.items():
        session = ort_session(onnx_model(model, image_shape=(3, 16, 16)), threads=1)
        assert input_shape(session) == (3, 16, 16)
        x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            np.testing.assert_allclose(ort_logits(session, x), model(x).numpy(), atol=1e-4, rtol=0)
        pair[name] = Deployable(model, session)
    assert 0 < latency_ms(pair["pruned"].session, repeats=2, warmup=0) < 10_000
    ((row,),) = speed_table(pair["reference"], [pair["pruned"]], threads=1, batch_sizes=(2,), repeats=1, warmup=0)
    at16 = [count_conv_linear_macs(pair[k].model, (1, 3, 16, 16)) for k in ("reference", "pruned")]
    assert at16[0] < count_conv_linear_macs(
        pair["reference"].model
    )  # a quarter of the pixels: fewer MACs than at 32×32
    assert row[MACS_RATIO] == at16[0] / at16[1] and row[ONNX_SPEEDUP] > 0


# ---- the latency budget, measured -----------------------------------------------------------------------


def test_a_latency_budget_measured_in_onnx_runtime_accepts_a_generous_target() -> None:
    model = randomised("vgg19", 0.0625)
    generous = PruneConfig(target_latency_ms=10_000.0)
    measured = latency_resolver(threads=1)  # what the prune stage passes down to the prune step
    assert budget_ratio(model, generous, measured) == 0.0  # measured: the largest and the smallest ratio


# ---- the stage --------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path, fmnist_dir, monkeypatch):
    """Prepared data, a sparse VGG-19 checkpoint and a 'fine-tuned' one (pruned, not trained: export reads files)."""
    params = tiny_params(
        tmp_path,
        fmnist_dir,
        model={"arch": "vgg19", "width": 0.0625},
        prune={"ratios": [0.5]},
        export={"threads": 1, "batch_sizes": [1, 8], "repeats": 1, "check_images": 32, "compare_round_to": 4},
    )
    write_params(tmp_path / "params.yaml", params)
    monkeypatch.chdir(tmp_path)
    assert main(["prepare"]) == 0
    sparse = randomised("vgg19", 0.0625)
    save_model(tmp_path / "models/sparse/1e-4/best.pt", sparse)
    save_model(tmp_path / "models/finetuned/0.5.pt", prune(sparse, ratio=0.5).model)
    return tmp_path


def test_export_stage_writes_checked_onnx_files_and_speed_metrics(project, capsys) -> None:
    assert main(["export"]) == 0
    sparse = train_model("1e-4")  # the model the fine-tuned one was pruned from, and is timed against
    for name, source in ((sparse, "models/sparse/1e-4/best.pt"), (finetuned_model("0.5"), "models/finetuned/0.5.pt")):
        proto = onnx.load(project / f"models/exported/{name}.onnx")
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["model"] == name and json.loads(meta["std"]) and meta["dataset"] == "fashion-mnist"
        reference = load_model(project / source)
        session = ort_session(project / f"models/exported/{name}.onnx", threads=1)
        assert max_abs_difference(reference, session, images(4)) <= 1e-4
    metrics = json.loads((project / "reports/export/metrics.json").read_text())
    assert metrics["threads"] == 1 and metrics["opset"] == OPSET and metrics["pad_to"] == 8
    tuned = metrics[finetuned_model("0.5")]
    # the fine-tuned model's export is padded to multiples of 8 (checked above: the same logits as the pruned model)
    finetuned = load_model(project / "models/finetuned/0.5.pt")
    padded = pad_channels(finetuned, 8)
    meta = {p.key: p.value for p in onnx.load(project / "models/exported/finetuned_0.5.onnx").metadata_props}
    assert meta["padded_to"] == "8" and json.loads(meta["padded_cfg"]) == padded.cfg != finetuned.cfg
    assert json.loads(meta["cfg"]) == finetuned.cfg
    assert tuned["onnx_macs"] == count_conv_linear_macs(padded) > tuned[MACS] == count_conv_linear_macs(finetuned)
    assert tuned["max_abs_diff"] <= 1e-4 and 0 <= tuned["onnx_test_acc"] <= 1
    assert tuned[MACS_RATIO] == metrics[sparse][MACS] / tuned[MACS] > 1
    for b in (1, 8):
        rates = tuned[per_batch(ONNX_IMAGES_PER_S, b)], tuned[per_batch(of_sparse(ONNX_IMAGES_PER_S), b)]
        assert tuned[per_batch(ONNX_SPEEDUP, b)] == rates[0] / rates[1]
        assert tuned[per_batch(EAGER_SPEEDUP, b)] > 0
    widths = json.loads((project / "reports/export/widths.json").read_text())
    plain, rounded = widths[pruned_model("0.5")], widths[pruned_model("0.5") + "_round4"]
    assert (plain[ROUND_TO], rounded[ROUND_TO]) == (1, 4)
    assert plain[NUM_PARAMS] < rounded[NUM_PARAMS] and plain[MACS] < rounded[MACS]
    assert plain[NUM_PARAMS] == tuned[NUM_PARAMS]  # the fine-tuned model is the plain pruned one here
    assert 0 <= rounded[TEST_ACC] <= 1 and rounded[per_batch(ONNX_SPEEDUP, 8)] > 0
    assert "finetuned_0.5: max |Δ logit|" in capsys.readouterr().out


def test_export_stage_fails_in_one_line_and_writes_nothing_when_onnx_runtime_disagrees(project, capsys) -> None:
    assert main(["export", "--set", "export.atol=1e-12"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: export: sparse_lambda_1e-4: ONNX Runtime's logits differ"), err
    assert err.count("\n") == 1, err
    assert not (project / "models/exported").exists() and not (project / "reports/export").exists()
    assert not list((project / ".netslim/state").glob("*.staging"))  # the staged files went with the failure


def test_a_nan_model_fails_the_export_check_instead_of_reading_as_a_perfect_match(exported) -> None:
    _, vgg = exported["vgg19"]
    broken = copy.deepcopy(vgg.model)
    with torch.no_grad():
        broken.classifier.weight.fill_(float("nan"))
    assert math.isnan(max_abs_difference(broken, vgg.session, images(4)))
    with pytest.raises(ExportError, match="vgg19: its logits on 4 test images hold NaN or inf"):
        check_matches("vgg19", broken, vgg.session, images(4), atol=1e-4)


def test_export_stage_refuses_a_nan_checkpoint_naming_it(project, capsys) -> None:
    path = project / "models/finetuned/0.5.pt"
    checkpoint = load_checkpoint(path)
    checkpoint["state_dict"]["classifier.weight"].fill_(float("nan"))
    save_torch(path, checkpoint)  # below save_model, which would refuse to write it
    assert main(["export"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {Path('models/finetuned/0.5.pt')}: 1 tensors hold NaN or inf"), err
    assert not (project / "models/exported").exists() and not (project / "reports/export").exists()


def test_export_stage_names_a_missing_finetuned_model(project, capsys) -> None:
    (project / "models/finetuned/0.5.pt").unlink()
    assert main(["export"]) == 2
    assert "models/finetuned/0.5.pt" in capsys.readouterr().err


# ---- the report ------------------------------------------------------------------------------


def test_report_section_shows_speedups_next_to_the_macs_ratio_and_the_widths_side_by_side() -> None:
    from netslim.report.markdown import export_markdown

    assert export_markdown({}, {}) == []
    metrics = {
        "threads": 2,
        "opset": OPSET,
        "pad_to": 8,
        train_model("1e-2"): {MACS: 1000, "max_abs_diff": 1e-6},
        finetuned_model("0.9"): {
            MACS_RATIO: 5.5,
            "onnx_macs": 1_234_567,
            per_batch(ONNX_SPEEDUP, 1): 2.2,
            per_batch(ONNX_SPEEDUP, 64): 3.85,
            per_batch(ONNX_SPEEDUP_OVER_MACS_RATIO, 1): 0.4,
            per_batch(ONNX_SPEEDUP_OVER_MACS_RATIO, 64): 0.7,
            per_batch(EAGER_SPEEDUP, 1): 1.41,
            per_batch(EAGER_SPEEDUP, 64): 1.88,
            "onnx_test_acc": 0.71,
            "max_abs_diff": 2.5e-6,
        },
    }
    at64 = per_batch(ONNX_SPEEDUP, 64)
    widths = {
        "threads": 2,
        pruned_model("0.5"): {ROUND_TO: 1, NUM_PARAMS: 123456, MACS: 2_500_000, TEST_ACC: 0.5, at64: 0.9},
        pruned_model("0.5") + "_round8": {ROUND_TO: 8, NUM_PARAMS: 130000, MACS: 2_700_000, TEST_ACC: 0.52, at64: 1.3},
    }
    text = "\n\n".join(export_markdown(metrics, widths))
    assert f"opset {OPSET}" in text and "with 2 threads" in text
    assert "padded with zero channels to multiples of 8 (`export.pad_to`)" in text
    row = table_row(text, "pruned 90% + fine-tuned", "MACs run")
    assert (row["MACs ratio"], row["MACs run"], row["ONNX test accuracy"], row["max abs Δ logit"]) == (
        "5.50×",
        "1.2 M",
        "71.00%",
        "2.5e-06",
    )
    for batch, onnx_speedup, of_macs, eager in ((1, "2.20×", "0.40×", "1.41×"), (64, "3.85×", "0.70×", "1.88×")):
        assert row[f"speedup (batch {batch})"] == onnx_speedup and row[f"of MACs ratio (batch {batch})"] == of_macs
        assert row[f"eager speedup (batch {batch})"] == eager
    assert "padded with zero channels" not in "\n\n".join(export_markdown(metrics | {"pad_to": None}, widths))
    # the fine-tuned 50% model has the plain pruned widths: what padding gave is said from the two rows
    metrics[finetuned_model("0.5")] = {NUM_PARAMS: 123456, at64: 1.5, "onnx_macs": 3_000_000}
    text = "\n\n".join(export_markdown(metrics, widths))
    padding = line_starting(text, "Padding at export")  # the fine-tuned model padded to 8, then unpadded
    assert "pruned 50% + fine-tuned" in padding and numbers_in(padding) == ["64", "50%", "1.50×", "8", "0.90×"]
    assert "Padding at export" not in "\n\n".join(export_markdown(metrics | {"pad_to": None}, widths))
    rounded = {row["round_to"]: row for row in markdown_table(text, "round_to")}
    assert set(rounded) == {"1", "8"} and all(row["pruned model"] == "pruned 50%" for row in rounded.values())
    accuracy, speedup = "accuracy right after pruning", "ONNX speedup (batch 64)"
    assert [rounded["1"][k] for k in ("params", "MACs", accuracy, speedup)] == ["123,456", "2.5 M", "50.00%", "0.90×"]
    assert [rounded["8"][k] for k in ("params", "MACs", accuracy, speedup)] == ["130,000", "2.7 M", "52.00%", "1.30×"]
    rounding = line_starting(text, "In this run")  # at batch 64: plain widths, then rounded to 8
    assert "pruned 50%" in rounding and numbers_in(rounding) == ["64", "50%", "0.90×", "1.30×", "8"]


def test_the_pull_request_diff_tables_export_speed_per_model() -> None:
    """ci-report reads every dvc.yaml metrics file; the export metrics, nested by model, become one table each."""
    from netslim.ci_report import Change, metric_tables

    diff = {  # what `dvc metrics diff --json --all` reports for reports/export/metrics.json
        "reports/export/metrics.json": {
            "threads": {"old": 2, "new": 2},
            f"finetuned_0.5.{per_batch(ONNX_SPEEDUP, 64)}": {"old": 0.9, "new": 1.4, "diff": 0.5},
            f"finetuned_0.5.{MACS_RATIO}": {"old": 2.2, "new": 2.0, "diff": -0.2},
            f"finetuned_0.9.{per_batch(ONNX_SPEEDUP, 1)}": {"old": None, "new": 2.3},
        }
    }
    tables = metric_tables(diff)
    assert tables["`reports/export/metrics.json` · finetuned_0.5"] == [
        Change(MACS_RATIO, 2.2, 2.0),
        Change(per_batch(ONNX_SPEEDUP, 64), 0.9, 1.4),
    ]
    assert tables["`reports/export/metrics.json` · finetuned_0.9"] == [Change(per_batch(ONNX_SPEEDUP, 1), None, 2.3)]


def test_export_stage_refuses_a_finetuned_model_of_another_lambda_than_its_reference(project, capsys) -> None:
    path = project / "models/finetuned/0.5.pt"
    checkpoint = load_checkpoint(path)
    checkpoint["provenance"]["lambda"] = 1e-2
    save_torch(path, checkpoint)
    assert main(["export"]) == 2
    assert capsys.readouterr().err == (
        f"error: {Path('models/finetuned/0.5.pt')}: was pruned from the λ=1e-2 model but the reference it is timed "
        "against is the λ=1e-4 model (prune.lambda); rerun prune and finetune for it (`dvc repro`)\n"
    )
