"""Secrets stay out of MLflow, names cannot steer files out of their folders, servers bind loopback."""

import re

import mlflow
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from freezeframe.cli import main
from pipelines.state import slug
from pipelines.studies.storage import StorageError, make_storage, storage_id
from tests.conftest import ROOT, runs_in, tiny_overrides
from tests.test_search import search_experiment
from tracking.store import TrackingError, ensure_reachable

SECRETS = {"MY_API_TOKEN": "tok-5e1d2c3b", "AWS_SECRET_ACCESS_KEY": "sec-9a8b7c6d", "DB_PASSWORD": "pw-0f1e2d3c",
           "OPENAI_API_KEY": "key-4b5a6978", "MLFLOW_TRACKING_PASSWORD": "pw-7d6c5b4a", "PGPASSWORD": "pg-1a2b3c4d"}
USER = {"MLFLOW_TRACKING_USERNAME": "user-9e8d7c6b"}  # a login, not a secret: MLflow makes it the runs' owner


def test_secret_environment_variables_are_never_logged(tracking_store, tmp_path, monkeypatch, capsys):
    """tests/test_shared_server.py does the same against a real basic-auth server, its artifacts included."""
    for name, value in {**SECRETS, **USER}.items():
        monkeypatch.setenv(name, value)
    flags = [x for k, v in tiny_overrides(tmp_path, **{"tracking.log_model": True}).items()
             for x in ("--set", f"{k}={v}")]
    assert main(["train", *flags]) == 0
    (run,) = runs_in(tracking_store)
    output = " ".join(capsys.readouterr())
    tags = {k: v for k, v in run.data.tags.items() if k != "mlflow.user"}
    logged = " ".join([*run.data.params, *run.data.params.values(), *tags, *tags.values()])
    assert run.data.tags["mlflow.user"] == USER["MLFLOW_TRACKING_USERNAME"]  # MLflow's client sets it from the login
    config = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config.yaml")
    for name, value in {**SECRETS, **USER}.items():
        assert value not in logged and value not in config and value not in output
        assert name not in logged


def test_storage_and_database_passwords_stay_out_of_tags_and_messages(tmp_path):
    url = "postgresql+psycopg2://optuna:pg-5e6f7a8b@127.0.0.1:9/optuna"  # nothing listens on the discard port
    assert "pg-5e6f7a8b" not in storage_id(url) and storage_id(url) == "postgresql+psycopg2:127.0.0.1/optuna"
    with pytest.raises(StorageError) as caught:
        make_storage(url)
    assert "pg-5e6f7a8b" not in str(caught.value) and "optuna:***@127.0.0.1" in str(caught.value)
    with pytest.raises(TrackingError) as caught:
        ensure_reachable(url.replace("/optuna", "/mlflow"))
    assert "pg-5e6f7a8b" not in str(caught.value) and "is unreachable" in str(caught.value)


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


def test_a_crafted_checkpoint_in_a_shared_folder_runs_no_code(tmp_path):
    """A checkpoint folder shared between machines (resume after a dead worker) is written by whoever can
    write there: resume loads tensors and plain values only."""
    from pipelines.errors import WeightsError
    from pipelines.training import checkpoints
    from tests.test_shared_server import Payload

    marker = tmp_path / "marker"
    torch.save({"epoch": 1, "model": Payload(marker)}, tmp_path / checkpoints.FILENAME)
    with pytest.raises(WeightsError, match="is not loadable as tensors and plain values"):
        checkpoints.read(tmp_path)
    assert not marker.exists()


def test_only_reregister_unpickles_and_only_when_asked():
    """No code path loads a pickle for weights, predict or resume: the one deliberate unpickle is
    `freezeframe reregister` (tracking/models/legacy_models.py), for a model its owner vouches for."""
    loaders = re.compile(r"mlflow\.(pytorch|pyfunc)\.load_model\(|weights_only\s*=\s*False|pickle\.loads?\(|"
                         r"torch\.load\((?!.*weights_only=True)")  # a torch.load call on one line, as they are
    found = {str(path.relative_to(ROOT)): loaders.findall(path.read_text())
             for folder in ("freezeframe", "pipelines", "tracking") for path in (ROOT / folder).rglob("*.py")}
    assert {path for path, hits in found.items() if hits} == {"tracking/models/legacy_models.py"}
