import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.config import DataConfig
from pipelines.data.loaders import Preprocessing, build_data, make_loaders, make_transform
from pipelines.data.sources import DEBIAN_FASHION_MNIST, load_dataset
from pipelines.data.splits import split_indices
from pipelines.errors import DataError

PREP = Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear")


def test_digits_split_is_stratified_disjoint_and_seeded():
    raw = load_dataset("digits")
    a = split_indices(raw, 0.15, 0.15, seed=0)
    b = split_indices(raw, 0.15, 0.15, seed=0)
    c = split_indices(raw, 0.15, 0.15, seed=1)
    assert sum(len(v) for v in a.values()) == len(raw.labels) == 1797
    assert not set(a["train"]) & set(a["val"]) and not set(a["train"]) & set(a["test"])
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert not np.array_equal(a["test"], c["test"])
    # stratified: each class's share of the test split is within a point of its share overall
    overall = np.bincount(raw.labels) / len(raw.labels)
    test_share = np.bincount(raw.labels[a["test"]]) / len(a["test"])
    assert np.abs(overall - test_share).max() < 0.01


def test_max_samples_caps_each_split():
    raw = load_dataset("digits")
    splits = split_indices(raw, 0.15, 0.15, seed=0, max_samples=50)
    assert {len(v) for v in splits.values()} == {50}
    assert len(np.unique(raw.labels[splits["train"]])) == 10


