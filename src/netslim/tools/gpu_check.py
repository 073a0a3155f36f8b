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
import importlib.util
import itertools
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netslim import vocabulary as vocab
from netslim.io import atomic_write_text, write_json

if TYPE_CHECKING:
    from netslim.config import Config

ROOT = Path(__file__).resolve().parents[3]  # the checkout: tests/ and profiles/ live there
SEED_PROFILE = Path("profiles/seed.yaml")
ARCHS = ("resnet50", "vgg19")
CIFAR10_TRAIN, CIFAR10_TEST = 50_000, 10_000
# The packages the check imports that a bare GPU image may lack (carry them as wheels: `make gpu-wheels`).
NEEDED = ("ruamel.yaml", "thop")
EXPORT_NEEDS = ("onnx", "onnxruntime", "onnxscript")
GPU_MARK = re.compile(r"^@pytest\.mark\.gpu\b", re.MULTILINE)  # a test that needs CUDA (skipped without it)

# name -> (bf16 autocast, channels_last, torch.compile): the runtime switches of params.yaml
VARIANTS = {
    "fp32_nchw": (False, False, False),
    "bf16_channels_last": (True, True, False),
    "bf16_channels_last_compile": (True, True, True),
}


@dataclass(frozen=True)
class CheckSize:
    """How big the check runs: the seed's shapes on a GPU, a tiny stand-in on the CPU.

    Attributes:
        width: channel width of the models (1.0: the paper's).
        steps: optimizer steps in one timed sample (an epoch is extrapolated from the median sample).
        repeats: timed samples per variant, after one untimed call (cuDNN autotuning, torch.compile).
        eval_images: images evaluation is timed on, scaled to the seed's validation and test images.
        batch_size: None: the seed's train.batch_size.
        compile_backend: torch.compile's backend; the CPU fallback traces with "eager" (inductor's C++ build takes
            minutes on 2 cores) so that the compiled path still runs.
        budget_seconds: what the sections may take together; one that would not fit is skipped (see NEEDS).
    """

    width: float
    steps: int
    repeats: int
    eval_images: int
    batch_size: int | None
    compile_backend: str
    budget_seconds: float


FULL = CheckSize(
    width=1.0, steps=40, repeats=3, eval_images=10_000, batch_size=None, compile_backend="inductor", budget_seconds=450
)
TINY = CheckSize(
    width=0.0625, steps=2, repeats=1, eval_images=32, batch_size=8, compile_backend="eager", budget_seconds=600
)
# about how long each section takes on a GPU at FULL size (seconds), to skip what the budget cannot hold
NEEDS = {"train": 25, "l1": 5, "prune": 30, "finetune": 20, "export": 90, "tests": 60, "torchrun": 90, "compile": 150}


def seed_config(params: Path, profile: Path | None) -> Config:
    """params.yaml with the seed experiment's overrides (profiles/seed.yaml, flat section.key lines) on top."""
    from netslim.config import ConfigError, load_config, read_yaml

    overrides = {}
    if profile is not None and profile.is_file():
        overrides = read_yaml(profile.read_text()) or {}
        if not isinstance(overrides, dict):
            raise ConfigError(f"{profile}: must be a mapping of section.key: value lines, like profiles/seed.yaml")
    return load_config(params, overrides)


