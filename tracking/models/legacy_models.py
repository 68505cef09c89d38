"""`freezeframe reregister`: the one place freezeframe unpickles a model, and only when asked to by name.

Versions registered before freezeframe wrote `weights/` carry only MLflow's pickle, which freezeframe
refuses to load for weights or predict. Whoever trusts such a version runs this once: its pickle is
loaded here, its tensors and description written as `weights/` into the same logged model, so the version
number and its aliases keep working, and from then on nobody unpickles it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.data.loaders import Preprocessing
from pipelines.errors import first_line
from pipelines.models import portable
from tracking import tags
from tracking.models.model_store import WEIGHTS_DIR, LegacyModelError, fetched_weights
from tracking.models.registry import MODELS_URI
from tracking.store import TrackingError


def _version(client: MlflowClient, uri: str):
    found = MODELS_URI.fullmatch(uri)
    try:
        if found["alias"]:
            return client.get_model_version_by_alias(found["name"], found["alias"])
        return client.get_model_version(found["name"], found["version"])
    except MlflowException as exc:
        raise TrackingError(f"cannot load model {uri}: {first_line(exc)}") from None


def reregister(uri: str) -> str:
    """Add weights/ to the version `uri` names, from its pickle; returns a line saying what was done."""
    if not MODELS_URI.fullmatch(uri):
        raise TrackingError(f"model '{uri}' is not a registry URI: use models:/<name>/<version> or "
                            "models:/<name>@<alias>")
    client = MlflowClient()
    version = _version(client, uri)
    try:
        with fetched_weights(uri, f"cannot load model {uri}"):
            return f"{uri} already has {WEIGHTS_DIR}/{portable.TENSORS}: nothing to do"
    except LegacyModelError:
        pass  # the case this command is for
    model_id = version.model_id or (version.source.removeprefix("models:/") if version.source.startswith("models:/m-")
                                    else None)
    if not model_id:
        raise TrackingError(f"{uri} is not an MLflow 3 logged model (source {version.source}): log it again")
    raw = (mlflow.models.get_model_info(uri).metadata or {}).get("freezeframe")
    if not raw:
        raise TrackingError(f"{uri} was not logged by freezeframe (no preprocessing metadata): log it again")
    old = json.loads(raw)
    run = client.get_run(version.run_id) if version.run_id else None
    weights = run.data.tags.get(tags.WEIGHTS, "unknown") if run else "unknown"
    try:
        description = portable.describe(old["backbone"], weights, old.get("freeze", "unknown"), old["class_names"],
                                        old["image_size"], Preprocessing(old["mean"], old["std"], old["interpolation"]))
        model = mlflow.pytorch.load_model(uri, map_location="cpu")  # the deliberate unpickle the user asked for
    except (KeyError, MlflowException, OSError) as exc:
        raise TrackingError(f"cannot re-register {uri}: {first_line(exc)}") from None
    with tempfile.TemporaryDirectory() as tmp:
        portable.write(Path(tmp), model, description)
        portable.rebuild(Path(tmp), uri)  # the files must rebuild the network before anyone relies on them
        client.log_model_artifacts(model_id, tmp, WEIGHTS_DIR)
    client.set_model_version_tag(version.name, version.version, tags.MODEL_WEIGHTS,
                                 "from its pickle: freezeframe reregister")
    return f"{uri} (version {version.version}): {WEIGHTS_DIR}/{portable.TENSORS} added; it loads without its pickle now"
