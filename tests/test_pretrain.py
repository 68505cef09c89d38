"""Offline transfer for any backbone: pretrain on Fashion-MNIST, register, then start a digits run from it."""

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from freezeframe.cli import main
from pipelines.data.sources import DEBIAN_FASHION_MNIST
from tests.conftest import runs_in, tiny_overrides


def flags(tmp_path, **extra):
    out = []
    for key, value in tiny_overrides(tmp_path, **extra).items():
        out += ["--set", f"{key}={value}"]
    return out


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_pretrain_register_then_transfer(tracking_store, tmp_path, capsys):
    assert main(["pretrain", *flags(tmp_path, **{"data.dataset": "fashion-mnist", "train.epochs": 1}),
                 "--registered_model", "tiny-fashion"]) == 0
    assert "registered models:/tiny-fashion@pretrained" in capsys.readouterr().out
    version = MlflowClient().get_model_version_by_alias("tiny-fashion", "pretrained")
    assert "pretrained on fashion-mnist" in version.description
    source = mlflow.pytorch.load_model("models:/tiny-fashion@pretrained").state_dict()

    assert main(["train", *flags(tmp_path, **{"model.weights": "models:/tiny-fashion@pretrained",
                                              "model.freeze": "frozen", "train.epochs": 1,
                                              "tracking.log_model": True})]) == 0
    runs = {r.data.tags["entry_point"]: r for r in runs_in(tracking_store)}
    assert runs["pretrain"].data.tags["dataset"] == "fashion-mnist"
    transfer = runs["train"]
    assert transfer.info.status == "FINISHED" and transfer.data.tags["weights"] == "models:/tiny-fashion@pretrained"
    (logged,) = mlflow.search_logged_models(experiment_ids=[transfer.info.experiment_id], output_format="list",
                                            filter_string=f"source_run_id = '{transfer.info.run_id}'")
    trained = mlflow.pytorch.load_model(logged.model_uri).state_dict()
    # frozen transfer: the backbone is exactly the pretrained one; the head is new (digits' 10 classes)
    weights = [k for k in source if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    assert weights and all(torch.equal(source[k], trained[k]) for k in weights)
    assert not torch.equal(source["fc.weight"], trained["fc.weight"])
