"""`mlflow run <git URI>`, the way users run a remote project: MLflow clones it into a new temporary
folder on every run. A local `git daemon` on 127.0.0.1 serves a clone of this checkout's HEAD (commit
what you want tested: the working tree's changes are not in it)."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, runs_in, store_in, tiny_experiment

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def served_project(tmp_path):
    """git://127.0.0.1:<port>/freezeframe: a clone of HEAD, served by a real `git daemon`."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs git and a git checkout of the project to serve")
    served = tmp_path / "served"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(served / "freezeframe")], check=True)
    port = free_port()
    daemon = subprocess.Popen(["git", "daemon", "--listen=127.0.0.1", f"--port={port}", f"--base-path={served}",
                               "--export-all", "--reuseaddr", str(served)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert daemon.poll() is None, "git daemon exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "git daemon did not listen"
                time.sleep(0.2)
        yield f"git://127.0.0.1:{port}/freezeframe"
    finally:
        daemon.terminate()
        daemon.wait(timeout=20)


def test_compare_from_a_git_uri_twice_trains_once_under_one_row(served_project, tmp_path, state_home):
    # the file's checkpoint folder is relative, as the shipped experiments' default is
    experiment = tiny_experiment(tmp_path, "compare:\n  name: from-git\n  freeze: [frozen]\n  seeds: [0, 1]\n",
                                 filename="grid.yaml", **{"train.epochs": 1, "train.checkpoint_dir": "checkpoints"})
    store = store_in(tmp_path)
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(leaked, None)
    cmd = [str(Path(sys.executable).parent / "mlflow"), "run", served_project, "-e", "compare", "--env-manager",
           "local", "--experiment-name", "git", "-P", f"experiment={experiment}"]

    first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    storage = f"sqlite:///{state_home / 'optuna.db'}"
    assert "is a temporary folder" in first.stderr and f"study storage {storage}" in first.stderr
    assert list((state_home / "checkpoints").glob("*/last.pt"))  # not in the clone MLflow made and left

    # -X importtime in both processes (mlflow's CLI, freezeframe's worker): nothing to train, so no torch
    second = subprocess.run(cmd, cwd=tmp_path, env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("FINISHED earlier") == 2  # the same study, found again: nothing trains
    imported = {line.rsplit("|", 1)[-1].strip() for line in second.stderr.splitlines()
                if line.startswith("import time:")}
    assert "freezeframe.study_run" in imported and not imported & {"torch", "timm", "torchvision", "sklearn"}

    runs = runs_in(store)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]  # one row on Training runs
    assert parent.info.run_name == "compare · from-git" and parent.info.status == "FINISHED"
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    arms = [r for r in nested if "worker_of" not in r.data.tags]
    workers = [r for r in nested if "worker_of" in r.data.tags]
    assert len(arms) == 2 and {r.info.status for r in arms} == {"FINISHED"}
    # each run's `mlflow run` launcher is its worker's record, folded under the parent
    assert len(workers) == 2 and {r.info.status for r in workers} == {"FINISHED"}
    assert {r.data.tags["worker_of"] for r in workers} == {parent.info.run_id}
    # the second run's links select the first run's arms
    (link,) = [line for line in second.stdout.splitlines() if line.startswith("MLflow: compare arms")]
    assert all(r.info.run_id in link for r in arms)
