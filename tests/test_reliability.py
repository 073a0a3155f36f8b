"""Issue 26's failure classes, each on the smallest thing that shows it: non-finite values refused where they enter
or leave, stage outputs committed as a unit under a lock, a full or read-only disk named in one line, params and
metrics files that are broken in ways a YAML or CSV parser alone would report badly.

Process-level cases (a real `netslim` killed, interrupted or run twice) are in tests/test_faults.py.
"""

from __future__ import annotations

import errno
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_process, tmpfs
from netslim.ci_report import format_value
from netslim.cli import main
from netslim.config import ConfigError, PruneConfig, load_config
from netslim.engine import FitSettings, TrainingDiverged, fit
from netslim.io import (
    MetricsError,
    StageBusy,
    check_metrics,
    describe_os_error,
    save_torch,
    stage_lock,
    stage_outputs,
    write_json,
)
from netslim.models import build_model
from netslim.slimming.threshold import PruneError
from netslim.stages.report import _Reader
from netslim.steps.prune import check_removed

# ---- non-finite values ------------------------------------------------------------------------


def test_a_diverging_training_stops_in_one_line_naming_the_lr_key(tiny_data):
    torch.manual_seed(0)
    model = build_model("vgg19", tiny_data.num_classes, width=0.0625)
    settings = FitSettings(epochs=2, batch_size=64, lr=1e30, eval_batch_size=256, channels_last=False)
    with pytest.raises(TrainingDiverged) as info:
        fit(model, tiny_data, settings, torch.device("cpu"), desc="train λ=1e-4", lr_key="train.lr")
    assert str(info.value) == "train λ=1e-4: diverged at epoch 1, loss nan; lower train.lr"


@pytest.mark.parametrize(
    ("metrics", "problem"),
    [
        ({"test_acc": math.nan}, "test_acc is NaN"),
        ({"speedup_b1": math.inf}, "speedup_b1 inf is not a finite number"),
        ({"num_params": 10**309}, "num_params a 310-digit number is not a finite number"),
        ({"finetuned_0.5": {"macs": "many"}}, "finetuned_0.5.macs 'many' is not a number"),
        ({"rows": [1.0, -math.inf]}, "rows[1] -inf is not a finite number"),
    ],
)
def test_a_metric_that_is_not_a_finite_number_is_refused_naming_file_and_key(metrics, problem):
    with pytest.raises(MetricsError) as info:
        check_metrics(metrics, "reports/x/metrics.json")
    assert str(info.value).startswith(f"reports/x/metrics.json: {problem}"), info.value


def test_flags_nulls_and_the_validation_accuracy_of_a_run_without_validation_data_are_allowed():
    check_metrics({"meets_constraints": True, "pad_to": None, "val_acc": math.nan, "m": {"val_acc": math.nan}}, "f")


def test_the_report_refuses_an_empty_or_binary_csv_and_a_nan_metric_naming_the_file(tmp_path):
    empty, binary, nan = tmp_path / "empty.csv", tmp_path / "binary.csv", tmp_path / "metrics.json"
    empty.write_text("")
    binary.write_bytes(bytes(range(256)) * 4)
    nan.write_text('{"test_acc": NaN}')
    read = _Reader()
    for path in (empty, binary):
        with pytest.raises(ConfigError, match=f"^{path}: empty or not a CSV table; rerun the train stage"):
            read.csv(path, "train", ("epoch",))
    with pytest.raises(MetricsError, match=f"^{nan}: test_acc is NaN"):
        read.json(nan, "train")


def test_the_pr_diff_marks_a_non_finite_or_absurd_metric_instead_of_printing_it():
    assert format_value(math.nan) == "**not a finite metric (nan)**"
    assert format_value(1e300) == "**not a finite metric (1e+300)**"
    assert format_value(0.5) == "0.5"


def test_pruning_that_removes_nothing_is_refused_with_the_keys_to_change(capsys):
    keys = "prune.min_channels 64 and prune.round_to 1"
    with pytest.raises(PruneError, match=f"a ratio of 0.9 removes no channel: {keys} keep every channel"):
        check_removed(0.9, 0.0, PruneConfig(min_channels=64))
    check_removed(0.9, 0.2, PruneConfig(min_channels=64))
    assert "removes only 20.0% of the prunable channels" in capsys.readouterr().err
    with pytest.raises(PruneError, match="prune.round_to 1 and prune.max_layer_ratio 0.1 keep every channel"):
        check_removed(0.9, 0.0, PruneConfig(min_channels=64, max_layer_ratio=0.1))


# ---- params.yaml ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  lr: 1e-3\n  lr: 1e-2\n", "duplicate key 'lr' (line 3); keep one of the two"),
        ("train:\n  lr: !!python/object/apply:os.system [id]\n", "tags are not allowed"),
        ("", "the file is empty"),
        ("- train\n- prune\n", "must hold a mapping of sections, not a list"),
        ("experiment:\n  seed: 18446744073709551616\n", "experiment.seed: 18446744073709551616 must be in 0..4294"),
        ("train:\n  lr: .inf\n", "train.lr: inf must be a finite number"),
        ("train:\n  lr: 1e999\n", "train.lr: inf must be a finite number"),
    ],
)
def test_a_broken_params_file_is_one_line_saying_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, {"train.epochs": 1})  # with --set: a list-shaped file used to fail on .setdefault
    assert message in str(info.value) and "\n" not in str(info.value), info.value


