"""A comparison's parent run: found again by name, so a rerun resumes under it, and its arms' records.

The parent is tagged `comparison=<name>`; each arm child carries its config digest. A rerun of the
same comparison reopens that parent and skips the children already FINISHED with the same digest.
Under `mlflow run`, the launcher's fresh run becomes the parent the first time; on a rerun it is
ended at once, tagged with the parent it handed over to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient

from tracking import session

COMPARISON_TAG = "comparison"


def _experiment_id(experiment_name: str) -> str:
    launcher = session.launcher_run_id()
    if launcher:
        return MlflowClient().get_run(launcher).info.experiment_id
    return session.use_experiment(experiment_name)


def find_parent(experiment_id: str, name: str) -> Run | None:
    runs = MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.{COMPARISON_TAG} = '{name}' and tags.entry_point = 'compare'",
        order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags
               and r.data.tags.get("relaunch_of") is None]
    return parents[0] if parents else None


@contextlib.contextmanager
def comparison_parent(name: str, experiment_name: str, tags: dict[str, str]) -> Iterator[Run]:
    """The parent run, active, ending FINISHED (or FAILED/KILLED) when the block ends."""
    experiment_id = _experiment_id(experiment_name)
    existing = find_parent(experiment_id, name)
    tags = {**tags, COMPARISON_TAG: name, "entry_point": "compare"}
    run_name = f"compare · {name}"
    if existing is None:
        with session.tracked_run(run_name, experiment_name, tags=tags) as run:
            yield run
        return
    launcher = session.launcher_run_id()
    if launcher and launcher != existing.info.run_id:
        session.hand_over_launcher_run(existing.info.run_id, f"rerun of {run_name}")
    with session.tracked_run(run_name, experiment_name, tags=tags, resume_run_id=existing.info.run_id) as run:
        yield run


def arm_runs(parent_run_id: str) -> list[Run]:
    parent = MlflowClient().get_run(parent_run_id)
    return MlflowClient().search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"])


def finished_digests(parent_run_id: str) -> dict[str, str]:
    """config digest → run id of the arms already FINISHED under this parent."""
    return {r.data.tags["config_digest"]: r.info.run_id for r in arm_runs(parent_run_id)
            if r.info.status == "FINISHED" and "config_digest" in r.data.tags}


def close_stale_arms(parent_run_id: str) -> int:
    """Children left RUNNING by a killed process: mark them KILLED before their arm runs again."""
    stale = [r for r in arm_runs(parent_run_id) if r.info.status == "RUNNING"]
    for run in stale:
        session.end_run(run.info.run_id, RunStatus.to_string(RunStatus.KILLED), "stale: its process died")
    return len(stale)
