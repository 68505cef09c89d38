"""Workers as a Slurm job array: one readable sbatch script (`--dry-run` prints it; `sbatch` takes it as
it is), one array task per worker. States come from squeue, which needs no accounting database
(sacct does): a task cancelled or lost with its node is replaced by the launcher."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from pipelines.cluster.workers import STOP_S, WORKER_ENV, Census, WorkerCommand
from pipelines.config import ClusterConfig
from pipelines.errors import ConfigError, first_line

# Array task states of a worker that did not end by itself: replaced while the study has work left.
LOST = {"CANCELLED", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "TIMEOUT", "DEADLINE"}
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING",
          "STAGE_OUT", "STOPPED"}
CLIENT_S = 30  # a Slurm client command that takes longer has lost its controller


def _slurm(*args: str) -> str:
    """A Slurm client command's output; its one-line error otherwise."""
    if shutil.which(args[0]) is None:
        raise ConfigError(f"cluster=slurm: {args[0]} is not on PATH (run on a Slurm login node, or install "
                          "Slurm's client commands)")
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=CLIENT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"cluster=slurm: {' '.join(args[:2])} did not answer in {CLIENT_S} s") from None
    if done.returncode:
        raise ConfigError(f"cluster=slurm: {' '.join(args[:2])}: {first_line(done.stderr or done.stdout)}")
    return done.stdout


def render_script(command: WorkerCommand, cluster: ClusterConfig, workers: int, log_dir: str) -> str:
    """The job array's sbatch script: every task one worker, the launcher's own command line."""
    options = [f"--job-name={command.name}", f"--array=0-{workers - 1}", "--ntasks=1",
               f"--chdir={command.cwd}", f"--output={log_dir}/%x-%A_%a.out"]
    options.append(f"--gpus-per-task={command.gpus}" if command.gpus else f"--cpus-per-task={command.cpus}")
    options += [f"--{key}={value}" for key, value in (("partition", cluster.partition), ("time", cluster.time),
                                                      ("account", cluster.account)) if value]
    options += shlex.split(cluster.sbatch_flags)
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(command.env.items()))
    python, argv = shlex.quote(command.python), shlex.join(command.argv)
    return f"""#!/bin/bash
# {command.name}: {workers} workers of one study as a Slurm job array, written by freezeframe's launcher.
# Submit it as it is (`sbatch <this file>`), again to add workers (`sbatch --array=0-1 <this file>`), or let
# `--cluster slurm` submit it and follow the study. Every task runs the same worker: it takes the study's
# queued trials from the shared storage until none is left; a task that dies has its trial queued again.
# The nodes need this folder and this Python environment at the same paths (a shared file system).
{chr(10).join(f"#SBATCH {option}" for option in options)}
set -euo pipefail
test -x {python} || {{ echo "freezeframe: {command.python} is not on $(hostname): the nodes need the same \
environment (a shared venv or image)" >&2; exit 2; }}
{exports}
export {WORKER_ENV}="slurm:${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}@$(hostname -s)"
unset MLFLOW_RUN_ID MLFLOW_EXPERIMENT_ID  # the launcher's own run and experiment id stay the launcher's
exec {python} -m freezeframe {argv}
"""


class SlurmEngine:
    name = "slurm"

    def __init__(self, cluster: ClusterConfig, script_dir: Path):
        self.cluster, self.script_dir = cluster, script_dir
        self.partition = self._partition()
        self.log_dir = script_dir / "logs"
        self.jobs: list[str] = []  # the array's job id, then each replacement's
        self.next_task, self.counted, self.stopping = 0, set(), False

    def _partition(self) -> str:
        """cluster.partition if this cluster has it (refused in one line, listing those it has), else its
        default partition."""
        listed = _slurm("sinfo", "-h", "-o", "%P").split()
        known = {p.rstrip("*") for p in listed}
        if self.cluster.partition:
            if self.cluster.partition not in known:
                raise ConfigError(f"cluster=slurm: no partition '{self.cluster.partition}' (this cluster has: "
                                  f"{', '.join(sorted(known))})")
            return self.cluster.partition
        default = [p.rstrip("*") for p in listed if p.endswith("*")]
        if not default:
            raise ConfigError("cluster=slurm: this cluster has no default partition: set cluster.partition")
        return default[0]

    def has_gpus(self) -> bool:
        return "gpu" in _slurm("sinfo", "-h", "-p", self.partition, "-o", "%G")

    def hosts(self) -> set[str]:
        """Every node the partition may place a worker on (names, and addresses where sinfo shows them):
        its Nodes= list, since sinfo leaves out nodes that are not up yet (FUTURE, powered down)."""
        found = re.search(r"\bNodes=(\S+)", _slurm("scontrol", "-o", "show", "partition", self.partition))
        names = _slurm("scontrol", "show", "hostnames", found.group(1)).split() if found else []
        return set(names) | set(_slurm("sinfo", "-h", "-N", "-p", self.partition, "-o", "%N %o").split())

    def script_text(self, command: WorkerCommand, workers: int) -> str:
        return render_script(command, self.cluster, workers, str(self.log_dir))

    def submit(self, command: WorkerCommand, count: int) -> None:
        if not self.jobs:  # the script is kept beside its logs: a user can read it, edit it, sbatch it again
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.script = self.script_dir / f"{command.name}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
            self.script.write_text(self.script_text(command, count))
            print(f"slurm: {self.script}", flush=True)
            self.jobs.append(_slurm("sbatch", "--parsable", str(self.script)).strip().split(";")[0])
            self.next_task = count
            return
        tasks = f"{self.next_task}-{self.next_task + count - 1}"  # a replacement: the same script, new tasks
        self.jobs.append(_slurm("sbatch", "--parsable", f"--array={tasks}", str(self.script)).strip().split(";")[0])
        self.next_task += count

    def _states(self) -> dict[str, str]:
        out = _slurm("squeue", "-h", "-r", "-t", "all", "-j", ",".join(self.jobs), "-o", "%i %T")
        return dict(line.split()[:2] for line in out.splitlines() if line.strip())

    def census(self) -> Census:
        census = Census()
        for task, state in self._states().items():
            if state in ACTIVE:
                census.alive += 1
            elif task not in self.counted:
                self.counted.add(task)
                if state in LOST and not self.stopping:
                    census.lost += 1
                    print(f"cluster=slurm: worker {task} {state}", flush=True)
                elif state not in LOST and state != "COMPLETED":
                    census.failed.append(f"Slurm task {task} {state} (log: {self.log_dir})")
        return census

    def cancel(self) -> None:
        self.stopping = True
        if not self.jobs:
            return
        _slurm("scancel", *self.jobs)  # SIGTERM first, SIGKILL after the cluster's KillWait
        deadline = time.monotonic() + STOP_S
        while time.monotonic() < deadline and any(s in ACTIVE for s in self._states().values()):
            time.sleep(0.5)

    def close(self) -> None:
        pass

