"""Faults: kill -9 mid-run, then rerun. Nothing RUNNING afterwards, at most one epoch lost."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, runs_in, store_in, tiny_experiment
from tests.preloaded import PreloadedProcess, start_worker

pytestmark = pytest.mark.slow
# epochs long enough that a kill or a signal sent after the first one lands mid-run, and no longer
SLOW = {"train.epochs": 3, "data.image_size": 64, "data.max_samples": 100, "tracking.log_plots": False}


def experiment(tmp_path, compare: dict | None = None, **overrides) -> Path:
    return tiny_experiment(tmp_path, yaml.safe_dump({"compare": compare}) if compare else "", **overrides)


def start(tmp_path, *args: str) -> PreloadedProcess:
    """A worker process, `python -m freezeframe ARGS`, forked with its libraries already imported (SIGINT
    raises KeyboardInterrupt in it, even where the suite runs in the background with SIGINT ignored)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": store_in(tmp_path), "PYTHONPATH": str(ROOT)}
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(leaked, None)
    return start_worker(list(args), tmp_path, env)


def rerun(capsys, *args: str) -> str:
    """The rerun after a fault, in this process (the faults themselves need a process of their own)."""
    from freezeframe.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    assert code == 0, (out + err)[-3000:]
    return out + err


def wait_for(predicate, seconds: float = 300) -> None:  # generous: a loaded 2-core CI machine is slow
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.1)


def test_kill_9_train_then_resume(tmp_path, tracking_store, capsys):
    # big enough images that an epoch takes a few seconds, so the kill lands mid-run
    path = experiment(tmp_path, **{**SLOW, "train.epochs": 5})
    worker = start(tmp_path, "train", "--experiment", str(path))
    checkpoints = tmp_path / "checkpoints"
    wait_for(lambda: any(checkpoints.glob("*/last.pt")))
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (killed,) = runs_in(uri)
    assert killed.info.status == "RUNNING"  # what kill -9 leaves behind, until the rerun
    import torch

    done_epochs = torch.load(next(checkpoints.glob("*/last.pt")), weights_only=False)["epoch"]
    assert 1 <= done_epochs < 5

    rerun(capsys, "train", "--experiment", str(path), "--resume", "true")
    runs = {r.info.run_id: r for r in runs_in(uri)}
    assert runs[killed.info.run_id].info.status == "KILLED"
    assert "process (pid" in runs[killed.info.run_id].data.tags["error"]
    (resumed,) = [r for r in runs.values() if r.info.run_id != killed.info.run_id]
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resumed_from_run"] == killed.info.run_id
    assert int(resumed.data.tags["resumed_from_epoch"]) >= done_epochs  # at most the running epoch lost
    from mlflow.tracking import MlflowClient

    steps = [m.step for m in MlflowClient(uri).get_metric_history(resumed.info.run_id, "val/acc")]
    assert steps == [1, 2, 3, 4, 5]  # the resumed run's curves are complete


def test_kill_a_comparison_midway_then_rerun(tmp_path, tracking_store, capsys):
    path = experiment(tmp_path, compare={"name": "killed", "freeze": ["frozen", "last_n:1", "unfrozen"]}, **SLOW)
    worker = start(tmp_path, "compare", "--experiment", str(path))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def second_arm_running():
        try:
            return any(r.data.tags.get("freeze") == "last_n:1" for r in runs_in(uri))
        except Exception:  # noqa: BLE001 - the store may not exist yet
            return False

    wait_for(second_arm_running)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    output = rerun(capsys, "compare", "--experiment", str(path))
    assert output.count("FINISHED earlier") == 1  # the frozen arm, done before the kill
    runs = runs_in(uri)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    arms = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.tags["freeze"] for r in arms if r.info.status == "FINISHED") == [
        "frozen", "last_n:1", "unfrozen"]
    assert [r.info.status for r in arms if r.info.status != "FINISHED"] == ["KILLED"]
    assert "RUNNING" not in {r.info.status for r in runs}


