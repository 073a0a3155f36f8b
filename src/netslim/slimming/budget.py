"""Pruning to a budget: the smallest ratio whose pruned model meets `prune.target_params` and
`prune.target_latency_ms`.

The parameter budget is counted (`surgery.ratio_for_budget`); the latency budget is measured, by a callable the
caller passes in (the prune stage passes `netslim.export.latency_resolver`, which exports each candidate and times
it in ONNX Runtime), so this policy needs no exporter.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from netslim.config import PruneConfig
from netslim.slimming.surgery import prune, ratio_for_budget
from netslim.slimming.threshold import PruneError, check_min_channels, check_round_to

LATENCY_GRID = 100  # candidate ratios k/100: a 1% step is finer than timing noise tells apart


def ratio_for_latency(
    model: nn.Module,
    target_ms: float,
    latency_of: Callable[[nn.Module], float],
    min_channels: int = 2,
    round_to: int = 1,
    lowest: float = 0.0,
) -> tuple[float, float]:
    """The smallest ratio (on a 1% grid, at least `lowest`) whose pruned model's `latency_of` meets `target_ms`.

    Args:
        model: the sparsity-trained model (left unchanged).
        latency_of: milliseconds of a pruned model, measured (`netslim.export.latency_resolver` exports it and
            times it in ONNX Runtime on this machine).
        min_channels, round_to: as for `prune`.
        lowest: no smaller ratio is tried (e.g. the ratio a parameter budget already needs).

    Latency falls as the ratio grows, so the search bisects: about log2(100) = 7 measurements. Fine-tuning keeps
    the architecture, so a fine-tuned model runs as fast as the pruned one measured here.
    Returns (ratio, its measured milliseconds); PruneError when even the largest ratio misses the target.
    """
    if isinstance(target_ms, bool) or not isinstance(target_ms, int | float) or not target_ms > 0:
        raise PruneError(f"prune.target_latency_ms: {target_ms!r} must be a positive number of milliseconds, e.g. 2.5")
    min_channels, round_to = check_min_channels(min_channels), check_round_to(round_to)
    candidates = [lowest] + [k / LATENCY_GRID for k in range(LATENCY_GRID) if k / LATENCY_GRID > lowest]
    measured: dict[int, float] = {}

    def ms_at(index: int) -> float:
        if index not in measured:
            pruned = prune(model, ratio=candidates[index], min_channels=min_channels, round_to=round_to).model
            measured[index] = latency_of(pruned)
        return measured[index]

    lo, hi = 0, len(candidates) - 1
    if ms_at(hi) > target_ms:
        raise PruneError(
            f"prune.target_latency_ms: {target_ms:g} ms is below the {ms_at(hi):.3g} ms measured at ratio "
            f"{candidates[hi]:g} on this machine; raise target_latency_ms"
        )
    if ms_at(lo) <= target_ms:
        return candidates[lo], ms_at(lo)
    while hi - lo > 1:  # invariant: candidate lo misses the target, candidate hi meets it
        mid = (lo + hi) // 2
        if ms_at(mid) <= target_ms:
            hi = mid
        else:
            lo = mid
    return candidates[hi], ms_at(hi)


def budget_ratio(
    model: nn.Module, prune_config: PruneConfig, latency_of: Callable[[nn.Module], float] | None = None
) -> float:
    """The smallest ratio whose pruned model meets every budget set in `prune_config`.

    Those are prune.target_params (parameters, counted) and prune.target_latency_ms (milliseconds of a pruned
    model as `latency_of` measures it: `netslim.export.latency_resolver` exports it and times it at batch 1 in
    ONNX Runtime on this machine). `latency_of` is needed only with a latency target.
    """
    p = prune_config
    ratio = 0.0 if p.target_params is None else ratio_for_budget(model, p.target_params, p.min_channels, p.round_to)
    if p.target_latency_ms is None:
        return ratio
    if latency_of is None:
        raise ValueError("prune.target_latency_ms is set: budget_ratio needs latency_of to measure the candidates")
    ratio, _ms = ratio_for_latency(
        model,
        p.target_latency_ms,
        latency_of,
        p.min_channels,
        p.round_to,
        lowest=ratio,
    )
    return ratio
