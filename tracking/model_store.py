"""Loading a logged model with the preprocessing metadata freezeframe stored beside it."""

from __future__ import annotations

import json

import mlflow
import torch
from mlflow.exceptions import MlflowException

from pipelines.errors import first_line
from tracking.store import TrackingError


def load_for_inference(uri: str) -> tuple[torch.nn.Module, dict]:
    """(model on CPU in eval mode, metadata) for models:/<name>@<alias>, models:/<name>/<v>, runs:/<id>/model."""
    if not uri.startswith(("models:/", "runs:/", "file:", "/")):
        raise TrackingError(f"model '{uri}' is not a model URI: use models:/<name>@<alias> or runs:/<run_id>/model")
    try:
        info = mlflow.models.get_model_info(uri)
        model = mlflow.pytorch.load_model(uri, map_location="cpu")
    except (MlflowException, OSError) as exc:
        raise TrackingError(f"cannot load model {uri}: {first_line(exc)}") from None
    raw = (info.metadata or {}).get("freezeframe")
    if not raw:
        raise TrackingError(f"model {uri} has no freezeframe preprocessing metadata (was it logged by freezeframe?)")
    return model.eval(), json.loads(raw)
