"""Data: reading CIFAR-10 and Fashion-MNIST from their own formats, the prepared files, augmentation."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import pil_reference_crop_flip
from netslim.config import DataConfig
from netslim.data import (
    FASHION_MNIST_DEBIAN_DIR,
    DataError,
    crop_flip_params,
    load_cifar10,
    load_fashion_mnist,
    load_prepared,
    normalize,
    prepare,
    random_crop_flip,
    resize_images,
)
from netslim.data import sources as data_sources

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---- writing tiny datasets in their own formats -------------------------------------------------


class Py2Pickler(pickle._Pickler):
    """Pickles bytes the way Python 2 pickled its str, as CIFAR-10's own files were written.

    Python 3 pickles bytes at protocol 2 as a call to _codecs.encode; the real batches hold plain
    (SHORT_)BINSTRING opcodes instead, which `encoding="bytes"` reads as bytes and `encoding="latin1"`
    (torchvision's choice) as str. The dict keys and numpy's raw pixel buffer are such strings.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def write_cifar(folder: Path, per_batch: int = 12, n_test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny cifar-10-batches-py folder in CIFAR's pickle format; returns all rows and labels."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 256, size=(5 * per_batch + n_test, 3072), dtype=np.uint8)
    rows[0] = np.arange(3072) % 251  # a known image: every pixel of every channel is distinct-ish
    labels = rng.integers(0, 10, size=len(rows))
    for i in range(5):
        part = slice(i * per_batch, (i + 1) * per_batch)
        batch = {b"data": rows[part], b"labels": labels[part].tolist(), b"batch_label": b"training batch"}
        (folder / f"data_batch_{i + 1}").write_bytes(py2_pickle(batch))
    test = {b"data": rows[5 * per_batch :], b"labels": labels[5 * per_batch :].tolist()}
    (folder / "test_batch").write_bytes(py2_pickle(test))
    meta = {b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_cases_per_batch": per_batch}
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    return {"rows": rows, "labels": labels, "n_train": 5 * per_batch}


def tar_cifar(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return archive


def idx_images(images: np.ndarray, magic: int = 2051) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", magic, n, h, w) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray, magic: int = 2049) -> bytes:
    return struct.pack(">II", magic, len(labels)) + labels.astype(np.uint8).tobytes()


def write_fmnist(folder: Path, n_train: int = 30, n_test: int = 8, compress: bool = True, seed: int = 0) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(1, 256, size=(n, 28, 28), dtype=np.uint8)  # no zeros: padding is visible
        labels = rng.integers(0, 10, size=n)
        for kind, payload in (("images-idx3", idx_images(images)), ("labels-idx1", idx_labels(labels))):
            name = f"{prefix}-{kind}-ubyte"
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)
        out[prefix] = (images, labels)
    return out


def cifar_config(path: Path | None, **kw) -> DataConfig:
    return DataConfig(dataset="cifar10", cifar10_path=None if path is None else str(path), download=False, **kw)


def fmnist_config(path: Path | None, **kw) -> DataConfig:
    return DataConfig(
        dataset="fashion-mnist", fashion_mnist_path=None if path is None else str(path), download=False, **kw
    )


def image_key(image: torch.Tensor) -> bytes:
    return image.numpy().tobytes()


# ---- CIFAR-10 -----------------------------------------------------------------------------------


def test_cifar_folder_reads_pixels_labels_and_classes(tmp_path):
    raw = write_cifar(tmp_path / "cifar-10-batches-py")
    train, test, classes = load_cifar10(str(tmp_path / "cifar-10-batches-py"), tmp_path / "raw", download=False)
    assert classes == CIFAR_CLASSES
    assert train.images.shape == (60, 32, 32, 3) and train.images.dtype == torch.uint8
    assert test.images.shape == (10, 32, 32, 3) and train.labels.dtype == torch.int64
    # CIFAR rows are row-major CHW: red plane, then green, then blue
    chw = raw["rows"][0].reshape(3, 32, 32)
    assert train.images[0, 5, 7].tolist() == [chw[0, 5, 7], chw[1, 5, 7], chw[2, 5, 7]]
    assert np.array_equal(train.images[0].numpy(), chw.transpose(1, 2, 0))
    assert np.array_equal(test.images.numpy(), raw["rows"][60:].reshape(10, 3, 32, 32).transpose(0, 2, 3, 1))
    assert train.labels.tolist() == raw["labels"][:60].tolist()
    assert test.labels.tolist() == raw["labels"][60:].tolist()


def test_cifar_prepare_from_folder_and_tar_agree(tmp_path):
    raw = write_cifar(tmp_path / "src" / "cifar-10-batches-py")
    archive = tar_cifar(tmp_path / "src" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    meta_dir = prepare(cifar_config(tmp_path / "src" / "cifar-10-batches-py", val_size=15), 3, tmp_path, tmp_path / "a")
    meta_tar = prepare(cifar_config(archive, val_size=15), 3, tmp_path, tmp_path / "b")
    assert meta_dir["sizes"] == meta_tar["sizes"] == {"train": 45, "val": 15, "test": 10}
    assert "cifar10_path" in meta_tar["source"] and str(archive) in meta_tar["source"]
    a, b = load_prepared(tmp_path / "a"), load_prepared(tmp_path / "b")
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(a, name).images, getattr(b, name).images)
        assert torch.equal(getattr(a, name).labels, getattr(b, name).labels)

    # train + val is a permutation of the original training set, each image with its own label
    original = {
        image_key(torch.from_numpy(r.reshape(3, 32, 32).transpose(1, 2, 0).copy())): int(lab)
        for r, lab in zip(raw["rows"][:60], raw["labels"][:60], strict=True)
    }
    seen = [(image_key(img), int(lab)) for s in (a.train, a.val) for img, lab in zip(s.images, s.labels, strict=True)]
    assert sorted(k for k, _ in seen) == sorted(original)
    assert all(original[k] == lab for k, lab in seen)
    assert a.test.labels.tolist() == raw["labels"][60:].tolist()

    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["dataset"] == "cifar10" and meta["num_classes"] == 10 and meta["classes"] == CIFAR_CLASSES
    assert meta["seed"] == 3 and a.num_classes == 10 and a.dataset == "cifar10"
    expected_mean = a.train.images.double().div(255).mean(dim=(0, 1, 2))
    expected_std = a.train.images.double().div(255).std(dim=(0, 1, 2), unbiased=False)
    assert torch.allclose(torch.tensor(meta["mean"], dtype=torch.float64), expected_mean, atol=1e-9)
    assert torch.allclose(torch.tensor(a.std, dtype=torch.float64), expected_std, atol=1e-9)


def test_prepare_split_depends_on_seed_and_subsets_cap(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    # found in raw_root without any path set
    m0 = prepare(cifar_config(None, val_size=10), 0, tmp_path, tmp_path / "s0")
    assert m0["source"].startswith("raw:")
    prepare(cifar_config(None, val_size=10), 1, tmp_path, tmp_path / "s1")
    v0, v1 = load_prepared(tmp_path / "s0").val, load_prepared(tmp_path / "s1").val
    assert len(v0) == len(v1) == 10 and not torch.equal(v0.images, v1.images)

    full = load_prepared(tmp_path / "s0")
    meta = prepare(cifar_config(None, val_size=10, train_subset=7, test_subset=4), 0, tmp_path, tmp_path / "sub")
    sub = load_prepared(tmp_path / "sub")
    assert meta["sizes"] == {"train": 7, "val": 10, "test": 4}
    assert torch.equal(sub.train.images, full.train.images[:7]) and torch.equal(sub.val.images, full.val.images)
    assert torch.equal(sub.test.labels, full.test.labels[:4])
    # the saved subset holds only its own images, not the storage of the full split
    assert (tmp_path / "sub" / "test.pt").stat().st_size < (tmp_path / "s0" / "test.pt").stat().st_size

    with pytest.raises(DataError, match="data.val_size"):
        prepare(cifar_config(None, val_size=60, train_subset=5), 0, tmp_path, tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_cifar_missing_names_both_ways(tmp_path):
    with pytest.raises(DataError) as e:
        load_cifar10(None, tmp_path / "raw", download=False)
    assert "data.cifar10_path" in str(e.value) and "data.download" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="data.cifar10_path.*data.download"):
        load_cifar10(str(tmp_path / "nowhere"), tmp_path / "raw", download=False)


def test_cifar_bad_files_name_the_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    blob = (folder / "data_batch_3").read_bytes()

    (folder / "data_batch_3").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="data_batch_3.*truncated"):
        prepare(cifar_config(folder), 0, tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()

    batch = pickle.loads(blob, encoding="bytes")
    batch[b"labels"][0] = 10
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match="data_batch_3.*0..9"):
        load_cifar10(str(folder), tmp_path, download=False)

    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3.*missing"):
        load_cifar10(str(folder), tmp_path, download=False)

    # a pickle that would run code when loaded is refused, not executed
    (folder / "data_batch_3").write_bytes(pickle.dumps(print))
    with pytest.raises(DataError, match="data_batch_3.*refused global"):
        load_cifar10(str(folder), tmp_path, download=False)


def test_truncated_cifar_archive_names_the_archive(tmp_path):
    write_cifar(tmp_path / "src" / "cifar-10-batches-py")
    archive = tar_cifar(tmp_path / "src" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_cifar10(str(archive), tmp_path, download=False)


# ---- Fashion-MNIST ------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_pads_and_repeats_channels(tmp_path, compress):
    raw = write_fmnist(tmp_path / "fm", compress=compress)
    train, test, classes = load_fashion_mnist(str(tmp_path / "fm"), tmp_path, download=False)
    assert len(classes) == 10 and classes[0] == "T-shirt/top" and classes[9] == "Ankle boot"
    assert train.images.shape == (30, 32, 32, 3) and test.images.shape == (8, 32, 32, 3)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert torch.equal(train.images[..., 0], train.images[..., 1]) and torch.equal(
        train.images[..., 0], train.images[..., 2]
    )
    grey = train.images[..., 0]
    assert (
        grey[:, :2].eq(0).all()
        and grey[:, 30:].eq(0).all()
        and grey[:, :, :2].eq(0).all()
        and grey[:, :, 30:].eq(0).all()
    )
    assert np.array_equal(grey[:, 2:30, 2:30].numpy(), raw["train"][0])
    assert train.labels.tolist() == raw["train"][1].tolist() and test.labels.tolist() == raw["t10k"][1].tolist()

    meta = prepare(fmnist_config(tmp_path / "fm", val_size=5), 0, tmp_path, tmp_path / "out")
    assert meta["sizes"] == {"train": 25, "val": 5, "test": 8} and meta["num_classes"] == 10
    assert meta["mean"][0] == meta["mean"][1] == meta["mean"][2]
    assert load_prepared(tmp_path / "out").classes == classes


def test_image_size_scales_every_split_down_by_area_and_is_checked_on_load(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    prepare(cifar_config(None, val_size=10), 0, tmp_path, tmp_path / "p32")
    meta = prepare(cifar_config(None, val_size=10, image_size=16), 0, tmp_path, tmp_path / "p16")
    full, small = load_prepared(tmp_path / "p32"), load_prepared(tmp_path / "p16", "cifar10", 16)
    assert meta["image_size"] == small.image_size == 16 and small.image_shape == (3, 16, 16)
    for name in ("train", "val", "test"):
        big, little = getattr(full, name), getattr(small, name)
        assert little.images.shape == (len(big), 16, 16, 3) and torch.equal(little.labels, big.labels)
        # each pixel is the rounded mean of the 2×2 block it covers (same seed: the same images in each split)
        blocks = big.images.double().unflatten(1, (16, 2)).unflatten(3, (16, 2)).mean(dim=(2, 4))
        assert (little.images.double() - blocks).abs().max() <= 0.5
    assert meta["mean"] == pytest.approx(list(small.mean)) and small.mean[0] == pytest.approx(full.mean[0], abs=0.01)

    with pytest.raises(DataError, match=r"meta\.json: the prepared images are 16x16 but data.image_size is 32; "):
        load_prepared(tmp_path / "p16", "cifar10", 32)
    assert load_prepared(tmp_path / "p32", None, 32).image_shape == (3, 32, 32)
    # a folder prepared before the key existed holds 32×32 images
    meta32 = json.loads((tmp_path / "p32" / "meta.json").read_text())
    del meta32["image_size"]
    (tmp_path / "p32" / "meta.json").write_text(json.dumps(meta32))
    assert load_prepared(tmp_path / "p32", None, 32).image_size == 32


def test_fashion_mnist_scaled_down_is_its_28x28_image_scaled_without_the_padding(tmp_path):
    raw = write_fmnist(tmp_path / "fm")
    prepare(fmnist_config(tmp_path / "fm", val_size=5, image_size=14), 0, tmp_path, tmp_path / "p14")
    test = load_prepared(tmp_path / "p14").test.images  # the test split keeps the file's order
    original = torch.from_numpy(raw["t10k"][0]).double()
    expected = original.unflatten(1, (14, 2)).unflatten(3, (14, 2)).mean(dim=(2, 4))  # 28 -> 14: 2×2 means
    assert test.shape == (8, 14, 14, 3) and (test[..., 0].double() - expected).abs().max() <= 0.5
    assert test[:, 0].gt(0).all()  # the images have no zero pixel: a first row from the zero padding would show


def test_resize_images_keeps_a_constant_image_and_leaves_the_right_size_alone():
    flat = torch.full((2, 32, 32, 3), 77, dtype=torch.uint8)
    assert torch.equal(resize_images(flat, 12), torch.full((2, 12, 12, 3), 77, dtype=torch.uint8))
    images = random_images(3)
    assert resize_images(images, 32) is images


def test_augmentation_pads_an_eighth_of_a_smaller_image():
    images = torch.randint(0, 256, (400, 16, 16, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    out = random_crop_flip(images, torch.Generator().manual_seed(3))
    assert out.shape == images.shape
    # a shift of at most 2 pixels (16 // 8): rows 2..13 of every crop come from the image, never from the padding
    rows_from_padding = [(img[2:14] == 0).all(dim=(1, 2)).any().item() for img in out]
    assert not any(rows_from_padding)
    assert any((img[:2] == 0).all() for img in out)  # and some crops do shift by 2 rows into the zero padding


@pytest.mark.skipif(not FASHION_MNIST_DEBIAN_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist package")
def test_debian_fashion_mnist(tmp_path):
    train, test, _ = load_fashion_mnist(None, tmp_path, download=False)
    assert len(train) == 60000 and len(test) == 10000
    assert train.labels.min() == 0 and train.labels.max() == 9 and test.labels.bincount().tolist() == [1000] * 10


def test_fashion_mnist_missing_names_all_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(data_sources, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "no-debian")
    with pytest.raises(DataError) as e:
        load_fashion_mnist(None, tmp_path / "raw", download=False)
    message = str(e.value)
    assert "dataset-fashion-mnist" in message and "data.fashion_mnist_path" in message and "data.download" in message
    # a folder given explicitly but lacking files does not fall back to anything else
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match="data.fashion_mnist_path.*half"):
        load_fashion_mnist(str(tmp_path / "half"), tmp_path, download=False)


def test_fashion_mnist_found_in_raw_root(tmp_path, monkeypatch):
    monkeypatch.setattr(data_sources, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "no-debian")
    write_fmnist(tmp_path / "raw" / "FashionMNIST" / "raw")
    meta = prepare(fmnist_config(None, val_size=3), 0, tmp_path / "raw", tmp_path / "out")
    assert meta["source"].startswith("raw:") and meta["sizes"]["train"] == 27


def corrupt(folder: Path, name: str, payload: bytes) -> None:
    (folder / f"{name}.gz").unlink()
    (folder / name).write_bytes(payload)


@pytest.mark.parametrize(
    ("name", "make", "problem"),
    [
        ("train-images-idx3-ubyte", lambda: idx_images(np.ones((30, 28, 28)))[:-5], "truncated"),
        ("train-images-idx3-ubyte", lambda: idx_images(np.ones((30, 28, 28)), magic=2049), "magic number"),
        ("t10k-labels-idx1-ubyte", lambda: idx_labels(np.zeros(7)), "7 labels for 8 images"),
        ("t10k-labels-idx1-ubyte", lambda: idx_labels(np.full(8, 10)), "outside 0..9"),
        ("train-labels-idx1-ubyte", lambda: b"\x00\x00", "truncated"),
    ],
)
def test_bad_idx_files_name_the_file_and_write_nothing(tmp_path, name, make, problem):
    write_fmnist(tmp_path / "fm")
    corrupt(tmp_path / "fm", name, make())
    with pytest.raises(DataError, match=problem) as e:
        prepare(fmnist_config(tmp_path / "fm", val_size=5), 0, tmp_path, tmp_path / "out")
    assert str(tmp_path / "fm" / name) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_truncated_gzip_names_the_file(tmp_path):
    write_fmnist(tmp_path / "fm")
    path = tmp_path / "fm" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_fashion_mnist(str(tmp_path / "fm"), tmp_path, download=False)


# ---- prepared files -----------------------------------------------------------------------------


@pytest.fixture
def prepared(tmp_path) -> Path:
    write_fmnist(tmp_path / "fm")
    prepare(fmnist_config(tmp_path / "fm", val_size=5), 0, tmp_path, tmp_path / "prepared")
    return tmp_path / "prepared"


def test_load_prepared_refuses_corrupt_or_missing_files(prepared):
    data = load_prepared(prepared)
    assert len(data.train) == 25 and data.to("cpu").val.images.shape == (5, 32, 32, 3)

    blob = (prepared / "val.pt").read_bytes()
    (prepared / "val.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"val\.pt.*netslim prepare"):
        load_prepared(prepared)

    (prepared / "val.pt").write_bytes(blob)
    torch.save(
        {"images": torch.zeros(5, 28, 28, 3, dtype=torch.uint8), "labels": torch.zeros(5).long()}, prepared / "test.pt"
    )
    with pytest.raises(DataError, match=r"test\.pt.*uint8 N x 32 x 32 x 3"):
        load_prepared(prepared)
    torch.save(
        {"images": torch.zeros(8, 32, 32, 3, dtype=torch.uint8), "labels": torch.full((8,), 10)}, prepared / "test.pt"
    )
    with pytest.raises(DataError, match=r"test\.pt.*labels outside"):
        load_prepared(prepared)

    (prepared / "meta.json").unlink()
    with pytest.raises(DataError, match=r"meta\.json.*netslim prepare"):
        load_prepared(prepared)


# ---- augmentation and normalisation -------------------------------------------------------------


def random_images(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 32, 32, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_augmentation_is_seeded_and_keeps_shape():
    images = random_images()
    a = random_crop_flip(images, torch.Generator().manual_seed(1))
    b = random_crop_flip(images, torch.Generator().manual_seed(1))
    c = random_crop_flip(images, torch.Generator().manual_seed(2))
    assert a.shape == images.shape and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augmentation_matches_pil_recipe():
    images = random_images(48)
    top, left, flip = crop_flip_params(48, torch.Generator().manual_seed(5))
    ours = random_crop_flip(images, torch.Generator().manual_seed(5))
    assert torch.equal(ours, pil_reference_crop_flip(images, top, left, flip))
    # the centre crop without a flip is the identity, with a flip the mirror image
    centre = torch.full((48,), 4)
    assert torch.equal(pil_reference_crop_flip(images, centre, centre, torch.zeros(48, dtype=torch.bool)), images)
    assert torch.equal(
        pil_reference_crop_flip(images, centre, centre, torch.ones(48, dtype=torch.bool)), images.flip(2)
    )


def test_crop_at_centre_without_flip_is_identity():
    images = random_images(200)
    generator = torch.Generator().manual_seed(0)
    top, left, flip = crop_flip_params(200, torch.Generator().manual_seed(0))
    out = random_crop_flip(images, generator)
    keep = (top == 4) & (left == 4) & ~flip
    assert keep.any() and torch.equal(out[keep], images[keep])
    # a crop shifted by the full pad has zeros along the border it moved past
    corner = (top == 0) & (left == 0) & ~flip
    assert corner.any() and out[corner][:, :4].eq(0).all() and out[corner][:, :, :4].eq(0).all()


def test_crop_flip_params_distribution():
    top, left, flip = crop_flip_params(20000, torch.Generator().manual_seed(0))
    assert top.dtype == left.dtype == torch.int64 and flip.dtype == torch.bool
    assert sorted(top.unique().tolist()) == list(range(9)) and sorted(left.unique().tolist()) == list(range(9))
    assert abs(flip.float().mean().item() - 0.5) < 0.02


def test_normalize_centres_the_data_it_was_fitted_on():
    images = random_images(256)
    images[..., 1] //= 3  # channels with different statistics
    mean = tuple(images.double().div(255).mean(dim=(0, 1, 2)).tolist())
    std = tuple(images.double().div(255).std(dim=(0, 1, 2)).tolist())
    x = normalize(images, mean, std)
    assert x.shape == (256, 3, 32, 32) and x.dtype == torch.float32
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3
    assert torch.allclose(x[3, 2, 5, 7], (images[3, 5, 7, 2] / 255 - mean[2]) / std[2])


# ---- the torchvision download path, against a real HTTP server on 127.0.0.1 ---------------------


@pytest.fixture
def http_folder(tmp_path):
    """Serve a folder over real HTTP on a free port of 127.0.0.1; yields (folder, base URL)."""
    import functools
    import http.server
    import threading

    folder = tmp_path / "served"
    folder.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def test_cifar_download_goes_through_torchvision(tmp_path, http_folder, monkeypatch):
    # torchvision's own CIFAR10.download runs; only where it fetches from (and the checksums of the tiny
    # archive served instead of the real one) point at the local server.
    import torchvision

    served, url = http_folder
    raw = write_cifar(tmp_path / "src" / "cifar-10-batches-py")
    archive = tar_cifar(tmp_path / "src" / "cifar-10-batches-py", served / "cifar-10-python.tar.gz")
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "url", url + archive.name)
    monkeypatch.setattr(cls, "tgz_md5", _md5(archive))
    batches = tmp_path / "src" / "cifar-10-batches-py"
    monkeypatch.setattr(
        cls, "train_list", [[f"data_batch_{i}", _md5(batches / f"data_batch_{i}")] for i in range(1, 6)]
    )
    monkeypatch.setattr(cls, "test_list", [["test_batch", _md5(batches / "test_batch")]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(batches / "batches.meta")})

    train, test, classes = load_cifar10(None, tmp_path / "raw", download=True)
    assert (tmp_path / "raw" / "cifar-10-batches-py" / "data_batch_1").is_file()
    assert classes == CIFAR_CLASSES and len(train.labels) == raw["n_train"] and len(test.labels) == 10
    assert train.labels.tolist() == raw["labels"][: raw["n_train"]].tolist()


def test_download_that_fails_is_one_line_naming_the_other_ways(tmp_path, http_folder, monkeypatch):
    import torchvision

    _, url = http_folder  # the server holds nothing: every request is a 404, as offline as it gets quickly
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", url + "cifar-10-python.tar.gz")
    with pytest.raises(DataError) as e:
        load_cifar10(None, tmp_path / "raw", download=True)
    message = str(e.value)
    assert "CIFAR-10 download failed" in message and "data.cifar10_path" in message and "\n" not in message

    monkeypatch.setattr(data_sources, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "no-debian-package")
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [url])
    with pytest.raises(DataError) as e:
        load_fashion_mnist(None, tmp_path / "raw", download=True)
    assert "Fashion-MNIST download failed" in str(e.value) and "\n" not in str(e.value)


def test_fashion_mnist_download_goes_through_torchvision(tmp_path, http_folder, monkeypatch):
    import torchvision

    served, url = http_folder
    write_fmnist(served, n_train=30, n_test=8)
    cls = torchvision.datasets.FashionMNIST
    monkeypatch.setattr(data_sources, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "no-debian-package")
    monkeypatch.setattr(cls, "mirrors", [url])
    monkeypatch.setattr(cls, "resources", [(name, _md5(served / name)) for name, _ in cls.resources])

    train, test, classes = load_fashion_mnist(None, tmp_path / "raw", download=True)
    assert (tmp_path / "raw" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert train.images.shape == (30, 32, 32, 3) and test.images.shape == (8, 32, 32, 3)
    assert len(classes) == 10
