"""Datasets as uint8 tensors: reading CIFAR-10 and Fashion-MNIST, the prepared split files, augmentation.

`prepare` reads a raw dataset once into N×32×32×3 uint8 tensors (Fashion-MNIST is zero-padded to 32×32
and repeated to 3 channels), scales them down to `data.image_size` when that is smaller (area averaging),
carves a seeded validation split out of the training set and writes {train,val,test}.pt plus meta.json.
Training reads them with `load_prepared` in well under a second and augments whole batches on the device
with `random_crop_flip`, which equals the per-image PIL recipe (Pad(4), random 32×32 crop, horizontal flip)
of the seed experiment for the same offsets.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import io
import json
import math
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netslim.config import MAX_CLASSES, DataConfig
from netslim.io import CheckpointError, load_checkpoint, save_torch, write_json

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SPLITS = ("train", "val", "test")
FASHION_MNIST_BORDER = 2  # Fashion-MNIST's 28×28 images are read zero-padded by this much to SIZE×SIZE
SIZE = 32  # every raw image is read as SIZE×SIZE×3 (CIFAR-10's size); `data.image_size` may scale it down
MIN_IMAGE_SIZE = 8  # the smallest `data.image_size`

_CIFAR10_WAYS = (
    "set data.cifar10_path to a cifar-10-batches-py folder or cifar-10-python.tar.gz, "
    "or set data.download: true when online"
)
_FASHION_MNIST_WAYS = (
    "install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
    "or set data.fashion_mnist_path to a folder with the four idx files, or data.download: true when online"
)


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


# ---- CIFAR-10 ---------------------------------------------------------------------------------


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR-10's batches hold (dicts, lists, bytes, numpy arrays).

    The raw archive comes from outside; refusing every other global means a crafted file cannot run code.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return super().find_class(module, name)


def _unpickle_batch(blob: bytes, where: str) -> dict:
    try:
        obj = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as e:  # a torn or foreign pickle can raise almost anything
        raise DataError(
            f"{where}: not a readable CIFAR-10 batch ({type(e).__name__}: {str(e)[:80]}); "
            f"the file may be truncated: replace it, or {_CIFAR10_WAYS}"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: holds a {type(obj).__name__}, not a CIFAR-10 batch dict; {_CIFAR10_WAYS}")
    return obj


def _cifar_batch(blob: bytes, where: str) -> Split:
    """One data/test batch: N×3072 uint8 rows of row-major CHW pixels -> NHWC Split."""
    d = _unpickle_batch(blob, where)
    if b"data" not in d or b"labels" not in d:
        raise DataError(f"{where}: has no b'data'/b'labels' keys, so it is not a CIFAR-10 batch; {_CIFAR10_WAYS}")
    data = d[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: b'data' is {got}, expected uint8 N x 3072; {_CIFAR10_WAYS}")
    try:
        labels = np.asarray(d[b"labels"], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{where}: b'labels' is not a list of class numbers; the file is damaged, replace it") from None
    if len(labels) != len(data):
        raise DataError(f"{where}: {len(labels)} labels for {len(data)} images; the file is damaged, replace it")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{where}: labels outside 0..9 ({labels.min()}..{labels.max()}); the file is damaged")
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return Split(torch.from_numpy(images), torch.from_numpy(labels))


def _cifar_blobs(location: Path) -> tuple[dict[str, bytes], str]:
    """The raw bytes of the 7 CIFAR-10 files from a folder or a .tar.gz, and how to name each in errors."""
    if location.is_dir():
        missing = [name for name in CIFAR10_FILES if not (location / name).is_file()]
        if missing:
            raise DataError(f"{location / missing[0]}: missing CIFAR-10 batch file; {_CIFAR10_WAYS}")
        return {name: (location / name).read_bytes() for name in CIFAR10_FILES}, f"{location}/{{}}"
    blobs: dict[str, bytes] = {}
    try:
        # One pass over the stream: seeking backwards in a .tar.gz would decompress it again.
        with tarfile.open(location, "r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in CIFAR10_FILES and base not in blobs:
                    blobs[base] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(
            f"{location}: not a readable cifar-10-python.tar.gz ({type(e).__name__}: {str(e)[:80]}); "
            f"it may be truncated: download it again, or {_CIFAR10_WAYS}"
        ) from None
    missing = [name for name in CIFAR10_FILES if name not in blobs]
    if missing:
        raise DataError(f"{location}: the archive has no cifar-10-batches-py/{missing[0]}; {_CIFAR10_WAYS}")
    return blobs, f"{location}:cifar-10-batches-py/{{}}"


def _read_cifar10(location: Path) -> tuple[Split, Split, list[str]]:
    blobs, where = _cifar_blobs(location)
    batches = [_cifar_batch(blobs[f"data_batch_{i}"], where.format(f"data_batch_{i}")) for i in range(1, 6)]
    train = Split(torch.cat([b.images for b in batches]), torch.cat([b.labels for b in batches]))
    test = _cifar_batch(blobs["test_batch"], where.format("test_batch"))
    meta = _unpickle_batch(blobs["batches.meta"], where.format("batches.meta"))
    names = meta.get(b"label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"{where.format('batches.meta')}: b'label_names' is not a list of 10 class names")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return train, test, classes


def _locate_cifar10(path: str | None, raw_root: Path, download: bool) -> tuple[Path, str]:
    """Where CIFAR-10 is read from, and a note for meta.json saying how it was found."""
    if path is not None:
        p = Path(path).expanduser()
        if (p / "cifar-10-batches-py").is_dir():
            p = p / "cifar-10-batches-py"  # accept the folder the archive was extracted into
        if p.is_dir() or (p.is_file() and tarfile.is_tarfile(p)):
            return p, f"data.cifar10_path: {p}"
        raise DataError(
            f"data.cifar10_path: {path} is neither a cifar-10-batches-py folder nor a cifar-10-python.tar.gz "
            "archive; point it at one, or set it to null and data.download: true when online"
        )
    folder = raw_root / "cifar-10-batches-py"
    if folder.is_dir():
        return folder, f"raw: {folder}"
    if not download:
        raise DataError(f"{folder}: CIFAR-10 not found and data.download is false; {_CIFAR10_WAYS}")
    _torchvision_download("CIFAR10", "CIFAR-10", raw_root, folder, _CIFAR10_WAYS)
    return folder, f"download: torchvision into {folder}"


def load_cifar10(path: str | None, raw_root: Path, download: bool) -> tuple[Split, Split, list[str]]:
    """(train, test, class names) of CIFAR-10 from `path`, raw_root, or a torchvision download."""
    return _read_cifar10(_locate_cifar10(path, Path(raw_root), download)[0])


# ---- Fashion-MNIST ----------------------------------------------------------------------------


def _idx_bytes(path: Path) -> bytearray:
    try:
        raw = path.read_bytes()
        # bytearray: torch.frombuffer needs a writable buffer
        return bytearray(gzip.decompress(raw) if path.suffix == ".gz" else raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path}: not a readable idx file ({type(e).__name__}: {str(e)[:80]}); it may be truncated: replace it"
        ) from None


def _idx_header(data: bytearray, path: Path, magic: int, ndim: int) -> list[int]:
    header = 4 * (1 + ndim)
    if len(data) < header:
        raise DataError(f"{path}: truncated idx file ({len(data)} bytes, shorter than its header); replace it")
    values = [int.from_bytes(data[i : i + 4], "big") for i in range(0, header, 4)]
    if values[0] != magic:
        raise DataError(f"{path}: magic number {values[0]} is not {magic}, so this is not the expected idx file")
    dims = values[1:]
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise DataError(
            f"{path}: {len(data)} bytes but its header {dims} says {expected}; the file is truncated or damaged"
        )
    return dims


def _read_idx_images(path: Path) -> torch.Tensor:
    """An idx3 image file -> N×32×32×3 uint8: 28×28 grey, zero-padded by 2 and repeated to 3 channels."""
    data = _idx_bytes(path)
    n, h, w = _idx_header(data, path, 2051, 3)
    if (h, w) != (28, 28):
        raise DataError(f"{path}: images are {h}x{w}, Fashion-MNIST's are 28x28")
    grey = torch.frombuffer(data, dtype=torch.uint8, offset=16).view(n, h, w)
    out = torch.zeros(n, SIZE, SIZE, dtype=torch.uint8)
    b = FASHION_MNIST_BORDER
    out[:, b : SIZE - b, b : SIZE - b] = grey
    return out.unsqueeze(-1).expand(n, SIZE, SIZE, 3).contiguous()


def _read_idx_labels(path: Path, count: int) -> torch.Tensor:
    data = _idx_bytes(path)
    (n,) = _idx_header(data, path, 2049, 1)
    if n != count:
        raise DataError(f"{path}: {n} labels for {count} images; the files do not belong together, replace them")
    labels = torch.frombuffer(data, dtype=torch.uint8, offset=8).to(torch.int64)
    if n and labels.max() > 9:
        raise DataError(f"{path}: labels outside 0..9 (max {int(labels.max())}); the file is damaged, replace it")
    return labels


def _fashion_files(folder: Path) -> dict[str, Path] | None:
    """The four idx files in `folder` (each plain or .gz), or None if any is missing."""
    files = {}
    for key, name in FASHION_MNIST_FILES.items():
        found = next((folder / n for n in (name, f"{name}.gz") if (folder / n).is_file()), None)
        if found is None:
            return None
        files[key] = found
    return files


def _locate_fashion_mnist(path: str | None, raw_root: Path, download: bool) -> tuple[dict[str, Path], str]:
    if path is not None:
        folder = Path(path).expanduser()
        files = _fashion_files(folder)
        if files is None:
            names = ", ".join(f"{n}[.gz]" for n in FASHION_MNIST_FILES.values())
            raise DataError(
                f"data.fashion_mnist_path: {folder} lacks some of the idx files {names}; {_FASHION_MNIST_WAYS}"
            )
        return files, f"data.fashion_mnist_path: {folder}"
    for folder, how in ((FASHION_MNIST_DEBIAN_DIR, "debian"), (raw_root / "FashionMNIST" / "raw", "raw")):
        files = _fashion_files(folder)
        if files is not None:
            return files, f"{how}: {folder}"
    folder = raw_root / "FashionMNIST" / "raw"
    if not download:
        raise DataError(f"Fashion-MNIST not found in {FASHION_MNIST_DEBIAN_DIR} or {folder}; {_FASHION_MNIST_WAYS}")
    _torchvision_download("FashionMNIST", "Fashion-MNIST", raw_root, folder, _FASHION_MNIST_WAYS)
    files = _fashion_files(folder)
    if files is None:
        raise DataError(f"{folder}: the download left no idx files; {_FASHION_MNIST_WAYS}")
    return files, f"download: torchvision into {folder}"


def _read_fashion_mnist(files: dict[str, Path]) -> tuple[Split, Split, list[str]]:
    splits = []
    for prefix in ("train", "test"):
        images = _read_idx_images(files[f"{prefix}_images"])
        splits.append(Split(images, _read_idx_labels(files[f"{prefix}_labels"], len(images))))
    return splits[0], splits[1], list(FASHION_MNIST_CLASSES)


def load_fashion_mnist(path: str | None, raw_root: Path, download: bool) -> tuple[Split, Split, list[str]]:
    """(train, test, class names) of Fashion-MNIST as 32×32×3 uint8, from `path`, Debian, raw_root or a download."""
    return _read_fashion_mnist(_locate_fashion_mnist(path, Path(raw_root), download)[0])


# ---- prepare / load ---------------------------------------------------------------------------


def _take(split: Split, index: torch.Tensor | slice) -> Split:
    # clone: torch.save of a slice would otherwise write the whole parent storage
    return Split(split.images[index].clone(), split.labels[index].clone())


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 NHWC images, in [0, 1] pixel units.

    From exact per-channel histograms of the 256 values, so it needs no float copy of the images.
    """
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(images.shape[-1]):
        counts = torch.bincount(images[..., c].reshape(-1), minlength=256).to(torch.float64)
        mean = float((counts * values).sum() / counts.sum())
        var = float((counts * (values - mean) ** 2).sum() / counts.sum())
        means.append(mean)
        stds.append(var**0.5 or 1.0)  # a constant channel: 1.0 instead of dividing by zero
    return tuple(means), tuple(stds)


