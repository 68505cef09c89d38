"""Compare, rank and search run the same way: a study in an Optuna storage, its parent run in MLflow, and
this process as one of any number of workers (pipelines.studies.worker's loop, tracking.studies.parent_run's
runs). `open_study_run` opens both from one StudyPlan; `work` runs trials until the study has none left for
this worker; each trial trains its ChildRun (`StudyRun.child`) through freezeframe.child_run. A grid of arms
(compare, rank) is `run_arms`: each arm queued once (by config digest), any number of workers pulling arms
until none is waiting, the last one writing the grid's summary on the parent."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from freezeframe.child_run import run_child
from pipelines.cluster.workers import WORKER_ENV
from pipelines.config import MONITORS, RunConfig, with_overrides
from pipelines.errors import ConfigError, without_password
from pipelines.studies.arms import Arm, Comparison, arm_configs, queue_arms
from pipelines.studies.child import ChildRun, Reporting
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
from pipelines.studies.plan import PrunerSpec, StudyPlan
from pipelines.studies.storage import DEFAULT_STORAGE, DIRECTIONS, make_storage, open_study, storage_id, study_lock
from pipelines.studies.worker import StudyWorker, TrialBudget, reap_dead, requeue
from pipelines.values import lr_text
from tracking import links, tags
from tracking.runs import session
from tracking.store import ensure_reachable
from tracking.studies import comparison_report, parent_run
from tracking.studies.parent_run import FAILED, FINISHED, KILLED, ParentRun

if TYPE_CHECKING:  # the training stack loads when an arm trains (freezeframe.child_run), not before
    from freezeframe.launcher import Launcher
    from pipelines.training.results import FitResult

T = TypeVar("T")


@dataclass(frozen=True)
class StudyRun:
    """A study opened in its storage, with its parent run in MLflow: what this worker works on."""
    plan: StudyPlan
    url: str  # the storage's URL (it may hold a password: never print it; storage_id(url) is for show)
    storage: BaseStorage
    study: optuna.Study
    parent: ParentRun

    def child(self, trial: optuna.Trial, cfg: RunConfig, reporting: Reporting,
              run_tags: dict[str, str] | None = None) -> ChildRun:
        """The trial's ChildRun: `cfg` trained as a child of the parent, reporting to the trial; tagged with
        the worker that ran it where an engine started this process (cluster.worker: ray:<node>, ...)."""
        placed = {tags.WORKER: os.environ[WORKER_ENV]} if os.environ.get(WORKER_ENV) else {}
        return ChildRun(cfg, self.plan.kind, self.parent.run_id, {**(run_tags or {}), **placed}, self.url,
                        self.study.study_name, trial.number, self.plan.pruner, reporting)


def open_study_run(plan: StudyPlan,
                   before_parent: Callable[[optuna.Study, BaseStorage, str], dict[str, Any]] | None = None) -> StudyRun:
    """The tracking store reached, the storage and the study opened (its sampler and pruner from the plan),
    the study checked to be the one its parent holds; then `before_parent(study, storage, url)` (queue a
    grid's arms, cut a search's space: anything that may still refuse the input), whose dict joins the
    parent's params (with `<kind>.storage`, the storage without credentials); then the parent found or
    elected, and linked both ways with the study."""
    ensure_reachable()
    url = plan.storage_url or DEFAULT_STORAGE
    storage = make_storage(url, on_dead_trial=on_dead_trial)
    study, shown_id = open_study(plan, url, storage), storage_id(url)
    parent_run.check_held(plan, shown_id, lambda: study.user_attrs.get(PARENT_RUN_ID_ATTR), without_password(url))
    params = {f"{plan.kind}.storage": shown_id, **plan.parent_params,
              **(before_parent(study, storage, url) if before_parent else {})}
    parent = parent_run.open_parent(plan, shown_id, params)
    study.set_user_attr(EXPERIMENT_ID_ATTR, parent.experiment_id)
    study.set_user_attr(PARENT_RUN_ID_ATTR, parent.run_id)
    study.set_user_attr(EXPERIMENT_URL_ATTR, links.runs_page(parent.experiment_id))
    study.set_user_attr(PARENT_RUN_URL_ATTR, links.run_page(parent.experiment_id, parent.run_id))
    return StudyRun(plan, url, storage, study, parent)


def experiment_stem(path: str) -> str:
    """The experiment file's stem names the registered champion: freezeframe-<stem>."""
    return path.rsplit("/", 1)[-1].removesuffix(".yaml")


