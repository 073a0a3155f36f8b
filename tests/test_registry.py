"""The architecture registry: every entry prunes and reloads through the same code; resnet56 is one file.

`ARCHITECTURES` lists every registered model, so each generic test here runs for an architecture as
soon as it is registered; a throwaway architecture defined in this file shows that one entry is all
surgery, checkpoints and the config check need.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import ROOT, tiny_params, write_fashion_mnist, write_params
from netslim.config import ConfigError, config_from_dict, load_config
from netslim.data import load_prepared
from netslim.engine import evaluate
from netslim.models import ARCHITECTURES, build_model, count_params, load_model, prunable_batchnorms, save_model
from netslim.models.architecture import Architecture, ConvLink, LinearLink, Links
from netslim.models.resnet56 import BasicBlock
from netslim.slimming.surgery import cfg_from_masks, prune, prune_model
from netslim.slimming.threshold import select_channels
from netslim.steps.prune import prune_configured
from netslim.vocabulary import TEST_ACC
from test_pipeline import DVC, ran_stages, run
from test_slimming import images, output, randomised, zero_removed_channels

NARROW_WIDTH = {"resnet50": 0.125, "resnet56": 0.25}  # any other arch: 0.125


# ---- ResNet-56 ---------------------------------------------------------------------------------


def test_resnet56_is_the_cifar_resnet_56_with_about_0_85m_parameters() -> None:
    model = build_model("resnet56", num_classes=10)
    assert count_params(model) == 855_770  # 853,018 with the paper's option-A shortcuts + 2,752 for 2 projections
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 27
    assert [b.bn2.num_features for b in blocks] == [16] * 9 + [32] * 9 + [64] * 9
    projections = [b for b in blocks if b.downsample is not None]
    assert len(projections) == 2  # only where stages 2 and 3 start (stride 2, width doubles)
    weighted = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(weighted) - len(projections) == 56  # stem + 27 × 2 convs + fc
    assert model(images(2)).shape == (2, 10)


def test_resnet56_prunes_only_each_blocks_inner_bn() -> None:
    names = list(prunable_batchnorms(build_model("resnet56", width=0.25)))
    assert names == [f"layer{stage}.{block}.bn1" for stage in (1, 2, 3) for block in range(9)]


def test_resnet56_cfg_is_one_inner_width_per_block() -> None:
    model = randomised("resnet56", 0.25)
    masks, _ = select_channels(model, 0.7, 1)
    cfg = cfg_from_masks(model, masks)
    assert cfg == [int(m.sum()) for m in masks.values()] and len(cfg) == 27
    assert prune_model(model, masks).cfg == cfg


# ---- every registered architecture -------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_every_registered_arch_prunes_to_the_masked_model_and_reloads_from_file(arch, ratio, tmp_path) -> None:
    model = randomised(arch, NARROW_WIDTH.get(arch, 0.125))
    masks, _ = select_channels(model, ratio, min_channels=1)
    pruned = prune_model(model, masks, bias_compensation=False)
    x = images()
    assert count_params(pruned) < count_params(model)
    torch.testing.assert_close(output(pruned, x), output(zero_removed_channels(model, masks), x), atol=1e-5, rtol=0)
    save_model(tmp_path / "pruned.pt", pruned)
    loaded = load_model(tmp_path / "pruned.pt")
    assert (loaded.arch, loaded.cfg) == (arch, pruned.cfg)
    assert torch.equal(output(loaded, x), output(pruned, x))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_registered_arch_is_accepted_as_model_arch(arch) -> None:
    assert config_from_dict({"model": {"arch": arch}}).model.arch == arch


def test_an_unknown_arch_names_every_registered_one() -> None:
    with pytest.raises(ConfigError, match=r"model.arch: 'resnet18' is unknown; use one of resnet50, vgg19, resnet56"):
        config_from_dict({"model": {"arch": "resnet18"}})


# ---- a new architecture is one entry -----------------------------------------------------------


class TinyNet(nn.Module):
    """Two conv-BN-ReLU layers and a linear head; cfg = [width of conv a, width of conv b]."""

    def __init__(self, num_classes: int = 10, cfg: list | None = None, width: float = 1.0) -> None:
        super().__init__()
        self.cfg = [max(1, round(8 * width))] * 2 if cfg is None else [int(v) for v in cfg]
        self.arch, self.width, self.num_classes = "tinynet", float(width), num_classes
        self.conv_a, self.bn_a = nn.Conv2d(3, self.cfg[0], 3, padding=1, bias=False), nn.BatchNorm2d(self.cfg[0])
        self.conv_b, self.bn_b = nn.Conv2d(self.cfg[0], self.cfg[1], 3, bias=False), nn.BatchNorm2d(self.cfg[1])
        self.head = nn.Linear(self.cfg[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn_b(self.conv_b(torch.relu(self.bn_a(self.conv_a(x))))))
        return self.head(x.mean(dim=(2, 3)))


def tinynet_links(model: nn.Module) -> Links:
    convs = [ConvLink("conv_a", "bn_a", "bn_a", None), ConvLink("conv_b", "bn_b", "bn_b", "bn_a")]
    return convs, LinearLink("head", "bn_b")


TINYNET = Architecture(
    name="tinynet",
    build=TinyNet,
    default_cfg=lambda width: [max(1, round(8 * width))] * 2,
    prunable=lambda model: ["bn_a", "bn_b"],
    links=tinynet_links,
    cfg_from_kept=lambda model, kept: [kept["bn_a"], kept["bn_b"]],
)


def test_an_architecture_registered_from_outside_prunes_and_reloads(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(ARCHITECTURES, "tinynet", TINYNET)  # the one line a new model file adds to registry.py
    assert config_from_dict({"model": {"arch": "tinynet"}}).model.arch == "tinynet"
    model = randomised("tinynet", 1.0)
    result = prune(model, ratio=0.5, min_channels=1)
    assert sum(result.cfg) == 16 - 9  # kept: |γ| strictly above the 9th smallest (index int(16 × 0.5))
    assert result.params_after < result.params_before
    save_model(tmp_path / "tiny.pt", result.model)
    loaded = load_model(tmp_path / "tiny.pt")
    assert loaded.cfg == result.cfg
    assert torch.equal(output(loaded, images()), output(result.model, images()))


# ---- resnet56 end to end -----------------------------------------------------------------------


@pytest.mark.slow
def test_resnet56_runs_through_dvc_repro_and_its_pruned_models_reload_and_match(tmp_path) -> None:
    """`model.arch: resnet56` is the only change: train, prune 50% and 90%, fine-tune, all by DVC.

    The report stage is left out (`dvc repro finetune`) to keep this test short; it reads only CSV and
    JSON files, which are the same whatever the architecture.
    """
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo)
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    fmnist = write_fashion_mnist(tmp_path / "fmnist")
    params = tiny_params(tmp_path, fmnist, model={"arch": "resnet56", "width": 0.25}, prune={"ratios": [0.5, 0.9]})
    params["runtime"]["channels_last"] = False  # NHWC stalls the CPU's 4-channel convolutions (params.yaml says why)
    params["train"]["lambdas"] = ["1e-4"]
    write_params(repo / "params.yaml", params)
    for cmd in (["git", "init", "-q"], [DVC, "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "r56"]):
        run(cmd, repo)
    stages = ran_stages(run([DVC, "repro", "finetune"], repo))
    assert len(stages) == 6, stages  # prepare, train, prune and finetune at 0.5 and 0.9

    sparse = load_model(repo / "models/sparse/1e-4/best.pt")
    data = load_prepared(repo / "data/prepared")
    config = load_config(repo / "params.yaml")
    for ratio in ("0.5", "0.9"):
        loaded = load_model(repo / f"models/pruned/{ratio}.pt")
        # the prune stage's step (surgery, then the configured repairs), in this process
        again = prune_configured(sparse, data, config, torch.device("cpu"), float(ratio)).model
        assert (loaded.arch, loaded.cfg) == ("resnet56", again.cfg)
        assert count_params(loaded) < count_params(sparse)
        x = images()
        assert torch.equal(output(loaded, x), output(again, x))
        metrics = json.loads(Path(repo / f"reports/prune/{ratio}/metrics.json").read_text())
        _, acc = evaluate(loaded, data.test, data.mean, data.std, device=torch.device("cpu"), batch_size=256, amp=False)
        assert acc == pytest.approx(metrics[TEST_ACC], abs=1e-12)
        assert load_model(repo / f"models/finetuned/{ratio}.pt").cfg == loaded.cfg


def test_no_code_branches_on_an_arch_name() -> None:
    """`arch == "resnet50"` anywhere in src/netslim would be a second place to add a model; the registry is the one."""
    names = set(ARCHITECTURES)
    branches = []
    for path in sorted((ROOT / "src" / "netslim").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                constants = [c.value for c in (node.left, *node.comparators) if isinstance(c, ast.Constant)]
                if names & {c for c in constants if isinstance(c, str)}:
                    branches.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not branches, branches
