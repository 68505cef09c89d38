"""Tracking against a real sqlite store: what a run logs, how it ends, and the registry as a weights source."""

import csv
import io
import threading
import time

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

import freezeframe
from freezeframe.training_run import prepare_training, train_in_run
from pipelines.config import load_config
from tests.conftest import runs_in, tiny_experiment, tiny_overrides
from tracking.store import TrackingError, ensure_reachable


def artifact_paths(client, run_id, path=None):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def test_a_run_logs_params_tags_metrics_artifacts(tracking_store, tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path, **{"tracking.log_model": True}))
    done = train_in_run(prepare_training(cfg), entry_point="train")
    run_id, outcome = done.run_id, done.outcome
    assert 0 < done.logging_seconds < outcome.fit.train_seconds + 5
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "timm/test_resnet · unfrozen · seed 0"
    assert run.data.params["model.backbone"] == "timm/test_resnet" and run.data.params["train.lr"] == "0.01"
    assert run.data.params["run.seed"] == "0" and run.data.params["data.n_test"] == "40"
    tags = run.data.tags
    for key in ("backbone", "source", "weights", "freeze", "dataset", "seed", "entry_point", "config_digest",
                "split_digest", "version.torch", "version.timm", "version.torchvision", "version.mlflow"):
        assert key in tags, key
    assert tags["version.freezeframe"] == freezeframe.__version__
    assert tags["source"] == "timm" and tags["freeze"] == "unfrozen"
    assert [m.step for m in client.get_metric_history(run_id, "val/acc")] == [1, 2]
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2]
    assert run.data.metrics["test/acc"] == pytest.approx(outcome.fit.test["test/acc"])
    assert run.data.metrics["model/params_trainable"] == run.data.metrics["model/params_total"] > 0
    paths = artifact_paths(client, run_id)
    for expected in ("config.yaml", "plots/training_curves.png", "plots/confusion_matrix_test.png",
                     "plots/input_samples.png", "reports/history.json",
                     "reports/classification_report.txt", "reports/classification_report.json"):
        assert expected in paths, expected
    inputs = {d.dataset.name for d in run.inputs.dataset_inputs}
    assert inputs == {"digits-train", "digits-val", "digits-test"}
    # one row per test image, in the split's order: what "which images does it miss?" and paired tests read
    text = mlflow.artifacts.load_text(f"runs:/{run_id}/reports/test_predictions.csv")
    table = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["index"]) for r in table] == list(range(40))
    assert [int(r["row"]) for r in table] == outcome.prepared.data.indices["test"].tolist()
    assert [int(r["true"]) for r in table] == outcome.prepared.data.labels("test").tolist()
    hits = sum(r["true"] == r["predicted"] for r in table)
    assert hits / 40 == pytest.approx(run.data.metrics["test/acc"])
    assert all(0 <= float(r["p_true"]) <= 1 and r["true_class"] == r["true"] for r in table)  # digits: "0".."9"
    assert all((float(r["p_true"]) > 0.5) <= (r["true"] == r["predicted"]) for r in table)  # > 0.5: the argmax
    models = mlflow.search_logged_models(filter_string=f"source_run_id = '{run_id}'", output_format="list")
    assert len(models) == 1
    loaded = mlflow.pyfunc.load_model(models[0].model_uri)
    example = outcome.prepared.data.datasets["test"][0][0].unsqueeze(0).numpy()
    assert loaded.predict(example).shape == (1, 10)
    assert loaded.metadata.signature is not None


def test_a_failing_run_ends_failed_with_its_reason(tracking_store, tmp_path):
    class Boom:
        def on_epoch_end(self, epoch, metrics):
            raise RuntimeError("disk full\nsecond line")

    cfg = load_config(None, tiny_overrides(tmp_path))
    with pytest.raises(RuntimeError):
        train_in_run(prepare_training(cfg), entry_point="train", listeners=(Boom(),))
    (run,) = runs_in(tracking_store)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "RuntimeError: disk full"


