"""MLflow runs for an Optuna study: one parent per study, one child per trial, linked both ways.

Our own logger (optuna-integration's MLflowCallback is deprecated). Several workers may start at
once on a fresh study, and neither MLflow nor Optuna offers compare-and-set, so the parent is
elected: a worker that finds no parent creates one; every worker then adopts the oldest parent
tagged with the study, but only once that parent is a few seconds old, so that any parent created
earlier (whose write may still be on its way) is visible by then; a worker whose own parent lost
ends it and deletes it, before any trial is nested under it.
"""

from __future__ import annotations

import time

import mlflow
import optuna
from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient

from tracking import session

STUDY_TAG = "optuna.study"
SETTLE_S = 2.5  # longer than a parent's create-and-tag takes to become visible on a loaded store


def _parents(experiment_id: str, study_name: str, storage_id: str) -> list[Run]:
    runs = MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{STUDY_TAG}` = '{study_name}' and tags.entry_point = 'search'"
                                       f" and tags.`optuna.storage_id` = '{storage_id}'",
        order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return sorted(parents, key=lambda r: (r.info.start_time, r.info.run_id))


def study_parent(study: optuna.Study, storage_id: str, experiment_name: str, params: dict[str, str]) -> str:
    """The parent run id for this study, created once and found again on every later start."""
    client = MlflowClient()
    launcher = session.launcher_run_id()
    if launcher:  # `mlflow run` made a run for this worker: it says where the work went, then ends
        experiment_id = client.get_run(launcher).info.experiment_id
    else:
        experiment_id = session.use_experiment(experiment_name)
    parents = _parents(experiment_id, study.study_name, storage_id)
    mine = None
    if not parents:
        tags = {STUDY_TAG: study.study_name, "optuna.storage_id": storage_id, "entry_point": "search",
                "optuna.direction": study.direction.name.lower()}
        mine = client.create_run(experiment_id, tags=tags, run_name=f"study · {study.study_name}").info.run_id
        client.log_batch(mine, params=[mlflow.entities.Param(k, v) for k, v in params.items()])
        while not (parents := _parents(experiment_id, study.study_name, storage_id)):
            time.sleep(0.2)  # a store that answers searches from a lagging replica
    while (age := time.time() - parents[0].info.start_time / 1000) < SETTLE_S:
        time.sleep(SETTLE_S - age + 0.1)
        parents = _parents(experiment_id, study.study_name, storage_id)
    parent = parents[0].info.run_id
    if mine and mine != parent:
        client.set_tag(mine, "duplicate_of", parent)
        client.set_terminated(mine, RunStatus.to_string(RunStatus.KILLED))
        client.delete_run(mine)
    if launcher:
        session.hand_over_launcher_run(parent, f"search worker → study · {study.study_name}")
    client.update_run(parent, status=RunStatus.to_string(RunStatus.RUNNING))
    study.set_user_attr("mlflow_experiment_id", experiment_id)
    study.set_user_attr("mlflow_parent_run_id", parent)
    return parent


def trial_runs(parent_run_id: str) -> list[Run]:
    parent = MlflowClient().get_run(parent_run_id)
    return MlflowClient().search_runs([parent.info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


def mark_trial(run_id: str | None, state: str, reason: str = "") -> None:
    """The trial's Optuna state on its run (PRUNED is tagged where the run ends, in tracking.session)."""
    if run_id:
        MlflowClient().set_tag(run_id, "optuna.state", state)
        if reason:
            MlflowClient().set_tag(run_id, "optuna.fail_reason", reason[:500])


def close_stale_trial(study: optuna.Study, trial) -> None:
    """Optuna's heartbeat failed a trial whose worker died: its MLflow child must not stay RUNNING."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id and MlflowClient().get_run(run_id).info.status == "RUNNING":
        mark_trial(run_id, "FAIL", "its worker died (no heartbeat)")
        session.end_run(run_id, RunStatus.to_string(RunStatus.KILLED), "worker died: no Optuna heartbeat")


def close_parent(parent_run_id: str) -> None:
    MlflowClient().set_terminated(parent_run_id, RunStatus.to_string(RunStatus.FINISHED))
