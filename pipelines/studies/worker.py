"""One worker's loop over a study, the same for a comparison's arms and a search's trials.

Queued trials (a comparison's arms, a dead or interrupted worker's trial queued again) are claimed
first, one at a time, through the state change WAITING → RUNNING that every Optuna storage makes
atomic; a search then asks its sampler for new trials. Each running trial names its owner (host,
pid) and, on RDB storages, beats a heartbeat: a trial whose owner died is failed and queued again
(Optuna's RetryHeartbeatStaleTrialCallback) by the next worker that looks, on this machine or another.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.samplers import GridSampler
from optuna.trial import FrozenTrial, TrialState

from pipelines.errors import first_line
from pipelines.processes import died_here, this_process
from pipelines.studies.keys import OPTUNA_FAILED_TRIAL, OWNER_ATTR, REASON_ATTR, RETRY_ATTR
from pipelines.studies.storage import experimental_api, study_id, study_lock

MAX_RETRIES = 3  # an arm that kills its worker every time (the OOM killer, say) is not retried forever
# what max_trials counts: a failed trial is either queued again (WAITING) or did not use its place
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


class TrialLost(Exception):
    """A process of the trial's own died under a live worker (an arm on N processes, one of them killed):
    the trial fails and is queued again, as a dead worker's is, to go on from its last checkpoint."""


def trial_id(study: optuna.Study, storage: optuna.storages.BaseStorage, number: int) -> int:
    """The storage's id of a trial, from its number (Study offers no public handle on it)."""
    return storage.get_trial_id_from_study_id_trial_number(study_id(study, storage), number)


def fail_trial(study: optuna.Study, storage: optuna.storages.BaseStorage, number: int, reason: str) -> bool:
    """Fail a trial that is not this process's own (a dead worker's, a superseded arm), saying why;
    False when another worker got there first."""
    found = trial_id(study, storage, number)
    try:
        storage.set_trial_user_attr(found, REASON_ATTR, reason)
        storage.set_trial_state_values(found, state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False
    return True


def _heartbeat_interval(storage: optuna.storages.BaseStorage) -> int | None:
    """Seconds between heartbeats on RDB storages; None where the storage keeps none (journal files)."""
    return getattr(storage, "get_heartbeat_interval", lambda: None)()


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a failed trial's params and attributes again, with Optuna's own retry callback."""
    with experimental_api():
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, trial)


class WorkerGridSampler(GridSampler):
    """Optuna's GridSampler for StudyWorker's loop: the same grid, without its `Study.stop()` once every
    point is taken. Study.stop() works only inside Study.optimize (it raises elsewhere), and this loop
    replaces Study.optimize; the worker asks GridSampler.is_exhausted() after each trial instead.
    tests/test_search.py fails if Optuna's own after_trial stops doing just that."""

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values) -> None:
        pass


