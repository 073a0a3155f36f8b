"""`netslim bench`: where the time goes, as ratios measured in one run on this machine.

Four figures, each a ratio of two median times whose samples were taken interleaved (A B, B A, A B ...),
so that a busy, shared machine slows both sides alike. The samples come from measure.py's one timer and its
policy (medians; inference under the `runtime` switches), the same that times prune's speedups:

1. netslim's training epoch vs a seed-style epoch: a torchvision-style Dataset over the same uint8
   images, per-image PIL transforms (Pad(4), RandomCrop(32), RandomHorizontalFlip, ToTensor, Normalize)
   and a DataLoader with worker processes, as the reports we follow trained; same model, optimizer,
   batch, images and L1 penalty;
2. netslim's trainer step vs the bare model step (forward, backward, optimizer.step on a batch already
   on the device): how close the trainer comes to the model's own limit;
3. inference of the unpruned model vs its 50% and 90% pruned versions (γ drawn at random, so no training
   is needed), at batch 1 and 64: the realised speedup next to the MACs ratio, its physical limit;
4. a training epoch with MLflow tracking on (a local SQLite store in a temp dir, per-epoch metrics logged
   as the stages log them) vs off.

Images are synthetic uint8 tensors: the speed of every path here does not depend on pixel values.
Each figure is judged against its target, and benchmarks.md written, by `netslim.tools.bench_report`.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from netslim.config import Config, ConfigError, TrackingConfig
from netslim.data import PreparedData, Split, normalize
from netslim.distributed import resolve_device
from netslim.engine import FitSettings, epoch_generator, make_optimizer, train_one_epoch
from netslim.io import atomic_write_text, write_json
from netslim.measure import count_conv_linear_macs, forward_runner, interleaved_seconds, synchronizer
from netslim.models import ARCHITECTURES, build_model, memory_format, prunable_batchnorms
from netslim.slimming.sparsity import add_l1_subgradient
from netslim.slimming.surgery import prune
from netslim.tools.bench_report import judge, render_markdown

SEED_LOG_INTERVAL = 100  # the reference loop printed loss.item() every 100 batches
STEPS_PER_SAMPLE = 4  # trainer-vs-bare samples time this many steps, so timer noise is small
INFERENCE_IMAGES = 16  # images per inference sample: 16 calls at batch 1, one call at batch 64
PRUNE_RATIOS = (0.5, 0.9)
INFERENCE_BATCHES = (1, 64)


@dataclass(frozen=True)
class BenchSettings:
    arch: str = "vgg19"
    width: float = 0.25
    images: int = 1024  # training images per epoch
    batch_size: int = 64
    repeats: int = 5  # timed samples per variant (medians); inference takes 5x as many (they are cheap)
    warmup: int = 1  # untimed rounds first (allocator, oneDNN/cuDNN plans, worker start-up)
    workers: int = 2  # the seed-style DataLoader's worker processes
    lam: float = 1e-4  # the L1 penalty both training loops apply
    seed: int = 0
    num_classes: int = 10
    threads: int | None = None  # torch intra-op threads; None = torch's default (one per core)

    def check(self) -> BenchSettings:
        """ConfigError naming the flag for a value the benchmark cannot run with."""
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"--arch: {self.arch!r} is unknown; use one of {', '.join(ARCHITECTURES)}")
        if not 0 < self.width <= 4:
            raise ConfigError(f"--width: {self.width} must be in (0, 4], e.g. 0.25")
        if self.batch_size < 2:
            raise ConfigError(f"--batch-size: {self.batch_size} must be >= 2 (BatchNorm needs 2 images), e.g. 64")
        if self.images < self.batch_size:
            raise ConfigError(
                f"--images: {self.images} is fewer than one batch of {self.batch_size}; use at least --batch-size"
            )
        if self.repeats < 1:
            raise ConfigError(f"--repeats: {self.repeats} must be >= 1 (timed samples per variant), e.g. 3")
        if self.workers < 0:
            raise ConfigError(f"--workers: {self.workers} must be >= 0 (0 loads in the training process)")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads: {self.threads} must be >= 1, or left out for torch's default")
        return self


# ---- timing --------------------------------------------------------------------------------------


def interleaved(
    variants: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds of each call of each named variant, from measure.py's one timer (`interleaved_seconds`)."""
    samples = interleaved_seconds(list(variants.values()), repeats, warmup, synchronizer(device))
    return dict(zip(variants, samples, strict=True))


