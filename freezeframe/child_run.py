"""A ChildRun (a comparison's arm, a search's trial) trained as a child run of its study's parent: in this
process, or with train.devices N > 1 on N processes that this worker launches and waits for.

On N processes the worker stays one process and keeps the trial (its claim, its heartbeat, its tell). The
protocol, all of it here:
- write: the ChildRun as JSON, in a private temporary folder of the worker's (mode 0700: the storage URL
  may hold a password); nothing is pickled;
- launch: `python -m freezeframe.child_run <file>` on N processes under torch's elastic launcher
  (pipelines.processes.launch); process 0 opens the trial in the same storage with the study's pruner and
  comes back to `run_child`, exactly as a one-process worker runs it; the others train beside it;
- read back: each process writes a report beside the file, process 0 its fit's numbers (or why it was pruned),
  any process its own error; the worker's objective reads the numbers, and the worker tells the trial.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from freezeframe.cli import exit_code, start_process
from pipelines.config import digest
from pipelines.errors import FreezeframeError
from pipelines.processes import launch, process_rank, stop_when_orphaned, world_size
from pipelines.studies.child import ChildRun
from pipelines.studies.keys import RUN_ATTR
from pipelines.studies.worker import TrialLost
from tracking import tags
from tracking.runs.session import end_unfinished, one_line
from tracking.studies import parent_run
from tracking.studies.parent_run import FAILED, KILLED

if TYPE_CHECKING:  # the training stack (torch, timm, sklearn) loads when an arm trains, in run_child: a rerun
    # with nothing left to train, or a worker that finds no arm, answers without it
    from freezeframe.training_run import Nesting
    from pipelines.training.results import FitResult

CHILD_FILE, REPORT_FILE = "child.json", "report-process{index}.json"


def run_child(child: ChildRun, trial: optuna.Trial | None = None) -> FitResult:
    """Train `child` as a child run of its parent and return its fit; the trial records the run id as soon
    as the run exists, and a preparation that fails still leaves a FAILED child saying why. With
    train.devices > 1 (and not already under torchrun), on that many processes; their process 0 comes back
    here with `trial` None: opened from the child's storage."""
    from freezeframe import training_run  # see TYPE_CHECKING above

    if world_size() == 1:  # the worker (an arm's process 0 comes after the worker did this)
        parent_run.reopen(child.parent_run_id)  # another worker may have ended it, seeing this arm still queued
        if child.cfg.train.devices > 1:
            return _on_processes(child, trial)
    trial = trial or child.open_trial()
    nesting = _nesting(child, trial)
    try:
        prepared = training_run.prepare_training(child.cfg)
    except BaseException as exc:  # a failed one fails alone (the worker goes on); Ctrl-C leaves it KILLED
        training_run.record_failure(child.cfg, exc, nesting)
    return training_run.train_in_run(prepared, child.entry_point, (child.reporter(trial),), nesting).outcome.fit


def _nesting(child: ChildRun, trial: optuna.Trial) -> Nesting:
    """Where the child's run opens: under its parent, with its study's, trial's and config digest's tags and
    its own; the trial records the run id as soon as the run exists."""
    from freezeframe.training_run import Nesting

    run_tags = {tags.STUDY: child.study_name, tags.TRIAL: str(child.trial_number),
                tags.CONFIG_DIGEST: digest(child.cfg), **child.tags}
    return Nesting(child.parent_run_id, run_tags, on_start=lambda run_id: trial.set_user_attr(RUN_ATTR, run_id))


@dataclass(frozen=True)
class ProcessReport:
    """What one process wrote back: process 0 its fit's numbers (FitResult.numbers) or why it was pruned;
    any process its own error (not an interruption: that follows another process's failure)."""
    fit: dict[str, Any] | None = None
    pruned: str = ""
    error: str = ""


