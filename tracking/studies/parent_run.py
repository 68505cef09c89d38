"""A study's parent run with its children: the one mechanism behind compare (children are arms) and
search (children are trials), for any number of workers on any number of machines.

The parent is found by its identity tags (study, storage, kind). Neither MLflow nor Optuna offers
compare-and-set, so workers starting together on a new study elect it: a worker that finds no parent
creates one; every worker adopts the oldest parent with those tags once it is a few seconds old (any
parent created earlier is visible by then); a worker whose own candidate lost deletes it before any
child is nested under it.

Under `mlflow run`, the launcher's run is this worker's record, tagged `worker_of=<parent>`, and ends
with the worker: FINISHED, KILLED when interrupted, FAILED with the error. The parent ends FINISHED
only when the study has no trial running or waiting; a last worker interrupted leaves it KILLED; while
other workers are at work it stays RUNNING, and the last of them ends it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Metric, Param, Run, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from pipelines.errors import ConfigError
from pipelines.studies.keys import REASON_ATTR, RUN_ATTR
from pipelines.studies.plan import StudyPlan
from tracking import tags
from tracking.runs import session

SETTLE_S = 2.5  # longer than a parent's create-and-tag takes to become visible on a loaded store
FINISHED, KILLED, FAILED = (RunStatus.to_string(s) for s in (RunStatus.FINISHED, RunStatus.KILLED, RunStatus.FAILED))


@dataclass(frozen=True)
class ParentRun:
    run_id: str
    experiment_id: str
    worker_run_id: str | None  # the `mlflow run` launcher's run, kept as this worker's record


def _parents(experiment_id: str, identity: dict[str, str]) -> list[Run]:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in identity.items())
    runs = MlflowClient().search_runs([experiment_id], filter_string=query)
    parents = [r for r in runs if tags.PARENT not in r.data.tags and tags.WORKER_OF not in r.data.tags]
    return sorted(parents, key=lambda r: (r.info.start_time, r.info.run_id))


def _identity(kind: str, study_name: str, storage_id: str) -> dict[str, str]:
    """The tags that find a study's parent: a study is its name in its storage, of one kind."""
    return {tags.STUDY: study_name, tags.STORAGE_ID: storage_id, tags.ENTRY_POINT: kind}


def _experiment_id(experiment_name: str, create: bool) -> str | None:
    """Where a study's parent lives: the `mlflow run` launcher's experiment, else the config's (created
    when `create`; None when it does not exist and is not to be created)."""
    launcher = session.launcher_run_id()
    if launcher:
        return MlflowClient().get_run(launcher).info.experiment_id
    if create:
        return session.use_experiment(experiment_name)
    found = MlflowClient().get_experiment_by_name(session.experiment_name_in_use(experiment_name))
    return found.experiment_id if found else None


def check_held(plan: StudyPlan, storage_id: str, linked: Callable[[], str | None], shown: str) -> None:
    """Refuse, before anything is queued or trained, a study that is not the one behind the parent run
    these tags find: a parent that already has children, while the study links no parent (an empty
    study: another file behind the same URL, a storage deleted) or links another one. Adopting it would
    nest a second set of children under the first and report links to the first's. `linked` reads the
    study's parent run id (study_run.open_study_run links it; None for a study never linked) from the storage, after
    the children are seen: a worker links the study before it starts any child, so a worker starting
    beside it never reads a link older than the children it saw. `shown`: the storage URL as the user
    may read it (no password)."""
    kind, study_name = plan.kind, plan.name
    experiment_id = _experiment_id(plan.experiment_name, create=False)
    parents = _parents(experiment_id, _identity(kind, study_name, storage_id)) if experiment_id else []
    if not parents or not children(parents[0].info.run_id):
        return
    link = linked()
    if link == parents[0].info.run_id:
        return
    held = f"links parent run {link}" if link else "is new or empty"
    raise ConfigError(f"{kind} '{study_name}': its parent run {parents[0].info.run_id} holds runs of a study that the "
                      f"storage {shown} does not hold (the study there {held}); point --storage at that "
                      "study's storage, or give a new --study_name")


def open_parent(plan: StudyPlan, storage_id: str, params: dict[str, Any]) -> ParentRun:
    """Find or elect the study's parent and mark it RUNNING (a rerun reopens it); a new one gets the plan's
    tags and `params`. With plan.adopt_launcher, the `mlflow run` launcher's run becomes this worker's
    record (not for a study run on the way to another, such as a screened comparison's ranking: the
    comparison takes it)."""
    client = MlflowClient()
    launcher = session.launcher_run_id()
    kind, study_name, adopt_launcher = plan.kind, plan.name, plan.adopt_launcher
    experiment_id = _experiment_id(plan.experiment_name, create=True)
    identity = _identity(kind, study_name, storage_id)
    parents = _parents(experiment_id, identity)
    mine = None
    if not parents:
        mine = client.create_run(experiment_id, tags={**plan.parent_tags, **identity},
                                 run_name=f"{kind} · {study_name}").info.run_id
        client.log_batch(mine, params=[Param(k, str(v)) for k, v in params.items()])
        while not (parents := _parents(experiment_id, identity)):
            time.sleep(0.2)  # a store that answers searches from a lagging replica
    while (age := time.time() - parents[0].info.start_time / 1000) < SETTLE_S:
        time.sleep(SETTLE_S - age + 0.1)
        parents = _parents(experiment_id, identity)
    parent = parents[0].info.run_id
    if mine and mine != parent:
        client.set_tag(mine, tags.DUPLICATE_OF, parent)
        client.set_terminated(mine, KILLED)
        client.delete_run(mine)
    reopen(parent)
    if launcher and adopt_launcher:
        session.take_launcher_run()
        # nested under the parent: the Training runs page shows one row per study, however many workers
        # and reruns; `worker_of` keeps it out of the children (arms, trials) that views and reports read
        client.set_tag(launcher, tags.PARENT, parent)
        client.set_tag(launcher, tags.WORKER_OF, parent)
        client.set_tag(launcher, tags.RUN_NAME, f"worker · {kind} · {study_name}")
    return ParentRun(parent, experiment_id, launcher if adopt_launcher else None)


