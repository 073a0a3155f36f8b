"""A training process killed with SIGKILL at three moments resumes to exactly the uninterrupted result.

One uninterrupted `netslim train --lambda 1e-4 --resume` is the reference. A second project runs the same
command and is killed (1) as soon as the first resume state appears, (2) in the middle of epoch 2 of
the resumed run and (3) right after epoch 3's state is written; each time the same command resumes it,
and the last one runs to completion. While the runs go on, every state the trainer writes is read back,
and after each kill every checkpoint in the project must load: a torn file fails the test.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import run_process, tiny_params, tmpfs, write_fashion_mnist, write_params

pytestmark = pytest.mark.slow

EPOCHS = 4
COMMAND = [sys.executable, "-m", "netslim.cli", "train", "--lambda", "1e-4", "--resume"]
STATE = Path(".netslim/state/train-1e-4.pt")
REPORTS = Path("reports/train/1e-4")
MODELS = Path("models/sparse/1e-4")


class Training:
    """One `netslim train` process; its stderr lines are collected and its resume state watched."""

    def __init__(self, project: Path) -> None:
        self.project = project
        self.lines: list[str] = []
        self.state_epochs: list[int] = []  # the epoch of every distinct state file seen, in order
        self._signature: tuple | None = None
        self.process = subprocess.Popen(
            COMMAND, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def _watch_state(self) -> None:
        """Read the resume state whenever it changed; it must always be complete."""
        from netslim.io import load_checkpoint

        try:
            stat = (self.project / STATE).stat()
        except FileNotFoundError:
            return
        signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if signature != self._signature:
            self._signature = signature
            self.state_epochs.append(int(load_checkpoint(self.project / STATE)["epoch"]))

    @property
    def state_epoch(self) -> int:
        return self.state_epochs[-1] if self.state_epochs else 0

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._watch_state()
            if condition():
                return
            if self.process.poll() is not None:
                self._reader.join(5)
                pytest.fail(f"training ended (rc {self.process.returncode}) before {what}:\n" + "\n".join(self.lines))
            time.sleep(0.005)
        self.kill()
        pytest.fail(f"timed out waiting for {what}:\n" + "\n".join(self.lines))

    def printed(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        self._reader.join(5)

    def finish(self, timeout: float = 300) -> None:
        returncode = self.process.wait(timeout)
        self._reader.join(5)
        assert returncode == 0, "\n".join(self.lines)


def make_project(root: Path, epochs: int = EPOCHS) -> Path:
    """A tiny prepared project: 240 training and 60 test images, a tiny VGG-19, deterministic CPU run."""
    from netslim.config import load_config
    from netslim.data import prepare

    fmnist = write_fashion_mnist(root / "fmnist", n_train=240, n_test=60)
    # vgg19: its 16 convs train a tiny epoch several times faster on a CPU than ResNet-50's 53.
    params = tiny_params(root, fmnist, model={"arch": "vgg19"}, data={"val_size": 32}, train={"epochs": epochs})
    write_params(root / "params.yaml", params)
    config = load_config(root / "params.yaml")
    prepare(config.data, config.experiment.seed, root / config.paths.raw, root / config.paths.prepared)
    return root


def assert_every_checkpoint_loads(project: Path) -> None:
    """No torn file anywhere: every .pt the pipeline left (temp files of an interrupted write aside) loads."""
    from netslim.io import load_checkpoint

    files = [p for p in project.rglob("*.pt") if not p.name.endswith(".tmp")]
    assert files
    for path in files:
        load_checkpoint(path)


def history_without_seconds(project: Path) -> list[dict[str, str]]:
    with open(project / REPORTS / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == EPOCHS
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def state_dicts(project: Path) -> dict[str, dict[str, torch.Tensor]]:
    from netslim.io import load_checkpoint

    return {name: load_checkpoint(project / MODELS / name)["state_dict"] for name in ("best.pt", "last.pt")}


def resumed_from(training: Training) -> int:
    """The epoch the process says it resumed after (0 when it started fresh)."""
    for line in training.lines:
        if line.startswith("resuming "):
            return int(line.split("after epoch ")[1].split("/")[0])
    return 0


def test_three_sigkills_then_resume_end_exactly_like_an_uninterrupted_run(tmp_path):
    base = make_project(tmp_path / "base")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    shutil.copytree(base, reference)
    shutil.copytree(base, killed)

    Training(reference).finish()
    with open(reference / REPORTS / "history.csv", newline="") as f:
        fastest_epoch = min(float(row["seconds"]) for row in csv.DictReader(f))

    # (1) as soon as the first state file appears: epoch 1 is saved, epoch 2 has barely begun.
    first = Training(killed)
    first.wait_until(lambda: first.state_epoch >= 1, "the first state file")
    first.kill()
    assert_every_checkpoint_loads(killed)

    # (2) in the middle of epoch 2 of the resumed run, long before its state write.
    second = Training(killed)
    second.wait_until(lambda: second.printed("resuming "), "the resume message")
    time.sleep(0.25 * fastest_epoch)
    second._watch_state()
    assert second.state_epochs == [1], "the kill was meant to land inside epoch 2"
    second.kill()
    assert_every_checkpoint_loads(killed)

    # (3) right after epoch 3's state write, before epoch 4 can finish.
    third = Training(killed)
    third.wait_until(lambda: third.state_epoch == 3, "epoch 3's state")
    third.kill()
    assert_every_checkpoint_loads(killed)

    last = Training(killed)
    last.finish()

    assert [resumed_from(t) for t in (first, second, third, last)] == [0, 1, 1, 3]
    assert third.state_epochs == [1, 2, 3]  # each state read back whole while the run went on
    assert not (killed / STATE).exists()  # a finished run removes its resume state
    assert (killed / REPORTS / "metrics.json").read_text() == (reference / REPORTS / "metrics.json").read_text()
    assert history_without_seconds(killed) == history_without_seconds(reference)
    assert (killed / REPORTS / "gammas.csv").read_text() == (reference / REPORTS / "gammas.csv").read_text()
    for name, expected in state_dicts(reference).items():
        got = state_dicts(killed)[name]
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected), f"{name} differs"


def _fit_one_epoch(data, state: Path, lr: float, resume: bool):
    from netslim.engine import FitSettings, fit
    from netslim.models import build_model

    torch.manual_seed(0)
    model = build_model("vgg19", data.num_classes, width=0.0625)
    settings = FitSettings(epochs=1, batch_size=64, lr=lr, eval_batch_size=256)
    return fit(model, data, settings, torch.device("cpu"), state_path=state, resume=resume)


@pytest.mark.parametrize("spoil", ["intact", "other-settings", "truncated"])
def test_only_an_intact_state_of_the_same_run_is_resumed(spoil, tiny_data, tmp_path, capsys):
    """A state left by a run with other settings, or one that cannot be read, makes a fresh start, said so."""
    state = tmp_path / "state.pt"
    _fit_one_epoch(tiny_data, state, lr=3e-3, resume=False)
    assert state.is_file()
    if spoil == "truncated":
        state.write_bytes(state.read_bytes()[:-2048])
    result = _fit_one_epoch(tiny_data, state, lr=1e-3 if spoil == "other-settings" else 3e-3, resume=True)
    assert len(result.history) == 1
    err = capsys.readouterr().err
    if spoil == "intact":
        assert result.resumed_from_epoch == 1 and "resuming" in err
    else:
        assert result.resumed_from_epoch == 0
        assert ("belongs to a run with other settings" if spoil == "other-settings" else "ignoring unreadable") in err


# ---- issue 26: a stage interrupted, run twice, or pointed at a full or read-only disk ---------------------------

OLD_METRICS = {"test_acc": 0.5}  # an earlier run's outputs, which every failure below must leave as they are


LONG = 40  # epochs of a run that must still be training when the test acts (about 0.3 s each)


def project_with_old_outputs(root: Path) -> Path:
    from netslim.io import write_json

    project = make_project(root, LONG)
    write_json(project / REPORTS / "metrics.json", OLD_METRICS)
    return project


def old_outputs_intact(project: Path) -> None:
    assert json.loads((project / REPORTS / "metrics.json").read_text()) == OLD_METRICS
    assert not (project / MODELS).exists()  # no new checkpoint beside the old metrics
    leftovers = [p for p in project.rglob("*") if p.name.endswith((".tmp", ".staged")) or p.name.endswith(".staging")]
    assert not leftovers, leftovers


def error_lines(training: Training) -> list[str]:
    return [line for line in training.lines if line.startswith("error: ")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_stage_says_how_to_continue_leaves_the_old_outputs_and_resumes(tmp_path, signum):
    project = project_with_old_outputs(tmp_path)
    first = Training(project)
    first.wait_until(lambda: first.state_epoch >= 1, "the first resume state")
    first.process.send_signal(signum)
    assert first.process.wait(60) == 128 + signum
    first._reader.join(5)
    name = signal.Signals(signum).name
    assert error_lines(first) == [
        f"error: interrupted by {name}: `netslim train --lambda 1e-4 --resume` stopped; its outputs are as they "
        "were before it started; rerun `netslim train --lambda 1e-4 --resume` (or `dvc repro`) to continue after the "
        "last finished epoch"
    ], first.lines
    assert not any("Traceback" in line for line in first.lines), first.lines
    old_outputs_intact(project)
    again = Training(project)  # the lock was released and the epochs done are kept
    again.finish()
    assert resumed_from(again) >= 1, again.lines
    assert json.loads((project / REPORTS / "metrics.json").read_text()) != OLD_METRICS


def test_a_second_run_of_a_running_stage_refuses_in_one_line(tmp_path):
    project = make_project(tmp_path, LONG)
    first = Training(project)
    lock = project / ".netslim/state/train-1e-4.lock"
    first.wait_until(lambda: lock.is_file() and lock.read_text().strip() == str(first.process.pid), "the lock")
    second = run_process(COMMAND, cwd=project, timeout=120)
    assert second.returncode == 2, second.stderr
    assert second.stderr.splitlines() == [
        f"error: {Path('.netslim/state/train-1e-4.lock')}: another `netslim train --lambda 1e-4` (pid "
        f"{first.process.pid}) is writing the same outputs; wait for it to finish or stop it, then rerun"
    ]
    first.finish()


@pytest.mark.parametrize(
    ("mounted", "options", "message"),
    [
        ("models", "size=64k", "error: no space left on device: models (needs about"),
        ("reports", "size=64k,ro", "error: reports: read-only file system; point paths.* at a writable folder"),
    ],
    ids=["full-disk", "read-only"],
)
def test_a_full_or_read_only_output_disk_is_refused_before_training(tmp_path, mounted, options, message):
    project = make_project(tmp_path)
    with tmpfs(project / mounted, options):
        done = run_process(COMMAND, cwd=project, timeout=120)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith(message), done.stderr
    assert "epoch" not in done.stderr and not (project / STATE).exists()  # refused before the first epoch


def test_the_children_of_an_interrupted_stage_are_terminated_and_reaped():
    script = (
        "import signal, subprocess\n"
        "from netslim import cli\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "cli._signal_children(signal.SIGTERM)\n"
        "cli._reap_children()\n"
        "print(cli._children(), open(f'/proc/{child.pid}/stat').read() if child.poll() is None else 'gone')\n"
    )
    done = run_process([sys.executable, "-c", script], timeout=60)
    assert done.stdout.split() == ["[]", "gone"], done.stdout + done.stderr  # stopped, and reaped: no zombie


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_a_finished_stage_exits_fails_it_in_one_line(signum):
    """Ctrl-C reaches a stage that has just finished, while the interpreter shuts down (torch's finalizers run in
    atexit): one line and exit 128 + the signal, no traceback; failing, so an interrupted `dvc repro` stops there.
    The atexit hook below, registered after torch's, runs first and signals the process as the demo's Ctrl-C did
    in CI."""
    from importlib.metadata import entry_points

    assert entry_points(group="console_scripts")["netslim"].value == "netslim.stage_server:entry"  # then cli.entry
    script = (
        "import atexit, os, sys, time\n"
        "import torch\n"
        "from netslim import cli\n"
        f"atexit.register(lambda: (os.kill(os.getpid(), {int(signum)}), time.sleep(0.5)))\n"
        "sys.argv = ['netslim', '--help']\n"
        "cli.entry()\n"
    )
    done = run_process([sys.executable, "-c", script], timeout=60)
    assert done.returncode == 128 + signum and done.stdout.startswith("usage"), done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"error: interrupted by {signal.Signals(signum).name} as `netslim --help` exited; its outputs are written but "
        "not recorded: rerun it (or `dvc repro`)"
    ], done.stderr


def test_a_diverging_stage_is_one_line_naming_the_lr_and_writes_nothing(tmp_path):
    from netslim.io import save_torch, write_json
    from netslim.models import build_model, make_checkpoint

    project = make_project(tmp_path)
    checkpoint = make_checkpoint(build_model("vgg19", 10, width=0.0625))
    bias = checkpoint["state_dict"]["classifier.bias"]
    bias.copy_(torch.tensor([3e38, -3e38]).repeat(5))  # finite, but logits 6e38 apart overflow: the loss is inf
    save_torch(project / "models/pruned/0.5.pt", checkpoint)
    write_json(project / "reports/finetune/0.5/metrics.json", OLD_METRICS)
    done = run_process([sys.executable, "-m", "netslim.cli", "finetune", "--ratio", "0.5"], cwd=project, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == ["error: finetune 50%: diverged at epoch 1, loss inf; lower finetune.lr"]
    assert json.loads((project / "reports/finetune/0.5/metrics.json").read_text()) == OLD_METRICS
    assert not (project / "models/finetuned").exists()
