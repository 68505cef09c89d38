"""A real one-node Slurm cluster for the tests: munged, slurmctld and slurmd from Debian's `slurm-wlm` and
`munge`, every file under the test's tmp folder, stopped by PID (never `scontrol shutdown` of someone
else's cluster). Facts behind the recipe: ../shared/cluster-notes.md (the team's notes)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
DEBIAN = "apt-get install slurm-wlm munge"


def missing() -> str | None:
    """Why this machine cannot run the cluster (None when it can)."""
    for binary in ("munged", "slurmctld", "slurmd", "sbatch"):
        if shutil.which(binary) is None and not Path(f"/usr/sbin/{binary}").exists():
            return f"no {binary} ({DEBIAN})"
    if os.geteuid() != 0:
        return "the one-node Slurm fixture runs its daemons as root"
    if not Path("/etc/munge/munge.key").exists():
        return f"no /etc/munge/munge.key ({DEBIAN} creates it)"
    return None


def _conf(folder: Path, host: str, extra: str) -> str:
    return f"""ClusterName=freezeframe-test
SlurmctldHost={host}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/socket
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=5
MinJobAge=300
SchedulerParameters=sched_interval=1
NodeName={host} CPUs=2 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
{extra}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def slurm_cluster(folder: Path, extra_conf: str = "") -> Iterator[dict[str, str]]:
    """Start the three daemons; yield the environment every client command needs (SLURM_CONF, PATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "munge"):
        (folder / sub).mkdir(exist_ok=True)
    os.chmod(folder / "munge", 0o755)  # munged refuses a socket folder others cannot enter
    key = folder / "munge" / "munge.key"
    shutil.copy("/etc/munge/munge.key", key)
    os.chmod(key, 0o400)
    host = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(_conf(folder, host, extra_conf))
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin"}
    processes: list[subprocess.Popen] = []
    try:
        processes.append(subprocess.Popen(
            ["munged", "-F", "--force", f"--socket={folder}/munge/socket", f"--key-file={key}",
             f"--pid-file={folder}/munge/munged.pid", f"--seed-file={folder}/munge/seed",
             f"--log-file={folder}/munge/munged.log"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _wait(lambda: (folder / "munge" / "socket").exists(), 10, "munged")
        for daemon in ("slurmctld", "slurmd"):
            log = open(folder / f"{daemon}.out", "w")
            processes.append(subprocess.Popen([daemon, "-D", "-f", str(conf)], env=env, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        _wait(lambda: "idle" in _run(env, "sinfo", "-h", "-o", "%t"), 30, "the node to be idle")
        yield env
    finally:
        for process in reversed(processes):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in reversed(processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _run(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=30, check=False)
    return done.stdout


def _wait(ready, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    raise TimeoutError(f"slurm fixture: {what} not up within {seconds} s")