def _on_processes(child: ChildRun, trial: optuna.Trial) -> FitResult:
    """The child on cfg.train.devices processes, waited for. A pruned arm raises TrialPruned here; a
    process's own error, RuntimeError; a process killed (kill -9, the OOM killer), TrialLost: the worker
    queues the arm again, to go on from process 0's last checkpoint, as it does a dead worker's."""
    from freezeframe import training_run
    from pipelines.training.results import FitResult

    devices, earlier = child.cfg.train.devices, _run_id(trial)  # a retried trial carries its first attempt's run id
    print(f"[trial {trial.number}] on {devices} processes (torch.distributed.run)", flush=True)
    with tempfile.TemporaryDirectory(prefix="freezeframe-child-") as folder:
        path = Path(folder) / CHILD_FILE
        path.write_text(child.to_json())
        try:  # MLFLOW_RUN_ID: a launcher's run is the parent's, never the child's that process 0 creates
            failure = launch(devices, ["-m", "freezeframe.child_run", str(path)], env={"MLFLOW_RUN_ID": None})
        except KeyboardInterrupt as exc:  # this worker stopped: process 0 ended the run KILLED, unless it died first
            if (run_id := _run_id(trial)) != earlier:
                end_unfinished(run_id, KILLED, str(exc) or "interrupted")
            raise
        reports = {index: ProcessReport(**json.loads(report.read_text())) for index in range(devices)
                   if (report := path.with_name(REPORT_FILE.format(index=index))).exists()}
    first = reports.get(0, ProcessReport())
    if first.fit is not None:
        return FitResult.from_numbers(first.fit)
    if first.pruned:
        raise optuna.TrialPruned(first.pruned)
    own = next((f"rank {index}: {r.error}" for index, r in sorted(reports.items()) if r.error), "")
    reason = own or str(failure or "") or "rank 0 wrote no result"
    error = (TrialLost if failure is not None and failure.killed and not own else RuntimeError)(reason)
    run_id = _run_id(trial)
    if run_id == earlier:  # no process got as far as the child run: it still shows, saying why
        training_run.record_failure(child.cfg, error, _nesting(child, trial))
    # process 0 may have died before ending its run, or been stopped (KILLED) by another process's error
    end_unfinished(run_id, KILLED if isinstance(error, TrialLost) else FAILED, reason)
    raise error


def _run_id(trial: optuna.Trial) -> str | None:
    """The run id recorded on the trial, read from the storage (this process's Trial caches its attrs)."""
    (frozen,) = [t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number]
    return frozen.user_attrs.get(RUN_ATTR)


def main(path: str) -> int:
    """One of the N processes `_on_processes` launched: process 0 trains the child run (`run_child`), the
    others beside it (training_run.train_process); each writes back its report, or its own error."""
    from freezeframe.training_run import train_process
    from pipelines.training import distributed

    start_process()  # as the command line: elastic's monitor stops the others with SIGTERM, their runs end KILLED
    index = process_rank()
    stop_when_orphaned()  # a worker killed -9 takes its child's processes with it
    try:
        child = ChildRun.from_json(Path(path).read_text())
        fit = train_process(child.cfg, partial(run_child, child))
        _write_report(path, index, ProcessReport(fit=fit.numbers() if fit is not None else None))
    except optuna.TrialPruned as exc:
        _write_report(path, index, ProcessReport(pruned=str(exc)))
    except KeyboardInterrupt as exc:  # another process failed first (PeerLost), or the worker was stopped
        return exit_code(exc)
    except Exception as exc:
        _write_report(path, index, ProcessReport(error=one_line(exc)))
        if not isinstance(exc, FreezeframeError):
            raise
        return exit_code(exc)
    finally:
        distributed.stop()  # after the report: a finished fit is never lost to the group's teardown
    return 0


def _write_report(path: str, index: int, report: ProcessReport) -> None:
    """Written whole, then renamed, so the worker never reads half."""
    target = Path(path).with_name(REPORT_FILE.format(index=index))
    partial = target.with_suffix(".partial")
    partial.write_text(json.dumps(asdict(report), default=float))  # numpy and torch scalars as numbers
    partial.replace(target)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