def gpu_slug(name: str) -> str:
    """A file name for a device name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def missing_modules(names: tuple[str, ...]) -> list[str]:
    return [name for name in names if importlib.util.find_spec(name) is None]


# ---- the seed's sizes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedShape:
    """What one seed epoch and the whole seed experiment hold, read from the seed config."""

    arch: str
    batch_size: int
    train_images: int  # per epoch, after the validation split is held out
    eval_images: int  # validation + test, evaluated after every epoch
    train_epochs: int
    finetune_epochs: int
    lambdas: int
    ratios: tuple[float, ...]

    @classmethod
    def of(cls, config: Config) -> SeedShape:
        d = config.data
        train = min(d.train_subset or CIFAR10_TRAIN, CIFAR10_TRAIN) - d.val_size
        test = min(d.test_subset or CIFAR10_TEST, CIFAR10_TEST)
        return cls(
            arch=config.model.arch,
            batch_size=config.train.batch_size,
            train_images=train,
            eval_images=d.val_size + test,
            train_epochs=config.train.epochs,
            finetune_epochs=config.finetune.epochs,
            lambdas=len(config.train.lambdas),
            ratios=tuple(float(r) for r in config.prune.ratios if isinstance(r, int | float)),
        )


# ---- the report ----------------------------------------------------------------------------------


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


# ---- the measurements ----------------------------------------------------------------------------


def _data(images: int, eval_images: int, seed: int):
    """Synthetic CIFAR-shaped data: `images` training images, `eval_images` as both validation and test split."""
    from netslim.tools.bench import synthetic_data

    data = synthetic_data(images, 10, seed)
    held_out = synthetic_data(eval_images, 10, seed + 1).train
    return dataclasses.replace(data, val=held_out, test=held_out)


def _settings(config: Config, size: CheckSize, variant: str, lam: float, optim=None):
    from netslim.steps import fit_settings

    amp, channels_last, compiled = VARIANTS[variant]
    settings = fit_settings(config, optim or config.train, lam)
    batch = size.batch_size or settings.batch_size
    return dataclasses.replace(settings, batch_size=batch, amp=amp, channels_last=channels_last, compile=compiled)


def time_training(model, data, settings, device, size: CheckSize, shape: SeedShape) -> dict[str, Any]:
    """Seconds per optimizer step of `engine.train_one_epoch` over `data.train` (one call = size.steps steps), and
    seconds per image of `engine.evaluate`, each the median of size.repeats samples after an untimed call; and the
    seed epoch they add up to (its steps, then its validation and test images evaluated)."""
    import torch

    from netslim.engine import epoch_generator, evaluate, make_optimizer, steps_per_epoch, train_one_epoch
    from netslim.measure import interleaved_seconds, synchronizer
    from netslim.models import memory_format

    model.to(device).to(memory_format=memory_format(settings.channels_last))
    optimizer, scheduler = make_optimizer(model, settings, size.steps)
    trained = torch.compile(model, backend=size.compile_backend) if settings.compile else model  # as engine.fit does
    epochs = itertools.count(1)
    train = data.train.to(device)
    evaluated = data.test.to(device)

    def train_call() -> None:
        generator = epoch_generator(settings.seed, next(epochs))
        train_one_epoch(
            trained, optimizer, train, data.mean, data.std, settings, device, generator, None, 20, scheduler
        )

    def eval_call() -> None:
        evaluate(
            model,
            evaluated,
            data.mean,
            data.std,
            device,
            settings.eval_batch_size,
            settings.amp,
            settings.channels_last,
        )

    sync = synchronizer(device)
    [[first]] = interleaved_seconds([train_call], repeats=1, warmup=0, synchronize=sync)
    [train_samples] = interleaved_seconds([train_call], size.repeats, 0, sync)
    [eval_samples] = interleaved_seconds([eval_call], size.repeats, 1, sync)
    steps = steps_per_epoch(len(train), settings.batch_size)
    step_seconds = statistics.median(train_samples) / steps
    eval_seconds = statistics.median(eval_samples) / len(evaluated)
    epoch_steps = steps_per_epoch(shape.train_images, settings.batch_size)
    return {
        "batch_size": settings.batch_size,
        "steps_per_sample": steps,
        "first_call_seconds": first,  # cuDNN autotuning, allocator warm-up; torch.compile's compilation
        "train_samples_seconds": train_samples,
        "step_seconds": step_seconds,
        "train_images_per_second": settings.batch_size / step_seconds,
        "eval_seconds_per_image": eval_seconds,
        "epoch_seconds": epoch_steps * step_seconds + shape.eval_images * eval_seconds,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }


def check_l1_under_autocast(model, data, settings, device) -> dict[str, Any]:
    """The sparsity penalty under bf16 autocast: one forward/backward as the trainer runs it, then
    `add_l1_subgradient` must add exactly λ·sign(γ) to every BN γ's gradient (float32 after bf16 compute), all
    finite."""
    import torch
    import torch.nn.functional as F

    from netslim.data import normalize
    from netslim.models import batchnorms, memory_format
    from netslim.slimming.sparsity import add_l1_subgradient

    model.to(device).to(memory_format=memory_format(settings.channels_last)).train()
    x = normalize(data.train.images[: settings.batch_size].to(device), data.mean, data.std)
    x = x.contiguous(memory_format=memory_format(settings.channels_last))
    y = data.train.labels[: settings.batch_size].to(device)
    with torch.autocast(device.type, torch.bfloat16, enabled=settings.amp and device.type == "cuda"):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
    model.zero_grad(set_to_none=True)
    loss.backward()
    bns = [bn for bn in batchnorms(model).values() if bn.affine]
    before = [bn.weight.grad.clone() for bn in bns]
    add_l1_subgradient(model, settings.sparsity_lambda)
    with torch.no_grad():  # the expected gradient rounds as the hook's own add does, so they must be equal
        error = max(
            float((bn.weight.grad - (grad + settings.sparsity_lambda * torch.sign(bn.weight))).abs().max())
            for bn, grad in zip(bns, before, strict=True)
        )
    dtypes = sorted({str(bn.weight.grad.dtype) for bn in bns})
    finite = all(bool(torch.isfinite(bn.weight.grad).all()) for bn in bns)
    model.zero_grad(set_to_none=True)
    return {
        "lambda": settings.sparsity_lambda,
        "logits_dtype": str(logits.dtype),
        "gamma_grad_dtypes": dtypes,
        "max_error": error,
        "batchnorms": len(bns),
        "passed": finite and dtypes == ["torch.float32"] and error == 0,
    }


def prune_section(sparse, data, config: Config, device, ratio: float) -> tuple[Any, dict[str, Any]]:
    """`steps.prune.prune_step` at `ratio` (every repair variant, accuracy, MACs, eager speed under the runtime)."""
    from netslim.steps.prune import prune_step

    outcome = prune_step(sparse.cpu(), data, config, device, ratio)  # the stage loads it on the CPU, then moves it
    metrics = outcome.metrics()
    ips, speedup = vocab.EAGER_IMAGES_PER_S, vocab.EAGER_SPEEDUP
    keep = (vocab.RATIO_USED, vocab.CHANNELS_REMOVED, vocab.MACS_RATIO)
    keep += (*vocab.SIZE[:2], *(vocab.of_sparse(k) for k in vocab.SIZE[:2]))
    keep += tuple(vocab.per_batch(speedup, b) for b in (1, 64))
    keep += tuple(vocab.per_batch(k, 64) for k in (ips, vocab.of_sparse(ips)))
    return outcome.result.model, {k: metrics[k] for k in keep if k in metrics} | {"variant": outcome.variant}


def fit_section(model, data, settings, device) -> dict[str, Any]:
    """`steps.finetune.finetune` (engine.fit) for one epoch: the path every training stage takes."""
    from netslim.steps import RunOptions
    from netslim.steps.finetune import finetune

    result = finetune(model, data, dataclasses.replace(settings, epochs=1), device, {}, RunOptions(desc="gpu-check"))
    record = result.fit.history[-1]
    return {
        "epoch_seconds": record["seconds"],
        "train_loss": record["train_loss"],
        "passed": math.isfinite(record["train_loss"]),
    }


def export_section(unpruned, pruned, data, config: Config, size: CheckSize) -> dict[str, Any]:
    """Both models exported (`export.onnx_model`, padded as export.pad_to asks), checked against PyTorch and timed
    in ONNX Runtime on the CPU (`export.speed_rows`), and on ONNX Runtime's CUDA provider when it is installed."""
    import onnxruntime as ort
    import torch

    from netslim.data import normalize
    from netslim.export import (
        Deployable,
        check_matches,
        default_threads,
        max_abs_difference,
        onnx_model,
        ort_session,
        pad_channels,
        speed_rows,
    )
    from netslim.measure import interleaved_seconds

    e = config.export
    threads = e.threads or default_threads()
    images = normalize(data.test.images[: e.check_images].cpu(), data.mean, data.std).contiguous()
    models = {"unpruned": unpruned.cpu().eval(), "pruned": pruned.cpu().eval()}
    protos, deployed, result = {}, {}, {"threads": threads, "providers": ort.get_available_providers()}
    for name, model in models.items():
        started = time.perf_counter()
        protos[name] = onnx_model(pad_channels(model, e.pad_to), image_shape=data.image_shape)
        result[f"{name}_export_seconds"] = time.perf_counter() - started
        deployed[name] = Deployable(model, ort_session(protos[name], threads))
        result[f"{name}_max_abs_diff"] = check_matches(name, model, deployed[name].session, images, e.atol)
    rows = speed_rows(
        deployed["unpruned"], deployed["pruned"], threads, e.batch_sizes, min(e.repeats, size.repeats * 3)
    )
    result["cpu_speed"] = rows
    if "CUDAExecutionProvider" not in result["providers"]:
        result["cuda_provider"] = "not installed (onnxruntime-gpu would add CUDAExecutionProvider)"
        return result
    x = torch.randn(max(e.batch_sizes), *data.image_shape).numpy()
    cuda = {name: ort_session(proto, threads, "CUDAExecutionProvider") for name, proto in protos.items()}
    runs = [lambda s=s: s.run(None, {"images": x}) for s in cuda.values()]
    unpruned_s, pruned_s = interleaved_seconds(runs, size.repeats * 3, 2)
    result["cuda_provider"] = {
        "batch_size": len(x),
        "unpruned_images_per_second": len(x) / statistics.median(unpruned_s),
        "pruned_images_per_second": len(x) / statistics.median(pruned_s),
        "speedup": statistics.median(unpruned_s) / statistics.median(pruned_s),
        "max_abs_diff": max(max_abs_difference(models[n], s, images) for n, s in cuda.items()),
    }
    return result