@dataclass
class StudyWorker:
    """Run trials until the queue is empty (and, with `propose`, `n_trials` new ones are done).

    `objective(trial)` returns the trial's value or raises (optuna.TrialPruned included); `on_told`
    sees each trial as it ends; `on_dead(study, trial)` sees each trial of a dead worker.
    """

    study: optuna.Study
    storage: optuna.storages.BaseStorage
    objective: Callable[[optuna.Trial], float]
    on_told: Callable[[FrozenTrial], None]
    on_dead: Callable[[optuna.Study, FrozenTrial], None]
    propose: bool = False
    n_trials: int | None = None
    timeout: float = 0.0
    max_trials: int = 0  # the study's total over every worker and rerun (0: none); needs `url` for its lock
    url: str = ""
    trials_run: int = 0

    def run(self) -> int:
        start = time.monotonic()
        while self.n_trials is None or self.trials_run < self.n_trials:
            if self.timeout and time.monotonic() - start > self.timeout:
                break
            self.reap_dead()
            trial = self.claim_waiting() or (self._ask() if self.propose else None)
            if trial is None:
                break
            if self._run_one(trial):  # queued again (TrialLost): its retry is claimed next, not counted twice
                continue
            self.trials_run += 1
            if self._grid_done():  # where Study.optimize would see the grid sampler's Study.stop()
                break
        return self.trials_run

    def _grid_done(self) -> bool:
        sampler = self.study.sampler
        return isinstance(sampler, GridSampler) and sampler.is_exhausted(self.study)

    def _ask(self) -> optuna.Trial | None:
        """A new trial from the sampler, unless the study has its `max_trials` already: counted and
        asked under the study's lock, so two workers cannot both take the last place (Optuna's
        MaxTrialsCallback counts after a trial, letting each worker's running trial overshoot)."""
        with study_lock(self.url, self.study.study_name) if self.max_trials else contextlib.nullcontext():
            if self.max_trials and len(self.study.get_trials(deepcopy=False, states=COUNTED)) >= self.max_trials:
                print(f"study {self.study.study_name} has its max_trials {self.max_trials}: no new trial", flush=True)
                return None
            with warnings.catch_warnings():  # Optuna's advice to heartbeat through Study.optimize: _run_one beats
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with")
                return self.study.ask()

    def claim_waiting(self) -> optuna.Trial | None:
        for waiting in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            waiting_id = trial_id(self.study, self.storage, waiting.number)
            with contextlib.suppress(UpdateFinishedTrialError):
                if self.storage.set_trial_state_values(waiting_id, state=TrialState.RUNNING):
                    trial = optuna.Trial(self.study, waiting_id)
                    if OPTUNA_FAILED_TRIAL in waiting.system_attrs:  # RetryHeartbeatStaleTrialCallback's record
                        trial.set_user_attr(RETRY_ATTR, waiting.system_attrs[OPTUNA_FAILED_TRIAL])
                    return trial
        return None

    def _run_one(self, trial: optuna.Trial) -> bool:
        """Run the trial and tell its end; True when it was queued again (TrialLost)."""
        trial.set_user_attr(OWNER_ATTR, this_process())
        requeued = False
        try:
            with _heartbeat(self.storage, trial_id(self.study, self.storage, trial.number)):
                value = self.objective(trial)
        except optuna.TrialPruned:
            frozen = self.study.tell(trial, state=TrialState.PRUNED)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the trial is queued again for a rerun or another worker
            trial.set_user_attr(REASON_ATTR, "interrupted")
            frozen = self.study.tell(trial, state=TrialState.FAIL)
            requeue(self.study, frozen)
            self.on_told(frozen)
            raise
        except Exception as exc:  # noqa: BLE001 - out of memory, NaN loss, bad weights: this trial fails alone
            trial.set_user_attr(REASON_ATTR, first_line(exc, limit=500))
            frozen = self.study.tell(trial, state=TrialState.FAIL)
            if isinstance(exc, TrialLost):  # as a dead worker's trial: queued again, to resume from its checkpoint
                requeue(self.study, frozen)
                requeued = True
        else:
            frozen = self.study.tell(trial, value)
        finally:
            from pipelines.training.device import free_memory  # torch: loaded by the trial that just ran

            free_memory()
        self.on_told(frozen)
        return requeued

    def reap_dead(self) -> None:
        reap_dead(self.study, self.storage, self.on_dead)

    def counts(self) -> dict[str, int]:
        """How many trials are RUNNING and WAITING now, in every worker."""
        trials = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
        return {s.name: sum(t.state == s for t in trials) for s in (TrialState.RUNNING, TrialState.WAITING)}


def reap_dead(study: optuna.Study, storage: optuna.storages.BaseStorage,
              on_dead: Callable[[optuna.Study, FrozenTrial], None]) -> None:
    """Fail the trials whose worker died, then `on_dead` each (queue it again, close its run): the owner
    record on this host for any storage (a journal keeps no heartbeat), then Optuna's heartbeat on RDB
    storages for the other hosts' trials. The owner record goes first because it says which process
    died; a trial the heartbeat fails is finished before anyone can record why."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get(OWNER_ATTR) or {}
        if not died_here(owner):
            continue
        if fail_trial(study, storage, trial.number, f"its worker (pid {owner['pid']}) died"):  # else reaped by another
            on_dead(study, storage.get_trial(trial_id(study, storage, trial.number)))
    if _heartbeat_interval(storage) is not None:
        with experimental_api():
            optuna.storages.fail_stale_trials(study)  # calls on_dead through the storage's callback


@contextlib.contextmanager
def _heartbeat(storage: optuna.storages.BaseStorage, beating: int) -> Iterator[None]:
    """Record a heartbeat every interval while the trial runs (what Study.optimize does for RDB storages)."""
    interval = _heartbeat_interval(storage)
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is retried; the trial's own error matters more
                storage.record_heartbeat(beating)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{beating}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class EpochReporter:
    """An engine listener: report the metric each epoch (optuna-dashboard's curves); with `prune`, stop
    the trial when the pruner says so (never at `last_epoch`, when given: the arm has finished).
    Multi-objective studies take no intermediate values."""

    def __init__(self, trial: optuna.Trial, metric: str, prune: bool = True, last_epoch: int | None = None):
        self.trial, self.metric, self.prune, self.last_epoch = trial, metric, prune, last_epoch
        self.active = len(trial.study.directions) == 1

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        self.trial.report(metrics[self.metric], step=epoch)
        finished = self.last_epoch is not None and epoch >= self.last_epoch  # nothing left to save by stopping
        if self.prune and not finished and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} ({self.metric} {metrics[self.metric]:.4f})")
