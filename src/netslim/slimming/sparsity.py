"""The L1 penalty on BatchNorm scales γ: a subgradient hook between backward() and optimizer.step()."""

from __future__ import annotations

import torch
from torch import nn

from netslim.models import prunable_batchnorms, unwrap


@torch.no_grad()
def add_l1_subgradient(model: nn.Module, lam: float) -> None:
    """Add λ·sign(γ) to the gradient of every affine BatchNorm2d weight γ.

    This is the subgradient of λ·Σ|γ| (the paper's g(γ) = |γ|), applied to every BN as the reference
    code does. Layers with affine=False or no gradient (frozen) are skipped. Called after the DDP
    all-reduce, so every rank adds the same term to the same averaged gradient.
    """
    if lam == 0:
        return
    for m in unwrap(model).modules():
        if isinstance(m, nn.BatchNorm2d) and m.affine and m.weight.grad is not None:
            m.weight.grad.add_(torch.sign(m.weight), alpha=lam)


@torch.no_grad()
def sparsity(model: nn.Module, threshold: float) -> float:
    """Share of prunable γ with |γ| < threshold (the history's "sparsity")."""
    gammas = torch.cat([bn.weight.detach().abs().flatten().float() for bn in prunable_batchnorms(model).values()])
    return float((gammas < threshold).double().mean())


@torch.no_grad()
def prunable_gammas(model: nn.Module) -> torch.Tensor:
    """All prunable γ values (signed, CPU) in one vector, for histograms."""
    return torch.cat([bn.weight.detach().float().cpu().flatten() for bn in prunable_batchnorms(model).values()])


@torch.no_grad()
def init_bn_scale(model: nn.Module, value: float | None) -> nn.Module:
    """Fill every BatchNorm2d γ with `value` (None leaves PyTorch's 1.0), as the reference code does with 0.5.

    The L1 subgradient moves γ by about the same amount per step whatever its size, so starting nearer zero lets
    a short sparsity run push unimportant channels all the way there. Returns the model for chaining.
    """
    if value is not None:
        for m in unwrap(model).modules():
            if isinstance(m, nn.BatchNorm2d) and m.affine:
                m.weight.fill_(value)
    return model
