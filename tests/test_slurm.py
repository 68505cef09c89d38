"""compare on a real one-node Slurm cluster (tests/slurm_cluster.py): the launcher's 2-task job array runs the
grid, a task cancelled mid-arm is replaced and its arm resumes; the script `--dry-run` prints, submitted
by hand with sbatch, finishes a grid too; a missing partition and a file storage on a partition with
another machine are refused before anything is submitted. PostgreSQL storage, a real `mlflow server`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid

import pytest
from mlflow.tracking import MlflowClient

from freezeframe.cli import main
from tests import preloaded
from tests.cluster_checks import GRID, SLOW_ARMS, check_grid, records, wait_mid_arm
from tests.conftest import ROOT, require_cluster_engines, tiny_experiment
from tests.preloaded import python_shim
from tests.slurm_cluster import missing, slurm_cluster

pytestmark = pytest.mark.slow
FAR = "far-node"  # a second node, on another machine, in partition `multi` (FUTURE: never contacted)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = missing()
    if why:
        require_cluster_engines(f"Slurm: {why}")
    import socket

    host = socket.gethostname().split(".")[0]
    extra = (f"NodeName={FAR} NodeAddr=10.255.0.2 CPUs=2 RealMemory=8000 State=FUTURE\n"
             f"PartitionName=multi Nodes={host},{FAR} State=UP\n")
    with slurm_cluster(tmp_path_factory.mktemp("slurm"), extra) as env:
        yield {"SLURM_CONF": env["SLURM_CONF"], "PATH": env["PATH"]}


def squeue(env: dict) -> list[str]:
    done = subprocess.run(["squeue", "-h", "-o", "%i %T"], env={**os.environ, **env}, capture_output=True, text=True,
                          check=True)
    return done.stdout.split("\n")[:-1]


def experiment(tmp_path, name: str, **overrides):
    """The grid, its workers forks of the preloaded server (cluster.python: tests/preloaded_python.py)."""
    return tiny_experiment(tmp_path, GRID.format(name=name), **{"tracking.experiment_name": name,
                                                                 "cluster.python": python_shim(tmp_path), **overrides})


def launcher_env(**extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FREEZEFRAME_PRELOADED": preloaded.address(), **extra}
    env.pop("MLFLOW_RUN_ID", None)
    return env


def test_a_two_task_array_runs_the_grid_and_a_task_cancelled_mid_arm_is_replaced(
        slurm, tmp_path, postgres_databases, mlflow_server):
    storage, name = postgres_databases[0], f"slurm-{uuid.uuid4().hex[:6]}"
    path = experiment(tmp_path, name, **SLOW_ARMS)
    env = launcher_env(**slurm, MLFLOW_TRACKING_URI=mlflow_server)
    log = open(tmp_path / "launcher.log", "w")
    launcher = subprocess.Popen([python_shim(tmp_path), "-m", "freezeframe", "compare", "--experiment", str(path),
                                 "--cluster", "slurm", "--workers", "2", "--storage", storage], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    client = MlflowClient(mlflow_server)
    run, epoch = wait_mid_arm(client, name, launcher)
    task = re.fullmatch(r"slurm:(\d+_\d+)@.+", run.data.tags["cluster.worker"]).group(1)
    subprocess.run(["scancel", task], env=env, check=True)
    assert launcher.wait(timeout=300) == 0, (tmp_path / "launcher.log").read_text()[-4000:]
    output = (tmp_path / "launcher.log").read_text()
    assert f"worker {task} CANCELLED" in output and "replacing 1 lost worker(s)" in output, output[-4000:]
    runs, trials = records(client, name, storage)
    finished = check_grid(runs, trials, lost=run.info.run_id)
    assert len({r["tags"]["cluster.worker"] for r in finished.values()}) >= 2  # the array split the grid
    (script,) = (tmp_path / "slurm").glob("*.sbatch")
    assert "#SBATCH --array=0-1" in script.read_text() and storage in script.read_text()
    assert squeue(slurm) == []


def test_sigterm_scancels_the_array_and_the_dry_run_script_by_hand_finishes_the_grid(
        slurm, tmp_path, postgres_databases, mlflow_server, monkeypatch, capsys):
    """SIGTERM to the launcher mid-arm (a one-task array: the 2-task one is the test above): the array is
    cancelled, what ran ends KILLED, the parent KILLED and the launcher exits 130. Then the script
    `--dry-run` prints (nothing opened, nothing submitted), submitted by hand with sbatch, resumes the grid
    to its end."""
    import mlflow

    storage, name = postgres_databases[0], f"slurm-{uuid.uuid4().hex[:6]}"
    path = experiment(tmp_path, name, **SLOW_ARMS)
    for key, value in {**slurm, "MLFLOW_TRACKING_URI": mlflow_server}.items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(mlflow_server)  # what this process's earlier tests set would win over the variable
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FREEZEFRAME_PRELOADED", preloaded.address())  # the script's workers find the server
    args = ["compare", "--experiment", str(path), "--cluster", "slurm", "--storage", storage]
    launcher = subprocess.Popen([python_shim(tmp_path), "-m", "freezeframe", *args, "--workers", "1"], cwd=tmp_path,
                                env=launcher_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = MlflowClient(mlflow_server)
    run, _ = wait_mid_arm(client, name, launcher)
    launcher.send_signal(signal.SIGTERM)
    output = launcher.communicate(timeout=120)[0]
    assert launcher.returncode == 130 and "slurm: stopping the workers" in output, output[-3000:]
    assert squeue(slurm) == []
    runs, _ = records(client, name, storage)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r["tags"]]
    assert parent["status"] == "KILLED" and "interrupted" in parent["tags"]["error"]
    assert "RUNNING" not in {r["status"] for r in runs} and "KILLED" in {r["status"] for r in runs if r is not parent}

    assert main([*args, "--workers", "1", "--dry-run"]) == 0  # one task: the rest of the grid, resumed
    script = capsys.readouterr().out
    assert squeue(slurm) == [] and script.startswith("#!/bin/bash") and "--dry-run" not in script
    (tmp_path / "grid.sbatch").write_text(script)
    subprocess.run(["sbatch", str(tmp_path / "grid.sbatch")], check=True, capture_output=True)
    deadline = time.monotonic() + 240
    while squeue(slurm) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert squeue(slurm) == []
    runs, trials = records(client, name, storage)
    killed = sum(r["status"] == "KILLED" for r in runs if "arm" in r["tags"])
    check_grid(runs, trials, lost=run.info.run_id, killed=killed)


@pytest.mark.parametrize(("flags", "message"), [
    (("--set", "cluster.partition=gpu-a100"), "no partition 'gpu-a100' (this cluster has: debug, multi)"),
    (("--set", "cluster.partition=multi"), f"workers on {FAR} cannot reach the storage sqlite:///"),
])
def test_bad_slurm_input_is_refused_before_anything_is_submitted(slurm, tmp_path, tracking_store, monkeypatch, capsys,
                                                                 flags, message):
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    path = experiment(tmp_path, "refused")
    code = main(["compare", "--experiment", str(path), "--cluster", "slurm", "--workers", "2", "--storage",
                 f"sqlite:///{tmp_path}/optuna.db", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("freezeframe: error: cluster=slurm: ") and message in err[-1], err
    assert squeue(slurm) == [] and not (tmp_path / "optuna.db").exists()
    assert MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()]) == []
