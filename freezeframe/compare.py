"""`compare`: a grid of backbones x freeze policies x seeds as a study whose trials are its arms.

Each arm is queued once; any number of workers, sharing the storage and a tracking server, pull arms
until none is waiting. A rerun starts only arms not complete with the same config digest.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import optuna

from freezeframe.study_run import experiment_stem, link_study, on_dead_trial, open_storage, print_links, run_child, work
from pipelines.config import MONITORS, RunConfig, with_overrides
from pipelines.errors import ConfigError
from pipelines.studies.arms import Arm, Comparison, arm_configs, parse_comparison, queue_arms
from pipelines.studies.keys import DIGEST_ATTR, RETRY_ATTR
from pipelines.studies.storage import DIRECTIONS, open_study, storage_id, study_lock
from pipelines.studies.worker import EpochReporter, reap_dead
from pipelines.training.run import RunOutcome
from tracking import tags
from tracking.store import ensure_reachable
from tracking.studies import comparison_report, parent_run


class ArmObjective:
    """A comparison's trial: train the arm it names; its value is `value(outcome)`, by default the
    monitored metric's best epoch."""

    def __init__(self, arms: dict[str, tuple[Arm, RunConfig]], parent_run_id: str, name: str, kind: str,
                 value: Callable[[RunOutcome], float]):
        self.arms, self.parent_run_id, self.name, self.kind, self.value = arms, parent_run_id, name, kind, value

    def __call__(self, trial: optuna.Trial) -> float:
        key = trial.user_attrs.get(DIGEST_ATTR)
        if key not in self.arms:
            raise ConfigError(f"trial {trial.number} holds an arm of another config ({key})")
        arm, cfg = self.arms[key]
        if trial.user_attrs.get(RETRY_ATTR) is not None:  # a dead worker's arm: go on from its last epoch
            cfg = with_overrides(cfg, {"train.resume": True})
        print(f"[trial {trial.number}] {arm.name}", flush=True)
        listeners = (EpochReporter(trial, cfg.train.monitor, prune=False),)
        done = run_child(cfg, trial, self.parent_run_id, self.kind, {tags.COMPARISON: self.name, tags.ARM: arm.name},
                         listeners)
        return self.value(done.outcome)


def compare(args: argparse.Namespace, cfg: RunConfig, sections: dict) -> int:
    spec = parse_comparison(sections.get("compare"), cfg, source=args.experiment)
    name = args.study_name or spec.name

    def summarise(parent_run_id: str, runs: list) -> str:
        rows, champion = comparison_report.log_summary(parent_run_id, name, runs, experiment_stem(args.experiment))
        return comparison_report.markdown(rows, []) + (f"\nbest arm registered as {champion}" if champion else "")

    run_arms(args, cfg, spec, name, summarise)
    return 0


def run_arms(args: argparse.Namespace, cfg: RunConfig, spec: Comparison, name: str,
             summarise: Callable[[str, list], str], kind: str = "compare", order_by: str = "test/acc",
             value: Callable[[RunOutcome], float] | None = None) -> None:
    """A grid of arms as a study under one parent run, this process one of its workers; the last worker
    writes `summarise(parent run id, arm runs)` on the parent and prints it. Compare and rank run this."""
    arms = arm_configs(spec)  # every arm validated by parse_comparison
    ensure_reachable()
    url, storage = open_storage(args.storage)
    # a trial's value: the monitored metric's best epoch, or the `value` asked for (a score: higher is better)
    direction, metric = ((DIRECTIONS[MONITORS[cfg.train.monitor]], cfg.train.monitor) if value is None
                         else ("maximize", kind))
    study = open_study(name, url, storage, kind, (direction,), (metric,))
    with study_lock(url, name):
        reap_dead(study, storage, on_dead_trial)  # a dead worker's arm is queued again, not refused
        done = queue_arms(study, storage, arms, recorded=parent_run.finished_here)
    for key, run_id in done.items():
        print(f"{arms[key][0].name}: FINISHED earlier (run {run_id}), skipped")
    parent = parent_run.open_parent(kind, name, storage_id(url), cfg.tracking.experiment_name,
                                    {tags.DATASET: cfg.data.dataset, tags.EXPERIMENT_FILE: args.experiment},
                                    {f"{kind}.storage": storage_id(url), f"{kind}.arms": len(arms)})
    link_study(study, parent)

    def arm_runs(parent_run_id: str) -> list:
        """Each arm's current attempt under the parent (arms of an earlier grid left out)."""
        return comparison_report.current_attempts(parent_run.children(parent_run_id), set(arms))

    objective = ArmObjective(arms, parent.run_id, name, kind, value or (lambda outcome: outcome.fit.best_value))
    summary = work(url, storage, study, parent, objective, lambda parent_run_id: summarise(parent_run_id,
                                                                                           arm_runs(parent_run_id)))
    if summary is not None:
        print(summary)
    order = list(arms)  # the grid's order
    runs = sorted(arm_runs(parent.run_id), key=lambda r: order.index(r.data.tags[tags.CONFIG_DIGEST]))
    print_links(parent, [r.info.run_id for r in runs], "arms", order_by)
