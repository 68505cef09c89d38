"""Runs whose process died (kill -9, a lost machine) are left RUNNING by MLflow: find and close them.

Each run writes an owner record (run id, host, pid) into its checkpoint folder. The next run of the
same config reads it: if that run is still RUNNING and its process is gone from this host, the run is
marked KILLED, and the new run is tagged with the run it continues.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.processes import died_here, this_process
from tracking import tags
from tracking.runs.session import end_run

OWNER_FILE = "owner.json"


def claim(folder: Path, run_id: str, resuming: bool = False) -> str | None:
    """Record this run as the folder's owner; returns the previous owner's run id, closed if it died
    (and, when this run resumes that one's checkpoint, tagged on this run as `resumed_from_run`)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / OWNER_FILE
    previous = None
    if path.is_file():
        try:
            owner = json.loads(path.read_text())
            previous = owner.get("run_id")
        except (OSError, ValueError):
            owner = {}
        if previous and previous != run_id:
            _close_if_dead(previous, owner)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"run_id": run_id, **this_process()}))
    tmp.replace(path)
    if previous and previous != run_id and resuming:
        MlflowClient().set_tag(run_id, tags.RESUMED_FROM_RUN, previous)
    return previous if previous != run_id else None


def _close_if_dead(run_id: str, owner: dict) -> None:
    if not died_here(owner):
        return  # another machine's run, or one still alive: not ours to close
    try:
        if MlflowClient().get_run(run_id).info.status == "RUNNING":
            end_run(run_id, RunStatus.to_string(RunStatus.KILLED), f"its process (pid {owner.get('pid')}) died")
    except MlflowException:
        pass  # the run lives in another tracking store
