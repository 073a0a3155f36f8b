"""`make gpu-check`: its CPU fallback run once at tiny size (so the check a GPU loan depends on cannot rot), and the
pieces it is built from."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import ROOT, committed_params, committed_text
from netslim.config import Config, ConfigError
from netslim.tools import gpu_check, gpu_shapes
from netslim.tools.gpu_check import Check, main
from netslim.tools.gpu_report import new_report
from netslim.tools.gpu_shapes import TINY, SeedShape, gpu_slug, seed_config


def _seed_files(folder: Path) -> tuple[Path, Path]:
    """The committed params.yaml and profiles/seed.yaml, copied into `folder`."""
    profile = folder / "seed.yaml"
    profile.write_text(committed_text("profiles/seed.yaml"))
    return committed_params(folder), profile


@pytest.fixture(scope="module")
def fallback(tmp_path_factory):
    """One run of `python -m netslim.tools.gpu_check --size tiny` without --out: (exit code, stdout, stderr, report)."""
    folder = tmp_path_factory.mktemp("gpu-check")
    params, profile = _seed_files(folder)
    temporary = folder / "tmp"
    temporary.mkdir()
    reports_before = sorted((ROOT / "reports").rglob("*"))
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        patch.setattr(tempfile, "tempdir", str(temporary))  # where the fallback's default folder goes
        code = main(["--params", str(params), "--profile", str(profile), "--size", "tiny"])
    [report_path] = temporary.glob("gpu-*/cpu-fallback.json")
    assert sorted((ROOT / "reports").rglob("*")) == reports_before
    return code, stdout.getvalue(), stderr.getvalue(), json.loads(report_path.read_text()), report_path


@pytest.mark.slow
def test_without_a_gpu_the_check_says_so_and_runs_every_section_of_its_fallback(fallback):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the check runs on it instead of falling back")
    code, stdout, stderr, report, _ = fallback
    assert code == 0 and report["errors"] == {} and report["skipped"] == {}
    assert "NO GPU FOUND" in stderr and "no GPU (CPU fallback)" in stdout
    expected = {f"train/{arch}/{variant}" for arch in gpu_shapes.ARCHS for variant in gpu_shapes.VARIANTS}
    expected |= {f"{kind}/{arch}/{ratio}" for kind in ("prune", "finetune") for arch in gpu_shapes.ARCHS for ratio in (
        "0.5", "0.9")}  # fmt: skip
    expected |= {f"l1_autocast/{a}" for a in gpu_shapes.ARCHS} | {f"fit/{a}" for a in gpu_shapes.ARCHS}
    expected |= {"export/resnet50", "cuda_tests", "torchrun"}
    assert set(report["sections"]) == expected


@pytest.mark.slow
def test_the_fallback_writes_its_report_and_table_beside_each_other_outside_reports(fallback):
    _, stdout, _, report, path = fallback
    table = path.with_suffix(".md").read_text()
    assert table in stdout and "| resnet50 | bf16_channels_last |" in table and "## The seed experiment" in table
    assert not path.is_relative_to(ROOT)


@pytest.mark.slow
def test_the_estimate_is_every_seed_run_times_its_measured_epoch(fallback):
    _, _, _, report, _ = fallback
    seed, sections = report["seed"], report["sections"]
    expected = seed["lambdas"] * seed["train_epochs"] * sections["train/resnet50/bf16_channels_last"]["epoch_seconds"]
    expected += sum(
        seed["finetune_epochs"] * sections[f"finetune/resnet50/{r}"]["epoch_seconds"] for r in ("0.5", "0.9")
    )
    assert (seed["lambdas"], seed["train_epochs"], seed["finetune_epochs"]) == (3, 40, 20)
    assert report["estimate"]["resnet50/bf16_channels_last"]["total_seconds"] == pytest.approx(expected)


@pytest.mark.slow
def test_the_l1_penalty_adds_exactly_lambda_sign_gamma_to_float32_gradients(fallback):
    _, _, _, report, _ = fallback
    for arch in gpu_shapes.ARCHS:
        l1 = report["sections"][f"l1_autocast/{arch}"]
        assert l1["passed"] and l1["gamma_grad_dtypes"] == ["torch.float32"] and l1["max_error"] == 0


@pytest.mark.slow
def test_the_cuda_tests_run_under_pytest_and_skip_without_cuda(fallback):
    _, _, _, report, _ = fallback
    tests = report["sections"]["cuda_tests"]
    assert tests["returncode"] == 0 and "test_bench.py" in tests["files"]
    marked = sum(len(gpu_shapes.GPU_MARK.findall(path.read_text())) for path in (ROOT / "tests").glob("test_*.py"))
    assert marked >= 4 and tests.get("tests_passed" if torch.cuda.is_available() else "tests_skipped") == marked


@pytest.mark.slow
def test_torchrun_trains_two_ranks_through_fit(fallback):
    _, _, _, report, _ = fallback
    torchrun = report["sections"]["torchrun"]
    assert torchrun["passed"] and torchrun["world_size"] == 2 and len(torchrun["epoch_seconds"]) == 2


def _check(tmp_path: Path, budget: float) -> Check:
    report = new_report({"torch": torch.__version__}, TINY, SeedShape.of(Config()), "bf16_channels_last")
    return Check(report, tmp_path / "cpu.json", budget, log=lambda _: None)


def test_a_section_the_budget_cannot_hold_is_skipped_with_the_reason(tmp_path):
    check = _check(tmp_path, budget=10)
    ran = []
    assert check.section("compile/x", "compile", lambda: ran.append(1) or {}) is None
    assert ran == [] and "needs about 150 s" in check.report["skipped"]["compile/x"]


def test_a_failing_section_is_recorded_and_the_next_one_still_runs(tmp_path, capsys):
    check = _check(tmp_path, budget=1000)
    check.section("broken", "l1", lambda: 1 / 0)
    assert check.section("fine", "l1", lambda: {"passed": True})["passed"]
    saved = json.loads((tmp_path / "cpu.json").read_text())
    assert saved["errors"] == {"broken": "ZeroDivisionError: division by zero"} and saved["sections"]["fine"]["passed"]
    assert "**failed**, ZeroDivisionError" in (tmp_path / "cpu.md").read_text()


def test_the_report_is_named_after_the_gpu():
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_the_seed_profile_overrides_params(tmp_path):
    params, profile = _seed_files(tmp_path)
    profile.write_text("model.width: 0.5\ntrain.epochs: 7\n")
    config = seed_config(params, profile)
    assert (config.model.width, config.train.epochs) == (0.5, 7)


def test_a_profile_that_is_not_a_mapping_is_one_line_naming_it(tmp_path):
    params, profile = _seed_files(tmp_path)
    profile.write_text("- model.width\n")
    with pytest.raises(ConfigError, match=f"{profile}: must be a mapping"):
        seed_config(params, profile)


def test_a_missing_package_stops_the_check_at_once_naming_it_and_the_fix(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "NEEDED", ("ruamel.yaml", "no_such_package_xyz"))
    assert main(["--size", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "no_such_package_xyz" in err and "make gpu-wheels" in err and "ruamel" not in err