def prepare(data: DataConfig, seed: int, raw_root: str | Path, out_dir: str | Path, progress: bool = False) -> dict:
    """Raw dataset -> out_dir/{train,val,test}.pt and meta.json; returns the meta dict.

    Everything is read and checked (`read_and_split`) before the first write, so a failure leaves out_dir as it
    was. `progress` is accepted for symmetry with the other stages; preparing takes about a second, so there is no
    bar.
    """
    del progress
    splits, meta = read_and_split(data, seed, raw_root)
    write_prepared(out_dir, splits, meta)
    return meta


def read_and_split(data: DataConfig, seed: int, raw_root: str | Path) -> tuple[dict[str, Split], dict[str, Any]]:
    """The raw dataset read, checked, split and scaled: ({train, val, test}, meta); nothing is written.

    Validation is a seeded random `data.val_size` of the training set.
    """
    raw_root = Path(raw_root)
    if data.dataset == "cifar10":
        location, source = _locate_cifar10(data.cifar10_path, raw_root, data.download)
        train_full, test, classes = _read_cifar10(location)
    elif data.dataset == "fashion-mnist":
        files, source = _locate_fashion_mnist(data.fashion_mnist_path, raw_root, data.download)
        train_full, test, classes = _read_fashion_mnist(files)
    else:
        raise DataError(f"data.dataset: {data.dataset!r} is unknown; use cifar10 or fashion-mnist")

    if data.val_size >= len(train_full):
        raise DataError(f"data.val_size: {data.val_size} leaves no training images out of {len(train_full)}; lower it")
    order = torch.randperm(len(train_full), generator=torch.Generator().manual_seed(seed))
    splits = {
        "val": _take(train_full, order[: data.val_size]),
        "train": _take(train_full, order[data.val_size :][: data.train_subset]),  # [:None] keeps all
        "test": _take(test, slice(data.test_subset)),
    }
    # Scaled down, Fashion-MNIST's images are scaled from their own 28×28 pixels: the padding would only take pixels.
    border = FASHION_MNIST_BORDER if data.dataset == "fashion-mnist" else 0
    splits = {name: Split(resize_images(s.images, data.image_size, border), s.labels) for name, s in splits.items()}
    mean, std = channel_stats(splits["train"].images)
    meta = {
        "dataset": data.dataset,
        "num_classes": len(classes),
        "classes": classes,
        "sizes": {name: len(splits[name]) for name in SPLITS},
        "mean": list(mean),
        "std": list(std),
        "seed": seed,
        "source": source,
        "image_size": data.image_size,
    }
    return splits, meta


