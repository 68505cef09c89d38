"""From a raw dataset to DataLoaders: a stratified, seeded split and the backbone's own transforms.

Every arm of a comparison that shares a dataset and seed gets the same split; its digest is logged
so that can be checked rather than assumed.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode, v2

from pipelines.backbones import Preprocessing
from pipelines.config import DataConfig
from pipelines.datasets import RawDataset
from pipelines.errors import DataError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


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


def split_indices(raw: RawDataset, val_fraction: float, test_fraction: float, seed: int,
                  max_samples: int = 0) -> dict[str, np.ndarray]:
    """Stratified train/val/test; splits the dataset comes with (`raw.given_splits`) are kept as they are.

    The others are carved, stratified and seeded, from the given train split, or else from the rows no
    given split holds: test first, then val, whose fraction is of that pool before test was carved.
    """
    labels = raw.labels
    given = raw.given_splits or {}
    splits = dict(given)
    taken = np.concatenate([np.arange(0), *given.values()])
    pool = given.get("train", np.setdiff1d(np.arange(len(labels)), taken))
    if "test" not in splits:
        pool, splits["test"] = _stratified(pool, labels, test_fraction, seed)
        if given:
            log.info("%s comes without a test split: test is %g of its train split, stratified (seed %d)",
                     raw.name, test_fraction, seed)
    if "val" not in splits:
        fraction = val_fraction / (1 - test_fraction) if "test" not in given else val_fraction
        pool, splits["val"] = _stratified(pool, labels, fraction, seed)
    splits["train"] = pool
    if max_samples:
        splits = {name: _cap(idx, labels, max_samples, seed) for name, idx in splits.items()}
    return {name: np.sort(splits[name]) for name in SPLITS}


def _stratified(idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int):
    try:
        return train_test_split(idx, test_size=fraction, stratify=labels[idx], random_state=seed)
    except ValueError as exc:
        counts = np.bincount(labels[idx])
        raise DataError(f"cannot split {len(idx)} images stratified by class (smallest class has "
                        f"{counts[counts > 0].min()} images): {exc}") from None


def _cap(idx: np.ndarray, labels: np.ndarray, cap: int, seed: int) -> np.ndarray:
    if len(idx) <= cap:
        return idx
    n_classes = len(np.unique(labels[idx]))
    # Stratifying needs every class representable on both sides; else a seeded random pick.
    if cap >= n_classes and len(idx) - cap >= n_classes:
        kept, _ = train_test_split(idx, train_size=cap, stratify=labels[idx], random_state=seed)
        return kept
    return np.random.default_rng(seed).permutation(idx)[:cap]


def split_digest(name: str, indices: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(name.encode())
    for split in SPLITS:
        h.update(split.encode())
        h.update(np.ascontiguousarray(indices[split], dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def make_transform(prep: Preprocessing, size: int, augment: bool) -> v2.Compose:
    """uint8 tensor or PIL image → normalised float [3, size, size], per the backbone's data config."""
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
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(prep.mean), std=list(prep.std)),
    ])


def make_loaders(data: DataBundle, batch_size: int, num_workers: int, seed: int,
                 pin_memory: bool = False) -> dict[str, DataLoader]:
    generator = torch.Generator().manual_seed(seed)  # the shuffle order is part of the experiment
    return {
        split: DataLoader(
            data.datasets[split], batch_size=batch_size, shuffle=split == "train",
            generator=generator if split == "train" else None, num_workers=num_workers,
            pin_memory=pin_memory, persistent_workers=num_workers > 0,
        )
        for split in SPLITS
    }


def denormalize(batch: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Back to [0, 1] for a picture of what the model sees."""
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    return (batch.cpu().float() * std + mean).clamp(0, 1)
