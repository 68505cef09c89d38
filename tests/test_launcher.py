"""The launcher's parts that need no engine: this machine's worker processes (LocalEngine), each worker's
GPUs, what workers inherit, the sbatch script, and what other machines' workers cannot reach. The
engines themselves run in tests/test_slurm.py and tests/test_ray.py."""

from __future__ import annotations

import sys
import time

import pytest

from pipelines.cluster.reach import other_machines, refuse_unreachable
from pipelines.cluster.slurm import render_script
from pipelines.cluster.workers import LocalEngine, WorkerCommand, gpu_slice, worker_env
from pipelines.config import ClusterConfig
from pipelines.errors import ConfigError
from tests.conftest import ROOT


def test_local_workers_are_processes_of_this_machine_that_the_census_counts(tmp_path):
    engine = LocalEngine()
    engine.submit(WorkerCommand(("--version",), str(tmp_path), sys.executable, {"PYTHONPATH": str(ROOT)}), 2)
    deadline = time.monotonic() + 60
    while (census := engine.census()).alive and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (census.alive, census.lost, census.failed) == (0, 0, [])
    engine.submit(WorkerCommand(("no-such-command",), str(tmp_path), sys.executable, {"PYTHONPATH": str(ROOT)}), 1)
    engine.processes[-1].wait(timeout=60)
    assert engine.census().failed == ["worker local:2 exited with 2"]  # argparse's one-line refusal


def test_each_local_worker_gets_its_own_gpus():
    ids = ["0", "1", "2", "3"]
    assert [gpu_slice(i, 2, ids) for i in range(3)] == [["0", "1"], ["2", "3"], ["0", "1"]]
    assert [gpu_slice(i, 1, ids) for i in range(4)] == [["0"], ["1"], ["2"], ["3"]]


def test_workers_inherit_settings_never_secrets(monkeypatch):
    for key, value in {"MLFLOW_TRACKING_PASSWORD": "s3cret", "PGPASSWORD": "s3cret", "MLFLOW_RUN_ID": "abc",
                       "FREEZEFRAME_GRACE_S": "5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}.items():
        monkeypatch.setenv(key, value)
    env = worker_env({"MLFLOW_TRACKING_URI": "http://tracking:5000"})
    assert env["FREEZEFRAME_GRACE_S"] == "5" and env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
    assert not {"MLFLOW_TRACKING_PASSWORD", "PGPASSWORD", "MLFLOW_RUN_ID"} & set(env)


def test_the_sbatch_script_asks_for_gpus_and_the_sites_settings():
    command = WorkerCommand(("compare", "--experiment", "experiments/a b.yaml"), "/shared/project",
                            "/shared/venv/bin/python", {"MLFLOW_TRACKING_URI": "http://tracking:5000"}, gpus=2, cpus=2,
                            name="freezeframe-compare")
    cluster = ClusterConfig(engine="slurm", partition="gpu", time="4:00:00", account="lab",
                            sbatch_flags="--qos=high --constraint=a100")
    script = render_script(command, cluster, 3, "/shared/project/slurm/logs")
    for line in ("#SBATCH --array=0-2", "#SBATCH --gpus-per-task=2", "#SBATCH --partition=gpu",
                 "#SBATCH --time=4:00:00", "#SBATCH --account=lab", "#SBATCH --qos=high",
                 "#SBATCH --constraint=a100", "#SBATCH --chdir=/shared/project",
                 "export MLFLOW_TRACKING_URI=http://tracking:5000",
                 "exec /shared/venv/bin/python -m freezeframe compare --experiment 'experiments/a b.yaml'"):
        assert line in script.splitlines(), line
    cpu = render_script(WorkerCommand(("rank",), "/p", "/p/python", gpus=0, cpus=1), ClusterConfig(), 1, "/p/logs")
    assert "#SBATCH --cpus-per-task=1" in cpu and "--gpus" not in cpu and "--partition" not in cpu


@pytest.mark.parametrize(("storage", "tracking", "refused"), [
    ("sqlite:///optuna.db", "http://tracking:5000", "cannot reach the storage sqlite:///optuna.db"),
    ("journal:/tmp/o.journal", "http://tracking:5000", "cannot reach the storage journal:"),
    ("postgresql+psycopg2://db-host/optuna", "sqlite:///mlflow.db", "cannot reach the tracking store"),
    ("postgresql+psycopg2://127.0.0.1/optuna", "http://tracking:5000", "the storage at postgresql"),
    ("postgresql+psycopg2://db-host/optuna", "http://localhost:5000", "the tracking server at http://localhost"),
    ("postgresql+psycopg2://db-host/optuna", "http://tracking:5000", None),
])
def test_what_another_machines_workers_cannot_reach_is_refused(storage, tracking, refused):
    nodes = {"10.1.2.3", "gpu-node-7"}
    assert other_machines(nodes) == ["10.1.2.3", "gpu-node-7"]
    if refused is None:
        refuse_unreachable("ray", nodes, storage, tracking)
        return
    with pytest.raises(ConfigError, match="cluster=ray: workers on 10.1.2.3 and 1 other node") as raised:
        refuse_unreachable("ray", nodes, storage, tracking)
    assert refused in str(raised.value)
    refuse_unreachable("ray", {"127.0.0.1"}, storage, tracking)  # every node on this machine: anything goes
