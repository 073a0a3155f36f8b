"""The studies (issue 27): the per-layer cap, the controls' models, conv+linear MACs, KD, and studies/dvc.yaml run
end to end by the real `dvc repro` in a temporary git + DVC repository on a tiny project."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil

import pytest
import torch
import yaml
from torch import nn

from conftest import ROOT, committed_stage_file, tiny_params, write_params
from netslim.config import ConfigError, config_from_dict
from netslim.data import normalize
from netslim.engine import FitSettings, distillation_loss, fit
from netslim.measure import count_conv_linear_macs
from netslim.models import build_model, count_params, prunable_batchnorms
from netslim.slimming.surgery import prune, prune_model
from netslim.slimming.threshold import capped_masks, select_channels
from netslim.steps.train import initial_model
from netslim.studies.experiments import random_masks, width_for_params
from netslim.studies.markdown import load_results, report_markdown
from netslim.studies.parts import CFG_NUM_PARAMS, PARTS, load_studies
from netslim.vocabulary import NUM_PARAMS
from test_pipeline import DVC, run


def model_with_gammas(seed: int = 0) -> nn.Module:
    """A tiny ResNet-50 whose prunable γ are random, the deepest layers' the smallest (as sparsity leaves them)."""
    model = build_model("resnet50", 10, None, 0.0625)
    generator = torch.Generator().manual_seed(seed)
    bns = list(prunable_batchnorms(model).values())
    for depth, bn in enumerate(bns):
        bn.weight.data = torch.rand(bn.num_features, generator=generator) / (1 + depth)
    return model


@pytest.mark.parametrize("cap", [0.5, 0.3, 0.75])
def test_the_cap_never_lets_a_layer_lose_more_than_its_share_in_one_pass(cap):
    model = model_with_gammas()
    masks, _ = select_channels(model, 0.6, 1, max_layer_ratio=cap)
    for name, mask in masks.items():
        assert mask.numel() - int(mask.sum()) <= int(cap * mask.numel()), name


def test_the_uncapped_ranking_empties_deep_layers_that_the_cap_protects():
    model = model_with_gammas()
    uncapped, _ = select_channels(model, 0.4, 1)
    capped, _ = select_channels(model, 0.4, 1, max_layer_ratio=0.5)
    removed = lambda masks: sum(m.numel() - int(m.sum()) for m in masks.values())  # noqa: E731
    assert max(1 - m.float().mean() for m in uncapped.values()) > 0.5
    # the cap takes the channels elsewhere: the same count goes when the caps leave enough candidates
    total = sum(m.numel() for m in uncapped.values())
    assert removed(capped) == int(total * 0.4)


def test_the_cap_removes_the_smallest_gammas_among_each_layers_allowed_share():
    gammas = {"a": torch.tensor([0.1, 0.2, 0.3, 0.4]), "b": torch.tensor([0.9, 0.8, 0.05, 0.7])}
    masks, threshold = capped_masks(gammas, 0.375, 1, 0.5)  # 3 of 8 go; uncapped "a" would lose 3
    assert masks["a"].tolist() == [False, False, True, True]  # "a" gives its 2 allowed, "b" its 0.05
    assert masks["b"].tolist() == [True, True, False, True]
    assert threshold == pytest.approx(0.2)


def test_a_cap_of_one_is_the_reference_threshold():
    model = model_with_gammas()
    plain, t1 = select_channels(model, 0.7, 2)
    capped, t2 = select_channels(model, 0.7, 2, max_layer_ratio=1.0)
    assert t1 == t2 and all(torch.equal(plain[k], capped[k]) for k in plain)


def test_a_cap_outside_zero_to_one_is_refused_with_the_key_named(tmp_path, fmnist_dir):
    params = tiny_params(tmp_path, fmnist_dir, prune={"max_layer_ratio": 1.5})
    with pytest.raises(ConfigError, match=r"prune\.max_layer_ratio: 1\.5"):
        config_from_dict(params)


