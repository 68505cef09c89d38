"""What every engine starts (WorkerCommand), what it reports (Census), and the engine that needs nothing
installed: processes on this machine (LocalEngine)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Protocol

# Set in a worker's environment by the engine (local:<n>, ray:<node>, slurm:<job>_<task>@<node>): the
# process is a worker, not a launcher, and its child runs are tagged with where they ran.
WORKER_ENV = "FREEZEFRAME_WORKER"
# The launcher's environment that workers get: where to track and the project's own settings. Never a
# secret (MLFLOW_TRACKING_PASSWORD, PGPASSWORD...): a Slurm script and Ray's task records keep what they
# are given; credentials stay in files on the nodes (~/.pgpass, ~/.mlflow/credentials).
PASSED_PREFIXES = ("MLFLOW_", "FREEZEFRAME_", "OPTUNA_", "TQDM_", "HF_", "TORCH_HOME", "OMP_NUM_THREADS")
NOT_PASSED = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
              "MLFLOW_TRACKING_USERNAME", WORKER_ENV)
STOP_S = 60  # how long a stopped worker may take to end its runs KILLED before it is killed


@dataclass(frozen=True)
class WorkerCommand:
    """What each worker runs: `python -m freezeframe <argv>` in `cwd`, with `env` on top of the node's."""
    argv: tuple[str, ...]
    cwd: str
    python: str
    env: dict[str, str] = field(default_factory=dict)
    gpus: int = 0  # per worker; 0: CPUs only
    cpus: int = 1
    name: str = "freezeframe"  # the job's or task's name on the engine


@dataclass
class Census:
    """Workers as the engine sees them now; `lost` and `failed` since the previous census."""
    alive: int = 0
    lost: int = 0  # ended by the engine or its node (cancelled, node failure, time limit), not by themselves
    failed: list[str] = field(default_factory=list)  # ended by themselves with an error: a line each


class Engine(Protocol):
    name: str

    def hosts(self) -> set[str]: ...  # the names and addresses of the nodes workers may run on

    def submit(self, command: WorkerCommand, count: int) -> None: ...

    def census(self) -> Census: ...

    def cancel(self) -> None: ...  # every worker stopped (SIGTERM: its runs end KILLED); returns when all are gone

    def close(self) -> None: ...


def worker_env(overrides: dict[str, str]) -> dict[str, str]:
    """The launcher's variables every worker gets (PASSED_PREFIXES, no secret), then `overrides`."""
    passed = {k: v for k, v in os.environ.items() if k.startswith(PASSED_PREFIXES) and k not in NOT_PASSED}
    return {**passed, **overrides}


def gpu_slice(index: int, share: int, gpu_ids: list[str]) -> list[str]:
    """Worker `index`'s `share` of this machine's GPUs; a replacement worker takes a slot over."""
    slot = index % max(1, len(gpu_ids) // share)
    return gpu_ids[slot * share:(slot + 1) * share]


class LocalEngine:
    """N worker processes on this machine, each with its own slice of the GPUs (CUDA_VISIBLE_DEVICES)."""
    name = "local"

    def __init__(self, gpu_ids: list[str] | None = None):
        self.gpu_ids = gpu_ids or []
        self.processes: list[subprocess.Popen] = []
        self.counted: set[int] = set()
        self.stopping = False

    def hosts(self) -> set[str]:
        return set()  # this machine only

    def submit(self, command: WorkerCommand, count: int) -> None:
        for _ in range(count):
            index, env = len(self.processes), {**os.environ, **command.env}
            env[WORKER_ENV] = f"local:{index}"
            if command.gpus and self.gpu_ids:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_slice(index, command.gpus, self.gpu_ids))
            for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
                env.pop(leaked, None)
            self.processes.append(subprocess.Popen([command.python, "-m", "freezeframe", *command.argv],
                                                   cwd=command.cwd, env=env))

    def census(self) -> Census:
        census = Census()
        for index, process in enumerate(self.processes):
            code = process.poll()
            if code is None:
                census.alive += 1
            elif index not in self.counted:
                self.counted.add(index)
                if code < 0 and not self.stopping:
                    census.lost += 1  # killed by a signal it did not send itself
                elif code > 0:
                    census.failed.append(f"worker local:{index} exited with {code}")
        return census

    def cancel(self) -> None:
        self.stopping = True
        running = [p for p in self.processes if p.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_S
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        pass