def on_dead_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """A trial whose worker died: its child run KILLED, its params queued again for another worker."""
    parent_run.close_dead_child(trial)
    requeue(study, trial)


def print_links(parent: ParentRun, run_ids: list[str], what: str, order_by: str, ascending: bool = False) -> None:
    """The last lines of a compare or search: where to look in the MLflow UI."""
    found = links.study_links(parent.experiment_id, parent.run_id, run_ids, what, order_by, ascending)
    print(links.format_links(found), flush=True)


def work(run: StudyRun, objective: Callable[[optuna.Trial], float | list[float]], report: Callable[[str], T],
         budget: TrialBudget = TrialBudget(), launch: Launcher | None = None) -> T | None:
    """Run trials as this worker, then end what is this worker's to end. The last worker to leave
    writes the parent's report (returned; None from the others) and ends the parent. With a `launch`er
    (--cluster, --workers), the engine's workers run them instead (None)."""
    if launch is not None:
        launch.launch(run, on_dead_trial)
        return None
    worker = StudyWorker(run.study, run.storage, objective, on_told=_told, on_dead=on_dead_trial, budget=budget,
                         url=run.url)
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
        with study_lock(run.url, run.study.study_name):  # two workers leaving together: one report, one champion
            counts = worker.counts()
            try:  # a worker that left just before us may have reported everything already
                if status == FINISHED and not counts["RUNNING"] and not counts["WAITING"] \
                        and not parent_run.finished_here(run.parent.run_id):
                    result = report(run.parent.run_id)
            finally:
                final = parent_run.close(run.parent, status, error, counts["RUNNING"], counts["WAITING"])
    if final == "RUNNING":
        print(f"{counts['RUNNING']} trial(s) still running in other workers: the last to finish ends the "
              f"parent run {run.parent.run_id} and writes its summary")
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


@dataclass(frozen=True)
class Grid:
    """A grid of arms to run as a study: what compare and rank differ in."""
    spec: Comparison
    name: str  # the study's
    summarise: Callable[[str, list], str]  # (parent run id, arm runs) → the report the last worker logs and prints
    kind: str = "compare"  # compare | rank: the study's kind, its parent's and its arms' entry point
    order_by: str = "test/acc"  # the arm charts' order, best first
    # an arm's value in the study (higher is better; a ranking's score); None: the monitored metric's best epoch
    value: Callable[[FitResult], float] | None = None
    adopt_launcher: bool = True  # the `mlflow run` launcher's run becomes this worker's record
    reuse: dict[str, str] = field(default_factory=dict)  # config digest → a FINISHED run of that config: copied


