"""Which process owns something (a running trial, a run's checkpoint folder), and whether that owner is
known to be dead: the same record and the same check for the study worker and the tracker. And this
process's place in a data-parallel run, read from torchrun's environment without importing torch (the
command line asks before it loads anything)."""

from __future__ import annotations

import os
import socket


def world_size() -> int:
    """How many processes train this run together (torchrun's WORLD_SIZE); 1 alone."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank among them (torchrun's RANK); 0 alone."""
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
