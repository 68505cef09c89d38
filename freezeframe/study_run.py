"""Compare, rank and search run the same way: a study in an Optuna storage, its parent run in MLflow, and
this process as one of any number of workers (pipelines.studies.worker's loop, tracking.studies.parent_run's
runs). A grid of arms (compare, rank) is `run_arms`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from pipelines.config import MONITORS, RunConfig, digest, with_overrides
from pipelines.errors import ConfigError, without_password
from pipelines.studies.arm_ranks import TrialPlace
from pipelines.studies.arms import Arm, Comparison, arm_configs, queue_arms
from pipelines.studies.keys import (
    ARM_ATTR,
    DIGEST_ATTR,
    EXPERIMENT_ID_ATTR,
    EXPERIMENT_URL_ATTR,
    PARENT_RUN_ID_ATTR,
    PARENT_RUN_URL_ATTR,
    REASON_ATTR,
    RETRY_ATTR,
    RUN_ATTR,
)
from pipelines.studies.storage import DEFAULT_STORAGE, DIRECTIONS, make_storage, open_study, storage_id, study_lock
from pipelines.studies.worker import EpochReporter, StudyWorker, reap_dead, requeue
from tracking import links, tags
from tracking.runs import session
from tracking.store import ensure_reachable
from tracking.studies import comparison_report, parent_run
from tracking.studies.parent_run import FAILED, FINISHED, KILLED, ParentRun

if TYPE_CHECKING:  # the training stack (torch, timm, sklearn) loads when an arm trains (run_child), not before:
    # a rerun with nothing left to train, or a worker that finds no arm, answers without it
    from freezeframe.single_run import TrackedRun
    from pipelines.training.results import TrainingOutcome

T = TypeVar("T")


def open_storage(url: str) -> tuple[str, optuna.storages.BaseStorage]:
    url = url or DEFAULT_STORAGE
    return url, make_storage(url, on_dead_trial=on_dead_trial)


def experiment_stem(path: str) -> str:
    """The experiment file's stem names the registered champion: freezeframe-<stem>."""
    return path.rsplit("/", 1)[-1].removesuffix(".yaml")


def on_dead_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """A trial whose worker died: its child run KILLED, its params queued again for another worker."""
    parent_run.close_dead_child(trial)
    requeue(study, trial)


def link_study(study: optuna.Study, parent: ParentRun) -> None:
    """The study's user attrs name its MLflow parent run and experiment, by id and by UI link."""
    study.set_user_attr(EXPERIMENT_ID_ATTR, parent.experiment_id)
    study.set_user_attr(PARENT_RUN_ID_ATTR, parent.run_id)
    study.set_user_attr(EXPERIMENT_URL_ATTR, links.runs_page(parent.experiment_id))
    study.set_user_attr(PARENT_RUN_URL_ATTR, links.run_page(parent.experiment_id, parent.run_id))


def print_links(parent: ParentRun, run_ids: list[str], what: str, order_by: str, ascending: bool = False) -> None:
    """The last lines of a compare or search: where to look in the MLflow UI."""
    found = links.study_links(parent.experiment_id, parent.run_id, run_ids, what, order_by, ascending)
    print(links.format_links(found), flush=True)


def run_child(cfg: RunConfig, trial: optuna.Trial, parent_run_id: str, entry_point: str, child_tags: dict[str, str],
              listeners: tuple, place: TrialPlace) -> TrackedRun:
    """One arm or trial as a child run of the parent, in this process, or with train.devices > 1 on that
    many processes that this worker starts (`place`: where they find the trial, and its pruner)."""
    from freezeframe import single_run  # see TYPE_CHECKING above

    run_tags = {tags.STUDY: trial.study.study_name, tags.TRIAL: str(trial.number), tags.CONFIG_DIGEST: digest(cfg),
                **child_tags}
    parent_run.reopen(parent_run_id)  # another worker may have ended it, seeing this one's arm still queued
    if cfg.train.devices > 1:
        return single_run.child_on_ranks(cfg, trial, place, parent_run_id, entry_point, run_tags, listeners)
    return single_run.child_here(cfg, trial, parent_run_id, entry_point, run_tags, listeners)