def cuda_tests() -> dict[str, Any]:
    """The tests marked `gpu` (they skip without CUDA), run by pytest in a process of their own."""
    tests = ROOT / "tests"
    files = sorted(str(p) for p in tests.glob("test_*.py") if GPU_MARK.search(p.read_text()))
    if not files:
        return {"files": [], "summary": f"no test marked gpu under {tests}", "passed": False}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", *files]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else done.stderr[-300:]
    counts = {f"tests_{word}": int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)}
    return {
        "files": [Path(f).name for f in files],
        "returncode": done.returncode,
        "summary": summary,
        "passed": done.returncode == 0,
    } | counts


def torchrun_section(args: argparse.Namespace, size_name: str, device_type: str, out: Path) -> dict[str, Any]:
    """Two ranks of `engine.fit` under torchrun (NCCL on two GPUs, gloo on the CPU fallback), two epochs."""
    result_path = out / "torchrun-worker.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "netslim.tools.gpu_check", "--torchrun-worker", str(result_path), "--size", size_name]
    cmd += ["--params", str(args.params), "--profile", str(args.profile), "--device", device_type]
    env = os.environ | ({"OMP_NUM_THREADS": "1"} if device_type == "cpu" else {})
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited {done.returncode}: {done.stderr.strip()[-400:]}")
    return json.loads(result_path.read_text())


