"""torchrun support: one process group per training stage, and optional SyncBatchNorm.

`torchrun` starts one process per device and tells each its place through the environment (RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). `session()` turns that into a process group (NCCL on
CUDA, gloo on the CPU) around a stage and destroys it afterwards; outside torchrun, or with one
process, it does nothing. The trainer (`netslim.engine.fit`) sees the group and wraps the model in
DistributedDataParallel; only rank 0 writes files and MLflow runs. docs/distributed.md shows the
launch commands for one node and for several.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from netslim.config import ConfigError
from netslim.models import unwrap


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(
            f"environment {name}={raw!r} is not a whole number; launch with torchrun, which sets it"
        ) from None
    if value < 0:
        raise ConfigError(f"environment {name}={raw!r} must be >= 0; launch with torchrun, which sets it")
    return value


def launched_world_size() -> int:
    """The number of processes torchrun started (1 when not launched by torchrun)."""
    return max(1, _env_int("WORLD_SIZE", 1))


def local_rank() -> int:
    """This process's index on its own node (torchrun's LOCAL_RANK; 0 otherwise): its GPU."""
    return _env_int("LOCAL_RANK", 0)


def uses_cuda(device_name: str) -> bool:
    """Whether experiment.device puts this run on CUDA (auto does when CUDA is present)."""
    kind = device_name.split(":")[0]
    return kind == "cuda" or (kind == "auto" and torch.cuda.is_available())


def setup(device_name: str = "auto") -> bool:
    """Join torchrun's process group when WORLD_SIZE > 1; returns whether this call started one.

    NCCL when the run is on CUDA (each rank bound to GPU LOCAL_RANK first, so NCCL and every
    `.cuda()` use the right device), gloo on the CPU.
    """
    if launched_world_size() <= 1 or dist.is_initialized():
        return False
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ConfigError(
                f"environment WORLD_SIZE={os.environ['WORLD_SIZE']} but {name} is not set; "
                "launch with torchrun (see docs/distributed.md) or unset WORLD_SIZE"
            )
    if uses_cuda(device_name):
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", init_method="env://", device_id=device)
    else:
        dist.init_process_group(backend="gloo", init_method="env://")
    return True


def cleanup() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device_name: str = "auto") -> Iterator[None]:
    """A process group for the duration of a stage when launched by torchrun; nothing otherwise."""
    started = setup(device_name)
    try:
        yield
    finally:
        if started:
            cleanup()


class SyncBatchNorm2d(nn.SyncBatchNorm, nn.BatchNorm2d):
    """SyncBatchNorm that is still a BatchNorm2d to isinstance().

    Everything that finds BN layers (the L1 subgradient on γ, pruning, sparsity, γ histograms) looks
    for nn.BatchNorm2d; torch's own SyncBatchNorm is not one, so it would silently drop the penalty.
    The state_dict keys are those of BatchNorm2d, so its checkpoints load into a plain model.
    """


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in `model` (in place) by a SyncBatchNorm2d sharing its tensors."""
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SyncBatchNorm2d):
            sync = SyncBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            if child.affine:
                sync.weight, sync.bias = child.weight, child.bias
            sync.running_mean, sync.running_var = child.running_mean, child.running_var
            sync.num_batches_tracked = child.num_batches_tracked
            sync.train(child.training)
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child)
    return model


def maybe_sync_batchnorm(model: nn.Module, enabled: bool, device: torch.device) -> nn.Module:
    """runtime.sync_bn: SyncBatchNorm under torchrun on CUDA; plain BN otherwise (said once on rank 0).

    torch's SyncBatchNorm has no CPU kernel, so on the CPU (gloo) each rank keeps its own batch
    statistics, as DDP does without it.
    """
    if not enabled or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    if device.type != "cuda":
        if dist.get_rank() == 0:
            print("note: runtime.sync_bn needs CUDA; training with per-rank BatchNorm on the CPU", file=sys.stderr)
        return model
    return convert_sync_batchnorm(model)


def resolve_device(name: str = "auto") -> torch.device:
    """experiment.device as a torch.device; under torchrun, "auto" and "cuda" mean GPU LOCAL_RANK of this node."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"experiment.device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"experiment.device: {name!r} but CUDA is not available here; use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(
            f"experiment.device: {name!r} but this machine has {count} CUDA device(s); use auto or cuda:0..{count - 1}"
        )
    if device.type == "cuda" and device.index is None:
        # LOCAL_RANK, not the global rank: on the second node rank 8 is that node's GPU 0.
        device = torch.device("cuda", local_rank() % torch.cuda.device_count())
    return device


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return world()[0] == 0


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BN running statistics) to every rank.

    DDP broadcasts them before each forward, but the last step's update stays per rank; without this
    the ranks would evaluate, pick best epochs and end with different BN statistics.
    """
    for buffer in unwrap(model).buffers():
        dist.broadcast(buffer, src=0)


def check_ranks_agree(start_epoch: int, device: torch.device, state_path: Path | None) -> None:
    """Every rank must resume from the same epoch; a state file only rank 0 can see would split them."""
    bounds = torch.tensor([start_epoch, -start_epoch], device=device)
    dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
    if int(bounds[0]) != -int(bounds[1]):
        raise RuntimeError(
            f"--resume: ranks would start after epochs {-int(bounds[1])}..{int(bounds[0])}; {state_path} must be on "
            "a filesystem every node shares (set paths.state), or run without --resume"
        )
