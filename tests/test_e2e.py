"""`mlflow run . --env-manager local` in a subprocess, read back through MlflowClient from a tmp sqlite store."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, runs_in, store_in

pytestmark = pytest.mark.e2e


def mlflow_run(tmp_path: Path, entry: str, **params: str) -> subprocess.CompletedProcess:
    # Checkpoints and artifacts stay in tmp: the experiment file names the checkpoint folder.
    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(f"train:\n  checkpoint_dir: {tmp_path / 'checkpoints'}\n  batch_size: 16\n")
    params.setdefault("experiment", str(experiment))
    env = {**os.environ, "MLFLOW_TRACKING_URI": store_in(tmp_path),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(leaked, None)
    cmd = [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "-e", entry, "--env-manager", "local",
           "--experiment-name", "e2e"]
    tiny = {"backbone": "timm/test_resnet", "weights": "none", "image_size": "32",
            "max_samples": "40"}
    for key, value in {**tiny, **params}.items():
        if value is not None:  # None leaves a parameter out (main has no backbone parameter)
            cmd += ["-P", f"{key}={value}"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_main_entry_point_runs_the_quickstart_comparison(tmp_path):
    # the shipped quickstart grid (Lite0 and Lite1, frozen / unfrozen), checkpoints in tmp, few images;
    # a rerun that starts no arm is tested in-process (tests/test_compare.py) and by the fault tests
    quickstart = yaml.safe_load((ROOT / "experiments" / "quickstart.yaml").read_text())
    quickstart["train"]["checkpoint_dir"] = str(tmp_path / "checkpoints")
    experiment = tmp_path / "quickstart.yaml"
    experiment.write_text(yaml.safe_dump(quickstart))

    done = mlflow_run(tmp_path, "main", experiment=str(experiment), epochs="1", log_model="false",
                      backbone=None, weights=None, max_samples="24", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = runs_in(f"sqlite:///{tmp_path / 'mlflow.db'}")
    # one top-level run: the comparison's parent; the launcher's run, its worker's record, nested under it
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
                and "worker_of" not in r.data.tags]
    assert sorted((r.data.tags["backbone"], r.data.tags["freeze"]) for r in children) == [
        (f"timm/tf_efficientnet_lite{n}", policy) for n in (0, 1) for policy in ("frozen", "unfrozen")]
    assert {r.info.status for r in runs} == {"FINISHED"}
    (worker,) = [r for r in runs if "worker_of" in r.data.tags]
    assert worker.data.tags["worker_of"] == worker.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert worker.data.params["epochs"] == "1"
    assert (tmp_path / "optuna.db").is_file()  # the comparison is a study in the Optuna storage given


def test_bad_input_through_mlflow_run_leaves_no_running_run(tmp_path):
    done = mlflow_run(tmp_path, "train", backbone="timm/resnet19")
    assert done.returncode != 0
    assert "freezeframe: error: unknown backbone 'timm/resnet19'" in done.stderr
    assert "Traceback" not in done.stderr.split("freezeframe: error")[0][-2000:]
    (run,) = runs_in(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FAILED" and "unknown backbone" in run.data.tags["error"]