def torchrun_worker(args: argparse.Namespace) -> int:
    """One rank: fit the seed's model for two epochs of size.steps steps per rank; rank 0 writes the epochs."""
    import torch

    from netslim import distributed
    from netslim.engine import fit, resolve_device, world
    from netslim.models import build_model

    size = SIZES[args.size]
    config = seed_config(args.params, args.profile)
    with distributed.session(args.device):
        rank, world_size = world()
        device = resolve_device(args.device)
        settings = dataclasses.replace(_settings(config, size, "bf16_channels_last", 0.0), epochs=2)
        data = _data(size.steps * settings.batch_size * world_size, settings.batch_size, config.experiment.seed)
        torch.manual_seed(config.experiment.seed)
        model = build_model(config.model.arch, 10, width=size.width)
        history = fit(model, data, settings, device).history
        if rank == 0:
            images = size.steps * settings.batch_size * world_size
            write_json(
                args.torchrun_worker,
                {
                    "world_size": world_size,
                    "backend": torch.distributed.get_backend() if world_size > 1 else None,
                    "epoch_seconds": [h["seconds"] for h in history],
                    "images_per_second": images / history[-1]["seconds"],
                    "train_loss": history[-1]["train_loss"],
                    "passed": world_size == 2 and math.isfinite(history[-1]["train_loss"]),
                },
            )
    return 0


