"""Every entry point against a real `mlflow server` (loopback, tmp sqlite backend, tmp artifact store)."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from freezeframe.cli import main
from tests.conftest import tiny_experiment
from tests.test_search import SPACE, search_experiment

pytestmark = pytest.mark.slow


@pytest.fixture
def server_tracking(mlflow_server, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(mlflow_server)
    yield MlflowClient(mlflow_server)
    import os

    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def test_compare_and_search_through_a_tracking_server(server_tracking, tmp_path):
    client = server_tracking
    # its own file name, so its own registered model (freezeframe-served): the server is shared
    grid = str(tiny_experiment(tmp_path, "compare:\n  name: served\n  freeze: [frozen, unfrozen]\n",
                               filename="served.yaml", **{"tracking.experiment_name": "served",
                                                          "tracking.log_model": True}))
    assert main(["compare", "--experiment", grid]) == 0
    search = search_experiment(tmp_path, SPACE)
    assert main(["search", "--experiment", search, "--storage", f"sqlite:///{tmp_path}/optuna.db",
                 "--n_trials", "2"]) == 0

    (experiment,) = [e for e in client.search_experiments() if e.name == "served"]
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {r.data.tags["freeze"] for r in children} == {"frozen", "unfrozen"}
    # written by the background thread, and all in the store by the time the run says FINISHED
    for child in children:
        assert child.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val/acc")] == [1, 2]
        assert {a.path for a in client.list_artifacts(child.info.run_id, "plots")} == {
            "plots/input_samples.png", "plots/training_curves.png", "plots/confusion_matrix_test.png"}
        assert {a.path for a in client.list_artifacts(child.info.run_id, "reports")} == {
            "reports/classification_report.txt", "reports/classification_report.json", "reports/history.json",
            "reports/test_predictions.csv"}
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "summary")} == {
        "summary/summary.md", "summary/summary.csv"}
    local = client.download_artifacts(children[0].info.run_id, "plots/training_curves.png", str(tmp_path))
    assert open(local, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert client.get_model_version_by_alias("freezeframe-served", "champion").tags["source_run_id"] == \
        parent.data.tags["best_run_id"]

    (tests_experiment,) = [e for e in client.search_experiments() if e.name == "tests"]
    study_runs = client.search_runs([tests_experiment.experiment_id], "tags.`optuna.study` = 'tiny'")
    (study_parent,) = [r for r in study_runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in study_runs if r.data.tags.get("mlflow.parentRunId") == study_parent.info.run_id]
    assert len(trials) == 2 and {r.data.tags["optuna.state"] for r in trials} <= {"COMPLETE", "PRUNED"}
    assert {a.path for a in client.list_artifacts(study_parent.info.run_id, "optuna")} >= {
        "optuna/optimization_history.png"}