def work(url: str, storage: optuna.storages.BaseStorage, study: optuna.Study, parent: ParentRun,
         objective: Callable[[optuna.Trial], float | list[float]], report: Callable[[str], T], propose: bool = False,
         n_trials: int | None = None, timeout: float = 0.0, max_trials: int = 0) -> T | None:
    """Run trials as this worker, then end what is this worker's to end. The last worker to leave
    writes the parent's report (returned; None from the others) and ends the parent."""
    worker = StudyWorker(study, storage, objective, on_told=_told, on_dead=on_dead_trial, propose=propose,
                         n_trials=n_trials, timeout=timeout, max_trials=max_trials, url=url)
    status, error, result = FINISHED, "", None
    try:
        worker.run()
    except KeyboardInterrupt:
        status, error = KILLED, "interrupted"
        raise
    except BaseException as exc:
        status, error = FAILED, session.one_line(exc)
        raise
    finally:
        with study_lock(url, study.study_name):  # two workers leaving together: one report, one champion
            counts = worker.counts()
            try:  # a worker that left just before us may have reported everything already
                if status == FINISHED and not counts["RUNNING"] and not counts["WAITING"] \
                        and not parent_run.finished_here(parent.run_id):
                    result = report(parent.run_id)
            finally:
                final = parent_run.close(parent, status, error, counts["RUNNING"], counts["WAITING"])
    if final == "RUNNING":
        print(f"{counts['RUNNING']} trial(s) still running in other workers: the last to finish ends the "
              f"parent run {parent.run_id} and writes its summary")
    return result


def _told(trial: FrozenTrial) -> None:
    parent_run.mirror_trial(trial)
    name = trial.user_attrs.get(ARM_ATTR) or f"trial {trial.number} {trial.params}"
    if trial.state == TrialState.COMPLETE:
        print(f"{name}: {', '.join(f'{v:.4f}' for v in trial.values)}", flush=True)
    else:
        print(f"{name}: {trial.state.name} {trial.user_attrs.get(REASON_ATTR, '')}".rstrip(), file=sys.stderr)


def reuse_run(trial: optuna.Trial, parent_run_id: str, source_run_id: str, run_name: str,
              run_tags: dict[str, str] | None = None) -> str:
    """A trial whose result is a finished run's (a search's twin, a screening's ranking arm): that run
    copied under the parent (parent_run.record_twin), recorded on the trial; nothing trains."""
    run_id = parent_run.record_twin(parent_run_id, source_run_id, run_name,
                                    {tags.STUDY: trial.study.study_name, tags.TRIAL: str(trial.number),
                                     **(run_tags or {})})
    trial.set_user_attr(RUN_ATTR, run_id)
    return run_id


class ArmObjective:
    """A comparison's trial: train the arm it names; its value is `value(outcome)`, by default the
    monitored metric's best epoch."""

    def __init__(self, arms: dict[str, tuple[Arm, RunConfig]], parent_run_id: str, name: str, kind: str,
                 value: Callable[[TrainingOutcome], float], place: TrialPlace, racing: bool = False,
                 reuse: dict[str, str] | None = None):
        self.arms, self.parent_run_id, self.name, self.kind, self.value = arms, parent_run_id, name, kind, value
        self.place, self.racing, self.reuse = place, racing, reuse or {}

    def __call__(self, trial: optuna.Trial) -> float:
        key = trial.user_attrs.get(DIGEST_ATTR)
        if key not in self.arms:
            raise ConfigError(f"trial {trial.number} holds an arm of another config ({key})")
        arm, cfg = self.arms[key]
        arm_tags = {tags.COMPARISON: self.name, tags.ARM: arm.name}
        if key in self.reuse:  # this very arm (same config digest) already ran, as a screening's ranking arm
            parent_run.reopen(self.parent_run_id)
            run_id = reuse_run(trial, self.parent_run_id, self.reuse[key], arm.name,
                               {tags.CONFIG_DIGEST: key, **arm_tags})
            print(f"[trial {trial.number}] {arm.name}: the ranking's run {self.reuse[key]}, reused (run {run_id})",
                  flush=True)
            return parent_run.metric(run_id, f"best/{cfg.train.monitor}")
        if trial.user_attrs.get(RETRY_ATTR) is not None:  # a dead worker's arm: go on from its last epoch
            cfg = with_overrides(cfg, {"train.resume": True})
        print(f"[trial {trial.number}] {arm.name}", flush=True)
        # racing (compare.racing): the study's pruner may stop the arm at a rung, never at its last epoch
        listeners = (EpochReporter(trial, cfg.train.monitor, prune=self.racing, last_epoch=cfg.train.epochs),)
        done = run_child(cfg, trial, self.parent_run_id, self.kind, arm_tags, listeners, self.place)
        return self.value(done.outcome)