def write_prepared(out_dir: str | Path, splits: dict[str, Split], meta: dict[str, Any]) -> None:
    """The splits and meta.json into out_dir. meta.json goes first out and last in: a crash between the writes
    leaves no meta.json, so load_prepared refuses the half-written folder instead of mixing old and new splits."""
    out_dir = Path(out_dir)
    (out_dir / "meta.json").unlink(missing_ok=True)
    for name in SPLITS:
        save_torch(out_dir / f"{name}.pt", {"images": splits[name].images, "labels": splits[name].labels})
    write_json(out_dir / "meta.json", meta)


def resize_images(images: torch.Tensor, size: int, border: int = 0) -> torch.Tensor:
    """uint8 N×H×W×C images scaled to N×size×size×C by area averaging (each output pixel the mean of the input
    pixels it covers: 32 -> 16 averages 2×2 blocks), after cutting `border` pixels off each side; unchanged when
    already that size."""
    if images.shape[1:3] == (size, size):
        return images
    h, w = images.shape[1:3]
    inner = images[:, border : h - border, border : w - border].permute(0, 3, 1, 2).float()
    scaled = torch.nn.functional.interpolate(inner, size=(size, size), mode="area")
    return scaled.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


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


# ---- augmentation and normalisation -----------------------------------------------------------


