"""Datasets by name, read into one shape: images (uint8 tensors, or image files) with integer labels.

`digits` (sklearn's bundled load_digits, the offline default), `fashion-mnist` (Debian's
dataset-fashion-mnist files when present, else torchvision's download), `imagefolder:<path>` (one
sub-folder per class, or pre-split as train/<class>/ + val/<class>/ [+ test/<class>/], the ImageNet
layout, whose splits are kept), and torchvision dataset names (`cifar10`, `mnist`, ...) for online users.
"""

from __future__ import annotations

import difflib
import gzip
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from pipelines.errors import DataError

log = logging.getLogger(__name__)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
# torchvision datasets with an official test split, keyed by the lower-case names users type.
TORCHVISION = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "mnist": "MNIST", "kmnist": "KMNIST",
               "svhn": "SVHN", "stl10": "STL10"}
BUILTIN = ("digits", "fashion-mnist", "imagefolder:<path>")
SPLIT_NAMES = ("train", "val", "test")  # the top-level folders of a pre-split image folder
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class RawDataset:
    """Images and labels before any split. `images` is a uint8 tensor [N, C, H, W] or a list of file paths."""

    name: str
    images: torch.Tensor | list[str]
    labels: np.ndarray
    class_names: list[str]
    source: str  # where it came from, for MLflow dataset lineage
    # Row indices of the splits the dataset comes with (e.g. its own "test"); the others are carved.
    given_splits: dict[str, np.ndarray] | None = None
    skipped: int = 0  # unreadable image files left out


def load_dataset(name: str, root: str = "") -> RawDataset:
    root_dir = Path(root).expanduser() if root else Path.home() / ".cache" / "freezeframe" / "datasets"
    if name == "digits":
        return _digits()
    if name == "fashion-mnist":
        return _fashion_mnist(root_dir)
    if name.startswith("imagefolder:"):
        return _image_folder(Path(name.removeprefix("imagefolder:")).expanduser())
    if name in TORCHVISION:
        return _torchvision(name, root_dir)
    known = ["digits", "fashion-mnist", *TORCHVISION]
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise DataError(f"unknown dataset '{name}' (valid: {', '.join([*BUILTIN, *TORCHVISION])}){hint}")


