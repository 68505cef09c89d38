"""From a comparison to a prediction: the best arm registered as champion, then `predict` on files."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from sklearn.datasets import load_digits

from freezeframe.cli import main
from pipelines.inference.classify import image_inputs, predict
from tests.conftest import runs_in
from tests.test_compare import write_experiment


@pytest.fixture
def digit_images(tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    digits = load_digits()
    for i in range(6):
        pixels = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).resize((24, 24)).save(folder / f"{i}_label{digits.target[i]}.png")
    return folder


@pytest.mark.slow
def test_best_arm_is_champion_and_predict_reads_its_preprocessing(tracking_store, tmp_path, digit_images, capsys):
    path = write_experiment(tmp_path, "  name: grid\n  freeze: [frozen, unfrozen]\n",
                            **{"tracking.log_model": True, "train.epochs": 3})
    assert main(["compare", "--experiment", path]) == 0
    assert "best arm registered as models:/freezeframe-grid@champion" in capsys.readouterr().out
    client = MlflowClient()
    version = client.get_model_version_by_alias("freezeframe-grid", "champion")
    (parent,) = [r for r in runs_in(tracking_store) if "mlflow.parentRunId" not in r.data.tags]
    assert version.tags["source_run_id"] == parent.data.tags["best_run_id"]
    assert "best arm of comparison grid" in version.description and "test/acc" in version.description
    assert parent.data.tags["champion"] == "models:/freezeframe-grid@champion"

    one = sorted(digit_images.iterdir())[0]
    assert main(["predict", "--model", "models:/freezeframe-grid@champion", "--input", str(one),
                 "--top_k", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{one}: ") and line.count(",") == 2  # three classes with probabilities
    probabilities = [float(part.split()[-1]) for part in line.split(": ", 1)[1].split(", ")]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001

    output = tmp_path / "out.csv"
    run_uri = f"runs:/{parent.data.tags['best_run_id']}/model"
    assert main(["predict", "--model", run_uri, "--input", str(digit_images), "--output", str(output)]) == 0
    rows = list(csv.DictReader(output.open()))
    assert len(rows) == 6 and set(rows[0]) >= {"path", "class_1", "prob_1", "class_5", "prob_5"}
    assert all(r["class_1"] in [str(d) for d in range(10)] for r in rows)


@pytest.mark.parametrize("flags, message", [
    (["--model", "models:/nothing@champion", "--input", "IMAGES"], "cannot load model models:/nothing@champion"),
    (["--model", "resnet18.pth", "--input", "IMAGES"], "is not a model URI"),
    (["--model", "models:/x@y"], "predict needs --input"),
    (["--model", "models:/x@y", "--input", "x", "--top_k", "0"], "--top_k must be >= 1"),
])
def test_predict_bad_input(tracking_store, digit_images, capsys, flags, message):
    assert main(["predict", *[str(digit_images) if f == "IMAGES" else f for f in flags]]) == 2
    assert message in capsys.readouterr().err


def test_each_image_is_decoded_once_and_a_folder_skips_unreadable_files(digit_images, monkeypatch, caplog):
    """The decode that checks a file is the one that feeds the model: one PIL open per file, bad ones too."""
    good = sorted(p.name for p in digit_images.iterdir())
    (digit_images / "truncated.png").write_bytes((digit_images / good[0]).read_bytes()[:60])
    (digit_images / "notes.png").write_text("not an image")
    opened = []
    real_open = Image.open

    def counting_open(fp, *args, **kwargs):  # the real open, counted: real files are still decoded
        opened.append(Path(fp).name)
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    metadata = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "image_size": 16,
                "class_names": [str(d) for d in range(10)]}
    predictions = predict(model, metadata, image_inputs(digit_images), top_k=3, batch_size=4)
    assert [Path(p.path).name for p in predictions] == good
    assert sorted(opened) == sorted([*good, "truncated.png", "notes.png"])
    assert "skipped 2 unreadable image file(s)" in caplog.text
    opened.clear()
    one = digit_images / good[1]
    (single,) = predict(model, metadata, image_inputs(one), top_k=3)
    assert opened == [one.name] and single.path == str(one)