def test_a_folder_where_the_params_file_should_be_is_named_as_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a params file"):
        load_config(tmp_path)


# ---- disks ------------------------------------------------------------------------------------


def test_a_full_disk_is_no_space_left_on_device_naming_the_file(tmp_path):
    with tmpfs(tmp_path / "disk", "size=64k") as disk:
        with pytest.raises(OSError) as info:
            save_torch(disk / "best.pt", {"w": torch.zeros(100_000)})
        assert describe_os_error(info.value).startswith(f"no space left on device: {disk / 'best.pt'}; free some")
        assert list(disk.iterdir()) == []  # the temp file went with the failure


def test_no_space_for_the_outputs_is_found_before_the_work(tmp_path):
    ran = []
    with tmpfs(tmp_path / "disk", "size=64k") as disk:
        with pytest.raises(OSError) as info, stage_outputs(tmp_path / "work", "x", [disk / "a.pt"], 10**6):
            ran.append(True)
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(disk), info.value
    assert not ran


def test_a_read_only_output_folder_is_refused_before_the_work(tmp_path):
    ran = []
    with tmpfs(tmp_path / "ro", "size=64k,ro") as folder:
        with pytest.raises(OSError) as info, stage_outputs(tmp_path / "work", "x", [folder / "sub/a.pt"]):
            ran.append(True)
    assert describe_os_error(info.value) == f"{folder}: read-only file system; point paths.* at a writable folder"
    assert not ran


# ---- outputs as a unit, and the lock ---------------------------------------------------------


def _old_set(tmp_path: Path) -> list[Path]:
    targets = [tmp_path / "models/a.pt", tmp_path / "reports/a/metrics.json"]
    for target in targets:
        write_json(target, {"run": "old"})
    return targets


def _contents(targets: list[Path]) -> list[str]:
    return [json.loads(t.read_text())["run"] for t in targets]


def test_outputs_replace_the_old_set_together_on_commit(tmp_path):
    targets = _old_set(tmp_path)
    with stage_outputs(tmp_path / "state/s-1", "s", targets) as outputs:
        for target in targets:
            write_json(outputs.path(target), {"run": "new"})
        assert _contents(targets) == ["old", "old"]  # nothing moves before the commit
        outputs.commit()
    assert _contents(targets) == ["new", "new"]
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["s-1.lock"]


def test_a_failure_after_the_first_write_leaves_the_old_set_and_no_staged_file(tmp_path):
    targets = _old_set(tmp_path)
    with pytest.raises(RuntimeError, match="second write"), stage_outputs(tmp_path / "state/s-1", "s", targets) as out:
        write_json(out.path(targets[0]), {"run": "new"})
        raise RuntimeError("second write")
    assert _contents(targets) == ["old", "old"]
    assert not (tmp_path / "state/s-1.staging").exists()


KILLED_AT = """
import os, signal, sys
from pathlib import Path
import netslim.io as nio
targets = [Path("models/a.pt"), Path("reports/a/metrics.json")]
renames = []
real = os.replace
def replace(a, b):  # the commit's renames: its journal's atomic write, then one per target
    real(a, b)
    renames.append(b)
    if len(renames) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
with nio.stage_outputs(Path("state/s-1"), "s", targets) as out:
    nio.write_json(out.path(targets[0]), {"run": "new"})
    if sys.argv[1] == "write":
        os.kill(os.getpid(), signal.SIGKILL)
    nio.write_json(out.path(targets[1]), {"run": "new"})
    os.replace = replace  # die between the commit's two moves
    out.commit()
"""


@pytest.mark.parametrize(("killed", "after_next_start"), [("write", ["old", "old"]), ("commit", ["new", "new"])])
def test_a_stage_sigkilled_mid_write_or_mid_commit_ends_as_one_whole_set(tmp_path, killed, after_next_start):
    targets = _old_set(tmp_path)
    done = run_process([sys.executable, "-c", KILLED_AT, killed], cwd=tmp_path, timeout=60)
    assert done.returncode == -9, done.stderr
    if killed == "write":
        assert _contents(targets) == ["old", "old"]
    with stage_outputs(tmp_path / "state/s-1", "s", targets):  # the next run of the stage: finishes or drops
        assert _contents(targets) == after_next_start
    temps = [p for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".staged"))]
    assert not temps and not (tmp_path / "state/s-1.staging").exists()


def test_a_second_run_of_the_same_stage_is_refused_while_the_first_holds_the_lock(tmp_path):
    lock = tmp_path / "train-1e-4.lock"
    with stage_lock(lock, "train --lambda 1e-4"):
        with pytest.raises(StageBusy) as info, stage_lock(lock, "train --lambda 1e-4"):
            pass
        assert str(info.value) == (
            f"{lock}: another `netslim train --lambda 1e-4` (pid {os.getpid()}) is writing the same outputs; wait "
            "for it to finish or stop it, then rerun"
        )
    with stage_lock(lock, "train --lambda 1e-4"):  # released when the first run ended
        pass


def test_debug_shows_the_traceback_a_user_error_otherwise_hides(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("train: {lr: 1e-3, lr: 1}\n")
    assert main(["train", "--lambda", "0"]) == 2
    assert capsys.readouterr().err == "error: params.yaml: duplicate key 'lr' (line 1); keep one of the two\n"
    with pytest.raises(ConfigError):
        main(["train", "--lambda", "0", "--debug"])