def figure(key: str, title: str, times: dict[str, list[float]], numerator: str, denominator: str) -> dict[str, Any]:
    """A figure: median(numerator) / median(denominator) with every sample it came from."""
    medians = {name: statistics.median(samples) for name, samples in times.items()}
    return {
        "key": key,
        "title": title,
        "ratio": medians[numerator] / medians[denominator],
        "ratio_of": [numerator, denominator],
        "seconds": times,
        "median_seconds": medians,
    }


# ---- data and the seed-style loop ------------------------------------------------------------------


def synthetic_data(images: int, num_classes: int, seed: int) -> PreparedData:
    """Random uint8 NHWC images and labels with CIFAR-10's shape and statistics."""
    g = torch.Generator().manual_seed(seed)
    split = Split(
        torch.randint(0, 256, (images, 32, 32, 3), generator=g, dtype=torch.uint8),
        torch.randint(0, num_classes, (images,), generator=g),
    )
    empty = Split(split.images[:0], split.labels[:0])
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    classes = [str(c) for c in range(num_classes)]
    return PreparedData(split, empty, empty, mean, std, num_classes, "synthetic", classes)


class SeedStyleDataset(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's way: uint8 HWC arrays, one PIL image per item, then the transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable[[Any], torch.Tensor]) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def seed_style_loader(data: PreparedData, s: BenchSettings, device: torch.device) -> torch.utils.data.DataLoader:
    """The seed experiment's input pipeline over `data.train` (drop_last so both loops take the same steps)."""
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.Pad(4),
            transforms.RandomCrop(32),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(data.mean, data.std),
        ]
    )
    dataset = SeedStyleDataset(data.train.images.cpu().numpy(), data.train.labels.cpu().numpy(), transform)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=s.batch_size,
        shuffle=True,
        num_workers=s.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        generator=torch.Generator().manual_seed(s.seed),
    )