def test_a_background_write_that_fails_fails_the_run(tracking_store, tmp_path, monkeypatch):
    """Figures render on the background thread: their failure still reaches the run, which ends FAILED
    with it (never FINISHED without its artifacts), and the epochs queued before it are in the store."""
    from pipelines.reports import figures

    def broken(*args, **kwargs):
        raise ValueError("cannot render")

    monkeypatch.setattr(figures, "curves_figure", broken)
    with pytest.raises(ValueError, match="cannot render"):
        train_in_run(prepare_training(load_config(None, tiny_overrides(tmp_path))), entry_point="train")
    (run,) = runs_in(tracking_store)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "ValueError: cannot render"
    assert [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "val/acc")] == [1, 2]


def test_background_jobs_run_in_order_and_a_failure_raises_once_awaited():
    from tracking.runs.background import Jobs

    jobs, done = Jobs(), []
    for i in range(5):
        jobs.submit("epochs", lambda i=i: (time.sleep(0.01 * (5 - i)), done.append(i)))
    jobs.submit("plots", lambda: 1 / 0)
    jobs.wait("epochs", keep=1)  # all but the newest epoch: the failing plot is not awaited yet
    assert done[:4] == [0, 1, 2, 3]
    with pytest.raises(ZeroDivisionError):
        jobs.wait_all()
    assert done == [0, 1, 2, 3, 4] and set(jobs.busy) == {"epochs", "plots"}
    jobs.submit("plots", lambda: 1 / 0)
    jobs.wait_all(raise_errors=False)  # a run failing already: its own error is the one to report


def test_interrupted_run_ends_killed(tracking_store, tmp_path):
    class CtrlC:
        def on_epoch_end(self, epoch, metrics):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_in_run(prepare_training(load_config(None, tiny_overrides(tmp_path))), "train", listeners=(CtrlC(),))
    (run,) = runs_in(tracking_store)
    assert run.info.status == "KILLED"


def test_a_run_logs_system_metrics_unless_switched_off(tracking_store, tmp_path, monkeypatch):
    """CPU and memory sampled while the run trains (GPU too where there is one), the monitor's thread
    gone with the run; `tracking.system_metrics=false` logs none."""
    from freezeframe.cli import main

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # a run of seconds: several samples
    path = tiny_experiment(tmp_path, **{"train.epochs": 1})
    assert main(["train", "--experiment", str(path)]) == 0
    assert main(["train", "--experiment", str(path), "--set", "tracking.system_metrics=false"]) == 0
    on, off = sorted(runs_in(tracking_store), key=lambda r: r.info.start_time)
    assert on.info.status == off.info.status == "FINISHED"
    client = MlflowClient()
    names = ["system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"]
    if torch.cuda.is_available():
        names += ["system/gpu_0_utilization_percentage", "system/gpu_0_memory_usage_megabytes"]
    for name in names:
        assert len(client.get_metric_history(on.info.run_id, name)) >= 2, name
    assert not [k for k in off.data.metrics if k.startswith("system/")]
    assert not [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]


def test_registry_model_is_a_weights_source(tracking_store, tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path, **{"tracking.log_model": True}))
    done = train_in_run(prepare_training(cfg), entry_point="train")
    run_id, outcome = done.run_id, done.outcome
    (logged,) = mlflow.search_logged_models(filter_string=f"source_run_id = '{run_id}'", output_format="list")
    version = mlflow.register_model(logged.model_uri, "tiny-digits")
    MlflowClient().set_registered_model_alias("tiny-digits", "champion", version.version)
    source = outcome.prepared.backbone.model.state_dict()
    for uri in ("models:/tiny-digits/1", "models:/tiny-digits@champion"):
        transfer = load_config(None, tiny_overrides(tmp_path, **{"model.weights": uri}))
        prepared = prepare_training(transfer)
        target = prepared.backbone.model.state_dict()
        assert all(source[k].equal(target[k]) for k in target if k.startswith("layer4") and "num_batches" not in k)


def test_missing_registry_model_is_a_clear_error(tracking_store, tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path, **{"model.weights": "models:/no-such-model@champion"}))
    with pytest.raises(TrackingError, match="cannot load models:/no-such-model@champion"):
        prepare_training(cfg)
    assert runs_in(tracking_store) == []


def test_unreachable_tracking_server_fails_fast():
    start = time.perf_counter()
    with pytest.raises(TrackingError, match="unreachable"):
        ensure_reachable("http://127.0.0.1:9")  # discard port: nothing listens there
    assert time.perf_counter() - start < 5


def test_file_store_is_rejected():
    with pytest.raises(TrackingError, match="file store"):
        ensure_reachable("file:///tmp/mlruns")
