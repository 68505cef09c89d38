"""A grid of arms as a study under one parent run, this process one of its workers: what compare and rank
run. Each arm is queued once (by config digest); any number of workers pull arms until none is waiting,
and the last one writes the grid's summary on the parent."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import BaseStorage

from freezeframe.child_run import run_child
from freezeframe.study_run import StudyRun, on_dead_trial, open_study_run, print_links, reuse_run, work
from pipelines.config import MONITORS, RunConfig, with_overrides
from pipelines.errors import ConfigError
from pipelines.studies.arms import Arm, Comparison, arm_configs, queue_arms
from pipelines.studies.child import Reporting
from pipelines.studies.keys import DIGEST_ATTR, RETRY_ATTR
from pipelines.studies.plan import PrunerSpec, StudyPlan
from pipelines.studies.storage import DIRECTIONS, study_lock
from pipelines.studies.worker import reap_dead
from tracking import tags
from tracking.studies import comparison_report, parent_run

if TYPE_CHECKING:
    from pipelines.training.results import FitResult


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
        arm_tags = {tags.COMPARISON: self.grid.name, tags.ARM: arm.name}
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
            print(f"{arms[key][0].name}: FINISHED earlier (run {run_id}), skipped")
        return {}

    run = open_study_run(plan, before_parent=queue)
    summary = work(run, ArmObjective(run, grid, arms),
                   lambda parent_run_id: grid.summarise(parent_run_id, arm_runs(parent_run_id, grid.spec)))
    if summary is not None:
        print(summary)
    order = list(arms)  # the grid's order
    runs = sorted(arm_runs(run.parent.run_id, grid.spec), key=lambda r: order.index(r.data.tags[tags.CONFIG_DIGEST]))
    print_links(run.parent, [r.info.run_id for r in runs], "arms", grid.order_by)
    return run


def arm_runs(parent_run_id: str, spec: Comparison) -> list:
    """Each arm's current attempt under the parent (arms of an earlier grid left out)."""
    return comparison_report.current_attempts(parent_run.children(parent_run_id), set(arm_configs(spec)))
