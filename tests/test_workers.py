"""Several workers on one study at once, search trials: nothing lost or doubled, one parent run, each
trial one child. A comparison's workers splitting one grid: tests/test_slurm.py's job arrays (PostgreSQL,
a tracking server) and tests/test_ray.py.

Run through the storages of the scale-out recipe: a journal file (works anywhere) with a real `mlflow
server`, and PostgreSQL for both the Optuna storage and the MLflow backend store."""

import os
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from pipelines.studies.storage import make_storage, storage_id
from tests.conftest import ROOT, tiny_experiment
from tests.preloaded import PreloadedProcess, start_worker

pytestmark = pytest.mark.slow
WORKERS, TRIALS_EACH = 3, 2
SEARCH = "search:\n  study_name: shared\n  batch_size: {low: 8, high: 32}\n  pruner: none\n  sampler: random\n"


def experiment(tmp_path, section: str) -> Path:
    # per-run plots off: dozens of tiny runs would spend most of their time drawing PNGs
    return tiny_experiment(tmp_path, section, **{"tracking.log_plots": False})


def worker_env(tracking_uri: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}  # one torch thread each: the workers share two cores
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(leaked, None)
    return env


def start(tmp_path, tracking_uri: str, *args: str) -> PreloadedProcess:
    """A worker process, `python -m freezeframe ARGS`, forked with its libraries already imported."""
    return start_worker(list(args), tmp_path, worker_env(tracking_uri))


def finish(workers: list[PreloadedProcess]) -> list[str]:
    outputs = [w.communicate(timeout=900)[0] for w in workers]  # bounded: a hung worker fails the test
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-3000:]
    return outputs


def run_search_workers(tmp_path, storage: str, tracking_uri: str, workers: int = WORKERS, each: int = TRIALS_EACH,
                       extra: tuple[str, ...] = ()) -> None:
    path = str(experiment(tmp_path, SEARCH))
    finish([start(tmp_path, tracking_uri, "search", "--experiment", path, "--storage", storage, "--n_trials",
                  str(each), "--seed", str(seed), *extra) for seed in range(workers)])


def the_parent(client: MlflowClient, study: optuna.Study, kind: str, storage: str):
    """The study's one parent run (election duplicates deleted) and its children; nothing RUNNING."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(experiments, f"tags.`optuna.study` = '{study.study_name}' and "
                                              f"tags.`optuna.storage_id` = '{storage_id(storage)}'")
    assert len(parents) == 1, [p.info.run_name for p in parents]
    assert kind == "compare" or parents[0].info.run_id == study.user_attrs["mlflow_parent_run_id"]
    children = client.search_runs(experiments, f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert "RUNNING" not in {r.info.status for r in parents + children}
    return parents[0], children


def check_search(storage: str, tracking_uri: str, total: int = WORKERS * TRIALS_EACH) -> None:
    study = optuna.load_study(study_name="shared", storage=make_storage(storage))
    trials = study.trials
    assert len(trials) == total  # the sum asked for
    assert sorted(t.number for t in trials) == list(range(total))
    reasons = [t.user_attrs.get("fail_reason") for t in trials if t.state.name != "COMPLETE"]
    assert not reasons, reasons
    parent, children = the_parent(MlflowClient(tracking_uri), study, "search", storage)
    assert parent.info.status == "FINISHED"
    assert sorted(r.data.tags["optuna.trial"] for r in children) == sorted(str(t.number) for t in trials)
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {r.info.run_id for r in children}
    assert {r.info.status for r in children} == {"FINISHED"}


def test_three_search_workers_on_postgresql(tmp_path, postgres_databases):
    """Both stores on PostgreSQL. A comparison's workers on PostgreSQL: tests/test_slurm.py's job arrays."""
    optuna_db, mlflow_db = postgres_databases
    MlflowClient(mlflow_db).search_experiments()  # create MLflow's schema once, before the workers race
    make_storage(optuna_db)  # likewise Optuna's
    run_search_workers(tmp_path, optuna_db, mlflow_db, each=1)
    check_search(optuna_db, mlflow_db, total=WORKERS)


def test_four_search_workers_four_trials_each_on_a_journal_file_and_a_tracking_server(tmp_path, mlflow_server):
    """16 tiny trials through one loopback `mlflow server`: none lost, none doubled, one parent."""
    storage = f"journal:{tmp_path / 'optuna.journal'}"
    start_s = time.monotonic()
    run_search_workers(tmp_path, storage, mlflow_server, workers=4, each=4, extra=("--epochs", "1"))
    check_search(storage, mlflow_server, total=16)
    print(f"16 trials by 4 workers in {time.monotonic() - start_s:.0f}s")
