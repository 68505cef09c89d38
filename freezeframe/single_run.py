"""One tracked run, the same for train, pretrain, a comparison's arm and a search's trial: prepared (config →
data → model → policy) before its MLflow run opens, then trained and reported inside it. An arm or trial
with train.devices > 1 is the same child run trained on N processes (pipelines/studies/arm_ranks.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import optuna

from freezeframe import __version__
from pipelines.config import RunConfig
from pipelines.errors import StoppedByRankZero
from pipelines.processes import stop_when_orphaned
from pipelines.studies import arm_ranks
from pipelines.studies.keys import RUN_ATTR
from pipelines.studies.worker import TrialLost
from pipelines.training import distributed
from pipelines.training.results import FitResult, PreparedTraining, TrainingOutcome
from pipelines.training.trainer import execute, prepare
from tracking import tags
from tracking.models.model_store import resolve_state_dict
from tracking.models.registry import is_registry_uri
from tracking.runs import stale
from tracking.runs.run_logger import MlflowTracker, run_name
from tracking.runs.session import end_unfinished, one_line, open_run
from tracking.studies.parent_run import FAILED, KILLED


@dataclass
class TrackedRun:
    run_id: str
    outcome: TrainingOutcome
    logging_seconds: float  # time the run waited on MLflow (model export excluded), for the benchmark
    logging_breakdown: dict[str, float]  # the same by kind: setup, epochs, final metrics, weights, waiting, ...
    background_breakdown: dict[str, float]  # the background writer's working time by kind: epochs, plots, reports


def prepare_run(cfg: RunConfig) -> PreparedTraining:
    """Validate and build everything (registry weights included) before any MLflow run is opened."""
    state = resolve_state_dict(cfg.model.weights) if is_registry_uri(cfg.model.weights) else None
    return prepare(cfg, state_dict=state)


def run_tracked(prepared: PreparedTraining, entry_point: str, parent_run_id: str | None = None,
                attach: bool = True, listeners: tuple = (), tags: dict[str, str] | None = None,
                on_start: Callable[[str], None] | None = None) -> TrackedRun:
    """Train inside an MLflow run that ends FINISHED, or FAILED/KILLED with the reason. `on_start` gets the
    run id as soon as the run exists (an Optuna trial records it before anything can fail)."""
    cfg = prepared.cfg
    with open_run(run_name(cfg), cfg.tracking.experiment_name, parent_run_id=parent_run_id,
                     attach=attach, tags=tags, system_metrics=cfg.tracking.system_metrics) as run:
        if on_start is not None:
            on_start(run.info.run_id)
        stale.claim(prepared.checkpoint_dir, run.info.run_id, resuming=cfg.train.resume)
        tracker = MlflowTracker(run.info.run_id, __version__)
        tracker.log_setup(prepared, entry_point)
        try:
            with distributed.peers_watched():  # under torchrun: another rank's death ends this run KILLED
                outcome = execute(prepared, listeners=(tracker, *listeners))
            tracker.log_outcome(outcome)
        except BaseException:
            tracker.flush(raise_errors=False)  # what was queued reaches the store before the run ends
            raise
    return TrackedRun(run.info.run_id, outcome, tracker.seconds, dict(tracker.timings), tracker.background_seconds)


def record_failure(cfg: RunConfig, error: BaseException, parent_run_id: str, tags: dict[str, str],
                   on_start: Callable[[str], None]) -> NoReturn:
    """A child whose preparation failed (weights that do not load, say) is still a child run, FAILED with
    the reason (KILLED when interrupted), so a comparison shows every arm it was asked for; raises `error`."""
    with open_run(run_name(cfg), cfg.tracking.experiment_name, parent_run_id=parent_run_id, attach=False,
                     tags=tags, system_metrics=cfg.tracking.system_metrics) as run:
        on_start(run.info.run_id)
        raise error


def train_beside(cfg: RunConfig) -> None:
    """A rank other than 0 of a data-parallel run: the same training, untracked; it ends when rank 0
    stops the run (why, a pruned trial say, is rank 0's to report)."""
    with distributed.peers_watched(), contextlib.suppress(StoppedByRankZero):
        execute(prepare_run(cfg))


def child_axes(cfg: RunConfig) -> dict[str, str]:
    """A child run's axes, as a trained run logs them: summaries and the UI name a failed one the same way."""
    return {tags.BACKBONE: cfg.model.backbone, tags.WEIGHTS: cfg.model.weights, tags.FREEZE: cfg.model.freeze,
            tags.SEED: str(cfg.seed)}


def child_here(cfg: RunConfig, trial: optuna.Trial, parent_run_id: str, entry_point: str, run_tags: dict[str, str],
               listeners: tuple) -> TrackedRun:
    """An arm or trial in this process: prepared, then trained as a child run; the trial records the run
    id as soon as the run exists. A preparation that fails still leaves a FAILED child saying why."""
    def record(run_id: str) -> None:
        trial.set_user_attr(RUN_ATTR, run_id)

    try:
        prepared = prepare_run(cfg)
    except BaseException as exc:  # a failed one fails alone (the worker goes on); Ctrl-C leaves it KILLED
        record_failure(cfg, exc, parent_run_id, {**run_tags, **child_axes(cfg)}, on_start=record)
    return run_tracked(prepared, entry_point, parent_run_id=parent_run_id, attach=False, listeners=listeners,
                       tags=run_tags, on_start=record)


def child_on_ranks(cfg: RunConfig, trial: optuna.Trial, place: arm_ranks.TrialPlace, parent_run_id: str,
                   entry_point: str, run_tags: dict[str, str], listeners: tuple) -> TrackedRun:
    """child_here's run on cfg.train.devices processes (pipelines/studies/arm_ranks.py): rank 0 trains the
    child run and its numbers come back for the trial's value. A pruned arm raises TrialPruned here; a
    process's own error, RuntimeError; a process killed (kill -9, the OOM killer), TrialLost: the worker
    queues the arm again, to go on from rank 0's last checkpoint, as it does a dead worker's."""
    arm = arm_ranks.describe(trial, place, parent_run_id, entry_point, run_tags, listeners)
    earlier = _child_run_id(trial)  # a retried trial carries its first attempt's run id
    print(f"[trial {trial.number}] on {cfg.train.devices} processes (torch.distributed.run)", flush=True)
    with arm_ranks.arm_folder() as folder:
        try:
            launched = arm_ranks.launch(cfg, arm, folder)
        except KeyboardInterrupt as exc:  # this worker stopped: rank 0 ended the run KILLED, unless it died first
            if (run_id := _child_run_id(trial)) != earlier:
                end_unfinished(run_id, KILLED, str(exc) or "interrupted")
            raise
    if launched.run is not None:
        return tracked_from(launched.run)
    if launched.pruned:
        raise optuna.TrialPruned(launched.pruned)
    failure = launched.failure
    reason = launched.error or str(failure or "") or "rank 0 wrote no result"
    error = (TrialLost if failure is not None and failure.killed and not launched.error else RuntimeError)(reason)
    run_id = _child_run_id(trial)
    if run_id == earlier:  # no process got as far as the child run: it still shows, saying why
        record_failure(cfg, error, parent_run_id, {**run_tags, **child_axes(cfg)},
                       on_start=lambda made: trial.set_user_attr(RUN_ATTR, made))
    # rank 0 may have died before ending its run, or been stopped (KILLED) by another process's error
    end_unfinished(run_id, KILLED if isinstance(error, TrialLost) else FAILED, reason)
    raise error


def _child_run_id(trial: optuna.Trial) -> str | None:
    """The run id recorded on the trial, read from the storage (this process's Trial caches its attrs)."""
    (frozen,) = [t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number]
    return frozen.user_attrs.get(RUN_ATTR)


def arm_rank(arm_path: str) -> int:
    """One of the processes of an arm that child_on_ranks launched (`freezeframe train --arm <file>`): rank
    0 opens the worker's trial and trains the child run, the others train beside it; each writes back its
    own error, and rank 0 its run's numbers or why it was pruned."""
    cfg, arm = arm_ranks.read_arm(arm_path)
    rank = distributed.rank()
    stop_when_orphaned()  # a worker killed -9 takes its arm's processes with it
    try:
        if rank != 0:
            train_beside(cfg)
            return 0
        trial = arm_ranks.open_trial(arm)
        done = child_here(cfg, trial, arm.parent_run_id, arm.entry_point, arm.run_tags, arm_ranks.reporters(arm, trial))
        arm_ranks.write_report(arm_path, rank, arm_ranks.RankReport(run=portable_run(done)))
        return 0
    except optuna.TrialPruned as exc:
        arm_ranks.write_report(arm_path, rank, arm_ranks.RankReport(pruned=str(exc)))
        return 0
    except Exception as exc:  # its own error; an interruption (KeyboardInterrupt) follows another's failure
        arm_ranks.write_report(arm_path, rank, arm_ranks.RankReport(error=one_line(exc)))
        raise
    finally:
        distributed.stop()


def portable_run(done: TrackedRun) -> dict:
    """What a worker's objective reads of a child run (its fit's numbers), as JSON: the per-image arrays
    and the model stay in the run's artifacts."""
    fit = done.outcome.fit
    numbers = {name: getattr(fit, name) for name in ("history", "best_epoch", "best_value", "test", "stopped_early",
                                                       "resumed_from_epoch", "train_seconds", "extra")}
    return {"run_id": done.run_id, "fit": numbers, "logging_seconds": done.logging_seconds,
            "logging_breakdown": done.logging_breakdown, "background_breakdown": done.background_breakdown}


def tracked_from(run: dict) -> TrackedRun:
    """portable_run's dict back as the TrackedRun a one-process child returns (without arrays or model)."""
    empty = np.empty(0)
    fit = FitResult(**run["fit"], confusion={}, test_predictions=(empty, empty), test_p_true=empty)
    outcome = TrainingOutcome(prepared=None, fit=fit, report_text="", report_dict={}, predictions_csv="")  # type: ignore[arg-type]
    return TrackedRun(run["run_id"], outcome, run["logging_seconds"], run["logging_breakdown"],
                      run["background_breakdown"])
