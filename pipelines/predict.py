"""Classify image files with a trained model, preprocessed exactly as in training.

The preprocessing (size, mean, std, interpolation) and the class names come from the metadata logged
with the model, never re-typed here; a single image gets its batch dimension like any other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from pipelines.backbones import Preprocessing
from pipelines.data import make_transform
from pipelines.datasets import IMAGE_SUFFIXES, readable
from pipelines.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (class name, probability), most likely first


def image_paths(target: str | Path) -> list[Path]:
    """The readable images of a file or folder, checked before any model is loaded.

    A single unreadable file is an error; in a folder, unreadable files are skipped and counted,
    as for training data (pipelines/datasets.py)."""
    target = Path(target)
    if target.is_file():
        if not readable(target):
            raise DataError(f"cannot read image {target}: not a complete image file PIL can decode")
        return [target]
    if not target.is_dir():
        raise DataError(f"input not found: {target}")
    candidates = sorted(p for p in target.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    paths = [p for p in candidates if readable(p)]
    if not paths:
        raise DataError(f"no readable images ({', '.join(IMAGE_SUFFIXES)}) under {target}")
    if len(paths) < len(candidates):
        log.warning("skipped %d unreadable image file(s) under %s", len(candidates) - len(paths), target)
    return paths


def predict(model: nn.Module, metadata: dict, target: str | Path | list[Path], top_k: int = 5,
            batch_size: int = 32) -> list[Prediction]:
    prep = Preprocessing(tuple(metadata["mean"]), tuple(metadata["std"]), metadata["interpolation"])
    transform = make_transform(prep, int(metadata["image_size"]), augment=False)
    names = list(metadata["class_names"])
    k = max(1, min(top_k, len(names)))
    paths = image_paths(target) if not isinstance(target, list) else target
    model.eval()
    out: list[Prediction] = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        batch = torch.stack([transform(_read(p)) for p in chunk])
        with torch.inference_mode():
            probabilities = model(batch).float().softmax(dim=1)
        values, indices = probabilities.topk(k, dim=1)
        for path, v, i in zip(chunk, values.tolist(), indices.tolist(), strict=True):
            out.append(Prediction(str(path), [(names[c], p) for c, p in zip(i, v, strict=True)]))
    return out


def _read(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def write_csv(predictions: list[Prediction], path: str) -> None:
    """One row per image: path, then class and probability for each of the top k."""
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *[f"{kind}_{i + 1}" for i in range(len(predictions[0].top))
                                   for kind in ("class", "prob")]])
        for p in predictions:
            writer.writerow([p.path, *[v for name, prob in p.top for v in (name, f"{prob:.6f}")]])