class ArmObjective:
    """A comparison's trial: train the arm it names (or copy the run `grid.reuse` names for it)."""

    def __init__(self, run: StudyRun, grid: Grid, arms: dict[str, tuple[Arm, RunConfig]]):
        self.run, self.grid, self.arms = run, grid, arms

    def __call__(self, trial: optuna.Trial) -> float:
        key = trial.user_attrs.get(DIGEST_ATTR)
        if key not in self.arms:
            raise ConfigError(f"trial {trial.number} holds an arm of another config ({key})")
        arm, cfg = self.arms[key]
        arm_tags = {tags.COMPARISON: self.grid.name, tags.ARM: arm.name,
                    **({} if arm.lr is None else {tags.LR: lr_text(arm.lr)})}  # compare.lr: which variant
        parent_run_id = self.run.parent.run_id
        if key in self.grid.reuse:  # this very arm (same config digest) already ran, as a screening's ranking arm
            parent_run.reopen(parent_run_id)
            run_id = reuse_run(trial, parent_run_id, self.grid.reuse[key], arm.name,
                               {tags.CONFIG_DIGEST: key, **arm_tags})
            print(f"[trial {trial.number}] {arm.name}: the ranking's run {self.grid.reuse[key]}, reused (run {run_id})",
                  flush=True)
            return parent_run.metric(run_id, f"best/{cfg.train.monitor}")
        if trial.user_attrs.get(RETRY_ATTR) is not None:  # a dead worker's arm: go on from its last epoch
            cfg = with_overrides(cfg, {"train.resume": True})
        print(f"[trial {trial.number}] {arm.name}", flush=True)
        # racing (compare.racing): the study's pruner may stop the arm at a rung, never at its last epoch
        reporting = Reporting(cfg.train.monitor, prune=self.grid.spec.racing != "none", last_epoch=cfg.train.epochs)
        fit = run_child(self.run.child(trial, cfg, reporting, arm_tags), trial)
        return self.grid.value(fit) if self.grid.value is not None else fit.best_value


def run_arms(args: argparse.Namespace, cfg: RunConfig, grid: Grid) -> StudyRun:
    """The grid as a study under one parent run, this process one of its workers; the last worker writes
    `grid.summarise(parent run id, arm runs)` on the parent and prints it. A rerun starts only the arms not
    FINISHED with the same config digest. Returns the study run (its parent, storage and study)."""
    arms = arm_configs(grid.spec)  # every arm validated by parse_comparison
    # a trial's value: the monitored metric's best epoch, or the `value` asked for (a score: higher is better)
    direction, metric = ((DIRECTIONS[MONITORS[cfg.train.monitor]], cfg.train.monitor) if grid.value is None
                         else ("maximize", grid.kind))
    plan = StudyPlan(grid.kind, grid.name, args.storage, cfg.tracking.experiment_name, (direction,), (metric,),
                     PrunerSpec("racing", grid.spec.racing),
                     parent_tags={tags.DATASET: cfg.data.dataset, tags.EXPERIMENT_FILE: args.experiment},
                     parent_params={f"{grid.kind}.arms": len(arms)}, adopt_launcher=grid.adopt_launcher)

    def queue(study: optuna.Study, storage: BaseStorage, url: str) -> dict[str, Any]:
        with study_lock(url, grid.name):
            reap_dead(study, storage, on_dead_trial)  # a dead worker's arm is queued again, not refused
            done = queue_arms(study, storage, arms, recorded=parent_run.finished_here)
        for key, run_id in done.items():
            arm = arms[key][0]
            print(f"{arm.name}: FINISHED earlier (run {run_id}), skipped")
            if arm.lr is not None:  # it may have run before compare.lr listed its lr (the same config): say which
                parent_run.log_values(run_id, {}, {tags.LR: lr_text(arm.lr), tags.ARM: arm.name})
        return {}

    run = open_study_run(plan, before_parent=queue)
    summary = work(run, ArmObjective(run, grid, arms),
                   lambda parent_run_id: grid.summarise(parent_run_id, arm_runs(parent_run_id, grid.spec)),
                   launch=getattr(args, "launcher", None))
    if summary is not None:
        print(summary)
    order = list(arms)  # the grid's order
    runs = sorted(arm_runs(run.parent.run_id, grid.spec), key=lambda r: order.index(r.data.tags[tags.CONFIG_DIGEST]))
    print_links(run.parent, [r.info.run_id for r in runs], "arms", grid.order_by)
    return run


def arm_runs(parent_run_id: str, spec: Comparison) -> list:
    """Each arm's current attempt under the parent (arms of an earlier grid left out)."""
    return comparison_report.current_attempts(parent_run.children(parent_run_id), set(arm_configs(spec)))