def test_conv_and_linear_macs_equal_a_hand_count():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8×8 output of 8 channels, 3·3·3 MACs each
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2),  # 4×4 output of 8 channels, (8/2)·3·3 MACs each
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),  # 5 outputs, 8 MACs each
    )
    hand = 8 * 8 * 8 * 27 + 4 * 4 * 8 * 36 + 5 * 8
    assert count_conv_linear_macs(model, (2, 3, 8, 8)) == hand


def test_a_scratch_control_has_the_pruned_cfg_and_freshly_initialised_weights(tmp_path, fmnist_dir):
    config = config_from_dict(tiny_params(tmp_path, fmnist_dir))
    sparse = model_with_gammas()
    pruned = prune(sparse, ratio=0.5, min_channels=1).model
    torch.manual_seed(0)
    scratch = initial_model(config, 10, pruned.cfg)
    assert scratch.cfg == pruned.cfg
    assert count_params(scratch) == count_params(pruned)
    shared = [k for k, v in scratch.state_dict().items() if v.is_floating_point() and v.numel() > 1]
    assert all(not torch.equal(scratch.state_dict()[k], pruned.state_dict()[k]) for k in shared if "conv" in k)
    bn = next(iter(prunable_batchnorms(scratch).values()))
    assert torch.all(bn.weight == config.model.bn_init)  # γ as sparsity training starts them, not the sparse γ


def test_the_random_control_keeps_the_per_layer_widths_but_not_the_channels():
    sparse = model_with_gammas()
    masks, _ = select_channels(sparse, 0.6, 1)
    chosen = random_masks(masks, torch.Generator().manual_seed(0))
    assert {k: int(m.sum()) for k, m in chosen.items()} == {k: int(m.sum()) for k, m in masks.items()}
    assert any(not torch.equal(chosen[k], masks[k]) for k in masks)
    assert prune_model(sparse, chosen).cfg == prune_model(sparse, masks).cfg


def test_the_narrower_control_has_about_the_pruned_parameter_count():
    target = count_params(prune(model_with_gammas(), ratio=0.8, min_channels=1).model)
    width = width_for_params("resnet50", 10, target, 0.0625)
    assert abs(count_params(build_model("resnet50", 10, None, width)) - target) / target < 0.15


def test_a_studies_file_with_an_unknown_key_is_refused_with_the_key_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("studies:\n  ratios: [0.5]\n")
    with pytest.raises(ConfigError, match=r"studies\.ratios: unknown key"):
        load_studies(path)


@pytest.mark.slow
def test_the_studies_pipeline_runs_end_to_end_on_a_tiny_project(tmp_path, fmnist_dir):
    repo = tmp_path / "repo"
    (repo / "studies").mkdir(parents=True)
    shutil.copy(ROOT / "dvc.yaml", repo)
    shutil.copy(committed_stage_file("studies/dvc.yaml"), repo / "studies/dvc.yaml")  # as `make study` does
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    write_params(repo / "params.yaml", tiny_params(tmp_path, fmnist_dir, prune={"lambda": "1e-4"}))
    tiny_study = yaml.safe_load((ROOT / "studies/params.yaml").read_text())["studies"] | {
        "seeds": [0],
        "sweep_ratios": [0.3, 0.6],
        "sweep_finetune_ratios": [0.5],
        "latency_repeats": 1,
        "caps": [1.0, 0.9],
        "passes": 2,
    }
    write_params(repo / "studies/params.yaml", {"studies": tiny_study})
    run(["git", "init", "-q"], repo)
    run([DVC, "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny project"], repo)
    output = run([DVC, "repro", "studies/dvc.yaml"], repo)
    assert "train@1e-4" in output and "train@0" not in output  # only the sparse model the studies start from
    out = repo / "reports/studies"
    controls = json.loads((out / "controls.json").read_text())
    assert len(controls["rows"]) == 6 and all(0 <= r["test_acc"] <= 1 for r in controls["rows"])
    assert all(r[NUM_PARAMS] > 0 for r in controls["rows"]) and controls[CFG_NUM_PARAMS] > 0  # the vocabulary's name
    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["ratio"] for r in sweep["rows"]] == [0.3, 0.5, 0.6]
    multipass = json.loads((out / "multipass.json").read_text())
    assert multipass["passes"][-1]["channels_removed"] > multipass["passes"][0]["channels_removed"] > 0
    assert all((out / f"{part}.png").stat().st_size > 0 for part in ("controls", "sweep", "multipass"))
    report = (out / "README.md").read_text()
    assert "Scratch-B" in report and "Multi-pass" in report
    assert "Running stage" not in run([DVC, "repro", "studies/dvc.yaml"], repo)


