"""freezeframe's entry points: the composition root that wires pipelines/ (the ML) to tracking/ (MLflow)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path


def _version() -> str:
    """pyproject.toml's version: from the installed metadata, or from the file itself in a checkout that was
    never installed (`mlflow run .` in an environment built from conda.yaml runs the code in place)."""
    try:
        return importlib.metadata.version("freezeframe")
    except importlib.metadata.PackageNotFoundError:
        import tomllib

        try:
            pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
            return str(pyproject["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


__version__ = _version()
