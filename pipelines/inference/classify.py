"""Classify image files with a trained model, preprocessed exactly as in training.

The preprocessing (size, mean, std, interpolation) and the class names come from the metadata logged
with the model, never re-typed here; a single image gets its batch dimension like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from pipelines.data.loaders import Preprocessing, make_transform
from pipelines.data.sources import IMAGE_SUFFIXES, UNREADABLE
from pipelines.errors import DataError, first_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (class name, probability), most likely first


@dataclass(frozen=True)
class ImageInputs:
    """The image files to classify, in order. Each is decoded once: a single file here, as it is
    checked (so a bad one fails before any model loads), and kept for `predict`; a folder's files in
    `predict`, batch by batch, so a large folder is never held in memory whole."""
    source: Path
    paths: tuple[Path, ...]
    decoded: Image.Image | None = field(default=None, compare=False)  # the single file's image


def image_inputs(target: str | Path) -> ImageInputs:
    """A file (decoded now: unreadable is an error) or a folder's image files (decoded when predicted;
    unreadable ones are then skipped and counted, as for training data in pipelines/data/sources.py)."""
    target = Path(target)
    if target.is_file():
        return ImageInputs(target, (target,), decode(target))
    if not target.is_dir():
        raise DataError(f"input not found: {target}")
    paths = tuple(sorted(p for p in target.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
    if not paths:
        raise DataError(f"no readable images ({', '.join(IMAGE_SUFFIXES)}) under {target}")
    return ImageInputs(target, paths)


def decode(path: Path) -> Image.Image:
    """The whole image decoded to RGB: the one read that both checks a file and feeds the model
    (a header alone would pass a truncated file)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except UNREADABLE as exc:
        raise DataError(f"cannot read image {path}: not a complete image file PIL can decode "
                        f"({first_line(exc)})") from None


def predict(model: nn.Module, metadata: dict, target: str | Path | ImageInputs, top_k: int = 5,
            batch_size: int = 32) -> list[Prediction]:
    prep = Preprocessing(tuple(metadata["mean"]), tuple(metadata["std"]), metadata["interpolation"])
    transform = make_transform(prep, int(metadata["image_size"]), augment=False)
    names = list(metadata["class_names"])
    k = max(1, min(top_k, len(names)))
    inputs = target if isinstance(target, ImageInputs) else image_inputs(target)
    model.eval()
    out: list[Prediction] = []
    for chunk in _decoded_batches(inputs, batch_size):
        batch = torch.stack([transform(image) for _, image in chunk])
        with torch.inference_mode():
            probabilities = model(batch).float().softmax(dim=1)
        values, indices = probabilities.topk(k, dim=1)
        for (path, _), v, i in zip(chunk, values.tolist(), indices.tolist(), strict=True):
            out.append(Prediction(str(path), [(names[c], p) for c, p in zip(i, v, strict=True)]))
    return out


def _decoded_batches(inputs: ImageInputs, size: int) -> Iterator[list[tuple[Path, Image.Image]]]:
    """(path, image) batches, each file decoded once; a folder's unreadable files skipped and counted."""
    if inputs.decoded is not None:
        yield [(inputs.paths[0], inputs.decoded)]
        return
    chunk: list[tuple[Path, Image.Image]] = []
    skipped = 0
    for path in inputs.paths:
        try:
            chunk.append((path, decode(path)))
        except DataError:
            skipped += 1
            continue
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
    if skipped == len(inputs.paths):
        raise DataError(f"no readable images ({', '.join(IMAGE_SUFFIXES)}) under {inputs.source} "
                        f"({skipped} unreadable)")
    if skipped:
        # Decision: skip and count rather than fail, so one bad file does not sink a large folder.
        log.warning("skipped %d unreadable image file(s) under %s", skipped, inputs.source)


def write_csv(predictions: list[Prediction], path: str) -> None:
    """One row per image: path, then class and probability for each of the top k."""
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *[f"{kind}_{i + 1}" for i in range(len(predictions[0].top))
                                   for kind in ("class", "prob")]])
        for p in predictions:
            writer.writerow([p.path, *[v for name, prob in p.top for v in (name, f"{prob:.6f}")]])