def test_the_committed_studies_read_with_todays_code_and_name_the_parameter_count_as_the_vocabulary_does():
    """reports/studies/ holds a long run's results that `make study-report` redraws without training again: a key
    renamed in the code but not in those files would break the report, and a stale name would stay in the files."""
    out = ROOT / "reports/studies"
    results = load_results(out)
    rows = [*results["controls"]["rows"], *results["sweep"]["rows"], *results["multipass"]["passes"]]
    assert rows and all(NUM_PARAMS in row and "params" not in row for row in rows)
    assert results["controls"][CFG_NUM_PARAMS] == results["controls"]["rows"][0][NUM_PARAMS]
    assert report_markdown(results) == (out / "README.md").read_text()  # the committed report is today's rendering
    for part in PARTS:
        header = (out / f"{part}.csv").read_text().splitlines()[0].split(",")
        assert NUM_PARAMS in header and "params" not in header, (part, header)


def test_distillation_at_alpha_zero_is_plain_cross_entropy():
    logits, teacher, labels = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    loss = distillation_loss(logits, teacher, labels, alpha=0.0, temperature=4.0)
    assert torch.allclose(loss, nn.functional.cross_entropy(logits, labels))


def test_distillation_pulls_the_student_towards_the_teachers_logits_where_cross_entropy_does_not():
    torch.manual_seed(0)
    x, labels, teacher = torch.randn(32, 6), torch.randint(0, 5, (32,)), torch.randn(32, 5) * 3
    start = nn.Linear(6, 5)

    def trained(alpha: float) -> float:
        student = copy.deepcopy(start)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
        for _ in range(20):
            optimizer.zero_grad()
            distillation_loss(student(x), teacher, labels, alpha=alpha, temperature=1.0).backward()
            optimizer.step()
        return float(
            nn.functional.kl_div(
                student(x).log_softmax(1), teacher.log_softmax(1), reduction="batchmean", log_target=True
            )
        )

    assert trained(1.0) < 0.7 * trained(0.0)


def test_a_distillation_weight_outside_zero_to_one_is_refused_with_the_key_named(tmp_path, fmnist_dir):
    params = tiny_params(tmp_path, fmnist_dir, finetune={"distill_alpha": 2})
    with pytest.raises(ConfigError, match=r"finetune\.distill_alpha: 2"):
        config_from_dict(params)


def small_vgg(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("vgg19", num_classes=4, cfg=[16, "M", 16, "M", 32, "M", 32])


def test_fine_tuning_with_a_teacher_trains_through_the_one_loop_and_agrees_more_with_the_teacher(tiny_data):
    cpu = torch.device("cpu")
    teacher = small_vgg(1)  # untrained: its answers are not the labels', so only distillation follows them
    plain, distilled = small_vgg(0), small_vgg(0)
    settings = FitSettings(epochs=1, batch_size=16, lr=3e-3, augment=False)
    fit(plain, tiny_data, settings, cpu)
    fit(
        distilled,
        tiny_data,
        dataclasses.replace(settings, distill_alpha=1.0, distill_temperature=1.0),
        cpu,
        teacher=teacher,
    )
    x = normalize(tiny_data.test.images, tiny_data.mean, tiny_data.std)
    with torch.no_grad():
        answers = teacher.eval()(x).argmax(1)
        agree = {
            name: float((m.eval()(x).argmax(1) == answers).float().mean())
            for name, m in [("plain", plain), ("kd", distilled)]
        }
    assert agree["kd"] > agree["plain"] + 0.2


def test_distillation_without_a_teacher_is_refused(tiny_data):
    settings = FitSettings(epochs=1, batch_size=16, lr=3e-3, distill_alpha=0.5)
    with pytest.raises(ValueError, match="teacher"):
        fit(small_vgg(0), tiny_data, settings, torch.device("cpu"))
