"""Run lifecycle: attach to the run `mlflow run` made, or start one; always end it with a true status.

A run ends FINISHED, FAILED (with the one-line error as the `error` tag) or KILLED on Ctrl-C or
SIGTERM: never left RUNNING by our own code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator

import mlflow
import optuna
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.errors import FreezeframeError, first_line
from tracking import tags as tag_names

# seconds between system/* samples, MLflow's own default: each sample costs ~25 ms of CPU and a write, and
# at 5 s the monitor cost ~1 % of a 2-core run (benchmarks/bench_overhead.py --system-metrics compare)
SYSTEM_METRICS_INTERVAL_S = 10.0

_log = logging.getLogger(__name__)
_UNREAD = object()
_launcher_run_id: object | str | None = _UNREAD


def launcher_run_id() -> str | None:
    """The run `mlflow run` created for this process, if any; read before start_run consumes the variable."""
    global _launcher_run_id
    if _launcher_run_id is _UNREAD:
        _launcher_run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    return _launcher_run_id  # type: ignore[return-value]


@contextlib.contextmanager
def open_run(run_name: str, experiment_name: str, tags: dict[str, str] | None = None,
             parent_run_id: str | None = None, attach: bool = True,
             system_metrics: bool = False) -> Iterator[mlflow.ActiveRun]:
    """Yield an active run; `attach` takes over the launcher's run, `parent_run_id` nests a child;
    `system_metrics` samples CPU/memory/GPU use into it while it is open."""
    run_id = take_launcher_run() if attach else None
    # log_system_metrics=False: our monitor (below) is the only one, whatever
    # MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING says; tracking.system_metrics decides.
    if run_id:
        run = mlflow.start_run(run_id=run_id, run_name=run_name, tags=tags, log_system_metrics=False)
    else:
        if parent_run_id:
            experiment_id = MlflowClient().get_run(parent_run_id).info.experiment_id
        else:
            experiment_id = use_experiment(experiment_name)
        run = mlflow.start_run(run_name=run_name, tags=tags, nested=parent_run_id is not None,
                               parent_run_id=parent_run_id, experiment_id=experiment_id,
                               log_system_metrics=False)
    with _ended_on_exit(run.info.run_id), _system_metrics(run.info.run_id, system_metrics, existing=bool(run_id)):
        yield run


@contextlib.contextmanager
def _system_metrics(run_id: str, enabled: bool, existing: bool) -> Iterator[None]:
    """MLflow's system-metrics monitor (one thread) for this run, stopped and flushed before the run ends.

    Ours rather than `start_run(log_system_metrics=True)`'s: that one is stopped by `mlflow.end_run`
    only, after the run is marked ended, and stays behind when ending fails; this one stops in `finally`
    on every path, so a long search leaves no monitor thread per child behind.
    """
    if not enabled:
        yield
        return
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, when set, overrides the interval (MLflow reads it first);
        # an existing run (the launcher's) goes on from its last system/* step.
        monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, resume_logging=existing)
    except Exception as exc:  # noqa: BLE001 - psutil missing, say: the run trains all the same, unmonitored
        _log.warning("system metrics off for run %s: %s (pip install psutil, or set "
                     "tracking.system_metrics=false)", run_id, first_line(exc))
        yield
        return
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def take_launcher_run() -> str | None:
    """The launcher's run id, once: whoever takes it (a single run, or a study worker's record) ends it."""
    global _launcher_run_id
    run_id = launcher_run_id()
    _launcher_run_id = None
    return run_id


def experiment_name_in_use(configured: str) -> str:
    """The config's experiment name, unless MLFLOW_EXPERIMENT_NAME names one."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or configured


def use_experiment(experiment_name: str) -> str:
    """The config's experiment (unless MLFLOW_EXPERIMENT_NAME names one), created if missing.

    Several workers starting at once may all try to create it: the losers of that race take the
    winner's, instead of failing on the unique name.
    """
    name = experiment_name_in_use(experiment_name)
    for attempt in range(3):
        try:
            return mlflow.set_experiment(name).experiment_id
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS" or attempt == 2:
                raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _ended_on_exit(run_id: str) -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, or another rank of a data-parallel run died (PeerLost)
        end_run(run_id, RunStatus.to_string(RunStatus.KILLED), str(exc) or "interrupted")
        raise
    except optuna.TrialPruned as exc:  # a pruned trial was stopped on purpose: KILLED, and tagged as such
        MlflowClient().set_tag(run_id, tag_names.OPTUNA_STATE, "PRUNED")
        end_run(run_id, RunStatus.to_string(RunStatus.KILLED), str(exc) or "pruned")  # "pruned at epoch N (...)"
        raise
    except BaseException as exc:
        try:
            end_run(run_id, RunStatus.to_string(RunStatus.FAILED), one_line(exc))
        except Exception as unreachable:  # noqa: BLE001 - the store itself failed: report the first error
            raise TrackingLost(f"tracking store became unreachable during run {run_id} ({first_line(unreachable)}); "
                               "its checkpoint is kept: rerun with resume=true once the store is back") from exc
        raise
    else:
        end_run(run_id, RunStatus.to_string(RunStatus.FINISHED))


class TrackingLost(FreezeframeError):
    """The tracking server or database went away in the middle of a run."""


def end_run(run_id: str, status: str, error: str | None = None) -> None:
    client = MlflowClient()
    if error:
        client.set_tag(run_id, tag_names.ERROR, error[:5000])
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run(status)
    else:
        client.set_terminated(run_id, status)


def fail_launcher_run(error: str) -> None:
    """Bad input found before our run started: still close the run `mlflow run` opened for us."""
    run_id = take_launcher_run()
    if run_id:
        end_run(run_id, RunStatus.to_string(RunStatus.FAILED), error)


def kill_launcher_run_left_running(error: str) -> None:
    """After a data-parallel run's processes ended in failure: the run `mlflow run` opened for them, if
    rank 0 (its owner) died before it could end it, ends KILLED rather than RUNNING with no owner."""
    end_unfinished(take_launcher_run(), RunStatus.to_string(RunStatus.KILLED), error, only_running=True)


def end_unfinished(run_id: str | None, status: str, error: str, only_running: bool = False) -> None:
    """A data-parallel run that its processes could not end truthfully: rank 0 was killed first (RUNNING), or
    another process's error stopped it (KILLED as interrupted). Ended `status`, saying why, unless FINISHED."""
    try:
        found = MlflowClient().get_run(run_id).info.status if run_id else None
        if found == RunStatus.to_string(RunStatus.RUNNING) or (
                not only_running and found not in (None, RunStatus.to_string(RunStatus.FINISHED))):
            end_run(run_id, status, error)
    except MlflowException as exc:  # the store is unreachable: the processes' own failure is what to report
        _log.warning("could not end run %s: %s", run_id, first_line(exc))


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc, limit=5000)}"


def git_commit() -> str | None:
    """The code version, for runs started as plain scripts (mlflow run sets mlflow.source.git.commit)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
