"""Where comparisons and searches live: an Optuna storage, a study in it, and a lock for its set-up.

Both are studies: a comparison's trials are its arms, a search's trials come from a sampler. Storage
URLs: `sqlite:///optuna.db` (the default: its own file, never MLflow's), any SQLAlchemy URL Optuna's
RDBStorage takes (`postgresql+psycopg2://...`), or `journal:<path>` for a journal file that several
processes can share with no database. RDB storages keep a heartbeat, so a trial whose process was
killed on another machine is failed when the next worker looks.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import optuna

from pipelines.errors import ConfigError, FreezeframeError, first_line, without_password
from pipelines.studies.keys import KIND_ATTR
from pipelines.studies.plan import StudyPlan

# A live trial touches the storage this often, and one silent for the grace period belongs to a dead
# process: the next worker fails it. The environment may shorten both (the fault tests do).
HEARTBEAT_S = int(os.environ.get("FREEZEFRAME_HEARTBEAT_S", "10"))
GRACE_S = int(os.environ.get("FREEZEFRAME_GRACE_S", "30"))
DEFAULT_STORAGE = "sqlite:///optuna.db"
DIRECTIONS = {"max": "maximize", "min": "minimize"}
SCHEMA_LOCK = "freezeframe-schema"  # the lock name under which a storage's tables are created


class StorageError(FreezeframeError):
    """An Optuna storage that cannot be opened or reached."""


def make_storage(url: str, on_dead_trial: Callable | None = None) -> optuna.storages.BaseStorage:
    """Open the storage, failing in seconds with the URL in the message. `on_dead_trial(study, trial)`
    is called for each trial of a dead process that the heartbeat fails (RDB storages)."""
    if url.startswith("journal:"):
        path = _journal_path(url)
        if not path.parent.is_dir():
            raise StorageError(f"journal storage {url}: folder {path.parent} does not exist")
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    scheme = urlparse(url).scheme
    if not scheme or "://" not in url:
        raise StorageError(f"storage '{url}' is not a URL: use {DEFAULT_STORAGE}, postgresql+psycopg2://..., "
                           "or journal:<file>")
    if scheme == "sqlite":
        folder = _sqlite_path(url).resolve().parent
        if not folder.is_dir():
            raise StorageError(f"storage {url}: folder {folder} does not exist")
        engine_kwargs: dict = {"connect_args": {"timeout": 30}}  # workers on one file wait for its lock
    else:
        engine_kwargs = {"connect_args": {"connect_timeout": 3}, "pool_pre_ping": True}
    try:
        # one worker at a time: workers starting together on an empty database race in Optuna's schema
        # creation (PostgreSQL: UniqueViolation on pg_type), as MLflow's own store does
        with study_lock(url, SCHEMA_LOCK), experimental_api():  # the heartbeat fails a dead worker's trials
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                heartbeat_stale_trial_callback=on_dead_trial)
    except Exception as exc:  # noqa: BLE001 - drivers raise their own error types
        raise StorageError(f"storage {without_password(url)} is unreachable: {first_line(exc)}") from None


def storage_id(url: str) -> str:
    """Which storage a study lives in, without credentials (a parent must not match another storage's study)."""
    parsed = urlparse(url)
    return f"{parsed.scheme}:{parsed.hostname or ''}{parsed.path}" if parsed.scheme else url


def study_id(study: optuna.Study, storage: optuna.storages.BaseStorage) -> int:
    """The storage's id of a study (Study keeps it private): for the storage calls that take one."""
    return storage.get_study_id_from_name(study.study_name)


def _journal_path(url: str) -> Path:
    return Path(url.removeprefix("journal:").removeprefix("//")).expanduser()


def _sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///")).expanduser()


def open_study(plan: StudyPlan, url: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create the study, or continue it, with the plan's sampler and pruner. One of another kind or
    direction(s) is refused before any trial.

    Under the study's set-up lock: between a worker's create_study and its kind attribute, another
    worker starting at the same moment would find an untagged study and take it for a search."""
    name, kind, directions, metrics = plan.name, plan.kind, plan.directions, plan.metrics
    with study_lock(url, name):
        try:
            existing = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            existing = None
        if existing is not None:
            found = existing.user_attrs.get(KIND_ATTR, "search")  # studies from before kinds were all searches
            if found != kind:
                raise ConfigError(f"study '{name}' in this storage is a {found}, not a {kind}: choose another "
                                  "study_name")
            have = tuple(d.name.lower() for d in existing.directions)
            if have != tuple(directions):
                raise ConfigError(f"study '{name}' exists and {' and '.join(d + 's' for d in have)}; this {kind} "
                                  f"would {' and '.join(directions)} {' and '.join(metrics)}: pick another study_name")
        study = optuna.create_study(study_name=name, storage=storage, directions=list(directions),
                                    sampler=plan.sampler, pruner=plan.pruner.build(), load_if_exists=True)
        if existing is None:
            study.set_user_attr(KIND_ATTR, kind)
            with experimental_api():
                study.set_metric_names(list(metrics))  # optuna-dashboard shows "val/acc", not "Objective 0"
    return study


@contextlib.contextmanager
def experimental_api() -> Iterator[None]:
    """Optuna's APIs that still raise its ExperimentalWarning (heartbeats, stale-trial retries, metric
    names), chosen on purpose and stable in practice since Optuna 3.2: the notice would be noise in every
    worker's output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


@contextlib.contextmanager
def study_lock(url: str, study_name: str) -> Iterator[None]:
    """Serialise a study's set-up (reaping dead trials, queueing arms) across workers: Optuna has no
    compare-and-set, and two workers starting together would otherwise queue an arm twice.

    Journal and sqlite files: a lock file beside them (Optuna's own, safe on NFS); PostgreSQL: an
    advisory lock. Other databases get no lock.
    """
    key = f"freezeframe:{study_name}"
    if url.startswith(("journal:", "sqlite:///")):
        base = _journal_path(url) if url.startswith("journal:") else _sqlite_path(url)
        if str(base) in ("", ":memory:"):
            yield
            return
        safe = "".join(c if c.isalnum() else "_" for c in study_name)
        lock = optuna.storages.journal.JournalFileOpenLock(f"{base}.{safe}.setup", grace_period=120)
        lock.acquire()
        try:
            yield
        finally:
            lock.release()
    elif urlparse(url).scheme.startswith("postgresql"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                          connect_args={"connect_timeout": 3})  # unreachable: fail in seconds
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(hashtext(:k))"), {"k": key})
                try:
                    yield
                finally:
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": key})
        finally:
            engine.dispose()
    else:
        yield
