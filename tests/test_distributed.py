"""torchrun/DDP: a real 2-process gloo run of `netslim train`, plus the pieces that need no launcher."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import tiny_params, write_params
from netslim import distributed
from netslim.cli import main
from netslim.config import ConfigError
from netslim.models import build_model, load_model, prunable_batchnorms
from netslim.slimming.sparsity import add_l1_subgradient

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))

# Launched by torchrun on every rank: the real `netslim train` (cli.main), with the sparsity step's `fit`
# wrapped so that each rank saves the model it ends with. The wrapper only records; training is real.
RANK_DUMP_HELPER = """
import sys
from pathlib import Path

import torch

import netslim.steps.train as train_step
from netslim.cli import main
from netslim.distributed import world
from netslim.engine import fit
from netslim.models import unwrap

dump_dir = Path(sys.argv[1])


def fit_and_dump(model, *args, **kwargs):
    result = fit(model, *args, **kwargs)
    rank, world_size = world()
    state = {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
    torch.save({"world_size": world_size, "state": state, "best_epoch": result.best_epoch},
               dump_dir / f"rank{rank}.pt")
    return result


train_step.fit = fit_and_dump
sys.exit(main(sys.argv[2:]))
"""


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_torchrun_two_ranks_train_identical_weights_and_write_one_set_of_outputs(tmp_path, fmnist_dir, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    params = tiny_params(tmp_path, fmnist_dir, train={"epochs": 2, "batch_size": 32})
    write_params(project / "params.yaml", params)
    monkeypatch.chdir(project)
    assert main(["prepare"]) == 0
    before = _files(project)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    helper = tmp_path / "rank_dump_helper.py"
    helper.write_text(textwrap.dedent(RANK_DUMP_HELPER))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node", "2", str(helper), str(dumps), "train", "--lambda", "1e-4"]
    done = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    ranks = [torch.load(dumps / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [d["world_size"] for d in ranks] == [2, 2]  # a real 2-process group, not two lone runs
    assert ranks[0]["best_epoch"] == ranks[1]["best_epoch"]
    state0, state1 = ranks[0]["state"], ranks[1]["state"]
    assert state0.keys() == state1.keys()
    differing = [k for k in state0 if not torch.equal(state0[k], state1[k])]
    assert differing == [], f"ranks ended with different tensors: {differing[:5]}"

    written = _files(project) - before
    # rank 0's stage lock stays as an empty file (a lock is an flock on it, held only while the stage runs)
    assert written == {
        ".netslim/state/train-1e-4.lock",
        "models/sparse/1e-4/best.pt",
        "models/sparse/1e-4/last.pt",
        "reports/train/1e-4/history.csv",
        "reports/train/1e-4/metrics.json",
        "reports/train/1e-4/gammas.csv",
    }, "expected exactly one set of outputs (no per-rank files, temp files or leftover resume states)"
    assert len((project / "reports/train/1e-4/history.csv").read_text().strip().splitlines()) == 1 + 2

    # The checkpoint loads in one plain process and holds exactly the weights both ranks trained.
    model = load_model(project / "models/sparse/1e-4/last.pt")
    gammas = [f"{name}.weight" for name in prunable_batchnorms(model)]
    assert all(torch.equal(v, state0[k]) for k, v in model.state_dict().items())
    torch.manual_seed(params["experiment"]["seed"])
    untrained = build_model("resnet50", model.num_classes, width=params["model"]["width"]).state_dict()
    assert any(not torch.equal(untrained[k], state0[k]) for k in gammas), "γ did not train"
    model.eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, model.num_classes)


def test_session_outside_torchrun_starts_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed.session("cpu"):
        assert not torch.distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "1")  # `torchrun --nproc-per-node 1`: one process needs no group
    assert distributed.setup("cpu") is False


@pytest.mark.parametrize(("env", "names"), [({"WORLD_SIZE": "two"}, "WORLD_SIZE"), ({"WORLD_SIZE": "2"}, "RANK")])
def test_a_bad_launch_environment_is_one_line_naming_the_variable(monkeypatch, env, names):
    for key in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as error:
        distributed.setup("cpu")
    assert names in str(error.value) and "torchrun" in str(error.value) and "\n" not in str(error.value)


def test_train_stage_with_a_bad_world_size_exits_2_and_writes_nothing(tmp_path, fmnist_dir, monkeypatch, capsys):
    write_params(tmp_path / "params.yaml", tiny_params(tmp_path, fmnist_dir))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "-3")
    before = _files(tmp_path)
    assert main(["train", "--lambda", "1e-4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: environment WORLD_SIZE='-3'") and len(err.splitlines()) == 1
    assert _files(tmp_path) == before


def test_sync_batchnorm_keeps_tensors_and_stays_visible_to_the_l1_penalty():
    torch.manual_seed(0)
    model = build_model("vgg19", 4, width=0.0625)
    plain_state = {k: v.clone() for k, v in model.state_dict().items()}
    gammas_before = [bn.weight for bn in prunable_batchnorms(model).values()]
    x = torch.randn(3, 3, 32, 32)
    reference = model.eval()(x)

    distributed.convert_sync_batchnorm(model)
    bns = list(prunable_batchnorms(model).values())
    assert bns and all(isinstance(bn, torch.nn.SyncBatchNorm) for bn in bns)
    assert all(bn.weight is g for bn, g in zip(bns, gammas_before, strict=True))  # shared, not copied
    assert model.state_dict().keys() == plain_state.keys()
    assert torch.equal(model.eval()(x), reference)

    model.train()
    model(x).sum().backward()
    grads = [bn.weight.grad.clone() for bn in bns]
    add_l1_subgradient(model, 0.5)  # torch's own SyncBatchNorm would be skipped here
    assert all(
        torch.allclose(bn.weight.grad, g + 0.5 * torch.sign(bn.weight)) for bn, g in zip(bns, grads, strict=True)
    )
    plain = build_model("vgg19", 4, width=0.0625)
    plain.load_state_dict(model.state_dict())  # a SyncBN-trained checkpoint loads into the plain model


def test_sync_bn_is_left_alone_without_a_process_group():
    model = build_model("vgg19", 4, width=0.0625)
    assert distributed.maybe_sync_batchnorm(model, True, torch.device("cpu")) is model
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