def _digits() -> RawDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 8x8 images with values 0..16: scale to the 0..255 range every other source uses.
    images = torch.from_numpy(np.round(bunch.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    return RawDataset("digits", images, bunch.target.astype(np.int64), [str(c) for c in bunch.target_names],
                      source="sklearn.datasets.load_digits")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist(root: Path) -> RawDataset:
    files = [DEBIAN_FASHION_MNIST / f"{p}-{k}-idx{d}-ubyte.gz"
             for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]
    if all(f.is_file() for f in files):
        train_x, train_y, test_x, test_y = (_read_idx(f) for f in files)
        source = str(DEBIAN_FASHION_MNIST)
    else:
        try:
            train = torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
            test = torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
        except Exception as exc:  # noqa: BLE001 - offline downloads fail with many error types
            raise DataError(
                f"fashion-mnist not found: install Debian's dataset-fashion-mnist (files under "
                f"{DEBIAN_FASHION_MNIST}) or go online for torchvision's download into {root} "
                f"({type(exc).__name__})") from None
        train_x, train_y, test_x, test_y = train.data.numpy(), train.targets.numpy(), test.data.numpy(), \
            test.targets.numpy()
        source = str(root / "FashionMNIST")
    images = torch.from_numpy(np.concatenate([train_x, test_x])).unsqueeze(1)
    labels = np.concatenate([train_y, test_y]).astype(np.int64)
    return RawDataset("fashion-mnist", images, labels, FASHION_CLASSES, source,
                      given_splits={"test": np.arange(len(train_x), len(labels))})


def _torchvision(name: str, root: Path) -> RawDataset:
    cls = getattr(torchvision.datasets, TORCHVISION[name])
    splits = [{"split": "train"}, {"split": "test"}] if name in ("svhn", "stl10") else [{"train": True},
                                                                                         {"train": False}]
    try:
        parts = [cls(str(root), download=True, **kw) for kw in splits]
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot download {name} into {root} ({type(exc).__name__}: {exc}); offline, use "
                        "digits, fashion-mnist or imagefolder:<path>") from None
    arrays, labels = [], []
    for part in parts:
        data = torch.as_tensor(np.asarray(part.data))
        if data.ndim == 3:  # N, H, W (MNIST family)
            data = data.unsqueeze(1)
        elif data.shape[-1] in (1, 3):  # N, H, W, C (CIFAR)
            data = data.permute(0, 3, 1, 2)
        arrays.append(data.contiguous())
        labels.append(np.asarray(getattr(part, "targets", getattr(part, "labels", None))))
    classes = list(getattr(parts[0], "classes", [])) or [str(c) for c in sorted(set(labels[0].tolist()))]
    n_train, n_all = len(arrays[0]), sum(len(a) for a in arrays)
    return RawDataset(name, torch.cat(arrays), np.concatenate(labels).astype(np.int64), classes,
                      source=str(root / TORCHVISION[name]), given_splits={"test": np.arange(n_train, n_all)})


def _image_folder(root: Path) -> RawDataset:
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    top = _subdirs(root)
    if {"train", "val"} <= {d.name for d in top}:
        return _pre_split_folder(root, top)
    if not top:
        raise DataError(f"image folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
    paths, labels, skipped = _read_classes(root, top)
    _warn_skipped(skipped, root)
    return RawDataset(f"imagefolder:{root.name}", paths, labels, [d.name for d in top],
                      source=str(root.resolve()), skipped=skipped)


def _pre_split_folder(root: Path, top: list[Path]) -> RawDataset:
    """train/<class>/ + val/<class>/ (+ test/<class>/): each split read as a class folder and kept as given."""
    extra = [d.name for d in top if d.name not in SPLIT_NAMES]
    if extra:
        raise DataError(f"pre-split folder {root}: unexpected folders beside train/val/test: {_listed(extra)}")
    dirs = {d.name: d for d in top}
    splits = [s for s in SPLIT_NAMES if s in dirs]
    class_dirs = {s: _subdirs(dirs[s]) for s in splits}
    for split in splits:
        if not class_dirs[split]:
            raise DataError(f"pre-split folder {root}: {split}/ is empty (expected {split}/<class>/<image>)")
    names = {s: [d.name for d in class_dirs[s]] for s in splits}
    problems = []
    for split in splits[1:]:
        lacks = sorted(set(names["train"]) - set(names[split]))
        more = sorted(set(names[split]) - set(names["train"]))
        problems += [f"{split} lacks {_listed(lacks)}"] if lacks else []
        problems += [f"{split} has extra {_listed(more)}"] if more else []
    if problems:
        raise DataError(f"pre-split folder {root}: classes differ between splits: {'; '.join(problems)}")
    paths, labels, given, skipped = [], [], {}, 0
    for split in splits:
        # Same sorted class names in every split, so each split's label indices are the train split's.
        split_paths, split_labels, split_skipped = _read_classes(dirs[split], class_dirs[split])
        given[split] = np.arange(len(paths), len(paths) + len(split_paths))
        paths += split_paths
        labels.append(split_labels)
        skipped += split_skipped
    _warn_skipped(skipped, root)
    return RawDataset(f"imagefolder:{root.name}", paths, np.concatenate(labels), names["train"],
                      source=str(root.resolve()), given_splits=given, skipped=skipped)


def _read_classes(folder: Path, class_dirs: list[Path]) -> tuple[list[str], np.ndarray, int]:
    """Readable image files under each class folder (recursively, as torchvision's ImageFolder), labelled by
    position; unreadable ones are counted."""
    for class_dir in class_dirs:
        _refuse_nested_only(folder, class_dir, class_dirs)
    paths, labels, skipped = [], [], 0
    for index, class_dir in enumerate(class_dirs):
        for path in sorted(class_dir.rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            if readable(path):
                paths.append(str(path))
                labels.append(index)
            else:
                skipped += 1
    if not paths:
        raise DataError(f"image folder {folder} holds no readable images ({skipped} unreadable)")
    empty = [d.name for i, d in enumerate(class_dirs) if i not in set(labels)]
    if empty:
        raise DataError(f"image folder {folder}: class folders without readable images: {_listed(empty)}")
    return paths, np.array(labels, dtype=np.int64), skipped


def _refuse_nested_only(folder: Path, class_dir: Path, class_dirs: list[Path]) -> None:
    """A class folder with only sub-folders is most often a split or an extra level: refuse rather than
    silently flatten it into one class."""
    inner = _subdirs(class_dir)
    if not inner or any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in class_dir.iterdir()):
        return
    hint = ""
    if class_dir.name in SPLIT_NAMES:
        missing = [s for s in ("train", "val") if s not in {d.name for d in class_dirs}]
        hint = f"is {folder} a pre-split folder missing {' and '.join(f'{s}/' for s in missing)}? " if missing else ""
    raise DataError(f"image folder {folder}: class folder '{class_dir.name}' holds only sub-folders "
                    f"({_listed([d.name for d in inner])}): {hint}images must sit in <class>/ "
                    "(or train/<class>/ + val/<class>/)")


def _subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _listed(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _warn_skipped(skipped: int, root: Path) -> None:
    if skipped:
        # Decision: skip and count rather than fail, so one bad file does not sink a large folder.
        log.warning("skipped %d unreadable image file(s) under %s", skipped, root)


# What PIL raises for a file that is not a complete, sane image (truncated, empty, text, decompression bomb).
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def readable(path: Path) -> bool:
    """Decode the whole file: verify() alone misses truncated image data."""
    try:
        with Image.open(path) as img:
            img.load()
        return True
    except UNREADABLE:
        return False