SIZES = {"full": FULL, "tiny": TINY}


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
    data = _data(size.steps * (size.batch_size or shape.batch_size), size.eval_images, seed)
    lam = parse_lambda(config.prune.lambda_, "prune.lambda")
    for variant in ("fp32_nchw", "bf16_channels_last"):
        model = _model(arch, size, seed)
        settings = _settings(config, size, variant, lam)
        check.section(f"train/{arch}/{variant}", "train", time_training, model, data, settings, device, size, shape)
    check.section(f"l1_autocast/{arch}", "l1", check_l1_under_autocast, model, data, settings, device)
    sparse = random_gammas(model, seed)  # as if sparsity-trained: pruning cuts a realistic mix of layers
    arch_config = dataclasses.replace(config, model=dataclasses.replace(config.model, arch=arch, width=size.width))
    tune = _settings(config, size, "bf16_channels_last", 0.0, config.finetune)
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
    from netslim.engine import resolve_device, set_deterministic

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
    report = new_report(machine, size, shape, _configured_variant(config))
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
        data = _data(size.steps, max(size.eval_images, config.export.check_images), config.experiment.seed)
        check.section(f"export/{shape.arch}", "export", export_section, sparse, pruned[-1], data, config, size)
    check.section("cuda_tests", "tests", cuda_tests)
    if cuda and torch.cuda.device_count() < 2:
        report["skipped"]["torchrun"] = f"{torch.cuda.device_count()} GPU: torchrun with two ranks needs two"
    else:
        size_name = next(name for name, value in SIZES.items() if value == size)
        check.section("torchrun", "torchrun", torchrun_section, args, size_name, device.type, out)
    lam = parse_lambda(config.prune.lambda_, "prune.lambda")
    for arch in ARCHS:  # last: compilation takes minutes, and the budget decides whether it fits
        data = _data(size.steps * (size.batch_size or shape.batch_size), size.eval_images, config.experiment.seed)
        settings = _settings(config, size, "bf16_channels_last_compile", lam)
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


def new_report(machine: dict[str, Any], size: CheckSize, shape: SeedShape, configured_variant: str) -> dict[str, Any]:
    """The report before any section ran: where, at what size, for which seed experiment."""
    return {
        "gpu": machine.get("gpu"),
        "fallback": "gpu" not in machine,
        "machine": machine,
        "size": asdict(size),
        "seed": asdict(shape),
        "configured_variant": configured_variant,
        "sections": {},
        "skipped": {},
        "errors": {},
        "estimate": {},
    }


def _configured_variant(config: Config) -> str:
    switches = (config.runtime.amp, config.runtime.channels_last, config.runtime.compile)
    return next((name for name, value in VARIANTS.items() if value == switches), "bf16_channels_last")


def estimate(report: dict[str, Any], shape: SeedShape) -> dict[str, Any]:
    """The seed experiment's training time from the measured epochs: every λ's sparsity training, then the
    fine-tuning of every pruned model (pruning and export are seconds beside them), per arch and variant."""
    sections = report["sections"]
    result: dict[str, Any] = {}
    for arch in ARCHS:
        for variant in VARIANTS:
            train, base = sections.get(f"train/{arch}/{variant}"), sections.get(f"train/{arch}/bf16_channels_last")
            tunes = [sections.get(f"finetune/{arch}/{r:g}") for r in shape.ratios]
            if train is None or base is None or any(t is None for t in tunes):
                continue
            train_seconds = shape.lambdas * shape.train_epochs * train["epoch_seconds"]
            # fine-tuning is timed in bf16 + channels_last only; other variants scale it as their training scales
            factor = train["epoch_seconds"] / base["epoch_seconds"]
            tune_seconds = sum(shape.finetune_epochs * t["epoch_seconds"] * factor for t in tunes)
            result[f"{arch}/{variant}"] = {
                "train_epoch_seconds": train["epoch_seconds"],
                "train_seconds": train_seconds,
                "finetune_seconds": tune_seconds,
                "total_seconds": train_seconds + tune_seconds,
            }
    return result


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.2f} s"


