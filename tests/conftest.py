"""Shared fixtures: a tmp sqlite tracking store and a tmp working folder per test; tiny, fast configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("TQDM_DISABLE", "1")

from pipelines.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tracking_store(tmp_path, monkeypatch):
    """A fresh sqlite store, and the test's cwd in tmp so ./mlruns artifacts and checkpoints land there."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)  # mlflow.set_experiment exports it; no test inherits it


def tiny_overrides(tmp_path: Path, **extra) -> dict:
    """timm's test_resnet (0.37 M params) on 32 px digits, a few dozen images per split."""
    base = {
        "model.backbone": "timm/test_resnet", "model.weights": "none", "model.freeze": "unfrozen",
        "data.image_size": 32, "data.max_samples": 40, "train.epochs": 2, "train.batch_size": 16,
        "train.lr": 0.01, "train.checkpoint_dir": str(tmp_path / "checkpoints"), "tracking.log_model": False,
        "tracking.experiment_name": "tests",
    }
    base.update(extra)
    return base


@pytest.fixture
def tiny_cfg(tmp_path):
    return load_config(None, tiny_overrides(tmp_path))


def runs_in(uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(search_all_experiments=True, output_format="list")
