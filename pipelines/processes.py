"""Which process owns something (a running trial, a run's checkpoint folder), and whether that owner is
known to be dead: the same record and the same check for the study worker and the tracker. And this
process's place in a data-parallel run, read from torchrun's environment without importing torch (the
command line asks before it loads anything)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass


def world_size() -> int:
    """How many processes train this run together (torchrun's WORLD_SIZE); 1 alone."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_rank() -> int:
    """This process's index among them (torchrun's RANK); 0 alone. ("rank" alone is the command.)"""
    return int(os.environ.get("RANK", "0"))


def this_process() -> dict:
    """The owner record a process writes: its host and pid."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def died_here(owner: dict) -> bool:
    """Whether `owner` ran on this host and its process is gone. Another host's process, or this
    one, is never called dead here: no signal reaches it (the heartbeat covers other hosts)."""
    pid = int(owner.get("pid", 0) or 0)
    if owner.get("host") != socket.gethostname() or pid == os.getpid():
        return False
    return not process_alive(pid)


def process_alive(pid: int) -> bool:
    """Whether a process of this host is alive (one we may not signal still counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class LaunchFailure:
    line: str  # which ranks failed and how, in one line
    killed: bool  # a process was killed (kill -9, the OOM killer), not crashed (SIGSEGV, NCCL's SIGABRT)

    def __str__(self) -> str:
        return self.line


def launch(devices: int, argv: list[str], env: dict[str, str | None] | None = None) -> LaunchFailure | None:
    """`python <argv>` (`-m freezeframe train ...`, `-m freezeframe.child_run <file>`) on `devices` processes
    of this machine under the elastic launcher, as `torchrun --standalone --nproc_per_node=<devices>` would;
    `env` sets (None: removes) variables in theirs. A process that dies takes the others down (elastic's
    monitor sends them SIGTERM, which ends process 0's run KILLED). Returns None when every process
    succeeded, else which ranks failed and how (elastic's word, "rank N", in the line)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=devices, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5,
                          start_method="spawn")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}
    try:  # elastic installs its own handlers, which raise SignalException after taking the ranks down
        with _environment(env or {}):  # elastic's processes start from a copy of this one's environment
            elastic_launch(config, sys.executable)(*argv)
    except SignalException as exc:
        raise KeyboardInterrupt(f"the {devices} processes were stopped ({exc.sigval.name})") from None
    except ChildFailedError as exc:
        failures = [f"rank {r}: exit {f.exitcode}" + (f" ({f.signal_name()})" if f.exitcode < 0 else "")
                    for r, f in sorted(exc.failures.items())]
        return LaunchFailure(f"{devices} processes: {', '.join(failures)}",
                             killed=any(f.exitcode == -signal.SIGKILL for f in exc.failures.values()))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return None


@contextlib.contextmanager
def _environment(changes: dict[str, str | None]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in changes}
    _set_environment(changes)
    try:
        yield
    finally:
        _set_environment(saved)


def _set_environment(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def stop_when_orphaned() -> None:
    """Stop this process (SIGTERM: its run ends KILLED) once the process that launched it is gone: a worker
    killed -9 would otherwise leave its arm's processes training, holding the devices and writing the
    checkpoint folder that another worker's retry of the arm resumes from."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()
