"""netslim.stage_server: a stage forked from the demo's server writes, says, exits and stops as it does on its own,
and `netslim` without a server runs the stage itself. The demo's use of it (side by side, Ctrl-C, the same metrics
to the digit as `dvc repro`, no process left) is tests/test_pipeline.py's."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import run_process, tiny_params, write_fashion_mnist, write_params
from netslim.stage_server import SERVER_ENV
from test_faults import LONG, make_project

pytestmark = pytest.mark.slow

NETSLIM = str(Path(sys.executable).with_name("netslim"))  # the console script, as DVC runs it
TRAIN = [NETSLIM, "train", "--lambda", "1e-4", "--resume"]
LOCK = Path(".netslim/state/train-1e-4.lock")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    address = tmp_path_factory.mktemp("server") / "server.sock"
    cmd = [sys.executable, "-m", "netslim.stage_server", str(address)]
    process = subprocess.Popen(cmd, env=os.environ | {"OMP_NUM_THREADS": "1"}, start_new_session=True)
    deadline = time.monotonic() + 180
    while not address.exists():  # it listens once its imports are done
        assert process.poll() is None, f"the server stopped (rc {process.returncode}) before it listened"
        assert time.monotonic() < deadline, "the server did not listen within 180 s"
        time.sleep(0.1)
    yield os.environ | {SERVER_ENV: str(address)}
    process.terminate()
    assert process.wait(30) == 0
    assert not address.exists()


def _cpu_seconds_of(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    """The finished command and the CPU seconds it (not the server's stage) spent."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = run_process(cmd, cwd=cwd, env=env, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return done, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def _project(root: Path) -> Path:
    fmnist = write_fashion_mnist(root / "fmnist", n_train=120, n_test=40)
    write_params(root / "params.yaml", tiny_params(root, fmnist))
    return root


def test_a_stage_in_the_server_writes_and_says_what_it_does_on_its_own_without_paying_for_imports(server, tmp_path):
    served, alone = _project(tmp_path / "served"), _project(tmp_path / "alone")
    prepare = [NETSLIM, "prepare"]
    done, cpu = _cpu_seconds_of(prepare, served, server)
    # no server at this address: the stage runs in `netslim` itself
    own, own_cpu = _cpu_seconds_of(prepare, alone, os.environ | {SERVER_ENV: str(tmp_path / "none.sock")})

    assert done.returncode == own.returncode == 0, done.stderr + own.stderr
    assert done.stdout == own.stdout and "prepared fashion-mnist" in done.stdout
    for split in ("train", "val", "test"):
        mine = torch.load(served / "data/prepared" / f"{split}.pt", weights_only=True)
        theirs = torch.load(alone / "data/prepared" / f"{split}.pt", weights_only=True)
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert cpu < 0.5 < own_cpu, (cpu, own_cpu)  # torch was imported by the server, not by `netslim`

    # a bad value: the same one line and exit code, through the server's child
    bad = [*prepare, "--set", "data.val_size=-3"]
    done, _ = _cpu_seconds_of(bad, served, server)
    own, _ = _cpu_seconds_of(bad, served, os.environ)
    assert done.returncode == own.returncode == 2
    assert done.stderr == own.stderr and len(done.stderr.splitlines()) == 1 and "val_size" in done.stderr

    # argparse's usage error ends the child as it ends a process (SystemExit), not back in the server's loop: the
    # server serves the tests below and stops cleanly at the end (the fixture)
    train = [NETSLIM, "train"]
    done, _ = _cpu_seconds_of(train, served, server)
    own, _ = _cpu_seconds_of(train, served, os.environ)
    assert done.returncode == own.returncode == 2
    assert done.stderr == own.stderr and "--lambda" in done.stderr


def _wait_for_worker(project: Path, client: subprocess.Popen) -> int:
    """The pid of the stage process, from the lock it writes as it starts training."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert client.poll() is None, client.stderr.read() if client.stderr else ""
        if (project / LOCK).is_file() and (text := (project / LOCK).read_text().strip()):
            return int(text)
        time.sleep(0.05)
    pytest.fail("the stage did not start within 180 s")


def _gone(pid: int, timeout: float = 60) -> bool:
    """The process ended and the server reaped it (no zombie left)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.05)
    return False


def test_a_signal_to_netslim_interrupts_its_stage_in_the_server_as_it_would_the_stage_itself(server, tmp_path):
    project = make_project(tmp_path, LONG)
    client = subprocess.Popen(
        TRAIN, cwd=project, env=server, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    worker = _wait_for_worker(project, client)
    assert worker != client.pid  # the server's child trains
    time.sleep(1)  # into its epochs
    client.send_signal(signal.SIGINT)
    assert client.wait(120) == 128 + signal.SIGINT
    errors = [line for line in client.stderr.read().splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: interrupted by SIGINT: `netslim train --lambda 1e-4 --resume` stopped; its outputs are as they were "
        "before it started; rerun `netslim train --lambda 1e-4 --resume` (or `dvc repro`) to continue after the "
        "last finished epoch"
    ]
    assert _gone(worker)


def test_a_killed_netslim_takes_its_stage_in_the_server_with_it(server, tmp_path):
    """The demo kills a DVC process group that outlives its grace period: the stage must not train on unseen."""
    project = make_project(tmp_path, LONG)
    client = subprocess.Popen(TRAIN, cwd=project, env=server, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = _wait_for_worker(project, client)
    client.kill()
    client.wait(30)
    assert _gone(worker), f"stage {worker} still runs after its netslim {client.pid} was killed"


def test_the_server_sees_a_thread_it_must_not_fork_with():
    """It forks only with no thread but the main one (and jemalloc's): a child would lack the others, holding
    whatever lock they held."""
    script = (
        "import json, threading\n"
        "from netslim.stage_server import _other_threads\n"
        "before = _other_threads()\n"
        "stop = threading.Event()\n"
        "threading.Thread(target=stop.wait, daemon=True).start()\n"
        "print(json.dumps([before, _other_threads()]))\n"
    )
    done = run_process([sys.executable, "-c", script], timeout=60)
    before, after = json.loads(done.stdout)
    assert before == [] and len(after) == 1, done.stdout + done.stderr
