"""The linear_probe policy: scikit-learn's converged logistic regression, loaded into the network's own head."""

import csv
import io

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression

from freezeframe.cli import main
from freezeframe.training_run import prepare_training, train_in_run
from pipelines.config import load_config
from pipelines.models.backbones import head_module
from pipelines.policy import PROBE_C
from pipelines.training import feature_cache
from pipelines.training.trainer import execute, prepare
from tests.conftest import runs_in, tiny_overrides
from tests.test_compare import write_experiment


def test_the_head_is_scikit_learns_converged_fit_and_the_backbone_is_untouched(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path, **{"model.freeze": "linear_probe:0.01,0.1,1,10"}))
    prepared = prepare(cfg)
    backbone_before = {k: v.clone() for k, v in prepared.backbone.model.state_dict().items() if not k.startswith("fc.")}
    outcome = execute(prepared)
    probe = outcome.probe
    assert [c for c, _, _ in probe.grid] == [0.01, 0.1, 1.0, 10.0] and probe.c in (0.01, 0.1, 1.0, 10.0)
    assert max(acc for _, acc, _ in probe.grid) == pytest.approx(outcome.fit.history[0]["val/acc"])
    after = prepared.backbone.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in backbone_before.items())

    # scikit-learn on the same cached features, fitted afresh at the chosen C: the same classifier
    found, source = feature_cache.features(prepared, 64)
    assert source == "memory"
    (x_train, y_train), (x_test, _) = ((x.numpy().astype(np.float64), y.numpy()) for x, y in
                                       (found["train"], found["test"]))
    mean = x_train.mean(axis=0)  # centred and scaled by the features' RMS, as the probe fits
    scale = np.sqrt(np.mean((x_train - mean) ** 2))
    reference = LogisticRegression(C=probe.c, max_iter=5000).fit((x_train - mean) / scale, y_train)
    assert (reference.predict((x_test - mean) / scale) == outcome.fit.test_predictions[1]).all()
    head = head_module(prepared.backbone.model)
    with torch.no_grad():
        ours = head(found["test"][0]).double().softmax(1).numpy()
    theirs = reference.predict_proba((x_test - mean) / scale)
    # the same probabilities, within the solvers' tolerance (ours warm-started along the grid, this one cold)
    assert np.abs(ours[:, reference.classes_] - theirs).max() < 0.02


def test_a_probe_run_logs_its_grid_and_its_model_predicts_like_the_run(tracking_store, tmp_path):
    from tracking.models.model_store import load_for_inference

    cfg = load_config(None, tiny_overrides(tmp_path, **{"model.freeze": "linear_probe", "tracking.log_model": True}))
    done = train_in_run(prepare_training(cfg), entry_point="train")
    run = MlflowClient().get_run(done.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["freeze"] == "linear_probe"
    assert run.data.metrics["probe/c"] in PROBE_C and run.data.metrics["train/epochs_completed"] == 1
    # the features' transferability scores, from the same features (pipelines/ranking)
    m = run.data.metrics
    assert m["score/probe_val_acc"] == m["val/acc"] and 0 < m["score/knn_val_acc"] <= 1
    assert np.isfinite(m["score/logme"]) and m["score/feature_dim"] == head_module(
        done.outcome.prepared.backbone.model).in_features
    text = mlflow.artifacts.load_text(f"runs:/{done.run_id}/reports/probe_c_grid.csv")
    grid = list(csv.DictReader(io.StringIO(text)))
    assert [float(r["c"]) for r in grid] == list(PROBE_C) and all(0 <= float(r["val_acc"]) <= 1 for r in grid)
    assert "plots/probe_c.png" in {a.path for a in MlflowClient().list_artifacts(done.run_id, "plots")}
    model, description = load_for_inference(f"runs:/{done.run_id}/model")  # safetensors, rebuilt by name
    test = done.outcome.prepared.data.datasets["test"]
    with torch.no_grad():
        predicted = model(torch.stack([test[i][0] for i in range(len(test))])).argmax(1).numpy()
    assert (predicted == done.outcome.fit.test_predictions[1]).all() and description["freeze"] == "linear_probe"


def test_a_comparison_reads_the_probe_against_frozen(tracking_store, tmp_path, capsys):
    path = write_experiment(tmp_path, "  name: probe\n  freeze: [frozen, linear_probe]\n")
    assert main(["compare", "--experiment", path]) == 0
    runs = runs_in(tracking_store)
    assert {r.info.status for r in runs} == {"FINISHED"} and len(runs) == 3
    table = capsys.readouterr().out
    assert "| timm/test_resnet | linear_probe | 1 |" in table and "test examples only: 1 seed" in table
    assert "train.epochs (2) does not apply" in table