def render_markdown(report: dict[str, Any]) -> str:
    m, s, shape = report["machine"], report["sections"], report["seed"]
    batch = report["size"]["batch_size"] or shape["batch_size"]
    where = f"{m['gpu']} (CUDA {m['cuda']}, {m['gpus']} GPU(s))" if m.get("gpu") else "NO GPU: the CPU fallback"
    lines = [
        f"# gpu-check: {m.get('gpu') or 'no GPU (CPU fallback)'}",
        "",
        f"`make gpu-check` on {where}, torch {m['torch']}, {report.get('seconds', 0):.0f} s. Synthetic CIFAR-shaped "
        f"data at the seed's shapes (width {report['size']['width']}, batch {batch}); an epoch is "
        f"{shape['train_images']:,} training images plus {shape['eval_images']:,} evaluated, extrapolated from "
        f"{report['size']['steps']}-step samples.",
        "",
        "| arch | run | ms/step | train img/s | first call s | epoch (extrapolated) |",
        "|---|---|---|---|---|---|",
    ]
    for key, t in s.items():
        kind, *rest = key.split("/")
        if kind in ("train", "finetune") and "step_seconds" in t:
            run = rest[1] if kind == "train" else f"fine-tune {rest[1]}-pruned (bf16_channels_last)"
            lines.append(
                f"| {rest[0]} | {run} | {t['step_seconds'] * 1e3:.1f} | {t['train_images_per_second']:,.0f} | "
                f"{t['first_call_seconds']:.1f} | {_duration(t.get('epoch_seconds', math.nan))} |"
            )
    checks = []
    for key, t in s.items():
        kind = key.split("/")[0]
        if kind == "prune":
            checks.append(
                f"- {key}: params {t[vocab.of_sparse(vocab.NUM_PARAMS)]:,} → {t[vocab.NUM_PARAMS]:,}, MACs ratio "
                f"{t[vocab.MACS_RATIO]:.2f}×, eager speedup "
                + " and ".join(
                    f"{t.get(vocab.per_batch(vocab.EAGER_SPEEDUP, b), math.nan):.2f}× at batch {b}" for b in (1, 64)
                )
            )
        elif kind == "l1_autocast":
            checks.append(
                f"- {key}: logits {t['logits_dtype']}, γ grads {', '.join(t['gamma_grad_dtypes'])}, |error| "
                f"{t['max_error']:.1e}: {'pass' if t['passed'] else 'FAIL'}"
            )
        elif kind == "export":
            row = t["cpu_speed"][-1]
            cuda = t["cuda_provider"]
            cuda_text = cuda if isinstance(cuda, str) else f"{cuda['speedup']:.2f}× at batch {cuda['batch_size']}"
            checks.append(
                f"- {key}: exported in {t['unpruned_export_seconds']:.0f} s / {t['pruned_export_seconds']:.0f} s, "
                f"ONNX Runtime CPU ({t['threads']} threads) pruned speedup {row[vocab.ONNX_SPEEDUP]:.2f}× at batch "
                f"{row['batch_size']}; CUDA provider: {cuda_text}"
            )
        elif kind == "fit":
            checks.append(
                f"- {key}: one epoch of engine.fit in {t['epoch_seconds']:.2f} s, loss {t['train_loss']:.3f}: "
                f"{'pass' if t['passed'] else 'FAIL'}"
            )
        elif kind == "torchrun":
            checks.append(
                f"- {key}: {t['world_size']} ranks ({t['backend']}), {t['images_per_second']:,.0f} img/s in "
                f"its second epoch: {'pass' if t['passed'] else 'FAIL'}"
            )
        elif kind == "cuda_tests":
            verdict = "FAIL" if not t["passed"] else "pass" if t.get("tests_passed") else "all skipped: no CUDA"
            checks.append(f"- {key} ({', '.join(t['files'])}): {t['summary']}: {verdict}")
    lines += ["", *checks]
    lines += [f"- {k}: skipped, {v}" for k, v in report["skipped"].items()]
    lines += [f"- {k}: **failed**, {v}" for k, v in report["errors"].items()]
    lines += ["", "## The seed experiment on this machine", "", *estimate_lines(report), ""]
    return "\n".join(lines)


def estimate_lines(report: dict[str, Any]) -> list[str]:
    shape, est = report["seed"], report["estimate"]
    configured = f"{shape['arch']}/{report['configured_variant']}"
    runs = (
        f"{shape['lambdas']} λ × {shape['train_epochs']} epochs + {len(shape['ratios'])} pruned models × "
        f"{shape['finetune_epochs']} fine-tuning epochs"
    )
    if configured not in est:
        return [f"No estimate: the timings it needs ({configured}) were not measured."]
    lines = []
    for key, e in est.items():
        mark = " (the seed's runtime settings)" if key == configured else ""
        lines.append(
            f"- {key}{mark}: {runs} = {shape['lambdas'] * shape['train_epochs']} × "
            f"{_duration(e['train_epoch_seconds'])} + fine-tuning {_duration(e['finetune_seconds'])} ≈ "
            f"**{_duration(e['total_seconds'])}**"
        )
    if report["fallback"]:
        lines.append("- These are CPU times of tiny models: they check the arithmetic, not a GPU.")
    lines.append(
        "- Pruned models here are cut from random γ, not from a sparsity-trained model: their widths, and so their "
        "fine-tuning time, differ from the real run's. Pruning, export and the report add minutes."
    )
    return lines


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
