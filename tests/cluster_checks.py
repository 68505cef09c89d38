"""What the engine tests (Ray, Slurm) ask of a comparison run by their workers, and how they catch an arm
mid-way to take its worker away."""

from __future__ import annotations

import subprocess
import time

# Four arms whose unfrozen epochs last long enough (~1 s each here) to lose a worker in the middle of one.
GRID = "compare:\n  name: {name}\n  freeze: [frozen, unfrozen]\n  seeds: [0, 1]\n"
SLOW_ARMS = {"train.epochs": 4, "data.image_size": 64, "data.max_samples": 200, "tracking.log_plots": False}


def wait_mid_arm(client, experiment_name: str, launcher: subprocess.Popen, seconds: float = 240):
    """The first unfrozen arm RUNNING on an engine's worker with an epoch logged and two to go:
    (its run, that epoch)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and launcher.poll() is None:
        experiment = client.get_experiment_by_name(experiment_name)
        query = "attributes.status = 'RUNNING' and tags.freeze = 'unfrozen'"
        for run in client.search_runs([experiment.experiment_id], query) if experiment else []:
            history = client.get_metric_history(run.info.run_id, "val/acc")
            if "cluster.worker" in run.data.tags and history and \
                    history[-1].step <= int(run.data.params["train.epochs"]) - 2:
                return run, history[-1].step
        time.sleep(0.2)
    raise TimeoutError("no unfrozen arm was caught mid-arm")


def records(client, experiment_name: str, storage: str) -> tuple[list[dict], list[dict]]:
    """Every run of the experiment and every trial of the storage's one study, as plain dicts."""
    import optuna

    experiment = client.get_experiment_by_name(experiment_name)
    runs = [{"run_id": r.info.run_id, "status": r.info.status, "tags": r.data.tags,
             "start": r.info.start_time / 1000, "end": (r.info.end_time or 0) / 1000}
            for r in client.search_runs([experiment.experiment_id])]
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = [{"number": t.number, "state": t.state.name, "attrs": t.user_attrs,
               "retry_of": t.system_attrs.get("failed_trial")}
              for t in optuna.load_study(study_name=summary.study_name, storage=storage).trials]
    return runs, trials


def check_grid(runs: list[dict], trials: list[dict], arms: int = 4, lost: str | None = None,
               killed: int | None = None) -> dict:
    """Each arm FINISHED once, nothing RUNNING, the parent FINISHED. `lost`: the run whose worker was taken
    away mid-arm: KILLED with its reason, and its arm resumed from a checkpoint by another worker. `killed`:
    how many attempts ended KILLED (lost included; default 1 with `lost`, else 0), each with its reason and
    its trial queued again and completed. Returns the FINISHED arm runs by config digest."""
    killed = (1 if lost else 0) if killed is None else killed
    assert "RUNNING" not in {r["status"] for r in runs}, [(r["tags"].get("mlflow.runName"), r["status"]) for r in runs]
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r["tags"] and "worker_of" not in r["tags"]]
    assert parent["status"] == "FINISHED", parent["tags"].get("error")
    children = [r for r in runs if r["tags"].get("mlflow.parentRunId") == parent["run_id"] and "arm" in r["tags"]]
    finished = {r["tags"]["config_digest"]: r for r in children if r["status"] == "FINISHED"}
    assert len(finished) == arms == len([r for r in children if r["status"] == "FINISHED"])
    assert all(r["tags"].get("cluster.worker") for r in children)
    others = [r for r in children if r["status"] != "FINISHED"]
    assert len(others) == killed and all(r["status"] == "KILLED" and r["tags"].get("error") for r in others), others
    failed = [t for t in trials if t["state"] == "FAIL"]
    assert len(failed) == killed
    for trial in failed:
        assert [t["state"] for t in trials if t["retry_of"] == trial["number"]] == ["COMPLETE"]
    if lost is not None:
        (gone,) = [r for r in others if r["run_id"] == lost]
        again = finished[gone["tags"]["config_digest"]]
        assert again["tags"]["cluster.worker"] != gone["tags"]["cluster.worker"]
        assert int(again["tags"]["resumed_from_epoch"]) >= 1  # from the lost attempt's checkpoint
    return finished