def crop_flip_params(
    n: int, generator: torch.Generator, pad: int = 4, size: int = SIZE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, left, flip) for n images: crop offsets in [0, 2*pad] of the padded image, flip w.p. 0.5.

    Drawn on the CPU generator so the same seed gives the same augmentation on any device.
    """
    del size  # the crop is as large as the image, so the padded image leaves 2*pad+1 offsets either way
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return offsets[0], offsets[1], flip


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, pad: int | None = None) -> torch.Tensor:
    """Zero-pad by `pad`, crop back to the original size at random offsets, flip half: uint8 NHWC in and out.

    `pad` defaults to an eighth of the height: the seed recipe's 4 pixels of a 32×32 image, 2 of a 16×16 one.
    The whole batch is done by one advanced-indexing gather on the images' device.
    """
    n, h, w, c = images.shape
    pad = max(1, h // 8) if pad is None else pad
    top, left, flip = (_to_device(t, images.device) for t in crop_flip_params(n, generator, pad, h))
    padded = images.new_zeros(n, h + 2 * pad, w + 2 * pad, c)
    padded[:, pad : pad + h, pad : pad + w] = images
    rows = top[:, None] + torch.arange(h, device=images.device)
    cols = left[:, None] + torch.arange(w, device=images.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flipped crop reads its columns right to left
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on `device`; from pinned memory, so a CUDA host does not wait for the device."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


@functools.lru_cache(maxsize=16)
def _scale(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """255·mean and 255·std as 1×C×1×1 tensors on `device`, made once (a copy per batch would sync CUDA).

    Made outside inference mode, so that a first call from evaluation caches tensors training can use.
    """
    with torch.inference_mode(False):
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255
        return m, torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255


def normalize(images: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW (x/255 - mean)/std, on the images' device.

    The result is an NCHW-shaped view in channels-last memory (no copy for the permute); callers that
    need another memory format ask for it.
    """
    m, s = _scale(tuple(map(float, mean)), tuple(map(float, std)), images.device)
    return images.permute(0, 3, 1, 2).to(torch.float32, copy=True).sub_(m).div_(s)  # (x - 255m)/(255s) == (x/255 - m)/s


def _torchvision_download(dataset_class: str, name: str, raw_root: Path, folder: Path, ways: str) -> None:
    """Download with torchvision's own dataset class; any failure becomes one DataError line."""
    try:
        import torchvision

        getattr(torchvision.datasets, dataset_class)(root=str(raw_root), download=True)
    except Exception as e:  # no network shows up as URLError, OSError or RuntimeError depending on where
        raise DataError(
            f"{folder}: {name} download failed ({type(e).__name__}: {' '.join(str(e).split())[:100]}); offline? {ways}"
        ) from None
