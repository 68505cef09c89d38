"""The shared-server recipe of docs/scale-out.md and docs/servers.md, for real: `mlflow server --app-name
basic-auth`, workers with credentials, and a registered model whose pickle would run code, used for weights
and predict without running it."""

import contextlib
import os
import secrets
import shutil
from pathlib import Path

import mlflow
import optuna
import pytest
import requests
import torch
from mlflow.tracking import MlflowClient

from freezeframe.cli import main
from tests.conftest import serving_mlflow, tiny_overrides
from tests.test_compare import write_experiment
from tests.test_predict import digit_images  # noqa: F401 - a fixture

pytestmark = pytest.mark.slow

WORKER = "ff-worker-" + secrets.token_hex(4)
WORKER_PASSWORD = "wk-" + secrets.token_hex(12)
ADMIN_PASSWORD = "adm-" + secrets.token_hex(12)
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@contextlib.contextmanager
def serving_basic_auth(folder: Path):
    """The recipe's server: MLflow's basic-auth app, its own auth database, an admin password of our own
    (MLflow ships none), a fixed secret key for CSRF, READ for users by default, checked logins cached
    for 60 s (each check is a PBKDF2 hash: ~0.5 s a request on these cores); one worker account."""
    config = folder / "basic_auth.ini"
    config.write_text("[mlflow]\ndefault_permission = READ\n"
                      f"database_uri = sqlite:///{folder / 'basic_auth.db'}\nadmin_username = admin\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                      "auth_cache_ttl_seconds = 60\n")
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    with serving_mlflow(folder, ("--app-name", "basic-auth"), env) as url:
        reply = requests.post(f"{url}/api/2.0/mlflow/users/create", auth=("admin", ADMIN_PASSWORD), timeout=10,
                              json={"username": WORKER, "password": WORKER_PASSWORD})
        assert reply.status_code == 200, reply.text
        yield url


@pytest.fixture
def auth_server(tmp_path, monkeypatch):
    for name in CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    with serving_basic_auth(tmp_path) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
        monkeypatch.chdir(tmp_path)
        mlflow.set_tracking_uri(url)
        yield url
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def as_user(monkeypatch, user: str | None, password: str | None) -> None:
    for name, value in zip(CREDENTIALS, (user, password), strict=True):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def all_runs(client: MlflowClient) -> list:
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_compare_through_a_basic_auth_server(auth_server, tmp_path, monkeypatch, capsys):
    grid = write_experiment(tmp_path, "  name: shared\n  freeze: [frozen, unfrozen]\n",
                            **{"tracking.experiment_name": "shared", "tracking.log_model": True})
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    for user, password, why in ((None, None, "no credentials were given"),
                                (WORKER, "not-" + WORKER_PASSWORD, "the user name or password was refused")):
        as_user(monkeypatch, user, password)
        assert main(["compare", "--experiment", grid, "--storage", storage]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("freezeframe: error: tracking server") and why in err
        assert "set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD" in err and WORKER not in err
    admin = MlflowClient(auth_server)
    as_user(monkeypatch, "admin", ADMIN_PASSWORD)
    assert all_runs(admin) == []  # refused before any arm: no run, so none RUNNING
    assert not (tmp_path / "optuna.db").exists()  # and before the study was opened

    as_user(monkeypatch, WORKER, WORKER_PASSWORD)
    assert main(["compare", "--experiment", grid, "--storage", storage]) == 0
    out = capsys.readouterr()
    as_user(monkeypatch, "admin", ADMIN_PASSWORD)
    runs = all_runs(admin)
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    assert admin.get_model_version_by_alias("freezeframe-grid", "champion").tags["source_run_id"]
    assert [t.state for t in optuna.load_study(study_name="shared", storage=storage).trials] == \
        [optuna.trial.TrialState.COMPLETE] * 2
    # the credentials reach no param, tag, artifact (models included) or output line
    files = tmp_path / "logged"
    for run in runs:
        # the user name is the run's owner, `mlflow.user`, as MLflow's client records a login; nothing else
        tags = {k: v for k, v in run.data.tags.items() if k != "mlflow.user"}
        logged = " ".join([*run.data.params, *run.data.params.values(), *tags, *tags.values()])
        assert WORKER_PASSWORD not in logged and WORKER not in logged
        assert run.data.tags.get("mlflow.user") in (WORKER, None)
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(files / run.info.run_id))
    for logged in mlflow.search_logged_models(experiment_ids=[runs[0].info.experiment_id], output_format="list"):
        mlflow.artifacts.download_artifacts(artifact_uri=logged.artifact_location,
                                            dst_path=str(files / logged.model_id))
    written = [p for p in files.rglob("*") if p.is_file()]
    assert any(p.name == "model.safetensors" for p in written) and any(p.name == "config.yaml" for p in written)
    for path in written:
        content = path.read_bytes()
        assert WORKER_PASSWORD.encode() not in content and WORKER.encode() not in content, path
    assert WORKER_PASSWORD not in out.out + out.err and WORKER not in out.out + out.err


class Payload:
    """What an attacker who may register a version pickles: writes `marker` when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('unpickled')",)


def register_crafted(client: MlflowClient, folder: Path, experiment_id: str, name: str, alias: str) -> None:
    """`folder` (an MLflow model directory) as a new logged model and a version of `name` at `alias`."""
    logged = mlflow.initialize_logged_model(name="model", experiment_id=experiment_id)
    client.log_model_artifacts(logged.model_id, str(folder))
    mlflow.finalize_logged_model(logged.model_id, "READY")
    version = mlflow.register_model(f"models:/{logged.model_id}", name)
    client.set_registered_model_alias(name, alias, version.version)


def test_a_version_whose_pickle_runs_code_is_never_unpickled(auth_server, tmp_path, monkeypatch, capsys,
                                                             digit_images):  # noqa: F811
    as_user(monkeypatch, WORKER, WORKER_PASSWORD)
    flags = [x for k, v in tiny_overrides(tmp_path, **{"tracking.log_model": True, "train.epochs": 1}).items()
             for x in ("--set", f"{k}={v}")]
    assert main(["train", *flags]) == 0
    client = MlflowClient()
    (run,) = all_runs(client)
    honest = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model", dst_path=str(tmp_path / "h")))
    marker = tmp_path / "marker"
    crafted, pickle_only = tmp_path / "crafted", tmp_path / "pickle-only"
    shutil.copytree(honest, crafted)
    torch.save(Payload(marker), crafted / "data" / "model.pth")  # what mlflow.pytorch.load_model unpickles
    shutil.copytree(crafted, pickle_only, ignore=shutil.ignore_patterns("weights"))
    register_crafted(client, crafted, run.info.experiment_id, "crafted", "with-weights")
    register_crafted(client, pickle_only, run.info.experiment_id, "crafted", "pickle-only")
    capsys.readouterr()

    image = str(sorted(digit_images.iterdir())[0])
    # with weights/ beside the poisoned pickle: both work from the tensors, and the pickle is never opened
    assert main(["train", *[f.replace("model.weights=none", "model.weights=models:/crafted@with-weights")
                            for f in flags]]) == 0
    assert main(["predict", "--model", "models:/crafted@with-weights", "--input", image]) == 0
    assert main(["predict", "--model", f"runs:/{run.info.run_id}/model", "--input", image]) == 0
    crafted_line, honest_line = [line for line in capsys.readouterr().out.splitlines() if line.startswith(image)]
    assert crafted_line == honest_line  # the honest model's tensors, beside the crafted pickle
    assert not marker.exists()
    # the pickle alone: refused in one line that says how to re-register, still never unpickled
    for command in (["train", *[f.replace("model.weights=none", "model.weights=models:/crafted@pickle-only")
                                for f in flags]],
                    ["predict", "--model", "models:/crafted@pickle-only", "--input", image]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "has no weights/model.safetensors" in err and "reregister" in err, err
    assert not marker.exists()
    assert {r.info.status for r in all_runs(client)} == {"FINISHED"} and len(all_runs(client)) == 2
    # the payload is live: MLflow's own pickle loader runs it
    with pytest.raises(Exception):  # noqa: B017 - the payload returns None, which is not a model
        mlflow.pytorch.load_model("models:/crafted@pickle-only")
    assert marker.read_text() == "unpickled"
