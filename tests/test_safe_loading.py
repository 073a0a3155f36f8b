"""Checkpoints are read with weights_only=True: a file crafted to run code is refused before its code runs,
and a truncated, foreign or inconsistent checkpoint gets one clear error naming the file."""

from __future__ import annotations

import os
import pickle
import shlex
from pathlib import Path

import pytest
import torch

from netslim.data import DataError, load_prepared
from netslim.engine import load_training_state
from netslim.io import CheckpointError, load_checkpoint, save_torch, write_json
from netslim.models import build_model, default_cfg, load_model, make_checkpoint, save_model
from test_bad_inputs import SPARSE, make_project, run_cli, snapshot


class Touch:
    """Unpickling this runs `touch <marker>`: the classic pickle exploit."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def hostile_torch_file(path: Path, marker: Path) -> Path:
    """A real torch.save zip whose pickle would create `marker` when loaded without weights_only."""
    checkpoint = make_checkpoint(build_model("vgg19", 10, width=0.0625))
    checkpoint["provenance"] = {"note": Touch(marker)}
    torch.save(checkpoint, path)
    return path


def hostile_plain_pickle(path: Path, marker: Path) -> Path:
    """The same exploit as a bare pickle (torch.load's legacy, non-zip path)."""
    path.write_bytes(pickle.dumps({"state_dict": Touch(marker)}, protocol=2))  # torch.save's protocol
    return path


@pytest.mark.parametrize(
    ("write", "unsafe_load"),
    [
        (hostile_torch_file, lambda path: torch.load(path, weights_only=False)),
        (hostile_plain_pickle, lambda path: pickle.loads(path.read_bytes())),
    ],
    ids=["torch-zip", "bare-pickle"],
)
def test_hostile_checkpoint_is_refused_and_its_code_never_runs(write, unsafe_load, tmp_path):
    marker = tmp_path / "pwned"
    path = write(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(f"{path}: refused to load") and "posix.system" in message and "\n" not in message
    assert "weights_only" not in message  # torch's advice to turn the protection off is not passed on
    assert not marker.exists()
    # The file really is hostile: unpickled without weights_only, it runs its code.
    unsafe_load(path)
    assert marker.exists()


def test_hostile_resume_state_is_ignored_without_running_it(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = hostile_torch_file(tmp_path / "state.pt", marker)
    assert load_training_state(path, "any-fingerprint") is None  # training starts fresh instead
    assert "refused to load" in capsys.readouterr().err
    assert not marker.exists()


def test_hostile_prepared_split_is_refused_naming_the_file(tmp_path):
    marker = tmp_path / "pwned"
    write_json(tmp_path / "meta.json", {"num_classes": 10, "classes": list("abcdefghij"), "mean": [0] * 3,
                                        "std": [1] * 3, "sizes": {}, "dataset": "x"})  # fmt: skip
    hostile_torch_file(tmp_path / "train.pt", marker)
    with pytest.raises(DataError, match="train.pt: unreadable"):
        load_prepared(tmp_path)
    assert not marker.exists()


@pytest.mark.slow
def test_netslim_prune_refuses_a_hostile_sparse_checkpoint(tmp_path):
    project = make_project(tmp_path / "project")
    marker = tmp_path / "pwned"
    hostile_torch_file(project / SPARSE, marker)
    before = snapshot(project)
    process = run_cli(project, "prune", "--ratio", "0.5")
    assert process.returncode == 2, process.stderr
    assert process.stderr.strip().splitlines() == [process.stderr.strip()]
    assert process.stderr.startswith(f"error: {SPARSE}: refused to load"), process.stderr
    assert not marker.exists()
    assert snapshot(project) == before


def _checkpoint() -> dict:
    return make_checkpoint(build_model("resnet50", 10, width=0.0625))


def truncated(tmp_path: Path, path: Path) -> None:
    save_model(path, build_model("resnet50", 10, width=0.0625))
    path.write_bytes(path.read_bytes()[:-4096])


def empty(tmp_path: Path, path: Path) -> None:
    path.write_bytes(b"")


def other_arch_weights(tmp_path: Path, path: Path) -> None:
    checkpoint = _checkpoint()
    checkpoint["state_dict"] = build_model("vgg19", 10, width=0.0625).state_dict()
    save_torch(path, checkpoint)


def cfg_of_a_wider_model(tmp_path: Path, path: Path) -> None:
    checkpoint = _checkpoint()
    checkpoint["cfg"] = default_cfg("resnet50", 0.125)
    save_torch(path, checkpoint)


def cfg_of_a_narrower_model(tmp_path: Path, path: Path) -> None:
    checkpoint = _checkpoint()
    checkpoint["cfg"] = default_cfg("resnet50", 0.03125)
    save_torch(path, checkpoint)


def a_huge_width(tmp_path: Path, path: Path) -> None:
    checkpoint = _checkpoint()
    checkpoint["width"] = 1e6  # would allocate gigabytes if built before the check
    save_torch(path, checkpoint)


def a_huge_head(tmp_path: Path, path: Path) -> None:
    checkpoint = _checkpoint()
    checkpoint["num_classes"] = 10**8
    save_torch(path, checkpoint)


def a_huge_cfg_entry(tmp_path: Path, path: Path) -> None:
    checkpoint = _checkpoint()
    checkpoint["cfg"][0] = [10**7, 4]
    save_torch(path, checkpoint)


def nan_weights(tmp_path: Path, path: Path) -> None:
    checkpoint = _checkpoint()
    checkpoint["state_dict"]["fc.weight"].fill_(float("nan"))
    save_torch(path, checkpoint)


def provenance_not_a_mapping(tmp_path: Path, path: Path) -> None:
    checkpoint = _checkpoint()
    checkpoint["provenance"] = ["train"]
    save_torch(path, checkpoint)


def cfg_that_builds_nothing(tmp_path: Path, path: Path) -> None:
    checkpoint = _checkpoint()
    checkpoint["cfg"] = [[1, 2]]
    save_torch(path, checkpoint)


def wrong_num_classes(tmp_path: Path, path: Path) -> None:
    checkpoint = _checkpoint()
    checkpoint["num_classes"] = 7
    save_torch(path, checkpoint)


def state_dict_not_tensors(tmp_path: Path, path: Path) -> None:
    checkpoint = _checkpoint()
    checkpoint["state_dict"] = {"conv1.weight": [1.0, 2.0]}
    save_torch(path, checkpoint)


def a_bare_tensor(tmp_path: Path, path: Path) -> None:
    torch.save(torch.zeros(3), path)


def a_training_state(tmp_path: Path, path: Path) -> None:
    save_torch(path, {"epoch": 3, "model": _checkpoint()["state_dict"]})


def text(tmp_path: Path, path: Path) -> None:
    path.write_text("epoch: 3\n")


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (truncated, "not a readable checkpoint"),
        (empty, "not a readable checkpoint"),
        (text, "not a readable checkpoint"),
        (other_arch_weights, "missing keys"),
        (cfg_of_a_wider_model, "cfg entry 0 is 8, not a width in 1..4 (the unpruned one)"),
        (cfg_of_a_narrower_model, "the cfg was not saved with these weights"),
        (a_huge_width, "width 1000000.0 is outside (0, 4]"),
        (a_huge_head, "num_classes 100000000 is not a class count in 2..1000"),
        (a_huge_cfg_entry, "cfg entry 0 is 10000000, not a width in 1..4"),
        (nan_weights, "1 tensors hold NaN or inf (e.g. fc.weight); the run that wrote it diverged"),
        (cfg_that_builds_nothing, "its cfg has 2 entries, a resnet50 has 32"),
        (provenance_not_a_mapping, "its provenance is a list, not a mapping"),
        (wrong_num_classes, "fc.weight has shape [10, 128] in the file"),
        (state_dict_not_tensors, "not a mapping of names to tensors"),
        (a_bare_tensor, "holds a Tensor"),
        (a_training_state, "not a netslim model checkpoint"),
    ],
)
def test_unusable_checkpoint_is_one_line_naming_the_file(write, expected, tmp_path):
    path = tmp_path / f"{write.__name__}.pt"
    write(tmp_path, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message, message


def test_missing_checkpoint_says_which_stage_writes_it(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: checkpoint not found; run the stage"):
        load_checkpoint(tmp_path / "nope.pt")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "model.pt"
    save_model(path, build_model("vgg19", 10, width=0.0625))
    old = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_torch(path, {"not picklable": lambda: None})
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_a_checkpoint_of_another_arch_than_the_config_names_is_refused(tmp_path):
    path = tmp_path / "best.pt"
    save_model(path, build_model("vgg19", 10, width=0.0625))
    with pytest.raises(CheckpointError, match="holds a vgg19 but model.arch is resnet50; .* set model.arch: vgg19"):
        load_model(path, "resnet50")


def test_a_model_with_nan_weights_is_never_written(tmp_path):
    model = build_model("vgg19", 10, width=0.0625)
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    with pytest.raises(CheckpointError, match="not written: 1 tensors hold NaN or inf .*lower its lr"):
        save_model(tmp_path / "best.pt", model)
    assert list(tmp_path.iterdir()) == []
