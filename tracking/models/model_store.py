"""Logged models, and what freezeframe reads back from them: `weights/` (safetensors + JSON), never the pickle.

Each logged model keeps MLflow's pickled PyTorch flavour for `mlflow models serve` and pyfunc users
(load only models you trust) and carries `weights/model.safetensors` and `weights/freezeframe.json`
beside it. `weights=models:/...` and `predict` download those two files by name and rebuild the network
from them (pipelines/models/portable.py): a version registered by someone else can run no code here.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from pipelines.errors import first_line
from pipelines.models import portable
from tracking.models.registry import MODELS_URI
from tracking.store import TrackingError

if TYPE_CHECKING:  # annotations only: reading weights back (links, the registry) needs no training code
    from pipelines.training.results import PreparedTraining

WEIGHTS_DIR = "weights"
_MODEL_URI_PREFIXES = ("models:/", "runs:/", "file:", "/")


def log_weights(model_id: str, model: torch.nn.Module, description: dict) -> None:
    """Into the logged model's own artifacts, so `models:/<name>@<alias>/weights/...` finds them."""
    with tempfile.TemporaryDirectory() as tmp:
        portable.write(Path(tmp), model, description)
        MlflowClient().log_model_artifacts(model_id, tmp, WEIGHTS_DIR)


def model_metadata(prepared: PreparedTraining) -> dict:
    """What rebuilds the network and what predict needs to preprocess an image exactly as in training,
    stored with the model (weights/freezeframe.json, and the MLflow model's metadata)."""
    return portable.describe(prepared.backbone.full_name, prepared.cfg.model.weights, prepared.cfg.model.freeze,
                             prepared.data.class_names, prepared.cfg.data.image_size, prepared.backbone.preprocessing)


def log_model(run_id: str, prepared: PreparedTraining) -> None:
    """MLflow's PyTorch model (pickled: for `mlflow models serve` and pyfunc users, who load only models
    they trust) plus weights/ as safetensors + JSON, the only part freezeframe itself ever loads back."""
    model = portable.export_copy(prepared.backbone.model)
    example, _ = prepared.data.datasets["val"][0]
    example = example.unsqueeze(0).numpy().astype(np.float32)
    with torch.inference_mode():
        output = model(torch.from_numpy(example)).numpy()
    requirements = [f"{p}=={importlib.metadata.version(p)}" for p in ("torch", "torchvision", "timm")]
    description = model_metadata(prepared)
    # pickle, not MLflow 3's default torch.export (pt2): an export specialises the batch dimension to the
    # example's and loses the module structure that `mlflow models serve` users fine-tune from.
    with _quiet("mlflow.pytorch"):  # its pickle advice is for loaders: freezeframe loads weights/ instead
        info = mlflow.pytorch.log_model(model, name="model", signature=infer_signature(example, output),
                                        input_example=example, pip_requirements=requirements,
                                        serialization_format="pickle", run_id=run_id,  # Model.log's run
                                        metadata={"freezeframe": json.dumps(description)})
    log_weights(info.model_id, model, description)


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def log_run_weights(run_id: str, prepared: PreparedTraining, artifact_path: str = "checkpoint") -> None:
    """Without an MLflow model, the weights still go to the run: checkpoint/ as safetensors + JSON. The live
    model's tensors are copied to the CPU as they are written, so no whole-module copy is needed first."""
    with tempfile.TemporaryDirectory() as tmp:
        portable.write(Path(tmp), prepared.backbone.model, model_metadata(prepared))
        MlflowClient().log_artifacts(run_id, tmp, artifact_path)


class LegacyModelError(TrackingError):
    """A model with no weights/ (logged before freezeframe wrote them): only its pickle could load it."""


def legacy_hint(uri: str) -> str:
    return (f"{uri} has no {WEIGHTS_DIR}/{portable.TENSORS}: it was logged before freezeframe saved safetensors "
            "weights (or not by freezeframe), and freezeframe never unpickles a registry model; re-register it "
            f"with `freezeframe reregister --model {uri}` (unpickles it once: only a model you trust) or rerun "
            "the run that trained it")


@contextmanager
def fetched_weights(uri: str, what: str) -> Iterator[Path]:
    """A tmp folder holding the model's two weights files, downloaded by name (nothing else of the model,
    so a crafted version can neither add files nor make this read its pickle). `what` starts each error."""
    try:
        base = _artifact_location(uri)
        top = {Path(f.path).name for f in mlflow.artifacts.list_artifacts(artifact_uri=base)}
        found = ({Path(f.path).name for f in mlflow.artifacts.list_artifacts(artifact_uri=f"{base}/{WEIGHTS_DIR}")}
                 if WEIGHTS_DIR in top else set())
    except (MlflowException, OSError) as exc:
        raise TrackingError(f"{what}: {first_line(exc)}") from None
    if not top:
        raise TrackingError(f"{what}: nothing is logged at {uri}")
    if not set(portable.FILES) <= found:
        raise LegacyModelError(legacy_hint(uri))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "weights"  # downloads keep the artifact's path below tmp: moved here by name
        folder.mkdir()
        try:
            for name in portable.FILES:
                got = mlflow.artifacts.download_artifacts(artifact_uri=f"{base}/{WEIGHTS_DIR}/{name}", dst_path=tmp)
                Path(got).rename(folder / name)
        except (MlflowException, OSError) as exc:
            raise TrackingError(f"{what}: {first_line(exc)}") from None
        yield folder


def _artifact_location(uri: str) -> str:
    """Where the model's files are: a `models:/` URI resolved once (name, version or alias, or a logged
    model's id: MLflow reads `models:/m-<id>/weights` as a version named "weights"); others as given."""
    if uri.startswith("models:/"):
        from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

        return ModelsArtifactRepository.get_underlying_uri(uri).rstrip("/")
    return uri.rstrip("/")


def load_for_inference(uri: str) -> tuple[torch.nn.Module, dict]:
    """(network on CPU in eval mode, its description) for models:/<name>@<alias>, models:/<name>/<v>,
    runs:/<id>/model or a local model folder; the description holds predict's preprocessing."""
    if not uri.startswith(_MODEL_URI_PREFIXES):
        raise TrackingError(f"model '{uri}' is not a model URI: use models:/<name>@<alias> or runs:/<run_id>/model")
    with fetched_weights(uri, f"cannot load model {uri}") as folder:
        return portable.rebuild(folder, uri)


def resolve_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """The registered model's tensors for pipelines (which never sees mlflow): its safetensors file, read
    as data. Its pickled flavour is never loaded, so registering a version cannot run code here."""
    if not MODELS_URI.fullmatch(uri):
        raise TrackingError(f"weights '{uri}' is not a registry URI: use models:/<name>/<version> "
                            "or models:/<name>@<alias>")
    with fetched_weights(uri, f"cannot load {uri} from the model registry") as folder:
        portable.read_description(folder / portable.DESCRIPTION, uri)  # a crafted description fails here
        return portable.read_tensors(folder / portable.TENSORS, uri)