def seed_style_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader,
    lam: float,
    device: torch.device,
) -> None:
    """One epoch the way the reference code trained: batches from the loader, fp32, L1 on γ, a log line's sync."""
    model.train()
    for batch, (x, y) in enumerate(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        add_l1_subgradient(model, lam)
        optimizer.step()
        if batch % SEED_LOG_INTERVAL == 0:
            loss.item()  # the reference printed the loss here, which waits for the device


# ---- the four measurements -------------------------------------------------------------------------


def _model(s: BenchSettings, device: torch.device, fmt: torch.memory_format) -> nn.Module:
    torch.manual_seed(s.seed)
    return build_model(s.arch, s.num_classes, width=s.width).to(device).to(memory_format=fmt)


def _fit_settings(s: BenchSettings, config: Config) -> FitSettings:
    return FitSettings(
        epochs=1,
        batch_size=s.batch_size,
        lr=1e-3,
        sparsity_lambda=s.lam,
        seed=s.seed,
        amp=config.runtime.amp,
        channels_last=config.runtime.channels_last,
    )


@contextmanager
def local_tracking(folder: Path) -> Iterator[str]:
    """MLFLOW_TRACKING_URI pointed at a fresh SQLite file in `folder` while the block runs."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield uri
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def measure_epochs(s: BenchSettings, config: Config, data: PreparedData, device: torch.device) -> list[dict]:
    """Figures 1 and 4 from one interleaved series: netslim, seed-style and netslim with tracking."""
    from netslim import tracking

    fs = _fit_settings(s, config)
    fmt = memory_format(fs.channels_last)
    models = {name: _model(s, device, fmt) for name in ("netslim", "seed_style", "netslim_tracked")}
    optimizers = {name: make_optimizer(m, fs)[0] for name, m in models.items()}
    train = data.train.to(device)
    loader = seed_style_loader(data, s, device)
    epochs = {"netslim": 0, "netslim_tracked": 0}
    log_seconds: list[float] = []

    def netslim(name: str) -> dict[str, float]:
        epochs[name] += 1
        gen = epoch_generator(s.seed, epochs[name])
        loss, acc = train_one_epoch(models[name], optimizers[name], train, data.mean, data.std, fs, device, gen)
        return {"epoch": epochs[name], "lr": fs.lr, "train_loss": loss, "train_acc": acc}

    with tempfile.TemporaryDirectory(prefix="netslim-bench-") as tmp, local_tracking(Path(tmp)) as uri:
        tracked = Config(tracking=TrackingConfig(enabled=True, experiment="netslim-bench", log_models=False))
        started = time.perf_counter()
        with tracking.stage_run(tracked, "bench", "bench tracking", arch=s.arch) as run:
            run_start_seconds = time.perf_counter() - started

            def netslim_tracked() -> None:
                record = netslim("netslim_tracked")
                logged = time.perf_counter()
                run.epoch(record)  # what fit's on_epoch does in every stage
                log_seconds.append(time.perf_counter() - logged)

            times = interleaved(
                {
                    "netslim": lambda: netslim("netslim"),
                    "seed_style": lambda: seed_style_epoch(
                        models["seed_style"], optimizers["seed_style"], loader, s.lam, device
                    ),
                    "netslim_tracked": netslim_tracked,
                },
                device,
                s.repeats,
                s.warmup,
            )
        if run.lost:  # a figure of calls that failed would measure nothing
            raise tracking.TrackingError(f"MLflow logging to {uri} failed during the benchmark: {run.lost[0]}")
    steps = s.images // s.batch_size
    epoch = figure(
        "epoch_vs_seed_style",
        "Training epoch: seed-style loop time / netslim time",
        {"seed_style": times["seed_style"], "netslim": times["netslim"]},
        "seed_style",
        "netslim",
    )
    epoch["steps_per_epoch"] = steps
    cost = figure(
        "tracking_overhead",
        "Training epoch with MLflow tracking on / off",
        {"netslim_tracked": times["netslim_tracked"], "netslim": times["netslim"]},
        "netslim_tracked",
        "netslim",
    )
    cost["overhead"] = cost["ratio"] - 1
    cost["log_seconds_per_epoch"] = statistics.median(log_seconds[s.warmup :] or log_seconds)
    cost["run_start_seconds"] = run_start_seconds
    return [epoch, cost]


def measure_step(s: BenchSettings, config: Config, device: torch.device) -> dict:
    """Figure 2: time of STEPS_PER_SAMPLE trainer steps vs as many bare steps on a batch already in place."""
    fs = _fit_settings(s, config)
    fmt = memory_format(fs.channels_last)
    small = synthetic_data(STEPS_PER_SAMPLE * s.batch_size, s.num_classes, s.seed + 1)
    trainer_model, bare_model = _model(s, device, fmt), _model(s, device, fmt)
    trainer_opt, bare_opt = make_optimizer(trainer_model, fs)[0], make_optimizer(bare_model, fs)[0]
    train = small.train.to(device)
    x = normalize(train.images[: s.batch_size], small.mean, small.std).contiguous(memory_format=fmt)
    y = train.labels[: s.batch_size]
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=fs.amp and device.type == "cuda")
    counter = iter(range(1, 1 << 30))

    def trainer() -> None:
        gen = epoch_generator(s.seed, next(counter))
        train_one_epoch(trainer_model, trainer_opt, train, small.mean, small.std, fs, device, gen)

    def bare() -> None:
        for _ in range(STEPS_PER_SAMPLE):
            with amp:
                loss = F.cross_entropy(bare_model(x).float(), y)
            bare_opt.zero_grad(set_to_none=True)
            loss.backward()
            bare_opt.step()

    times = interleaved({"trainer": trainer, "bare": bare}, device, s.repeats, s.warmup)
    result = figure("step_vs_bare_step", "Training step: bare step time / trainer step time", times, "bare", "trainer")
    result["bare_step_seconds"] = result["median_seconds"]["bare"] / STEPS_PER_SAMPLE
    result["trainer_step_seconds"] = result["median_seconds"]["trainer"] / STEPS_PER_SAMPLE
    return result


def random_gammas(model: nn.Module, seed: int) -> nn.Module:
    """`model` with every prunable γ drawn from U(0, 1) (in place): a sparsity-trained model's spread of γ, so that
    pruning at any ratio cuts a realistic mix of layers without training first."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in prunable_batchnorms(model).values():
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=g).to(bn.weight.device))
    return model