def test_kill_9_a_search_worker_then_restart(tmp_path, tracking_store, capsys):
    """The dead worker's trial is failed through its owner record (same machine: at once), its MLflow
    child closed, and the trial queued again: the restarted worker runs it, then a new one."""
    path = experiment(tmp_path, **{**SLOW, "train.epochs": 5})
    text = path.read_text() + "search:\n  study_name: dies\n  batch_size: {low: 8, high: 16}\n  pruner: none\n"
    path.write_text(text)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    worker = start(tmp_path, "search", "--experiment", str(path), "--storage", storage, "--n_trials", "3")
    wait_for(lambda: trial_running(storage, "dies"))
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    rerun(capsys, "search", "--experiment", str(path), "--storage", storage, "--n_trials", "2", "--epochs", "1")
    import optuna

    study = optuna.load_study(study_name="dies", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states[0] == "FAIL" and states[1:] == ["COMPLETE", "COMPLETE"]
    assert study.trials[1].user_attrs["retry_of"] == 0 and study.trials[1].params == study.trials[0].params
    runs = {r.info.run_id: r for r in runs_in(f"sqlite:///{tmp_path / 'mlflow.db'}")}
    dead = runs[study.trials[0].user_attrs["mlflow_run_id"]]
    assert dead.info.status == "KILLED" and dead.data.tags["optuna.state"] == "FAIL"
    assert "RUNNING" not in {r.info.status for r in runs.values()}


def test_the_tracking_server_goes_away_mid_run(tmp_path, tracking_store, monkeypatch, capsys):
    """A clear one-line error, the checkpoint kept, and resume once the server is back."""
    from tests.conftest import SERVER_ENV, free_port, wait_for_http

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                  store_in(tmp_path, "server.db"), "--artifacts-destination", str(tmp_path / "artifacts"),
                  "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]

    def serve():
        process = subprocess.Popen(server_cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True, env=SERVER_ENV)
        wait_for_http(f"{url}/health", process=process)
        return process

    server = serve()
    path = experiment(tmp_path, **{**SLOW, "train.epochs": 4})
    # no HTTP retries: what is under test is the message, the checkpoint and the resume, not the backoff
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "PYTHONPATH": str(ROOT), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    worker = subprocess.Popen([sys.executable, "-m", "freezeframe", "train", "--experiment", str(path)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoints = tmp_path / "checkpoints"
    wait_for(lambda: any(checkpoints.glob("*/last.pt")))
    os.killpg(server.pid, signal.SIGKILL)  # the server and its workers, at once
    server.wait()
    out, err = worker.communicate(timeout=300)
    assert worker.returncode == 2, err[-3000:]
    (line,) = [x for x in err.splitlines() if x.startswith("freezeframe: error:")]
    assert line.startswith("freezeframe: error: tracking store became unreachable during run") and "resume" in line
    assert "Traceback" not in err
    assert any(checkpoints.glob("*/last.pt"))
    server = serve()
    import mlflow

    try:
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
            monkeypatch.setenv(key, env[key])
        mlflow.set_tracking_uri(url)
        rerun(capsys, "train", "--experiment", str(path), "--resume", "true")
        from mlflow.tracking import MlflowClient

        runs = MlflowClient(url).search_runs(["0", *[e.experiment_id for e in MlflowClient(url).search_experiments()]])
        resumed = [r for r in runs if r.info.status == "FINISHED"]
        assert len(resumed) == 1 and int(resumed[0].data.tags["resumed_from_epoch"]) >= 1
    finally:
        mlflow.set_tracking_uri(tracking_store)  # later tests in this process: their own stores again
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def runs_of(tmp_path) -> list:
    return runs_in(f"sqlite:///{tmp_path / 'mlflow.db'}")


def trial_running(storage: str, name: str, owner_pid: int | None = None, after: int = 0) -> bool:
    """A trial numbered `after` or later is running (in the given worker), its first epoch reported: the
    rest of its epochs are still to come."""
    import optuna

    try:
        trials = optuna.load_study(study_name=name, storage=storage).trials
    except Exception:  # noqa: BLE001 - not created yet
        return False
    return any(t.state.name == "RUNNING" and t.intermediate_values and t.number >= after
               and (owner_pid is None or t.user_attrs.get("worker", {}).get("pid") == owner_pid) for t in trials)



# Both signals and both kinds, in two runs rather than four: the worker loop and its signal handling
# are one piece of code for compare and search (each pair costs ~30 s of a suite kept under 8 minutes).
@pytest.mark.parametrize("signum, kind", [(signal.SIGTERM, "compare"), (signal.SIGINT, "search")],
                         ids=["SIGTERM-compare", "SIGINT-search"])
def test_a_signal_to_a_lone_worker_then_rerun(tmp_path, tracking_store, capsys, signum, kind):
    """Interrupted after its first child: nothing FINISHED that did not finish, the parent KILLED (not
    FINISHED); the rerun completes the grid or runs the interrupted trial, and finishes the parent."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    if kind == "compare":
        path = experiment(tmp_path, compare={"name": "lone", "freeze": ["frozen", "unfrozen"]}, **SLOW)
        args = ["compare", "--experiment", str(path), "--storage", storage]
    else:
        path = experiment(tmp_path, **SLOW)
        # an lr range: two trials on two batch sizes alone may draw the same params, and the second would
        # reuse the first's result rather than train (and be interrupted)
        path.write_text(path.read_text() + "search:\n  study_name: lone\n  batch_size: {low: 8, high: 16}\n"
                                           "  lr: {low: 0.001, high: 0.01}\n  pruner: none\n")
        args = ["search", "--experiment", str(path), "--storage", storage, "--n_trials", "2"]
    worker = start(tmp_path, *args)
    wait_for(lambda: trial_running(storage, "lone", after=1))  # the first child done, the second under way
    worker.send_signal(signum)
    output = worker.communicate(timeout=120)[0]
    assert worker.returncode == 130 and "freezeframe: interrupted" in output, output[-3000:]
    runs = runs_of(tmp_path)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "KILLED" and "interrupted" in parent.data.tags["error"]
    children = sorted((r for r in runs if "mlflow.parentRunId" in r.data.tags), key=lambda r: r.info.start_time)
    assert [r.info.status for r in children] == ["FINISHED", "KILLED"]
    assert all(r.data.metrics.get("test/acc") is not None for r in children if r.info.status == "FINISHED")

    rerun(capsys, *(args if kind == "compare" else [*args[:-1], "1"]))
    runs = runs_of(tmp_path)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED" and "error" not in parent.data.tags
    statuses = sorted(r.info.status for r in runs if "mlflow.parentRunId" in r.data.tags)
    assert statuses == ["FINISHED", "FINISHED", "KILLED"]  # the interrupted child, and the one that finished it