def run_arms(args: argparse.Namespace, cfg: RunConfig, spec: Comparison, name: str,
             summarise: Callable[[str, list], str], kind: str = "compare", order_by: str = "test/acc",
             value: Callable[[TrainingOutcome], float] | None = None, adopt_launcher: bool = True,
             reuse: dict[str, str] | None = None) -> tuple[str, str, optuna.Study, BaseStorage]:
    """A grid of arms as a study under one parent run, this process one of its workers; the last worker
    writes `summarise(parent run id, arm runs)` on the parent and prints it. Compare and rank run this.
    `reuse` maps an arm's config digest to a FINISHED run of that same config (a screening's ranking
    arm): the arm's child then copies that run instead of training again, as a search trial's twin does.
    Returns the parent's run id, the storage URL, the study and its storage."""
    arms = arm_configs(spec)  # every arm validated by parse_comparison
    ensure_reachable()
    url, storage = open_storage(args.storage)
    # a trial's value: the monitored metric's best epoch, or the `value` asked for (a score: higher is better)
    direction, metric = ((DIRECTIONS[MONITORS[cfg.train.monitor]], cfg.train.monitor) if value is None
                         else ("maximize", kind))
    place = TrialPlace(url, f"racing:{spec.racing}")  # the study's pruner, named: an arm's rank 0 rebuilds it
    study = open_study(name, url, storage, kind, (direction,), (metric,), pruner=place.study_pruner())
    parent_run.check_held(kind, name, storage_id(url), cfg.tracking.experiment_name,
                          lambda: study.user_attrs.get(PARENT_RUN_ID_ATTR), without_password(url))
    with study_lock(url, name):
        reap_dead(study, storage, on_dead_trial)  # a dead worker's arm is queued again, not refused
        done = queue_arms(study, storage, arms, recorded=parent_run.finished_here)
    for key, run_id in done.items():
        print(f"{arms[key][0].name}: FINISHED earlier (run {run_id}), skipped")
    parent = parent_run.open_parent(kind, name, storage_id(url), cfg.tracking.experiment_name,
                                    {tags.DATASET: cfg.data.dataset, tags.EXPERIMENT_FILE: args.experiment},
                                    {f"{kind}.storage": storage_id(url), f"{kind}.arms": len(arms)}, adopt_launcher)
    link_study(study, parent)

    objective = ArmObjective(arms, parent.run_id, name, kind, value or (lambda outcome: outcome.fit.best_value),
                             place, racing=spec.racing != "none", reuse=reuse)
    summary = work(url, storage, study, parent, objective,
                   lambda parent_run_id: summarise(parent_run_id, arm_runs(parent_run_id, spec)))
    if summary is not None:
        print(summary)
    order = list(arms)  # the grid's order
    runs = sorted(arm_runs(parent.run_id, spec), key=lambda r: order.index(r.data.tags[tags.CONFIG_DIGEST]))
    print_links(parent, [r.info.run_id for r in runs], "arms", order_by)
    return parent.run_id, url, study, storage


def arm_runs(parent_run_id: str, spec: Comparison) -> list:
    """Each arm's current attempt under the parent (arms of an earlier grid left out)."""
    return comparison_report.current_attempts(parent_run.children(parent_run_id), set(arm_configs(spec)))
