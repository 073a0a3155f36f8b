"""The device-side batch augmentation draws crops and flips like the seed experiment's PIL recipe.

The seed experiment augments each image with torchvision's Pad(4), RandomCrop(32) and
RandomHorizontalFlip on PIL images; netslim crops and flips whole uint8 batches with one gather
(`netslim.data.random_crop_flip`). Both are run here on a "coordinate image" whose pixels spell out their
own row and column, so the crop offsets and the flip of every output can be read back from its pixels:
the two must draw the same distribution (offsets uniform over 0..8, flips half the time, all
independent), and for one generator seed netslim must give the same offsets, flips and pixels every time.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import pil_reference_crop_flip
from netslim.data import crop_flip_params, random_crop_flip

PAD = 4
OFFSETS = 2 * PAD + 1  # 0..8
N = 9000
ALPHA = 1e-3  # fixed seeds make every test deterministic; the level only says how odd a sample may look


def coordinate_images(n: int) -> torch.Tensor:
    """n copies of a 32×32 image whose red value is row + 1 and green value is column + 1 (0 = padding)."""
    rows = torch.arange(1, 33, dtype=torch.uint8)
    image = torch.stack([rows[:, None].expand(32, 32), rows[None, :].expand(32, 32), torch.zeros(32, 32).byte()], -1)
    return image.expand(n, 32, 32, 3).contiguous()


def read_back(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, left, flip) of augmented coordinate images, from the pixels at the centre (always inside)."""
    red, green, green_right = (out[:, 16, 16, 0].long(), out[:, 16, 16, 1].long(), out[:, 16, 17, 1].long())
    flip = green_right < green  # a mirrored crop's columns run right to left
    # Output pixel (16, 16) is input (12 + top, 12 + left), or (12 + top, 11 + left) when mirrored.
    return red - 13, torch.where(flip, green - 12, green - 13), flip


def torchvision_recipe(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The seed experiment's transforms, image by image on PIL images, read back."""
    from PIL import Image
    from torchvision import transforms

    recipe = transforms.Compose([transforms.Pad(PAD), transforms.RandomCrop(32), transforms.RandomHorizontalFlip()])
    image = Image.fromarray(coordinate_images(1)[0].numpy())
    torch.manual_seed(seed)  # torchvision draws from the global generator
    out = torch.stack([torch.from_numpy(np.array(recipe(image))) for _ in range(n)])

    return read_back(out)


def netslim_recipe(n: int, seed: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out = random_crop_flip(coordinate_images(n).to(device), torch.Generator().manual_seed(seed))
    return read_back(out.cpu())


def chi2_p(observed: torch.Tensor) -> float:
    """p-value of Pearson's χ² test of independence of a contingency table (rows × columns)."""
    observed = observed.double()
    expected = observed.sum(1, keepdim=True) * observed.sum(0, keepdim=True) / observed.sum()
    statistic = ((observed - expected) ** 2 / expected).sum()
    dof = (observed.shape[0] - 1) * (observed.shape[1] - 1)
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), statistic / 2))


def uniform_p(values: torch.Tensor, bins: int) -> float:
    """p-value of χ² goodness of fit of `values` to the uniform distribution over 0..bins-1."""
    counts = torch.bincount(values, minlength=bins).double()
    statistic = ((counts - counts.mean()) ** 2 / counts.mean()).sum()
    return float(torch.special.gammaincc(torch.tensor((bins - 1) / 2, dtype=torch.float64), statistic / 2))


@pytest.fixture(scope="module")
def draws() -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return {"netslim": netslim_recipe(N, seed=0), "pil": torchvision_recipe(N, seed=0)}


@pytest.mark.parametrize("recipe", ["netslim", "pil"])
def test_offsets_are_uniform_over_0_to_8_and_flips_half(draws, recipe):
    top, left, flip = draws[recipe]
    for offset in (top, left):
        assert int(offset.min()) == 0 and int(offset.max()) == 2 * PAD
        assert uniform_p(offset, OFFSETS) > ALPHA
    sigma = (0.25 / N) ** 0.5
    assert abs(flip.double().mean().item() - 0.5) < 4 * sigma


def test_netslim_and_pil_draw_the_same_distribution(draws):
    ours, theirs = draws["netslim"], draws["pil"]
    for name, a, b, bins in (("top", ours[0], theirs[0], OFFSETS), ("left", ours[1], theirs[1], OFFSETS)):
        table = torch.stack([torch.bincount(a, minlength=bins), torch.bincount(b, minlength=bins)])
        assert chi2_p(table) > ALPHA, f"{name} offsets differ: {table.tolist()}"
    flips = torch.tensor(
        [[int(ours[2].sum()), N - int(ours[2].sum())], [int(theirs[2].sum()), N - int(theirs[2].sum())]]
    )
    assert chi2_p(flips) > ALPHA


def test_netslim_offsets_and_flip_are_independent(draws):
    top, left, flip = draws["netslim"]
    joint = torch.zeros(OFFSETS, OFFSETS, dtype=torch.long).index_put_((top, left), torch.ones(N).long(), True)
    assert chi2_p(joint) > ALPHA
    by_flip = torch.stack([torch.bincount(top[flip], minlength=OFFSETS), torch.bincount(top[~flip], minlength=OFFSETS)])
    assert chi2_p(by_flip) > ALPHA


def test_the_check_itself_rejects_a_skewed_augmentation(draws):
    """The same tests on a crop that never shifts by the full pad must fail, or they prove nothing."""
    top, _, flip = draws["netslim"]
    skewed = top.clamp(max=2 * PAD - 1)
    assert uniform_p(skewed, OFFSETS) < ALPHA
    assert (
        chi2_p(torch.stack([torch.bincount(top, minlength=OFFSETS), torch.bincount(skewed, minlength=OFFSETS)])) < ALPHA
    )
    assert chi2_p(torch.tensor([[int(flip.sum()), N - int(flip.sum())], [int(0.45 * N), N - int(0.45 * N)]])) < ALPHA


def test_same_seed_gives_the_same_offsets_flips_and_pixels():
    n = 512
    images = torch.randint(0, 256, (n, 32, 32, 3), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    top, left, flip = netslim_recipe(n, seed=7)
    assert [t.tolist() for t in (top, left, flip)] == [
        t.tolist() for t in crop_flip_params(n, torch.Generator().manual_seed(7), PAD)
    ]
    assert [t.tolist() for t in netslim_recipe(n, seed=7)] == [t.tolist() for t in (top, left, flip)]
    assert netslim_recipe(n, seed=8)[0].tolist() != top.tolist()
    ours = random_crop_flip(images, torch.Generator().manual_seed(7))
    assert torch.equal(ours, pil_reference_crop_flip(images, top, left, flip, PAD))


@pytest.mark.gpu
def test_on_cuda_the_same_seed_gives_the_same_crops_as_on_the_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: checks that augmenting on the GPU draws exactly the CPU's crops and flips")
    images = torch.randint(0, 256, (256, 32, 32, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    on_cpu = random_crop_flip(images, torch.Generator().manual_seed(4))
    on_gpu = random_crop_flip(images.cuda(), torch.Generator().manual_seed(4))
    assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), on_cpu)
