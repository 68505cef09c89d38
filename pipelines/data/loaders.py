"""From a raw dataset and its split to DataLoaders, through the backbone's own transforms."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode, v2

from pipelines.config import DataConfig
from pipelines.data.shards import ShardSampler, eval_shard
from pipelines.data.sources import RawDataset
from pipelines.data.splits import SPLITS, split_digest, split_indices
from pipelines.processes import world_size


@dataclass(frozen=True)
class Preprocessing:
    """What the backbone expects of its input, taken from the model's own data config."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # "bilinear" | "bicubic" | "nearest"


@dataclass
class DataBundle:
    raw: RawDataset
    indices: dict[str, np.ndarray]  # split name → row indices into raw
    datasets: dict[str, Dataset]
    split_digest: str
    preprocessing: Preprocessing
    image_size: int

    @property
    def class_names(self) -> list[str]:
        return self.raw.class_names

    def sizes(self) -> dict[str, int]:
        return {split: len(idx) for split, idx in self.indices.items()}

    def labels(self, split: str) -> np.ndarray:
        return self.raw.labels[self.indices[split]]


class ImageDataset(Dataset):
    """Rows of a RawDataset, transformed on the fly."""

    def __init__(self, raw: RawDataset, indices: np.ndarray, transform: v2.Compose):
        self.raw, self.indices, self.transform = raw, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        row = int(self.indices[i])
        if isinstance(self.raw.images, torch.Tensor):
            image = self.raw.images[row]
        else:
            with Image.open(self.raw.images[row]) as img:
                image = img.convert("RGB")  # grayscale, palette and RGBA all become 3 channels
        return self.transform(image), int(self.raw.labels[row])


def build_data(cfg: DataConfig, raw: RawDataset, preprocessing: Preprocessing) -> DataBundle:
    indices = split_indices(raw, cfg.val_fraction, cfg.test_fraction, cfg.split_seed, cfg.max_samples)
    train_tf = make_transform(preprocessing, cfg.image_size, augment=cfg.augment)
    eval_tf = make_transform(preprocessing, cfg.image_size, augment=False)
    datasets = {s: ImageDataset(raw, indices[s], train_tf if s == "train" else eval_tf) for s in SPLITS}
    return DataBundle(raw, indices, datasets, split_digest(raw.name, indices), preprocessing, cfg.image_size)


def make_transform(prep: Preprocessing, size: int, augment: bool, shift: v2.Transform | None = None) -> v2.Compose:
    """uint8 tensor or PIL image → normalised float [3, size, size], per the backbone's data config; `shift`
    (pipelines/data/shifted.py) acts on the resized uint8 image, as the model would see it but for Normalize."""
    interpolation = InterpolationMode(prep.interpolation)
    resize = (
        [v2.RandomResizedCrop(size, scale=(0.7, 1.0), interpolation=interpolation, antialias=True),
         v2.RandomHorizontalFlip()]
        if augment
        else [v2.Resize((size, size), interpolation=interpolation, antialias=True)]
    )
    return v2.Compose([
        v2.ToImage(),
        v2.RGB(),
        *resize,
        *([shift] if shift is not None else []),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(prep.mean), std=list(prep.std)),
    ])


def make_loaders(data: DataBundle, batch_size: int, num_workers: int, seed: int,
                 pin_memory: bool = False) -> dict[str, DataLoader]:
    """The three splits' loaders. `batch_size` is the global batch: under data-parallel training each
    process takes batch_size / processes from its shard (pipelines/data/shards.py); alone, the
    shard is the whole split, drawn in the order torch's RandomSampler draws it."""
    generator = torch.Generator().manual_seed(seed)  # the shuffle order is part of the experiment
    train = data.datasets["train"]
    return {split: DataLoader(
        train if split == "train" else eval_shard(data.datasets[split]),
        batch_size=batch_size // world_size(),
        sampler=ShardSampler(len(train), generator) if split == "train" else None,
        generator=generator if split == "train" else None, num_workers=num_workers, pin_memory=pin_memory,
        persistent_workers=num_workers > 0) for split in SPLITS}


def denormalize(batch: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Back to [0, 1] for a picture of what the model sees."""
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    return (batch.cpu().float() * std + mean).clamp(0, 1)
