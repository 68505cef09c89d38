"""Optuna's side of a search: storage, sampler, pruner, the study, and the per-epoch pruning reporter.

Storage URLs: `sqlite:///optuna.db` (the default: its own file, never MLflow's), any SQLAlchemy URL
Optuna's RDBStorage takes (`postgresql://...`), or `journal:<path>` for a journal file that several
processes can share with no database. RDB storages keep a heartbeat, so a trial whose process was
killed is failed (not left RUNNING) when the next worker starts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import optuna

from pipelines.errors import ConfigError, FreezeframeError, first_line
from pipelines.search_space import SearchSpec, grid_space

# A live trial touches the storage this often, and one silent for the grace period belongs to a dead
# process: the next worker fails it. The environment may shorten both (the fault tests do).
HEARTBEAT_S = int(os.environ.get("FREEZEFRAME_HEARTBEAT_S", "10"))
GRACE_S = int(os.environ.get("FREEZEFRAME_GRACE_S", "30"))


class StorageError(FreezeframeError):
    """An Optuna storage that cannot be opened or reached."""


def make_storage(url: str, on_stale: Callable | None = None) -> optuna.storages.BaseStorage:
    """Open the storage, failing in seconds with the URL in the message. `on_stale(study, trial)` is
    called for each trial of a dead process that the heartbeat fails (RDB storages)."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:").removeprefix("//")).expanduser()
        if not path.parent.is_dir():
            raise StorageError(f"journal storage {url}: folder {path.parent} does not exist")
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        return optuna.storages.JournalStorage(backend)
    scheme = urlparse(url).scheme
    if not scheme or "://" not in url:
        raise StorageError(f"storage '{url}' is not a URL: use sqlite:///optuna.db, postgresql://..., "
                           "or journal:<file>")
    if scheme == "sqlite":
        folder = Path(url.removeprefix("sqlite:///")).expanduser().resolve().parent
        if not folder.is_dir():
            raise StorageError(f"storage {url}: folder {folder} does not exist")
        engine_kwargs: dict = {"connect_args": {"timeout": 30}}  # workers on one file wait for its lock
    else:
        engine_kwargs = {"connect_args": {"connect_timeout": 3}, "pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
            failed_trial_callback=on_stale)
    except Exception as exc:  # noqa: BLE001 - drivers raise their own error types
        raise StorageError(f"storage {url} is unreachable: {first_line(exc)}") from None


def make_sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler(grid_space(spec), seed=spec.seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed)


def make_pruner(spec: SearchSpec, epochs: int) -> optuna.pruners.BasePruner:
    if spec.pruner == "median":
        # once two trials have finished, a trial below their median at the same epoch stops there
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(spec: SearchSpec, storage: optuna.storages.BaseStorage, epochs: int) -> optuna.Study:
    """Create the study, or continue it; one whose direction differs is refused before any trial."""
    try:
        existing = optuna.load_study(study_name=spec.study_name, storage=storage)
    except KeyError:
        existing = None
    if existing is not None and existing.direction.name.lower() != spec.direction:
        raise ConfigError(f"study '{spec.study_name}' exists and {existing.direction.name.lower()}s; this search "
                          f"would {spec.direction} {spec.metric}: pick another study_name")
    return optuna.create_study(study_name=spec.study_name, storage=storage, direction=spec.direction,
                               sampler=make_sampler(spec), pruner=make_pruner(spec, epochs), load_if_exists=True)


class PruningReporter:
    """An engine listener: report the metric each epoch, stop the trial when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial, self.metric = trial, metric

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.trial.report(metrics[self.metric], step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} ({self.metric} {metrics[self.metric]:.4f})")
