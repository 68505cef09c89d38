"""A comparison's arm or a search's trial on N processes (`train.devices: N`), run by a one-process worker.

The worker keeps the trial (its claim, its heartbeat, its tell) and launches `python -m freezeframe train
--arm <file>` on N processes (pipelines.processes.launch, torch's elastic launcher), then waits. The file holds
what a worker would have handed its one-process run: the arm's config, its child run's parent and tags,
how to report each epoch, and where the trial lives and which pruner judges it. Rank 0 opens the study
in the same storage, with that pruner, and trains the child run exactly as a worker would
(freezeframe.single_run); the other ranks train beside it. Rank 0 writes back what the worker's
objective reads (the run id and the fit's numbers, or why there are none), and the worker tells the trial.

Both files are JSON (the config: YAML), in a private temporary folder of the worker's (mode 0700: the
storage URL may hold a password); nothing is unpickled.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna

from pipelines.config import RunConfig, load_config, to_yaml
from pipelines.processes import LaunchFailure
from pipelines.processes import launch as launch_processes
from pipelines.studies.racing import racing_pruner
from pipelines.studies.storage import make_storage
from pipelines.studies.worker import EpochReporter, trial_id

ARM_FILE, CONFIG_FILE, RESULT_FILE = "arm.json", "config.yaml", "result-rank{rank}.json"


@dataclass(frozen=True)
class TrialPlace:
    """Where a worker's trial lives and how its study judges it: what an arm's rank 0 needs to open it.
    Optuna keeps a study's pruner in the worker's process, not in the storage, so it is named here."""
    storage_url: str
    pruner: str  # "racing:<compare.racing>" or "search:<search.pruner>"
    epochs: int = 0  # a search's epochs: hyperband's largest resource

    def study_pruner(self) -> optuna.pruners.BasePruner:
        kind, _, name = self.pruner.partition(":")
        if kind == "racing":
            return racing_pruner(name)
        from pipelines.studies.search_study import pruner_named  # torch, through the ceiling: rank 0 has it

        return pruner_named(name, self.epochs)


@dataclass(frozen=True)
class ArmOnRanks:
    entry_point: str  # compare | search: the child run's kind
    parent_run_id: str
    run_tags: dict[str, str]
    reporters: list[tuple[str, bool, int | None]]  # each EpochReporter's (metric, prune, last_epoch)
    place: TrialPlace
    study_name: str
    trial_number: int


@dataclass(frozen=True)
class RankReport:
    """What one process wrote back: rank 0 its child run's numbers (single_run.portable_run) or why it was
    pruned; any rank its own error (not an interruption: that follows another process's failure)."""
    run: dict[str, Any] | None = None
    pruned: str = ""
    error: str = ""


@dataclass(frozen=True)
class Launched:
    """The arm's processes, ended: rank 0's run or pruning, the first error a process raised (by rank),
    and the launcher's account when a process failed."""
    run: dict[str, Any] | None
    pruned: str
    error: str
    failure: LaunchFailure | None


def describe(trial: optuna.Trial, place: TrialPlace, parent_run_id: str, entry_point: str,
             run_tags: dict[str, str], listeners: tuple) -> ArmOnRanks:
    strange = [type(listener).__name__ for listener in listeners if not isinstance(listener, EpochReporter)]
    if strange:  # only Optuna's reporter crosses into the processes: anything else would be dropped silently
        raise TypeError(f"an arm on several processes cannot take listeners {strange}")
    return ArmOnRanks(entry_point, parent_run_id, run_tags, [(r.metric, r.prune, r.last_epoch) for r in listeners],
                      place, trial.study.study_name, trial.number)


@contextmanager
def arm_folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="freezeframe-arm-") as folder:
        yield Path(folder)


def launch(cfg: RunConfig, arm: ArmOnRanks, folder: Path) -> Launched:
    """Run the arm on cfg.train.devices processes and wait. KeyboardInterrupt when this worker is stopped
    (the processes are down by then)."""
    (folder / CONFIG_FILE).write_text(to_yaml(cfg))
    (folder / ARM_FILE).write_text(json.dumps(asdict(arm)))
    # MLFLOW_RUN_ID: a launcher's run is the parent's, never the child's that rank 0 creates
    failed = launch_processes(cfg.train.devices, ["train", "--arm", str(folder / ARM_FILE)],
                                env={"MLFLOW_RUN_ID": None})
    written = {rank: folder / RESULT_FILE.format(rank=rank) for rank in range(cfg.train.devices)}
    reports = {rank: RankReport(**json.loads(path.read_text())) for rank, path in written.items() if path.exists()}
    first = reports.get(0, RankReport())
    errors = [f"rank {rank}: {report.error}" for rank, report in sorted(reports.items()) if report.error]
    return Launched(first.run, first.pruned, errors[0] if errors else "", failed)


def read_arm(path: str | Path) -> tuple[RunConfig, ArmOnRanks]:
    path = Path(path)
    raw = json.loads(path.read_text())
    arm = ArmOnRanks(**{**raw, "place": TrialPlace(**raw["place"]),
                        "reporters": [tuple(r) for r in raw["reporters"]]})
    return load_config(path.with_name(CONFIG_FILE)), arm


def write_report(arm_path: str | Path, rank: int, report: RankReport) -> None:
    """A process's answer, beside the arm's file; written whole, then renamed, so the worker never reads half."""
    target = Path(arm_path).with_name(RESULT_FILE.format(rank=rank))
    partial = target.with_suffix(".partial")
    partial.write_text(json.dumps(asdict(report), default=float))  # numpy and torch scalars as numbers
    partial.replace(target)


def open_trial(arm: ArmOnRanks) -> optuna.Trial:
    """The worker's trial, as rank 0 sees it: the same storage, the study's pruner. No heartbeat and no
    tell here: the worker, alive while this runs, does both."""
    storage = make_storage(arm.place.storage_url)
    study = optuna.load_study(study_name=arm.study_name, storage=storage, pruner=arm.place.study_pruner())
    return optuna.Trial(study, trial_id(study, storage, arm.trial_number))


def reporters(arm: ArmOnRanks, trial: optuna.Trial) -> tuple[EpochReporter, ...]:
    return tuple(EpochReporter(trial, metric, prune=prune, last_epoch=last) for metric, prune, last in arm.reporters)
