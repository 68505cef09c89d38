"""The MLflow Model Registry as a weights source: `models:/<name>/<version>` or `models:/<name>@<alias>`."""

from __future__ import annotations

import re

import mlflow
import torch
from mlflow.exceptions import MlflowException

from tracking.store import TrackingError

_MODELS_URI = re.compile(r"models:/[^/@]+(/\d+|@[\w-]+)")


def is_registry_uri(weights: str) -> bool:
    return weights.startswith("models:/")


def resolve_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """Load a registered PyTorch model and hand pipelines its state_dict (pipelines never sees mlflow)."""
    if not _MODELS_URI.fullmatch(uri):
        raise TrackingError(f"weights '{uri}' is not a registry URI: use models:/<name>/<version> "
                            "or models:/<name>@<alias>")
    try:
        model = mlflow.pytorch.load_model(uri, map_location="cpu")
    except MlflowException as exc:
        first = str(exc.message).strip().splitlines()[0][:200]
        raise TrackingError(f"cannot load {uri} from the model registry: {first}") from None
    if not isinstance(model, torch.nn.Module):
        raise TrackingError(f"{uri} is not a PyTorch model")
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
