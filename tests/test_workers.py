"""Several `search` workers on one study at once: no trial lost or doubled, each one MLflow child run.

Run twice: a journal file (works anywhere) with a real `mlflow server`, and PostgreSQL for both the
Optuna storage and the MLflow backend store (the scale-out recipe in the README)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from pipelines.studies import make_storage
from tests.conftest import ROOT, tiny_experiment

pytestmark = pytest.mark.slow
WORKERS, TRIALS_EACH = 3, 2


def experiment(tmp_path) -> Path:
    # per-trial plots off: dozens of tiny trials would spend most of their time drawing PNGs
    search = "search:\n  study_name: shared\n  batch_size: {low: 8, high: 32}\n  pruner: none\n  sampler: random\n"
    return tiny_experiment(tmp_path, search, **{"tracking.log_plots": False})


def run_workers(tmp_path, storage: str, tracking_uri: str, workers: int = WORKERS, each: int = TRIALS_EACH,
                extra: tuple[str, ...] = ()) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "TQDM_DISABLE": "1"}
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(leaked, None)
    workers = [subprocess.Popen([sys.executable, "-m", "freezeframe", "search", "--experiment",
                                 str(experiment(tmp_path)), "--storage", storage, "--n_trials", str(each),
                                 "--seed", str(seed), *extra],
                                cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for seed in range(workers)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]  # bounded: a hung worker fails the test
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-3000:]


def check_study(storage: str, tracking_uri: str, total: int = WORKERS * TRIALS_EACH) -> None:
    study = optuna.load_study(study_name="shared", storage=make_storage(storage))
    trials = study.trials
    assert len(trials) == total  # the sum asked for
    assert sorted(t.number for t in trials) == list(range(total))
    reasons = [t.user_attrs.get("fail_reason") for t in trials if t.state.name != "COMPLETE"]
    assert not reasons, reasons
    client = MlflowClient(tracking_uri)
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    parent = client.get_run(parent_id)
    parents = [r for r in client.search_runs([parent.info.experiment_id], "tags.`optuna.study` = 'shared'")
               if "mlflow.parentRunId" not in r.data.tags]
    assert [p.info.run_id for p in parents] == [parent_id]  # one parent, duplicates of the election deleted
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(children) == len(trials)
    assert sorted(r.data.tags["optuna.trial"] for r in children) == sorted(str(t.number) for t in trials)
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {r.info.run_id for r in children}
    assert {r.info.status for r in children} == {"FINISHED"}


def test_three_workers_on_a_journal_file_and_a_tracking_server(tmp_path, mlflow_server):
    storage = f"journal:{tmp_path / 'optuna.journal'}"
    run_workers(tmp_path, storage, mlflow_server)
    check_study(storage, mlflow_server)


def test_three_workers_on_postgresql(tmp_path, postgres_databases):
    optuna_db, mlflow_db = postgres_databases
    MlflowClient(mlflow_db).search_experiments()  # create MLflow's schema once, before the workers race
    make_storage(optuna_db)  # likewise Optuna's
    run_workers(tmp_path, optuna_db, mlflow_db)
    check_study(optuna_db, mlflow_db)


def test_load_four_workers_twenty_trials_each_on_a_tracking_server(tmp_path, mlflow_server):
    """80 tiny trials through one loopback `mlflow server`: none lost, none doubled, one parent."""
    storage = f"journal:{tmp_path / 'optuna.journal'}"
    start = time.monotonic()
    run_workers(tmp_path, storage, mlflow_server, workers=4, each=20, extra=("--epochs", "1"))
    check_study(storage, mlflow_server, total=80)
    print(f"80 trials by 4 workers in {time.monotonic() - start:.0f}s")
