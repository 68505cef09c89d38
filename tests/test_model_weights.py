"""Logged models carry their weights as safetensors + JSON, and that is all freezeframe loads back from them."""

import json
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file

from freezeframe.cli import main
from pipelines.data.loaders import Preprocessing
from pipelines.errors import FreezeframeError
from pipelines.models import portable
from pipelines.models.backbones import build_backbone
from tests.conftest import runs_in, tiny_overrides
from tests.test_predict import digit_images  # noqa: F401 - a fixture


def flags(tmp_path, **extra) -> list[str]:
    return [x for k, v in tiny_overrides(tmp_path, **extra).items() for x in ("--set", f"{k}={v}")]


def logged_model_of(run):
    (logged,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                            filter_string=f"source_run_id = '{run.info.run_id}'")
    return logged


def test_a_logged_model_carries_the_same_tensors_as_safetensors(tracking_store, tmp_path, digit_images):  # noqa: F811
    """Frozen BatchNorm (hooks stripped before export) and the pickled flavour agree tensor for tensor;
    predict takes the logged model by id and as a local folder too."""
    assert main(["train", *flags(tmp_path, **{"tracking.log_model": True, "model.freeze": "frozen",
                                              "train.epochs": 1})]) == 0
    (run,) = runs_in(tracking_store)
    logged = logged_model_of(run)
    folder = mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run.info.run_id}/model/weights",
                                                 dst_path=str(tmp_path))
    description = json.loads(open(f"{folder}/freezeframe.json").read())
    assert description["backbone"] == "timm/test_resnet" and description["num_classes"] == 10
    assert description["class_names"] == [str(d) for d in range(10)] and description["image_size"] == 32
    assert description["weights"] == "none" and description["format"] == portable.FORMAT
    tensors = load_file(f"{folder}/model.safetensors")
    pickled = mlflow.pytorch.load_model(logged.model_uri).state_dict()  # the test's own, trusted model
    assert set(tensors) == set(pickled) and all(torch.equal(tensors[k], pickled[k]) for k in pickled)
    rebuilt, _ = portable.rebuild(Path(folder), "here")
    images = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(rebuilt(images), mlflow.pytorch.load_model(logged.model_uri)(images))
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run.info.run_id}/model",
                                                dst_path=str(tmp_path / "local"))
    for uri in (logged.model_uri, local):
        assert main(["predict", "--model", uri, "--input", str(digit_images), "--output", str(tmp_path / "p.csv")]) == 0


def test_runs_without_a_logged_model_keep_their_weights_as_safetensors_too(tracking_store, tmp_path):
    assert main(["train", *flags(tmp_path, **{"train.epochs": 1})]) == 0
    (run,) = runs_in(tracking_store)
    names = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "checkpoint")}
    assert names == {"checkpoint/model.safetensors", "checkpoint/freezeframe.json"}


def test_tied_tensors_are_saved_apart_and_load_strictly(tmp_path):
    """safetensors refuses shared storage (tied weights): each key gets its own copy."""
    tied = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    save_file(portable.tensors_of(tied), str(tmp_path / "tied.safetensors"))
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    fresh.load_state_dict(load_file(str(tmp_path / "tied.safetensors")), strict=True)
    assert torch.equal(fresh[1].weight, tied[0].weight)


def describe(**changes) -> dict:
    return {**portable.describe("timm/test_resnet", "none", "frozen", ["a", "b", "c"], 32,
                                Preprocessing((0.5,) * 3, (0.5,) * 3, "bilinear")), **changes}


@pytest.mark.parametrize("changes, message", [
    ({"format": "pickle"}, "is not a freezeframe.weights/1 description"),
    ({"num_classes": 4}, "says num_classes 4 for 3 class names"),
    ({"class_names": "abc"}, "has no list of class names"),
    ({"image_size": "32; rm -rf /"}, "has image_size"),
    ({"mean": [0.5]}, "has mean [0.5], not three numbers"),
    ({"std": [0, 1, 1]}, "std that is not positive"),
    ({"interpolation": "__import__('os')"}, "has interpolation"),
    ({"backbone": "timm/not_a_network"}, "unknown backbone 'timm/not_a_network'"),
    ({"backbone": "timm/resnet18"}, "model.safetensors does not fit timm/resnet18 with 3 classes"),
])
def test_a_crafted_description_fails_in_one_line_before_anything_runs(tmp_path, changes, message):
    model = build_backbone("timm/test_resnet", 3).model
    portable.write(tmp_path, model, describe())
    (tmp_path / "freezeframe.json").write_text(json.dumps(describe(**changes)))
    with pytest.raises(FreezeframeError) as caught:  # WeightsError, or UnknownNameError for the name
        portable.rebuild(tmp_path, "models:/crafted@x")
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.slow
def test_a_version_without_safetensors_is_refused_then_reregistered(tracking_store, tmp_path, digit_images, capsys):  # noqa: F811
    """A model logged the old way (pickle only): weights= and predict say how to re-register it in one
    line; `freezeframe reregister` (the user vouching for the pickle) adds weights/, then both work."""
    assert main(["train", *flags(tmp_path, **{"train.epochs": 1})]) == 0
    (run,) = runs_in(tracking_store)
    description = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/checkpoint/freezeframe.json"))
    old = {k: description[k] for k in ("class_names", "image_size", "mean", "std", "interpolation", "backbone",
                                       "freeze")}  # the metadata earlier freezeframe versions logged
    model = build_backbone("timm/test_resnet", 10).model
    model.load_state_dict(load_file(mlflow.artifacts.download_artifacts(
        f"runs:/{run.info.run_id}/checkpoint/model.safetensors", dst_path=str(tmp_path))))
    with mlflow.start_run(run_id=run.info.run_id):
        info = mlflow.pytorch.log_model(model.eval(), name="model", serialization_format="pickle",
                                        metadata={"freezeframe": json.dumps(old)})
    version = mlflow.register_model(info.model_uri, "legacy")
    MlflowClient().set_registered_model_alias("legacy", "old", version.version)
    capsys.readouterr()

    image = str(sorted(digit_images.iterdir())[0])
    for command in (["train", *flags(tmp_path, **{"model.weights": "models:/legacy@old", "train.epochs": 1})],
                    ["predict", "--model", "models:/legacy@old", "--input", image]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "has no weights/model.safetensors" in err, err
        assert "freezeframe reregister --model models:/legacy@old" in err and "never unpickles" in err
    assert len(runs_in(tracking_store)) == 1  # nothing started

    assert main(["reregister", "--model", "models:/legacy@old"]) == 0
    assert "weights/model.safetensors added" in capsys.readouterr().out
    assert MlflowClient().get_model_version("legacy", "1").tags["freezeframe.weights"].startswith("from its pickle")
    assert main(["predict", "--model", "models:/legacy/1", "--input", image]) == 0
    assert capsys.readouterr().out.startswith(f"{image}: ")
    assert main(["train", *flags(tmp_path, **{"model.weights": "models:/legacy@old", "train.epochs": 1})]) == 0
    assert main(["reregister", "--model", "models:/legacy@old"]) == 0
    assert "nothing to do" in capsys.readouterr().out
