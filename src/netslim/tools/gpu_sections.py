"""gpu-check's sections: each measures or checks one path of the project's own code at the seed's shapes (a timed
training epoch, the L1 penalty under autocast, pruning, a fine-tuning epoch, export, the CUDA tests, torchrun)."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netslim import vocabulary as vocab
from netslim.io import write_json
from netslim.tools.gpu_shapes import GPU_MARK, ROOT, SIZES, VARIANTS, CheckSize, SeedShape, seed_config

if TYPE_CHECKING:
    from netslim.config import Config


# ---- the measurements ----------------------------------------------------------------------------


def synthetic_data(images: int, eval_images: int, seed: int):
    """Synthetic CIFAR-shaped data: `images` training images, `eval_images` as both validation and test split."""
    from netslim.tools.bench import synthetic_data

    data = synthetic_data(images, 10, seed)
    held_out = synthetic_data(eval_images, 10, seed + 1).train
    return dataclasses.replace(data, val=held_out, test=held_out)


def fit_settings_for(config: Config, size: CheckSize, variant: str, lam: float, optim=None):
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
    in ONNX Runtime on the CPU (`export.speed_table`), and on ONNX Runtime's CUDA provider when it is installed."""
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
        speed_table,
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
    (rows,) = speed_table(
        deployed["unpruned"], [deployed["pruned"]], threads, e.batch_sizes, min(e.repeats, size.repeats * 3)
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
    from netslim.distributed import resolve_device, world
    from netslim.engine import fit
    from netslim.models import build_model

    size = SIZES[args.size]
    config = seed_config(args.params, args.profile)
    with distributed.session(args.device):
        rank, world_size = world()
        device = resolve_device(args.device)
        settings = dataclasses.replace(fit_settings_for(config, size, "bf16_channels_last", 0.0), epochs=2)
        data = synthetic_data(
            size.steps * settings.batch_size * world_size, settings.batch_size, config.experiment.seed
        )
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
