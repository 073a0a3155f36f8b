"""The raw datasets' readers: CIFAR-10's pickled batches (a folder or the .tar.gz, unpickled with an allow-list) and
Fashion-MNIST's idx files (the Debian package, a folder, or a torchvision download), each read as N×32×32×3 uint8
and checked, every problem one DataError line naming the file and the fix."""

from __future__ import annotations

import gzip
import io
import math
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netslim.data.store import SIZE, DataError, Split

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
FASHION_MNIST_BORDER = 2  # Fashion-MNIST's 28×28 images are read zero-padded by this much to SIZE×SIZE

_CIFAR10_WAYS = (
    "set data.cifar10_path to a cifar-10-batches-py folder or cifar-10-python.tar.gz, "
    "or set data.download: true when online"
)
_FASHION_MNIST_WAYS = (
    "install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
    "or set data.fashion_mnist_path to a folder with the four idx files, or data.download: true when online"
)


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


def read_cifar10(location: Path) -> tuple[Split, Split, list[str]]:
    """(train, test, class names) of the CIFAR-10 files at `location` (a batches folder or the .tar.gz)."""
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


def locate_cifar10(path: str | None, raw_root: Path, download: bool) -> tuple[Path, str]:
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
    return read_cifar10(locate_cifar10(path, Path(raw_root), download)[0])


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


def locate_fashion_mnist(path: str | None, raw_root: Path, download: bool) -> tuple[dict[str, Path], str]:
    """Where Fashion-MNIST's four idx files are read from, and a note for meta.json saying how they were found."""
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


def read_fashion_mnist(files: dict[str, Path]) -> tuple[Split, Split, list[str]]:
    """(train, test, class names) of Fashion-MNIST's four idx files."""
    splits = []
    for prefix in ("train", "test"):
        images = _read_idx_images(files[f"{prefix}_images"])
        splits.append(Split(images, _read_idx_labels(files[f"{prefix}_labels"], len(images))))
    return splits[0], splits[1], list(FASHION_MNIST_CLASSES)


def load_fashion_mnist(path: str | None, raw_root: Path, download: bool) -> tuple[Split, Split, list[str]]:
    """(train, test, class names) of Fashion-MNIST as 32×32×3 uint8, from `path`, Debian, raw_root or a download."""
    return read_fashion_mnist(locate_fashion_mnist(path, Path(raw_root), download)[0])


def _torchvision_download(dataset_class: str, name: str, raw_root: Path, folder: Path, ways: str) -> None:
    """Download with torchvision's own dataset class; any failure becomes one DataError line."""
    try:
        import torchvision

        getattr(torchvision.datasets, dataset_class)(root=str(raw_root), download=True)
    except Exception as e:  # no network shows up as URLError, OSError or RuntimeError depending on where
        raise DataError(
            f"{folder}: {name} download failed ({type(e).__name__}: {' '.join(str(e).split())[:100]}); offline? {ways}"
        ) from None
