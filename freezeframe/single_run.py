"""One tracked run, the same for train, pretrain, a comparison's arm and a search's trial: prepared (config →
data → model → policy) before its MLflow run opens, then trained and reported inside it. An arm or trial
with train.devices > 1 is the same child run trained on N processes (pipelines/studies/arm_ranks.py)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import optuna

from freezeframe import __version__
from pipelines.config import RunConfig
from pipelines.errors import StoppedByRankZero
from pipelines.studies import arm_ranks
from pipelines.studies.keys import RUN_ATTR
from pipelines.studies.worker import TrialLost
from pipelines.training import distributed
from pipelines.training.run import PreparedRun, RunOutcome, execute, prepare
from tracking import tags
from tracking.models.model_store import resolve_state_dict
from tracking.models.registry import is_registry_uri
from tracking.runs import stale
from tracking.runs.run_logger import MlflowTracker, run_name
from tracking.runs.session import kill_if_running, one_line, tracked_run


@dataclass
class TrackedRun:
    run_id: str
    outcome: RunOutcome
    logging_seconds: float  # time the run waited on MLflow (model export excluded), for the benchmark
    logging_breakdown: dict[str, float]  # the same by kind: setup, epochs, final metrics, weights, waiting, ...
    background_breakdown: dict[str, float]  # the background writer's working time by kind: epochs, plots, reports


def prepare_run(cfg: RunConfig) -> PreparedRun:
    """Validate and build everything (registry weights included) before any MLflow run is opened."""
    state = resolve_state_dict(cfg.model.weights) if is_registry_uri(cfg.model.weights) else None
    return prepare(cfg, state_dict=state)


def run_tracked(prepared: PreparedRun, entry_point: str, parent_run_id: str | None = None,
                attach: bool = True, listeners: tuple = (), tags: dict[str, str] | None = None,
                on_start: Callable[[str], None] | None = None) -> TrackedRun:
    """Train inside an MLflow run that ends FINISHED, or FAILED/KILLED with the reason. `on_start` gets the
    run id as soon as the run exists (an Optuna trial records it before anything can fail)."""
    cfg = prepared.cfg
    with tracked_run(run_name(cfg), cfg.tracking.experiment_name, parent_run_id=parent_run_id,
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
    with tracked_run(run_name(cfg), cfg.tracking.experiment_name, parent_run_id=parent_run_id, attach=False,
                     tags=tags, system_metrics=cfg.tracking.system_metrics) as run:
        on_start(run.info.run_id)
        raise error


def train_beside(cfg: RunConfig) -> None:
    """A rank other than 0 of a data-parallel run: the same training, untracked; it ends when rank 0
    stops the run (why, a pruned trial say, is rank 0's to report)."""
    with distributed.peers_watched(), contextlib.suppress(StoppedByRankZero):
        execute(prepare_run(cfg))


def child_here(cfg: RunConfig, trial: optuna.Trial, parent_run_id: str, entry_point: str, run_tags: dict[str, str],
               listeners: tuple) -> TrackedRun:
    """An arm or trial in this process: prepared, then trained as a child run; the trial records the run
    id as soon as the run exists. A preparation that fails still leaves a FAILED child saying why."""
    def record(run_id: str) -> None:
        trial.set_user_attr(RUN_ATTR, run_id)

    try:
        prepared = prepare_run(cfg)
    except BaseException as exc:  # a failed one fails alone (the worker goes on); Ctrl-C leaves it KILLED
        axes = {tags.BACKBONE: cfg.model.backbone, tags.WEIGHTS: cfg.model.weights, tags.FREEZE: cfg.model.freeze,
                tags.SEED: str(cfg.seed)}  # as a trained run has them: summaries and the UI name it the same way
        record_failure(cfg, exc, parent_run_id, {**run_tags, **axes}, on_start=record)
    return run_tracked(prepared, entry_point, parent_run_id=parent_run_id, attach=False, listeners=listeners,
                       tags=run_tags, on_start=record)


def child_on_ranks(cfg: RunConfig, trial: optuna.Trial, storage_url: str, parent_run_id: str, entry_point: str,
                   run_tags: dict[str, str], listeners: tuple) -> TrackedRun:
    """child_here's run on cfg.train.devices processes: rank 0 trains the child run, and its outcome
    comes back here for the trial's value; a pruned arm raises TrialPruned here, a failed one its error, and
    one whose process died TrialLost (the worker queues it again)."""
    arm = arm_ranks.describe(cfg, trial, storage_url, parent_run_id, entry_point, run_tags, listeners)
    print(f"[trial {trial.number}] on {cfg.train.devices} processes (torch.distributed.run)", flush=True)
    with arm_ranks.arm_folder() as folder:
        try:
            result = arm_ranks.launch(arm, folder)
        except KeyboardInterrupt as exc:  # this worker stopped: rank 0 ended the run KILLED, unless it died first
            kill_if_running(_child_run_id(trial), str(exc) or "interrupted")
            raise
    if result.outcome is not None:
        return result.outcome
    if result.pruned:
        raise optuna.TrialPruned(result.pruned)
    failed = result.launcher_failure
    if result.error and not result.interrupted:  # rank 0's own error (a NaN loss, say): its run says FAILED
        raise RuntimeError(result.error)
    # another rank's error (rank 0 was interrupted by it), or a process killed (kill -9, the OOM killer): the
    # latter goes on from its checkpoint, as a dead worker's arm would (the worker queues it again)
    error = (TrialLost if failed is not None and failed.killed else RuntimeError)(
        str(failed or result.error or "rank 0 wrote no result"))
    run_id = _child_run_id(trial)
    if run_id is None:  # no process got as far as the child run: it still shows, saying why
        record_failure(cfg, error, parent_run_id, run_tags, on_start=lambda made: trial.set_user_attr(RUN_ATTR, made))
    kill_if_running(run_id, str(error))  # rank 0 ended its run KILLED, unless it was the one killed
    raise error


def _child_run_id(trial: optuna.Trial) -> str | None:
    """The run id rank 0 recorded on the trial (in the storage: this process's Trial caches its attrs)."""
    (frozen,) = [t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number]
    return frozen.user_attrs.get(RUN_ATTR)


def arm_rank(arm_path: str) -> int:
    """One of the processes of an arm that child_on_ranks launched (`freezeframe train --arm <file>`): rank
    0 opens the worker's trial and trains the child run; it writes back the outcome, or why there is none."""
    arm = arm_ranks.read_arm(arm_path)
    try:
        if not distributed.is_main():
            train_beside(arm.cfg)
            return 0
        trial = arm_ranks.open_trial(arm)
        try:
            done = child_here(arm.cfg, trial, arm.parent_run_id, arm.entry_point, arm.run_tags,
                              arm_ranks.reporters(arm, trial))
        except optuna.TrialPruned as exc:
            arm_ranks.write_result(arm_path, arm_ranks.RanksResult(pruned=str(exc)))
            return 0
        except BaseException as exc:
            arm_ranks.write_result(arm_path, arm_ranks.RanksResult(
                error=str(exc) if isinstance(exc, KeyboardInterrupt) else one_line(exc),
                interrupted=isinstance(exc, KeyboardInterrupt)))
            raise
        arm_ranks.write_result(arm_path, arm_ranks.RanksResult(outcome=_portable(done)))
        return 0
    finally:
        distributed.stop()


def _portable(done: TrackedRun) -> TrackedRun:
    """What the worker's objective reads of a run (its FitResult, probe), light and on the CPU: not the
    prepared model and data, no CUDA tensor that would start CUDA in the worker."""
    fit = dataclasses.replace(done.outcome.fit, confusion={k: v if v is None else v.cpu()
                                                                  for k, v in done.outcome.fit.confusion.items()})
    return dataclasses.replace(done, outcome=dataclasses.replace(done.outcome, prepared=None, fit=fit))