def random_gamma_model(s: BenchSettings) -> nn.Module:
    """The unpruned model with random γ (`random_gammas`): a stand-in for a sparsity-trained one."""
    return random_gammas(_model(s, torch.device("cpu"), torch.contiguous_format), s.seed).eval()


def measure_inference(s: BenchSettings, config: Config, device: torch.device) -> list[dict]:
    """Figure 3: per-image time of the unpruned vs each pruned model, interleaved, at batch 1 and 64."""
    reference = random_gamma_model(s)
    models = {"unpruned": reference} | {f"pruned_{r:g}": prune(reference, ratio=r).model.eval() for r in PRUNE_RATIOS}
    macs = {name: count_conv_linear_macs(m) for name, m in models.items()}
    switches = {"amp": config.runtime.amp, "channels_last": config.runtime.channels_last}
    rows = []
    for batch in INFERENCE_BATCHES:
        calls = max(1, INFERENCE_IMAGES // batch)
        runners = {name: forward_runner(m, batch, device, calls=calls, **switches) for name, m in models.items()}
        times = interleaved(runners, device, 5 * s.repeats, s.warmup + 1)
        for ratio in PRUNE_RATIOS:
            name = f"pruned_{ratio:g}"
            row = figure(
                f"inference_{ratio:g}_batch{batch}",
                f"Inference, {ratio:.0%} pruned, batch {batch}: unpruned time / pruned time",
                {"unpruned": times["unpruned"], name: times[name]},
                "unpruned",
                name,
            )
            row |= {"prune_ratio": ratio, "batch_size": batch, "images_per_sample": calls * batch}
            row["macs_ratio"] = macs["unpruned"] / macs[name]
            row["macs"] = {"unpruned": macs["unpruned"], name: macs[name]}
            rows.append(row)
    return rows


def _machine(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "CPU")
    if device.type == "cpu":
        try:
            cpu = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
            name = f"CPU {cpu.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
        except (OSError, StopIteration):
            name = f"CPU, {os.cpu_count()} cores"
    return {
        "device": str(device),
        "device_name": name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """torch's intra-op thread count set to `threads` (None: unchanged) while the block runs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def run_benchmarks(s: BenchSettings, config: Config, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """All four figures on the device of `config.experiment.device`, judged against their targets."""
    s.check()
    with torch_threads(s.threads):
        return _run_benchmarks(s, config, log)


def _run_benchmarks(s: BenchSettings, config: Config, log: Callable[[str], None]) -> dict[str, Any]:
    device = resolve_device(config.experiment.device)
    machine = _machine(device) | {"load_before": os.getloadavg()[0]}
    started = time.perf_counter()
    data = synthetic_data(s.images, s.num_classes, s.seed)
    log(f"bench: {s.arch} width {s.width} on {device}: trainer step vs bare step")
    step = measure_step(s, config, device)
    log("bench: training epochs (netslim, seed-style, netslim with MLflow), interleaved")
    epoch, cost = measure_epochs(s, config, data, device)
    log("bench: inference, unpruned vs pruned")
    inference = measure_inference(s, config, device)
    figures = [epoch, step, *inference, cost]
    judge(figures)
    return {
        "settings": asdict(s),
        "machine": machine | {"load_after": os.getloadavg()[0]},
        "params": sum(p.numel() for p in build_model(s.arch, s.num_classes, width=s.width).parameters()),
        "seconds": time.perf_counter() - started,
        "figures": figures,
    }


def write_reports(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """benchmarks.json and benchmarks.md in `out_dir`, each written atomically."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "benchmarks.json", out_dir / "benchmarks.md"
    write_json(json_path, result)
    atomic_write_text(md_path, render_markdown(result))
    return json_path, md_path
