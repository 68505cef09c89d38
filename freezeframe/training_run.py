"""One training inside an MLflow run, the same for train, pretrain, a comparison's arm and a search's trial:
prepared (config → data → model → policy) before its run opens, then trained and reported inside it. Under
torchrun (train.devices > 1) process 0 owns the run and the other processes train beside it, untracked
(`train_process`, the one place that tells them apart)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

from freezeframe import __version__
from pipelines.config import RunConfig
from pipelines.errors import StoppedByProcessZero
from pipelines.training import distributed
from pipelines.training.results import PreparedTraining, TrainingOutcome
from pipelines.training.trainer import execute, prepare
from tracking import tags
from tracking.models.model_store import resolve_state_dict
from tracking.models.registry import is_registry_uri
from tracking.runs import stale
from tracking.runs.run_logger import MlflowTracker, run_name
from tracking.runs.session import open_run

T = TypeVar("T")


@dataclass
class TrainedRun:
    """An MLflow run that trained: its id, the outcome, and what logging cost (for the benchmark)."""
    run_id: str
    outcome: TrainingOutcome
    logging_seconds: float  # time the run waited on MLflow (model export excluded)
    logging_breakdown: dict[str, float]  # the same by kind: setup, epochs, final metrics, weights, waiting, ...
    background_breakdown: dict[str, float]  # the background writer's working time by kind: epochs, plots, reports


@dataclass(frozen=True)
class Nesting:
    """Where a child run opens: under its parent, with its tags; `on_start` hears its run id as soon as the
    run exists (an Optuna trial records it before anything can fail)."""
    parent_run_id: str
    tags: dict[str, str]
    on_start: Callable[[str], None]


def prepare_training(cfg: RunConfig) -> PreparedTraining:
    """Validate and build everything (registry weights included) before any MLflow run is opened."""
    state = resolve_state_dict(cfg.model.weights) if is_registry_uri(cfg.model.weights) else None
    return prepare(cfg, state_dict=state)


def train_in_run(prepared: PreparedTraining, entry_point: str, listeners: tuple = (), nesting: Nesting | None = None,
                 attach: bool = True) -> TrainedRun:
    """Train inside an MLflow run that ends FINISHED, or FAILED/KILLED with the reason: a child run under
    `nesting`'s parent, else the `mlflow run` launcher's run (with `attach`) or a new one."""
    cfg = prepared.cfg
    with open_run(run_name(cfg), cfg.tracking.experiment_name, parent_run_id=nesting and nesting.parent_run_id,
                  attach=attach and nesting is None, tags=nesting and nesting.tags,
                  system_metrics=cfg.tracking.system_metrics) as run:
        if nesting is not None:
            nesting.on_start(run.info.run_id)
        stale.claim(prepared.checkpoint_dir, run.info.run_id, resuming=cfg.train.resume)
        tracker = MlflowTracker(run.info.run_id, __version__)
        tracker.log_setup(prepared, entry_point)
        try:
            with distributed.peers_watched():  # under torchrun: another process's death ends this run KILLED
                outcome = execute(prepared, listeners=(tracker, *listeners))
            tracker.log_outcome(outcome)
        except BaseException:
            tracker.flush(raise_errors=False)  # what was queued reaches the store before the run ends
            raise
    return TrainedRun(run.info.run_id, outcome, tracker.seconds, dict(tracker.timings), tracker.background_seconds)


def record_failure(cfg: RunConfig, error: BaseException, nesting: Nesting) -> NoReturn:
    """A child whose preparation failed (weights that do not load, say) is still a child run, FAILED with
    the reason (KILLED when interrupted), so a comparison shows every arm it was asked for; raises `error`.
    It carries the arm's axes as a trained run logs them: summaries and the UI name it the same way."""
    axes = {tags.BACKBONE: cfg.model.backbone, tags.WEIGHTS: cfg.model.weights, tags.FREEZE: cfg.model.freeze,
            tags.SEED: str(cfg.seed)}
    with open_run(run_name(cfg), cfg.tracking.experiment_name, parent_run_id=nesting.parent_run_id, attach=False,
                  tags={**nesting.tags, **axes}, system_metrics=cfg.tracking.system_metrics) as run:
        nesting.on_start(run.info.run_id)
        raise error


def train_process(cfg: RunConfig, in_run: Callable[[], T]) -> T | None:
    """This process's part of a training: `in_run()` (the tracked training) alone or as process 0; under
    torchrun, any other process trains the same, untracked, until process 0 stops the run (why, a pruned
    trial say, is process 0's to report), and returns None. The caller leaves the process group
    (distributed.stop) once it has said what it must."""
    if distributed.is_main():
        return in_run()
    with distributed.peers_watched(), contextlib.suppress(StoppedByProcessZero):
        execute(prepare_training(cfg))
    return None
