"""`make gpu-check`: everything a lent GPU machine should show, in one command of a few minutes.

The seed experiment's real shapes (full-width ResNet-50 and VGG-19 on CIFAR-shaped 32×32 images, its batch size) on
synthetic data, through the project's own code: `engine.train_one_epoch` and `engine.evaluate` timed by
`measure.interleaved_seconds`, the L1 hook `add_l1_subgradient`, `steps.prune.prune_step`, `steps.finetune.finetune`,
`export.onnx_model` and ONNX Runtime, `engine.fit` under torchrun, and the CUDA tests that skip on the CPU (pytest).
A timed sample is a fixed number of optimizer steps; an epoch is extrapolated from it (the seed's steps an epoch)
plus the evaluation of its validation and test images, and the whole seed experiment from those epochs.

Writes reports/gpu/<gpu-name>.{json,md} (after every section, so a run cut short keeps what it measured). Without
CUDA it says so and runs the same code at a tiny size on the CPU (the test suite runs that fallback, so the check
cannot rot); its report goes to a temporary folder unless --out names one. Sections run in order of what a short
loan most needs, each skipped when the time budget cannot hold it; one that fails is recorded and the rest run.
Images are random: the speed of every path here does not depend on pixel values, and accuracies mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netslim.io import atomic_write_text, write_json
from netslim.tools.gpu_report import configured_variant, estimate, new_report, render_markdown
from netslim.tools.gpu_sections import (
    check_l1_under_autocast,
    cuda_tests,
    export_section,
    fit_section,
    fit_settings_for,
    prune_section,
    synthetic_data,
    time_training,
    torchrun_section,
    torchrun_worker,
)
from netslim.tools.gpu_shapes import (
    ARCHS,
    EXPORT_NEEDS,
    NEEDED,
    NEEDS,
    ROOT,
    SEED_PROFILE,
    SIZES,
    CheckSize,
    SeedShape,
    gpu_slug,
    missing_modules,
    seed_config,
)

if TYPE_CHECKING:
    from netslim.config import Config


class Check:
    """Runs sections against a time budget and keeps the report on disk after each one.

    Attributes:
        scale: multiplies NEEDS (GPU seconds at full size); 0 on the CPU fallback, which runs every section.
    """

    def __init__(self, report: dict[str, Any], json_path: Path, budget: float, log: Callable[[str], None]) -> None:
        self.report, self.json_path, self.log = report, json_path, log
        self.started = time.perf_counter()
        self.budget = budget
        self.scale = 1.0

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.started)

    def section(self, name: str, kind: str, run: Callable[..., Any], *args: Any) -> Any:
        """`run(*args)`, its record stored under `name` (a dict, or the last item of a tuple it returns); None when
        skipped (less budget left than NEEDS[kind]) or failed (the error recorded, the check goes on)."""
        needs = NEEDS[kind] * self.scale
        if self.left() < needs:
            reason = f"{self.left():.0f} s of the {self.budget:.0f} s budget left; it needs about {needs:.0f} s"
            self.report["skipped"][name] = reason
            self.log(f"gpu-check: {name}: skipped ({reason})")
            return None
        self.log(f"gpu-check: {name} ...")
        started = time.perf_counter()
        try:
            result = run(*args)
        except Exception as e:  # one broken path must not cost the rest of a short loan
            traceback.print_exc()
            self.report["errors"][name] = f"{type(e).__name__}: {str(e)[:300]}"
            self.log(f"gpu-check: {name}: FAILED: {self.report['errors'][name]}")
            result = None
        else:
            record = result[-1] if isinstance(result, tuple) else result
            self.report["sections"][name] = record | {"seconds": time.perf_counter() - started}
        self.save()
        return result

    def save(self) -> None:
        self.report["seconds"] = time.perf_counter() - self.started
        write_json(self.json_path, self.report)
        atomic_write_text(self.json_path.with_suffix(".md"), render_markdown(self.report))


# ---- the whole check ----------------------------------------------------------------------------


def _machine(device) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": torch.cuda.get_device_name(device),
            "gpus": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
            "memory_bytes": props.total_memory,
            "multiprocessors": props.multi_processor_count,
            "bf16_supported": torch.cuda.is_bf16_supported(),
        }
    return info


def _model(arch: str, size: CheckSize, seed: int):
    import torch

    from netslim.models import build_model

    torch.manual_seed(seed)
    return build_model(arch, 10, width=size.width)


def check_arch(check: Check, arch: str, config: Config, shape: SeedShape, size: CheckSize, device) -> list[Any]:
    """Training timed both ways, the L1 hook under autocast, pruning at every seed ratio, fine-tuning each pruned
    model (timed) and one `fit` epoch of the last: returns [the sparse stand-in, the pruned models...]."""
    from netslim.config import parse_lambda
    from netslim.tools.bench import random_gammas

    seed = config.experiment.seed
    data = synthetic_data(size.steps * (size.batch_size or shape.batch_size), size.eval_images, seed)
    lam = parse_lambda(config.prune.lambda_, "prune.lambda")
    for variant in ("fp32_nchw", "bf16_channels_last"):
        model = _model(arch, size, seed)
        settings = fit_settings_for(config, size, variant, lam)
        check.section(f"train/{arch}/{variant}", "train", time_training, model, data, settings, device, size, shape)
    check.section(f"l1_autocast/{arch}", "l1", check_l1_under_autocast, model, data, settings, device)
    sparse = random_gammas(model, seed)  # as if sparsity-trained: pruning cuts a realistic mix of layers
    arch_config = dataclasses.replace(config, model=dataclasses.replace(config.model, arch=arch, width=size.width))
    tune = fit_settings_for(config, size, "bf16_channels_last", 0.0, config.finetune)
    kept = [sparse]
    for ratio in shape.ratios:
        done = check.section(
            f"prune/{arch}/{ratio:g}", "prune", prune_section, sparse, data, arch_config, device, ratio
        )
        if done is not None:
            kept.append(done[0])
            check.section(
                f"finetune/{arch}/{ratio:g}", "finetune", time_training, done[0], data, tune, device, size, shape
            )
    if len(kept) > 1:
        check.section(f"fit/{arch}", "finetune", fit_section, kept[-1], data, tune, device)
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()
    return kept


def run_check(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    import torch

    from netslim.config import parse_lambda
    from netslim.distributed import resolve_device
    from netslim.engine import set_deterministic

    config = seed_config(args.params, args.profile)
    shape = SeedShape.of(config)
    cuda = torch.cuda.is_available()
    size = SIZES[args.size or ("full" if cuda else "tiny")]
    device = resolve_device("cuda" if cuda else "cpu")
    machine = _machine(device)
    if cuda:
        log(f"gpu-check: {machine['gpu']} ({machine['gpus']} GPU(s), torch {machine['torch']}, CUDA {machine['cuda']})")
    else:
        log(
            "gpu-check: NO GPU FOUND (torch.cuda.is_available() is False): running the CPU fallback at tiny size, "
            "which checks that every path runs; its times say nothing about a GPU."
        )
    name = gpu_slug(machine["gpu"]) if cuda else "cpu-fallback"
    out = Path(args.out) if args.out else (ROOT / "reports" / "gpu" if cuda else Path(tempfile.mkdtemp(prefix="gpu-")))
    out.mkdir(parents=True, exist_ok=True)
    report = new_report(machine, size, shape, configured_variant(config))
    check = Check(report, out / f"{name}.json", args.budget or size.budget_seconds, log)
    # section time estimates are for a GPU at full size: the CPU fallback runs every section within its budget
    check.scale = 1 if cuda else 0
    set_deterministic(config.experiment.deterministic)
    kept = {arch: check_arch(check, arch, config, shape, size, device) for arch in ARCHS}
    sparse, *pruned = kept[shape.arch]
    if not pruned:
        report["skipped"]["export"] = f"no pruned {shape.arch} to export"
    elif missing := missing_modules(EXPORT_NEEDS):
        report["skipped"]["export"] = f"{', '.join(missing)} not installed"
    else:
        data = synthetic_data(size.steps, max(size.eval_images, config.export.check_images), config.experiment.seed)
        check.section(f"export/{shape.arch}", "export", export_section, sparse, pruned[-1], data, config, size)
    check.section("cuda_tests", "tests", cuda_tests)
    if cuda and torch.cuda.device_count() < 2:
        report["skipped"]["torchrun"] = f"{torch.cuda.device_count()} GPU: torchrun with two ranks needs two"
    else:
        size_name = next(name for name, value in SIZES.items() if value == size)
        check.section("torchrun", "torchrun", torchrun_section, args, size_name, device.type, out)
    lam = parse_lambda(config.prune.lambda_, "prune.lambda")
    for arch in ARCHS:  # last: compilation takes minutes, and the budget decides whether it fits
        data = synthetic_data(
            size.steps * (size.batch_size or shape.batch_size), size.eval_images, config.experiment.seed
        )
        settings = fit_settings_for(config, size, "bf16_channels_last_compile", lam)
        model = _model(arch, size, config.experiment.seed)
        check.section(
            f"train/{arch}/bf16_channels_last_compile",
            "compile",
            time_training,
            model,
            data,
            settings,
            device,
            size,
            shape,
        )
    report["estimate"] = estimate(report, shape)
    check.save()
    report["files"] = [str(check.json_path), str(check.json_path.with_suffix(".md"))]
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="(default: %(default)s)")
    parser.add_argument(
        "--profile", type=Path, default=SEED_PROFILE, help="the seed's overrides (default: %(default)s)"
    )
    parser.add_argument("--out", help="report folder (default: reports/gpu on a GPU, a temporary folder without one)")
    parser.add_argument("--size", choices=sorted(SIZES), help="full (default on a GPU) or tiny (default on the CPU)")
    parser.add_argument("--budget", type=float, help="seconds the sections may take (default: 450 at full size)")
    parser.add_argument("--torchrun-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="auto", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if missing := missing_modules(NEEDED):
        print(
            f"error: gpu-check needs {', '.join(missing)}: `make gpu-wheels` here, then carry .whl (docs/gpu.md)",
            file=sys.stderr,
        )
        return 2
    from netslim.config import ConfigError  # after the check: it needs ruamel.yaml

    try:
        if args.torchrun_worker:
            return torchrun_worker(args)
        report = run_check(args, lambda line: print(line, file=sys.stderr, flush=True))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(Path(report["files"][1]).read_text())
    print(f"wrote {report['files'][0]} and {report['files'][1]}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
