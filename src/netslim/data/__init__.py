"""Datasets as uint8 tensors: reading CIFAR-10 and Fashion-MNIST, the prepared split files, augmentation.

`prepare` reads a raw dataset once into N×32×32×3 uint8 tensors (Fashion-MNIST is zero-padded to 32×32
and repeated to 3 channels), scales them down to `data.image_size` when that is smaller (area averaging),
carves a seeded validation split out of the training set and writes {train,val,test}.pt plus meta.json.
Training reads them with `load_prepared` in well under a second and augments whole batches on the device
with `random_crop_flip`, which equals the per-image PIL recipe (Pad(4), random 32×32 crop, horizontal flip)
of the seed experiment for the same offsets.

One module per job, their public names here:

- `store`: the prepared store (`Split`, `PreparedData`, `write_prepared`, `load_prepared`) and `DataError`;
- `sources`: the raw datasets' readers (CIFAR-10's pickled batches, Fashion-MNIST's idx files, a download);
- `preparation`: raw dataset -> checked, split and scaled tensors (`read_and_split`, `prepare`);
- `augment`: batch augmentation and normalisation on the device (`random_crop_flip`, `normalize`).
"""

from netslim.data.augment import crop_flip_params, normalize, random_crop_flip
from netslim.data.preparation import channel_stats, prepare, read_and_split, resize_images
from netslim.data.sources import FASHION_MNIST_DEBIAN_DIR, load_cifar10, load_fashion_mnist
from netslim.data.store import (
    MIN_IMAGE_SIZE,
    SIZE,
    SPLITS,
    DataError,
    PreparedData,
    Split,
    load_prepared,
    write_prepared,
)

__all__ = [
    "FASHION_MNIST_DEBIAN_DIR",
    "MIN_IMAGE_SIZE",
    "SIZE",
    "SPLITS",
    "DataError",
    "PreparedData",
    "Split",
    "channel_stats",
    "crop_flip_params",
    "load_cifar10",
    "load_fashion_mnist",
    "load_prepared",
    "normalize",
    "prepare",
    "random_crop_flip",
    "read_and_split",
    "resize_images",
    "write_prepared",
]