def test_bundle_digest_and_tensors():
    raw = load_dataset("digits")
    cfg = DataConfig(image_size=40, max_samples=30)
    one, two = build_data(cfg, raw, PREP), build_data(cfg, raw, PREP)
    assert one.split_digest == two.split_digest
    other = DataConfig(image_size=40, max_samples=30, split_seed=3)
    assert build_data(other, raw, PREP).split_digest != one.split_digest
    x, y = next(iter(make_loaders(one, 8, 0, seed=0)["train"]))
    assert x.shape == (8, 3, 40, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert -1.0 <= x.min() and x.max() <= 1.0  # mean=std=0.5 maps [0, 1] to [-1, 1]


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_keeps_its_test_split():
    raw = load_dataset("fashion-mnist")
    assert raw.images.shape == (70000, 1, 28, 28) and raw.source == str(DEBIAN_FASHION_MNIST)
    assert raw.class_names[9] == "Ankle boot" and list(raw.given_splits) == ["test"]
    assert raw.given_splits["test"][0] == 60000 and len(raw.given_splits["test"]) == 10000
    splits = split_indices(raw, 0.1, 0.15, seed=0)
    assert len(splits["test"]) == 10000 and splits["test"].min() == 60000


def test_unknown_dataset_suggests():
    with pytest.raises(DataError, match="did you mean digits"):
        load_dataset("digit")


def make_folder(root, per_class=4, classes=("cat", "dog"), mode="RGB"):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new(mode, (20, 16), color=i * 40).save(root / name / f"{i}.png")
    return root


def test_image_folder_skips_and_counts_corrupt_files(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=6)
    (root / "cat" / "truncated.png").write_bytes((root / "cat" / "0.png").read_bytes()[:40])
    (root / "dog" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "notes.txt").write_text("not an image")
    raw = load_dataset(f"imagefolder:{root}")
    assert raw.class_names == ["cat", "dog"] and len(raw.images) == 12 and raw.skipped == 2
    data = build_data(DataConfig(image_size=32, val_fraction=0.25, test_fraction=0.25), raw, PREP)
    x, _ = data.datasets["train"][0]
    assert x.shape == (3, 32, 32)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_image_modes_become_three_channels(tmp_path, mode):
    root = make_folder(tmp_path / "imgs", per_class=4, mode=mode)
    raw = load_dataset(f"imagefolder:{root}")
    data = build_data(DataConfig(image_size=24, val_fraction=0.25, test_fraction=0.25), raw, PREP)
    assert data.datasets["test"][0][0].shape == (3, 24, 24)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="image folder not found"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(DataError, match="no readable images"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")


def make_pre_split(root, counts=(("train", 4), ("val", 2), ("test", 3)), classes=("cat", "dog", "owl")):
    for split, per_class in counts:
        make_folder(root / split, per_class=per_class, classes=classes)
    return root


def files_of(root, split):
    return {str(p) for p in (root / split).rglob("*.png")}


def test_pre_split_folder_keeps_its_splits(tmp_path):
    root = make_pre_split(tmp_path / "imgs")
    (root / ".cache").mkdir()  # hidden folders are not splits
    raw = load_dataset(f"imagefolder:{root}")
    assert raw.name == "imagefolder:imgs" and raw.source == str(root.resolve())
    assert raw.class_names == ["cat", "dog", "owl"]
    splits = split_indices(raw, 0.15, 0.15, seed=0)
    assert {s: len(v) for s, v in splits.items()} == {"train": 12, "val": 6, "test": 9}
    for split, idx in splits.items():
        assert {raw.images[i] for i in idx} == files_of(root, split)  # no re-split
        # labels index the train split's class names in every split
        assert all(raw.class_names[raw.labels[i]] == Path(raw.images[i]).parent.name for i in idx)


def test_pre_split_folder_without_test_carves_it_from_train(tmp_path, caplog):
    root = make_pre_split(tmp_path / "imgs", counts=(("train", 8), ("val", 2)))
    raw = load_dataset(f"imagefolder:{root}")
    with caplog.at_level(logging.INFO, logger="pipelines.data"):
        splits = split_indices(raw, 0.15, 0.25, seed=0)
    assert "imagefolder:imgs comes without a test split" in caplog.text
    assert len(splits["train"]) + len(splits["test"]) == 24 and len(splits["test"]) == 6
    assert {raw.images[i] for i in splits["val"]} == files_of(root, "val")
    assert {raw.images[i] for i in [*splits["train"], *splits["test"]]} == files_of(root, "train")
    assert np.bincount(raw.labels[splits["test"]]).tolist() == [2, 2, 2]  # stratified
    assert np.array_equal(split_indices(raw, 0.15, 0.25, seed=0)["test"], splits["test"])


def test_pre_split_folder_through_build_data(tmp_path):
    root = make_pre_split(tmp_path / "imgs")
    bundle = build_data(DataConfig(image_size=32), load_dataset(f"imagefolder:{root}"), PREP)
    assert bundle.sizes() == {"train": 12, "val": 6, "test": 9}
    assert bundle.datasets["val"][0][0].shape == (3, 32, 32)
    capped = build_data(DataConfig(image_size=32, max_samples=5), load_dataset(f"imagefolder:{root}"), PREP)
    assert capped.sizes() == {"train": 5, "val": 5, "test": 5}


def test_pre_split_folder_refuses_mismatched_classes(tmp_path):
    root = tmp_path / "imgs"
    make_folder(root / "train", classes=("cat", "dog", "owl"))
    make_folder(root / "val", classes=("cat", "dog"))
    make_folder(root / "test", classes=("cat", "dog", "emu", "owl"))
    with pytest.raises(DataError, match="classes differ between splits: val lacks owl; test has extra emu"):
        load_dataset(f"imagefolder:{root}")


def test_pre_split_folder_refuses_extra_and_empty_folders(tmp_path):
    root = make_pre_split(tmp_path / "imgs")
    (root / "extra").mkdir()
    (root / "more").mkdir()
    with pytest.raises(DataError, match="unexpected folders beside train/val/test: extra, more"):
        load_dataset(f"imagefolder:{root}")
    root = make_pre_split(tmp_path / "no-val", counts=(("train", 4),))
    (root / "val").mkdir()
    with pytest.raises(DataError, match="val/ is empty"):
        load_dataset(f"imagefolder:{root}")


def test_class_folder_of_only_sub_folders_is_refused(tmp_path):
    root = tmp_path / "imgs"  # a pre-split folder missing val/: read plainly, train/ would be one class
    make_pre_split(root, counts=(("train", 2), ("test", 2)))
    with pytest.raises(DataError, match=r"class folder 'test' holds only sub-folders \(cat, dog, owl\): "
                                        r"is .* a pre-split folder missing val/\?"):
        load_dataset(f"imagefolder:{root}")
    nested = make_folder(tmp_path / "nested" / "cat" / "2024", classes=("a",))
    with pytest.raises(DataError, match="class folder 'cat' holds only sub-folders \\(2024\\)"):
        load_dataset(f"imagefolder:{nested.parent.parent}")


def test_plain_folder_still_gathers_recursively(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=3, classes=("cat", "dog", "train"))
    make_folder(root / "dog" / "more", per_class=2, classes=("x",))  # images beside a sub-folder: gathered
    raw = load_dataset(f"imagefolder:{root}")
    assert raw.class_names == ["cat", "dog", "train"] and raw.given_splits is None
    assert np.bincount(raw.labels).tolist() == [3, 5, 3]
    assert sum(len(v) for v in split_indices(raw, 0.25, 0.25, seed=0).values()) == 11


def test_transform_uses_backbone_normalisation():
    image = torch.full((1, 8, 8), 255, dtype=torch.uint8)
    prep = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic")
    out = make_transform(prep, 16, augment=False)(image)
    expected = torch.tensor([(1 - m) / s for m, s in zip(prep.mean, prep.std, strict=True)])
    assert out.shape == (3, 16, 16)
    assert torch.allclose(out[:, 8, 8], expected, atol=1e-4)


def test_shifted_test_images_are_the_same_whatever_the_order_batch_or_rng():
    """Every arm tests on the same shifted images: each image's draws are seeded by the shift and its position."""
    from torch.utils.data import DataLoader

    from pipelines.data.shifted import shifted_test_set
    from pipelines.shifts import parse_shifts

    data = build_data(DataConfig(image_size=32, max_samples=20), load_dataset("digits"), PREP)
    clean = torch.stack([data.datasets["test"][i][0] for i in range(20)])
    for shift in parse_shifts(("gaussian_noise:0.2", "rotate:30", "blur:1.5", "jpeg:10")):
        images = shifted_test_set(data, shift)
        torch.manual_seed(0)
        forward = torch.cat([x for x, _ in DataLoader(images, batch_size=3)])
        torch.manual_seed(1)  # another RNG state, another order and batch size: the same images
        backward = torch.stack([images[i][0] for i in reversed(range(20))]).flip(0)
        assert torch.equal(forward, backward) and not torch.equal(forward, clean), shift.spec
        assert forward.shape == clean.shape and -1.0 <= forward.min() and forward.max() <= 1.0  # then Normalize
    noisy = shifted_test_set(data, parse_shifts(("gaussian_noise:0.2",))[0])
    assert not torch.equal(noisy[0][0], noisy[1][0] - clean[1] + clean[0])  # each image its own noise
