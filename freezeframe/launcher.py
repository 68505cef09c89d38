"""The front door of compare, rank and search on an engine: `--cluster ray|slurm` (or `--workers N` on this
machine). The command opens its study and parent here as it always does; then, where it would work
trials itself, it submits N workers (each the same command line, told it is a worker by
FREEZEFRAME_WORKER), prints a line per change (trials done / running / queued, workers alive), replaces
a worker the engine lost while the study has work, and returns when no worker is left. Ctrl-C or SIGTERM
stops the workers (their runs end KILLED, their trials are queued again) and the parent ends KILLED:
a rerun goes on. Everything that could refuse the input is checked before anything opens or is submitted."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipelines.cluster.reach import refuse_unreachable
from pipelines.cluster.workers import Engine, LocalEngine, WorkerCommand, worker_env
from pipelines.config import RunConfig
from pipelines.errors import ConfigError, FreezeframeError
from pipelines.studies.keys import OPTUNA_FAILED_TRIAL
from pipelines.studies.storage import DEFAULT_STORAGE
from pipelines.studies.worker import fail_trial, trial_id
from tracking.runs import session
from tracking.store import tracking_uri
from tracking.studies import parent_run
from tracking.studies.parent_run import FINISHED, KILLED

POLL_S = 1.0


class LaunchError(FreezeframeError):
    """The workers ended and the parent did not end FINISHED."""


class Launcher:
    """An engine connected and checked, ready to submit `cfg.cluster.workers` workers of this command."""

    def __init__(self, args: argparse.Namespace, cfg: RunConfig, engine: Engine, gpus: bool):
        self.args, self.cfg, self.engine, self.gpus = args, cfg, engine, gpus
        self.launched = False

    def command(self, experiment_name: str) -> WorkerCommand:
        argv = [arg for arg in self.args.argv if arg != "--dry-run"]  # the script's workers run it
        if self.args.storage and self.args.storage not in argv:  # moved here (a temporary project folder)
            argv += ["--storage", self.args.storage]
        env = worker_env({"MLFLOW_TRACKING_URI": tracking_uri(), "MLFLOW_EXPERIMENT_NAME": experiment_name})
        devices = self.cfg.train.devices
        python = self.cfg.cluster.python or sys.executable
        return WorkerCommand(tuple(argv), os.getcwd(), python, env, gpus=devices if self.gpus else 0,
                             cpus=devices, name=f"freezeframe-{self.args.command}")

    def launch(self, run, on_dead: Callable[[optuna.Study, FrozenTrial], None]) -> None:
        """Submit the workers, follow the study until none is left, then check the parent's end. `on_dead`
        closes and requeues a trial whose worker is gone."""
        workers = self.cfg.cluster.workers
        if not self.launched:  # a screened comparison's second study: the workers ran the whole command
            self.launched = True
            command = self.command(parent_run.experiment_name(run.parent.experiment_id))
            print(f"{self.engine.name}: submitting {workers} worker(s) of {run.plan.kind} '{run.plan.name}' "
                  f"({f'{command.gpus} GPU' if command.gpus else f'{command.cpus} CPU'} each)", flush=True)
            self.engine.submit(command, workers)
            try:
                self._follow(run, command)
            except KeyboardInterrupt:
                print(f"{self.engine.name}: stopping the workers", file=sys.stderr, flush=True)
                self.engine.cancel()
                self._settle(run, "interrupted", on_dead)
                self._end_record(run, KILLED)
                raise
            finally:
                self.engine.close()
        status = self._settle(run, "its workers ended", on_dead)
        self._end_record(run, FINISHED if status == FINISHED else KILLED)
        if status != FINISHED:
            raise LaunchError(f"{run.plan.kind} '{run.plan.name}': the workers ended and the parent run "
                              f"{run.parent.run_id} is {status}; rerun to continue")

    def _end_record(self, run, status: str) -> None:
        """The `mlflow run` launcher's run, this launcher's record under the parent, ends with it."""
        if run.parent.worker_run_id:
            session.end_run(run.parent.worker_run_id, status)

    def _follow(self, run, command: WorkerCommand) -> None:
        shown, replaced = "", 0
        while True:
            census = self.engine.census()
            counts = trial_counts(run.study)
            line = (f"{run.plan.kind} '{run.plan.name}': {counts['done']} done, {counts['RUNNING']} running, "
                    f"{counts['WAITING']} queued; {census.alive} worker(s) alive")
            if line != shown:
                print(line, flush=True)
                shown = line
            for failure in census.failed:
                print(f"{self.engine.name}: {failure}", file=sys.stderr, flush=True)
            work_left = counts["RUNNING"] or counts["WAITING"] or run.plan.kind == "search"
            if census.lost and work_left and replaced < 2 * self.cfg.cluster.workers:
                print(f"{self.engine.name}: replacing {census.lost} lost worker(s)", flush=True)
                self.engine.submit(command, census.lost)
                replaced += census.lost
                continue
            if not census.alive:
                return
            time.sleep(POLL_S)

    def _settle(self, run, why: str, on_dead: Callable[[optuna.Study, FrozenTrial], None]) -> str:
        """With no worker left, a trial still RUNNING has lost its worker: failed, its run KILLED, queued
        again; the parent, if no worker ended it, KILLED. Returns the parent's status."""
        for trial in run.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if fail_trial(run.study, run.storage, trial.number, f"its worker ended ({why})"):
                on_dead(run.study, run.storage.get_trial(trial_id(run.study, run.storage, trial.number)))
        status = parent_run.status(run.parent.run_id)
        if status == "RUNNING":
            waiting = trial_counts(run.study)["WAITING"]
            session.end_run(run.parent.run_id, KILLED, f"{why}, {waiting} trial(s) queued; rerun to continue")
            status = KILLED
        return status


