"""BN recalibration after pruning, and the initial γ of sparsity training."""

import copy

import pytest
import torch
from torch import nn

from conftest import committed_text, write_params
from netslim.config import ConfigError, load_config
from netslim.engine import FitSettings, evaluate, fit
from netslim.models import batchnorms, build_model
from netslim.slimming.recalibrate import calibration_batches, recalibrate_batchnorm
from netslim.slimming.sparsity import init_bn_scale
from netslim.slimming.surgery import prune

CPU = torch.device("cpu")


def _small_vgg(seed=0):
    torch.manual_seed(seed)
    return build_model("vgg19", num_classes=4, cfg=[16, "M", 16, "M", 32, "M", 32])


def _bn_inputs(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """What each BN sees for each batch in train mode (which does not depend on its running statistics)."""
    probe = copy.deepcopy(model).train()
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in batchnorms(probe)}
    hooks = [
        bn.register_forward_pre_hook(lambda _m, args, name=name: seen[name].append(args[0].detach().clone()))
        for name, bn in batchnorms(probe).items()
    ]
    with torch.no_grad():
        for x in batches:
            probe(x)
    for hook in hooks:
        hook.remove()
    return seen


def test_recalibration_sets_running_statistics_to_those_of_the_calibration_batches():
    model = build_model("resnet50", num_classes=4, width=0.0625).eval()
    with torch.no_grad():  # statistics that are plainly not the batches' own
        for bn in batchnorms(model).values():
            bn.running_mean.fill_(3.0)
            bn.running_var.fill_(7.0)
    weights = {k: v.clone() for k, v in model.named_parameters()}
    torch.manual_seed(1)
    batches = [torch.randn(8, 3, 32, 32) * 2 + 0.5 for _ in range(3)]
    inputs = _bn_inputs(model, batches)

    recalibrate_batchnorm(model, batches)

    assert not model.training
    for name, param in model.named_parameters():
        assert torch.equal(param, weights[name]), f"{name} changed"
    for name, bn in batchnorms(model).items():
        per_batch = inputs[name]
        mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in per_batch]).mean(0)
        var = torch.stack([x.transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for x in per_batch]).mean(0)
        torch.testing.assert_close(bn.running_mean, mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bn.running_var, var, atol=1e-5, rtol=1e-5)
        assert bn.momentum == 0.1, "the momentum is restored after recalibration"


def test_recalibration_without_batches_changes_nothing():
    model = _small_vgg()
    before = copy.deepcopy(model.state_dict())
    recalibrate_batchnorm(model, [])
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_calibration_batches_are_full_and_seeded(tiny_data):
    batches = list(calibration_batches(tiny_data.train, tiny_data.mean, tiny_data.std, 5, 100, CPU, seed=3))
    assert [tuple(b.shape) for b in batches] == [(100, 3, 32, 32)] * 5
    again = list(calibration_batches(tiny_data.train, tiny_data.mean, tiny_data.std, 5, 100, CPU, seed=3))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    # asking for more batches than the split holds gives what it holds
    assert len(list(calibration_batches(tiny_data.train, tiny_data.mean, tiny_data.std, 99, 100, CPU))) == 6


def test_recalibration_recovers_accuracy_of_a_model_pruned_without_sparse_gammas(tiny_data):
    model = _small_vgg()
    fit(model, tiny_data, FitSettings(epochs=2, batch_size=16, lr=3e-3), CPU)  # λ = 0: no γ near zero
    _, unpruned = evaluate(model, tiny_data.test, tiny_data.mean, tiny_data.std, CPU)
    pruned = prune(model, ratio=0.6, min_channels=2, bias_compensation=False).model
    _, plain = evaluate(pruned, tiny_data.test, tiny_data.mean, tiny_data.std, CPU)
    batches = calibration_batches(tiny_data.train, tiny_data.mean, tiny_data.std, 10, 32, CPU)
    recalibrated = recalibrate_batchnorm(copy.deepcopy(pruned), batches)
    _, repaired = evaluate(recalibrated, tiny_data.test, tiny_data.mean, tiny_data.std, CPU)
    assert unpruned > 0.8
    assert repaired > plain + 0.05, f"recalibrated {repaired:.3f} vs plain surgery {plain:.3f}"


def test_bn_init_sets_every_batchnorm_gamma():
    model = init_bn_scale(build_model("resnet50", num_classes=10, width=0.0625), 0.5)
    gammas = torch.cat([bn.weight.detach() for bn in batchnorms(model).values()])
    assert gammas.numel() > 100 and torch.all(gammas == 0.5)
    untouched = init_bn_scale(build_model("vgg19", num_classes=10, width=0.0625), None)
    assert all(torch.all(bn.weight == 1.0) for bn in batchnorms(untouched).values())


@pytest.mark.parametrize(
    ("section", "key", "value", "needle"),
    [
        ("model", "bn_init", 0, "model.bn_init: 0"),
        ("prune", "recalibration_batches", -1, "prune.recalibration_batches"),
    ],
)
def test_bad_bn_init_or_recalibration_batches_is_refused(tmp_path, section, key, value, needle):
    from netslim.config import read_yaml

    params = read_yaml(committed_text("params.yaml"))
    params[section][key] = value
    with pytest.raises(ConfigError, match=needle):
        load_config(write_params(tmp_path / "params.yaml", params))
