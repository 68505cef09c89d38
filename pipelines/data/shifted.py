"""The test split under a distribution shift (`eval.shifts`, parsed by pipelines/shifts.py), from torchvision's
v2 transforms, applied to each test image after the backbone's resize and before Normalize: the image the
model sees, shifted.

Deterministic per image: an image's random draws (its noise, its rotation's angle) come from a seed of the
shift and the image's position in the test split, never from the run's seed or the loader's order, so every
arm, batch size and process (a data-parallel shard, a loader worker) sees exactly the same shifted images.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2

from pipelines.data.loaders import DataBundle, ImageDataset, make_transform
from pipelines.shifts import KINDS, Shift


def _blur(sigma: float, size: int) -> v2.Transform:
    # the kernel spans ±3 sigma, but no wider than the image: reflect padding needs less than the image's side
    return v2.GaussianBlur(kernel_size=min(2 * math.ceil(3 * sigma) + 1, 2 * size - 1), sigma=sigma)


# kind → its transform of a resized uint8 image, given the severity and the image's side. Noise needs floats in
# [0, 1] (the ToDtype after it then leaves them as they are), JPEG needs uint8; blur and rotation take either.
TRANSFORMS = {
    "gaussian_noise": lambda sigma, size: v2.Compose([v2.ToDtype(torch.float32, scale=True),
                                                      v2.GaussianNoise(sigma=sigma)]),  # clipped to [0, 1]
    "blur": _blur,
    # an angle drawn in ±degrees per image, the corners filled black
    "rotate": lambda degrees, size: v2.RandomRotation(degrees, interpolation=InterpolationMode.BILINEAR),
    "jpeg": lambda quality, size: v2.JPEG(int(quality)),
}
assert set(TRANSFORMS) == set(KINDS), "a shift kind without its transform"


def image_seed(shift: Shift, position: int) -> int:
    """The seed of one test image's draws under `shift`: stable across processes and Python versions
    (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(f"{shift.name}/{position}".encode(), digest_size=8).digest(), "big")


class ShiftedImages(Dataset):
    """A split's images through a transform with random draws, each image's drawn from its own seed."""

    def __init__(self, images: ImageDataset, shift: Shift):
        self.images, self.shift = images, shift

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        with torch.random.fork_rng(devices=[]):  # the process's own RNG stream is left where it was
            torch.default_generator.manual_seed(image_seed(self.shift, i))  # the CPU stream alone: CUDA's untouched
            return self.images[i]


def shifted_test_set(data: DataBundle, shift: Shift) -> Dataset:
    """The whole test split, in its order, under `shift` (a data-parallel process takes its shard of it)."""
    transform = make_transform(data.preprocessing, data.image_size, augment=False,
                               shift=TRANSFORMS[shift.kind](shift.severity, data.image_size))
    return ShiftedImages(ImageDataset(data.raw, data.indices["test"], transform), shift)