def trial_counts(study) -> dict[str, int]:
    """Trials per state, and `done`: ended, not counting a failed trial queued again (its retry counts)."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    retried = {t.system_attrs[OPTUNA_FAILED_TRIAL] for t in trials if OPTUNA_FAILED_TRIAL in t.system_attrs}
    counts["done"] = sum(t.state.is_finished() and t.number not in retried for t in trials)
    return counts


def connect(args: argparse.Namespace, cfg: RunConfig) -> Launcher:
    """The engine joined and every refusal made, before the study or its parent opens."""
    cluster = cfg.cluster
    storage = args.storage or DEFAULT_STORAGE
    gpus = _wants_gpus(cfg)
    if cluster.engine == "ray":
        from pipelines.cluster.ray_engine import RayEngine, ray_address

        engine = RayEngine(ray_address(cluster.address))
        gpus = gpus if gpus is not None else engine.resources().get("GPU", 0) > 0
    elif cluster.engine == "slurm":
        from pipelines.cluster.slurm import SlurmEngine

        engine = SlurmEngine(cluster, Path.cwd() / "slurm")
        gpus = gpus if gpus is not None else engine.has_gpus()
    else:
        gpu_ids = _local_gpus(cfg) if gpus is not False else []
        engine, gpus = LocalEngine(gpu_ids), bool(gpu_ids)
    try:
        refuse_unreachable(cluster.engine, engine.hosts(), storage, tracking_uri())
    except ConfigError:
        engine.close()
        raise
    return Launcher(args, cfg, engine, bool(gpus))


def dry_run(launcher: Launcher) -> int:
    """Print the sbatch script `--cluster slurm` would submit; nothing opens, nothing is submitted. Its log
    folder is made (Slurm cannot open a task's output in a folder that does not exist)."""
    experiment = session.experiment_name_in_use(launcher.cfg.tracking.experiment_name)
    launcher.engine.log_dir.mkdir(parents=True, exist_ok=True)
    print(launcher.engine.script_text(launcher.command(experiment), launcher.cfg.cluster.workers), end="")
    return 0


def _wants_gpus(cfg: RunConfig) -> bool | None:
    """train.device: cpu → no GPUs, cuda → GPUs; auto → whatever the engine has (None: ask it)."""
    device = cfg.train.device
    return False if device == "cpu" or device == "mps" else (True if device.startswith("cuda") else None)


def _local_gpus(cfg: RunConfig) -> list[str]:
    """This machine's GPUs, split between the workers (train.devices each)."""
    import torch

    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [i for i in visible.split(",") if i] if visible else [str(i) for i in range(count)]
    needed = cfg.cluster.workers * cfg.train.devices
    if ids and len(ids) < needed:
        raise ConfigError(f"{cfg.cluster.workers} workers x train.devices {cfg.train.devices} need {needed} GPUs; "
                          f"this machine has {len(ids)}")
    return ids if count else []
