"""The prepared store: the splits as uint8 tensors (`Split`, `PreparedData`) and their files, {train,val,test}.pt
plus meta.json, written by `write_prepared` and read back, checked, by `load_prepared`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from netslim.config import MAX_CLASSES
from netslim.io import CheckpointError, load_checkpoint, save_torch, write_json

SPLITS = ("train", "val", "test")
SIZE = 32  # every raw image is read as SIZE×SIZE×3 (CIFAR-10's size); `data.image_size` may scale it down
MIN_IMAGE_SIZE = 8  # the smallest `data.image_size`


class DataError(ValueError):
    """Missing or unusable data; the message is one line naming the file, the problem and the fix."""


@dataclass
class Split:
    """One split: uint8 N×S×S×3 (NHWC) images (S = `data.image_size`, 32 by default) and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class PreparedData:
    """The three prepared splits plus what normalising and reporting need."""

    train: Split
    val: Split
    test: Split
    mean: tuple[float, float, float]  # per channel, in [0, 1] pixel units, of the train split
    std: tuple[float, float, float]
    num_classes: int
    dataset: str
    classes: list[str]
    image_size: int = SIZE  # height = width of every image

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one model input, for MACs, timing and export."""
        return (3, self.image_size, self.image_size)

    def to(self, device: torch.device | str) -> PreparedData:
        return dataclasses.replace(
            self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device)
        )


def write_prepared(out_dir: str | Path, splits: dict[str, Split], meta: dict[str, Any]) -> None:
    """The splits and meta.json into out_dir. meta.json goes first out and last in: a crash between the writes
    leaves no meta.json, so load_prepared refuses the half-written folder instead of mixing old and new splits."""
    out_dir = Path(out_dir)
    (out_dir / "meta.json").unlink(missing_ok=True)
    for name in SPLITS:
        save_torch(out_dir / f"{name}.pt", {"images": splits[name].images, "labels": splits[name].labels})
    write_json(out_dir / "meta.json", meta)


def _rerun(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}; run `netslim prepare` to (re)build it")


def load_prepared(out_dir: str | Path, dataset: str | None = None, image_size: int | None = None) -> PreparedData:
    """The splits written by `prepare`, checked (dtype, shape, labels) before use.

    Args:
        dataset: `data.dataset` of the stage's params; data prepared from another dataset is refused.
        image_size: `data.image_size` of the stage's params; data prepared at another size is refused.
    """
    out_dir = Path(out_dir)
    meta_path = out_dir / "meta.json"
    if not meta_path.is_file():
        raise _rerun(meta_path, "not found")
    try:
        meta = json.loads(meta_path.read_text())
        num_classes, classes = int(meta["num_classes"]), list(meta["classes"])
        mean, std = tuple(float(v) for v in meta["mean"]), tuple(float(v) for v in meta["std"])
        sizes, meta_dataset = meta["sizes"], str(meta["dataset"])
        meta_size = int(meta.get("image_size", SIZE))  # folders prepared before the key existed are 32×32
        if len(mean) != 3 or len(std) != 3 or not isinstance(sizes, dict):
            raise ValueError("mean/std need 3 channels and sizes a mapping")
        # Bounded before anything is built from them: a head of num_classes, images of meta_size, 1/std.
        if not 2 <= num_classes <= MAX_CLASSES or len(classes) != num_classes:
            raise ValueError(f"num_classes {num_classes} must be 2..{MAX_CLASSES}, one per name in classes")
        if not all(0 <= m <= 1 for m in mean) or not all(1e-3 <= v <= 1 for v in std):
            raise ValueError(f"mean {mean} must be in [0, 1] and std {std} in [0.001, 1] (pixels are scaled to 0..1)")
        if not MIN_IMAGE_SIZE <= meta_size <= SIZE:
            raise ValueError(f"image_size {meta_size} must be in {MIN_IMAGE_SIZE}..{SIZE}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _rerun(meta_path, f"not a valid prepared-data meta.json ({type(e).__name__}: {str(e)[:160]})") from None
    if dataset is not None and dataset != meta_dataset:
        raise DataError(
            f"{meta_path}: the prepared data is {meta_dataset} but data.dataset is {dataset}; "
            f"run `netslim prepare` (or `dvc repro`) to prepare {dataset}"
        )
    if image_size is not None and image_size != meta_size:
        raise DataError(
            f"{meta_path}: the prepared images are {meta_size}x{meta_size} but data.image_size is {image_size}; "
            "run `netslim prepare` (or `dvc repro`) to prepare them at that size"
        )

    splits = {}
    for name in SPLITS:
        path = out_dir / f"{name}.pt"
        if not path.is_file():
            raise _rerun(path, "not found")
        try:
            obj = load_checkpoint(path)
        except CheckpointError:
            raise _rerun(path, "unreadable, truncated or not written by netslim") from None
        images, labels = obj.get("images"), obj.get("labels")
        if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
            raise _rerun(path, "has no 'images'/'labels' tensors")
        if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != (meta_size, meta_size, 3):
            raise _rerun(
                path,
                f"images are {images.dtype} {tuple(images.shape)}, expected uint8 N x {meta_size} x {meta_size} x 3",
            )
        if labels.dtype != torch.int64 or tuple(labels.shape) != (len(images),):
            raise _rerun(
                path, f"labels are {labels.dtype} {tuple(labels.shape)}, expected int64 of length {len(images)}"
            )
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise _rerun(path, f"labels outside 0..{num_classes - 1}")
        if sizes.get(name) != len(labels):
            raise _rerun(path, f"{len(labels)} images but meta.json says {sizes.get(name)}; the folder is mixed up")
        splits[name] = Split(images, labels)
    return PreparedData(
        **splits,
        mean=mean,
        std=std,
        num_classes=num_classes,
        dataset=meta_dataset,
        classes=classes,
        image_size=meta_size,
    )
