"""One tracked run, the same for train, pretrain, a comparison's arm and a search's trial: prepared (config →
data → model → policy) before its MLflow run opens, then trained and reported inside it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from freezeframe import __version__
from pipelines.config import RunConfig
from pipelines.training import distributed
from pipelines.training.run import PreparedRun, RunOutcome, execute, prepare
from tracking.models.model_store import resolve_state_dict
from tracking.models.registry import is_registry_uri
from tracking.runs import stale
from tracking.runs.run_logger import MlflowTracker, run_name
from tracking.runs.session import tracked_run


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
