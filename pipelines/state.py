"""Where a run keeps the state a rerun needs (the default study storage, checkpoints) when the project
folder will not be there next time.

`mlflow run <git URI>` (or a zip URI) fetches the project into a new temporary folder each time
(tempfile.mkdtemp: <tmp>/tmpXXXXXXXX) and runs the entry point there. Defaults relative to that folder
(sqlite:///optuna.db, checkpoints/) would give every run a new, empty study, and leave the files behind
in folders nobody looks at again. So in such a folder, or in one this user cannot write, they move to
one stable folder per user: $FREEZEFRAME_HOME, else $XDG_DATA_HOME/freezeframe, else
~/.local/share/freezeframe. Anywhere else (a checkout, `make run`) they stay in the working folder.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

_FETCHED = re.compile(r"tmp[a-z0-9_]{8}")  # the names tempfile.mkdtemp gives, as MLflow's fetch uses it


def user_state_dir() -> Path:
    if os.environ.get("FREEZEFRAME_HOME"):
        return Path(os.environ["FREEZEFRAME_HOME"]).expanduser()
    return Path(os.environ.get("XDG_DATA_HOME") or "~/.local/share").expanduser() / "freezeframe"


def is_temporary(folder: Path) -> bool:
    """A folder MLflow fetched the project into (a new one per run), or one this user cannot write."""
    folder = folder.resolve()
    fetched = folder.parent == Path(tempfile.gettempdir()).resolve() and _FETCHED.fullmatch(folder.name)
    return bool(fetched) or not os.access(folder, os.W_OK)


def state_dir() -> Path | None:
    """The stable folder for state when the working folder is a temporary one, else None."""
    return user_state_dir() if is_temporary(Path.cwd()) else None


def slug(text: str) -> str:
    """A file-name-safe form of a name (a checkpoint folder's): no separators, no '..', nothing that can
    leave its folder."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "run"
