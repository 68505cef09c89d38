"""The seeded, stratified train/val/test split: the same for every arm that shares a dataset and
split seed, with a digest logged so that can be checked rather than assumed."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
from sklearn.model_selection import train_test_split

from pipelines.data.sources import RawDataset
from pipelines.errors import DataError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


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