def reopen(parent_run_id: str) -> None:
    """RUNNING again, without an earlier end's reason: a rerun, or a worker going on after another one
    ended the parent while this one's arms were still queued."""
    client = MlflowClient()
    run = client.get_run(parent_run_id)
    if run.info.status != "RUNNING":
        client.update_run(parent_run_id, status="RUNNING")
    if tags.ERROR in run.data.tags:
        client.delete_tag(parent_run_id, tags.ERROR)


def close(parent: ParentRun, worker_status: str, error: str, running: int, waiting: int) -> str:
    """End this worker's record and, unless other workers still run trials, the parent. Returns the
    parent's status: RUNNING (others at work), FINISHED (nothing left), KILLED or FAILED (rerun to go on)."""
    if parent.worker_run_id:
        session.end_run(parent.worker_run_id, worker_status, error or None)
    if running:
        return "RUNNING"
    if worker_status == FINISHED and waiting:
        worker_status, error = KILLED, f"{waiting} trial(s) still queued: rerun to run them"
    session.end_run(parent.run_id, worker_status, (error and f"{error}; rerun to continue") or None)
    return worker_status


def log_values(run_id: str, metrics: dict[str, float], run_tags: dict[str, str]) -> None:
    """A parent's summary numbers and tags in one call (no active run needed: any worker may write them)."""
    now = int(time.time() * 1000)
    MlflowClient().log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                             tags=[RunTag(k, v) for k, v in run_tags.items()])


def children(parent_run_id: str) -> list[Run]:
    """The parent's arms or trials, oldest first (its workers' `mlflow run` records, nested too, left out)."""
    client = MlflowClient()
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], filter_string=f"tags.`{tags.PARENT}` = '{parent_run_id}'",
                              order_by=["attributes.start_time ASC"])
    return [r for r in runs if tags.WORKER_OF not in r.data.tags]


def finished_here(run_id: str) -> bool:
    """Whether this tracking store holds the run, FINISHED and not deleted."""
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        return False
    return run.info.status == FINISHED and run.info.lifecycle_stage == "active"


def metric(run_id: str, key: str) -> float:
    """A run's last value of one metric."""
    return MlflowClient().get_run(run_id).data.metrics[key]


def mirror_trial(trial: FrozenTrial) -> None:
    """The trial's Optuna state on its child run (PRUNED is tagged where the run ends, in tracking.runs.session)."""
    run_id = trial.user_attrs.get(RUN_ATTR)
    if not run_id:
        return
    client = MlflowClient()
    client.set_tag(run_id, tags.OPTUNA_STATE, trial.state.name)
    if trial.state == TrialState.FAIL and trial.user_attrs.get(REASON_ATTR):
        client.set_tag(run_id, tags.FAIL_REASON, str(trial.user_attrs[REASON_ATTR])[:500])


def record_twin(parent_run_id: str, twin_run_id: str, run_name: str, run_tags: dict[str, str]) -> str:
    """A child run for a trial that reuses a finished trial's result: that run's params, final metrics
    and comparison tags, tagged `duplicate_of=<its run id>`, FINISHED at once; nothing trains."""
    client = MlflowClient()
    twin = client.get_run(twin_run_id)
    copied = {k: v for k, v in twin.data.tags.items() if not k.startswith("mlflow.") and k not in run_tags}
    run = client.create_run(twin.info.experiment_id, run_name=run_name,
                            tags={**copied, **run_tags, tags.PARENT: parent_run_id, tags.DUPLICATE_OF: twin_run_id})
    try:
        now = int(time.time() * 1000)
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in twin.data.params.items()],
                         metrics=[Metric(k, v, now, 0) for k, v in twin.data.metrics.items()
                                  if not k.startswith("system/")])  # it used no machine of its own
    except BaseException as exc:
        session.end_run(run.info.run_id, FAILED, session.one_line(exc))
        raise
    session.end_run(run.info.run_id, FINISHED, None)
    return run.info.run_id


def close_dead_child(trial: FrozenTrial) -> None:
    """A trial whose worker died (no heartbeat, or its process gone): its child must not stay RUNNING."""
    run_id = trial.user_attrs.get(RUN_ATTR)
    if run_id and MlflowClient().get_run(run_id).info.status == "RUNNING":
        mirror_trial(trial)
        session.end_run(run_id, KILLED, f"its worker died ({trial.user_attrs.get(REASON_ATTR, 'no heartbeat')})")


def status(run_id: str) -> str:
    """A run's status now (RUNNING, FINISHED, KILLED, FAILED)."""
    return MlflowClient().get_run(run_id).info.status


def experiment_name(experiment_id: str) -> str:
    return MlflowClient().get_experiment(experiment_id).name
