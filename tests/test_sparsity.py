"""The L1 subgradient on BN γ: exactly λ·sign(γ) on top of the loss gradient, nothing else."""

import copy

import pytest
import torch
from torch import nn

from netslim.models import build_model
from netslim.slimming.sparsity import add_l1_subgradient, sparsity


def _grads_after_backward(model, lam):
    torch.manual_seed(1)
    x = torch.randn(4, 3, 32, 32)
    model.zero_grad()
    model(x).square().mean().backward()
    add_l1_subgradient(model, lam)
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gamma_gradient_is_loss_gradient_plus_lambda_sign_gamma():
    torch.manual_seed(0)
    model = build_model("vgg19", width=0.125)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(-1, 1)  # both signs, so sign() matters
    plain = _grads_after_backward(copy.deepcopy(model), 0.0)
    lam = 1e-2
    with_l1 = _grads_after_backward(model, lam)
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            expected = plain[f"{name}.weight"] + lam * torch.sign(module.weight.data)
            torch.testing.assert_close(with_l1[f"{name}.weight"], expected, rtol=0, atol=1e-7)
            torch.testing.assert_close(with_l1[f"{name}.bias"], plain[f"{name}.bias"], rtol=0, atol=0)
    conv = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    torch.testing.assert_close(with_l1[f"{conv}.weight"], plain[f"{conv}.weight"], rtol=0, atol=0)


def test_lambda_zero_changes_nothing():
    model = build_model("resnet50", width=0.125)
    a = _grads_after_backward(copy.deepcopy(model), 0.0)
    b = _grads_after_backward(model, 0.0)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_affine_and_gradless_batchnorms_are_skipped():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    model[3].weight.requires_grad_(False)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    add_l1_subgradient(model, 0.5)  # must not fail on weight None / grad None
    assert model[1].weight is None and model[3].weight.grad is None


def test_sparsity_counts_small_prunable_gammas():
    model = build_model("vgg19", width=0.125)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    total = sum(bn.num_features for bn in bns)
    for bn in bns:
        bn.weight.data.fill_(1.0)
    bns[0].weight.data[:3] = 1e-4
    assert sparsity(model, 1e-2) == pytest.approx(3 / total)
