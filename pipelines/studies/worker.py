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


@dataclass(frozen=True)
class TrialBudget:
    """How many trials a worker runs: every queued one, then, with `propose`, new ones from the sampler."""
    propose: bool = False  # a search asks its sampler; a comparison runs its queued arms only
    n_trials: int | None = None  # trials this worker runs (None: until the queue is empty)
    timeout: float = 0.0  # seconds this worker may start trials for (0: no limit)
    max_trials: int = 0  # the study's total over every worker and rerun (0: none); counted under the study's lock


@dataclass
class StudyWorker:
    """Run trials until the queue is empty (and, with `budget.propose`, `budget.n_trials` new ones are done).

    `objective(trial)` returns the trial's value or raises (optuna.TrialPruned included); `on_told`
    sees each trial as it ends; `on_dead(study, trial)` sees each trial of a dead worker. `url` names the
    storage for the study's lock.
    """

    study: optuna.Study
    storage: optuna.storages.BaseStorage
    objective: Callable[[optuna.Trial], float]
    on_told: Callable[[FrozenTrial], None]
    on_dead: Callable[[optuna.Study, FrozenTrial], None]
    budget: TrialBudget = TrialBudget()
    url: str = ""
    trials_run: int = 0

    def run(self) -> int:
        """Claim or ask a trial, run the objective on it under a heartbeat, tell its end; again."""
        start, budget = time.monotonic(), self.budget
        while budget.n_trials is None or self.trials_run < budget.n_trials:
            if budget.timeout and time.monotonic() - start > budget.timeout:
                break
            self.reap_dead()
            trial = self.claim_waiting() or (self._ask() if budget.propose else None)
            if trial is None:
                break
            trial.set_user_attr(OWNER_ATTR, this_process())
            try:
                with _heartbeat(self.storage, trial_id(self.study, self.storage, trial.number)):
                    ended: float | Exception = self.objective(trial)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the trial is queued again for a rerun or another worker
                self.on_told(self._tell(trial, KeyboardInterrupt()))
                raise
            except Exception as exc:  # noqa: BLE001 - out of memory, NaN loss, bad weights: this trial fails alone
                ended = exc
                told = self._tell(trial, exc)
            else:
                told = self._tell(trial, ended)
            finally:
                from pipelines.training.device import free_memory  # torch: loaded by the trial that just ran

                free_memory()
            self.on_told(told)
            if isinstance(ended, TrialLost):  # queued again: its retry is claimed next, not counted twice
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
        most = self.budget.max_trials
        with study_lock(self.url, self.study.study_name) if most else contextlib.nullcontext():
            if most and len(self.study.get_trials(deepcopy=False, states=COUNTED)) >= most:
                print(f"study {self.study.study_name} has its max_trials {most}: no new trial", flush=True)
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

    def _tell(self, trial: optuna.Trial, ended: float | BaseException) -> FrozenTrial:
        """Tell the trial's end: its value, pruned, or failed saying why; interrupted, or TrialLost (one of
        its own processes died), it is queued again, as a dead worker's trial is, to resume from its
        checkpoint."""
        if isinstance(ended, optuna.TrialPruned):
            return self.study.tell(trial, state=TrialState.PRUNED)
        if not isinstance(ended, BaseException):
            return self.study.tell(trial, ended)
        interrupted = isinstance(ended, KeyboardInterrupt)
        trial.set_user_attr(REASON_ATTR, "interrupted" if interrupted else first_line(ended, limit=500))
        frozen = self.study.tell(trial, state=TrialState.FAIL)
        if interrupted or isinstance(ended, TrialLost):
            requeue(self.study, frozen)
        return frozen

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
