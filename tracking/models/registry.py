"""The MLflow Model Registry as a weights source: `models:/<name>/<version>` or `models:/<name>@<alias>`.

URIs and registration only, without torch: a study's summary registers its champion and links to it,
and a rerun with nothing left to train loads no training stack. Reading the weights is model_store's."""

from __future__ import annotations

import re

import mlflow
from mlflow.exceptions import MlflowException

from tracking import tags
from tracking.store import TrackingError

# models:/<name>/<version> or models:/<name>@<alias>: the registry URIs freezeframe reads and links to
MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))")


def is_registry_uri(weights: str) -> bool:
    return weights.startswith("models:/")


def register_run_model(run_id: str, name: str, alias: str, description: str, tag_run_id: str | None = None) -> str:
    """Register the model a run logged, point `alias` at the new version; returns the `models:/` URI
    (also tagged as `champion` on `tag_run_id`, the comparison's or study's parent)."""
    from mlflow.tracking import MlflowClient

    run = MlflowClient().get_run(run_id)
    logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                         filter_string=f"source_run_id = '{run_id}'")
    if not logged:
        raise TrackingError(f"run {run_id} logged no model to register (was tracking.log_model off?)")
    version = mlflow.register_model(logged[-1].model_uri, name, tags={tags.SOURCE_RUN_ID: run_id})
    client = MlflowClient()
    client.update_model_version(name, version.version, description=description)
    client.set_registered_model_alias(name, alias, version.version)
    uri = f"models:/{name}@{alias}"
    if tag_run_id:
        client.set_tag(tag_run_id, tags.CHAMPION, uri)
    return uri


def register_champion(run_id: str, name: str, description: str, parent_run_id: str) -> str | None:
    """`models:/<name>@champion` → the run's model, tagged on the parent. No new version when the alias
    already points at this run (a rerun, or a second worker); None when the run logged no model."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        current = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        current = None  # no such model or alias yet
    if current is not None and current.tags.get(tags.SOURCE_RUN_ID) == run_id:
        uri = f"models:/{name}@champion"
        client.set_tag(parent_run_id, tags.CHAMPION, uri)
        return uri
    try:
        return register_run_model(run_id, name, "champion", description, tag_run_id=parent_run_id)
    except TrackingError:  # the run was logged with tracking.log_model off
        client.set_tag(parent_run_id, tags.CHAMPION, "none: the best run logged no model")
        return None
