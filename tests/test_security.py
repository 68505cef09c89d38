"""Secrets stay out of MLflow, names cannot steer files out of their folders, servers bind loopback."""

import re

import mlflow
import optuna
from mlflow.tracking import MlflowClient

from freezeframe.cli import main
from pipelines.run import slug
from tests.conftest import ROOT, runs_in, tiny_overrides
from tests.test_search import search_experiment

SECRETS = {"MY_API_TOKEN": "tok-5e1d2c3b", "AWS_SECRET_ACCESS_KEY": "sec-9a8b7c6d", "DB_PASSWORD": "pw-0f1e2d3c",
           "OPENAI_API_KEY": "key-4b5a6978"}


def test_secret_environment_variables_are_never_logged(tracking_store, tmp_path, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    flags = [x for k, v in tiny_overrides(tmp_path, **{"tracking.log_model": True}).items()
             for x in ("--set", f"{k}={v}")]
    assert main(["train", *flags]) == 0
    (run,) = runs_in(tracking_store)
    logged = " ".join([*run.data.params, *run.data.params.values(), *run.data.tags, *run.data.tags.values()])
    config = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config.yaml")
    for name, value in SECRETS.items():
        assert value not in logged and value not in config
        assert name not in logged


def test_names_cannot_leave_their_folder(tracking_store, tmp_path):
    for evil in ("../../etc/passwd", "/abs/path", "a/../../b", "..", "", "name with spaces/and\\slashes"):
        cleaned = slug(evil)
        assert "/" not in cleaned and "\\" not in cleaned and cleaned not in ("", ".", "..")
    # a study named to climb out of the checkpoint folder writes only inside it
    path = search_experiment(tmp_path, "  study_name: ../../escaped\n  batch_size: {low: 8, high: 8}\n")
    assert main(["search", "--experiment", path, "--storage", f"sqlite:///{tmp_path}/optuna.db",
                 "--n_trials", "1"]) == 0
    assert optuna.load_study(study_name="../../escaped", storage=f"sqlite:///{tmp_path}/optuna.db").trials
    written = [p.resolve() for p in tmp_path.rglob("last.pt")]
    assert written and all((tmp_path / "checkpoints").resolve() in p.parents for p in written)
    assert not (tmp_path.parent.parent / "escaped").exists()
    # and a run name is only a tag, never a path
    flags = [x for k, v in tiny_overrides(tmp_path, **{"tracking.run_name": "../../../tmp/owned"}).items()
             for x in ("--set", f"{k}={v}")]
    assert main(["train", *flags]) == 0
    run = [r for r in runs_in(tracking_store) if r.info.run_name == "../../../tmp/owned"][0]
    artifacts = MlflowClient().list_artifacts(run.info.run_id)
    assert {a.path for a in artifacts} >= {"config.yaml", "plots", "reports"}


def test_servers_bind_loopback_by_default():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("ui", "dashboard"):
        recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
        assert "--host 127.0.0.1" in recipe, target
    assert "0.0.0.0" not in makefile
