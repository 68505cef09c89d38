"""A comparison's arm or a search's trial on N processes (`train.devices: N`), run by a one-process worker.

The worker keeps the trial (its claim, its heartbeat, its tell) and launches `python -m freezeframe train
--arm <file>` on N processes (distributed.launch, torch's elastic launcher), then waits. The file holds
what a worker would have handed its one-process run: the arm's config, its child run's parent and tags,
how to report each epoch, and where the trial lives. Rank 0 opens the study in the same storage, with
the study's pruner, and trains the child run exactly as a worker would (freezeframe.single_run); the
other ranks train beside it. Rank 0 writes back what the worker's objective needs (the outcome, or why
there is none), and the worker tells the trial.

The two files live in a private temporary folder of the worker's (mode 0700: the storage URL may hold a
password) and are pickles, written and read by this project's own processes only.
"""

from __future__ import annotations

import dataclasses
import pickle
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from pipelines.config import RunConfig
from pipelines.studies.storage import make_storage
from pipelines.studies.worker import EpochReporter, trial_id
from pipelines.training import distributed

ARM_FILE, RESULT_FILE = "arm.pkl", "result.pkl"


@dataclass(frozen=True)
class ArmOnRanks:
    cfg: RunConfig
    entry_point: str  # compare | search: the child run's kind
    parent_run_id: str
    run_tags: dict[str, str]
    reporters: tuple[tuple[str, bool, int | None], ...]  # each EpochReporter's (metric, prune, last_epoch)
    storage_url: str
    study_name: str
    trial_number: int
    pruner: optuna.pruners.BasePruner  # the study's: Optuna keeps pruners in the process, not the storage


@dataclass(frozen=True)
class RanksResult:
    """What rank 0 wrote back (`outcome`: the child's TrackedRun; else `pruned` or `error` says why),
    and the launcher's one line when a process failed."""
    outcome: Any = None
    pruned: str = ""
    error: str = ""
    interrupted: bool = False  # rank 0 ended its run KILLED: another process died, or a signal
    launcher_failure: distributed.LaunchFailure | None = None


def describe(cfg: RunConfig, trial: optuna.Trial, storage_url: str, parent_run_id: str, entry_point: str,
             run_tags: dict[str, str], listeners: tuple) -> ArmOnRanks:
    strange = [type(listener).__name__ for listener in listeners if not isinstance(listener, EpochReporter)]
    if strange:  # only Optuna's reporter crosses into the processes: anything else would be dropped silently
        raise TypeError(f"an arm on {cfg.train.devices} processes cannot take listeners {strange}")
    return ArmOnRanks(cfg, entry_point, parent_run_id, run_tags,
                      tuple((r.metric, r.prune, r.last_epoch) for r in listeners), storage_url,
                      trial.study.study_name, trial.number,
                      trial.study.pruner)


@contextmanager
def arm_folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="freezeframe-arm-") as folder:
        yield Path(folder)


def launch(arm: ArmOnRanks, folder: Path) -> RanksResult:
    """Run the arm on its processes and wait. KeyboardInterrupt when this worker is stopped (the
    processes are down by then)."""
    path = folder / ARM_FILE
    path.write_bytes(pickle.dumps(arm))
    # MLFLOW_RUN_ID: a launcher's run is the parent's, never the child's that rank 0 creates
    failed = distributed.launch(arm.cfg.train.devices, ["train", "--arm", str(path)], env={"MLFLOW_RUN_ID": None})
    written = folder / RESULT_FILE
    result = pickle.loads(written.read_bytes()) if written.exists() else RanksResult()
    return dataclasses.replace(result, launcher_failure=failed)


def read_arm(path: str | Path) -> ArmOnRanks:
    return pickle.loads(Path(path).read_bytes())


def write_result(arm_path: str | Path, result: RanksResult) -> None:
    """Rank 0's answer, beside the arm's file; written whole, then renamed, so the worker never reads half."""
    target = Path(arm_path).with_name(RESULT_FILE)
    partial = target.with_suffix(".partial")
    partial.write_bytes(pickle.dumps(result))
    partial.replace(target)


def open_trial(arm: ArmOnRanks) -> optuna.Trial:
    """The worker's trial, as rank 0 sees it: the same storage, the study's pruner. No heartbeat and no
    tell here: the worker, alive while this runs, does both."""
    storage = make_storage(arm.storage_url)
    study = optuna.load_study(study_name=arm.study_name, storage=storage, pruner=arm.pruner)
    return optuna.Trial(study, trial_id(study, storage, arm.trial_number))


def reporters(arm: ArmOnRanks, trial: optuna.Trial) -> tuple[EpochReporter, ...]:
    return tuple(EpochReporter(trial, metric, prune=prune, last_epoch=last) for metric, prune, last in arm.reporters)
