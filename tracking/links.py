"""Links into the MLflow UI that answer an entry point's question: the experiment's Training runs, the
compare page with the arms preselected, a run, a registered model version.

The base is the tracking server when the tracking URI is http(s); for a local store (sqlite, a
database) it is where `make ui` serves it. Routes are the MLflow 3.17 UI's own (hash router): an
experiment opened bare lands on its GenAI Overview, so links go to `/runs`, the Training runs page.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tracking import tags
from tracking.models.registry import MODELS_URI
from tracking.store import tracking_uri

LOCAL_UI = "http://127.0.0.1:5000"  # `make ui`: mlflow server over the project's sqlite store


def ui_base(uri: str | None = None) -> str:
    """The UI's root for a tracking URI (credentials in it are never printed)."""
    parts = urlsplit(uri or tracking_uri())
    if parts.scheme not in ("http", "https"):
        return LOCAL_UI
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def runs_page(experiment_id: str, uri: str | None = None) -> str:
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs"


def run_page(experiment_id: str, run_id: str, uri: str | None = None) -> str:
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs/{run_id}"


def compare_page(experiment_id: str, run_ids: Iterable[str], uri: str | None = None) -> str:
    """The compare view with these runs selected: the UI reads `runs` and `experiments` as JSON arrays
    of quoted ids; percent-encoded, so the link survives terminals and Markdown."""
    return (f"{ui_base(uri)}/#/compare-runs?runs={_json(list(run_ids))}"
            f"&experiments={_json([str(experiment_id)])}")


def charts_page(experiment_id: str, run_ids: Iterable[str], order_by: str, ascending: bool = False,
                uri: str | None = None) -> str:
    """The Training runs page narrowed to these runs, flat (a filter plus a sort by a metric turn the
    parent/child nesting off), best first by `order_by`, in its chart view: every metric charted
    per run, val/acc and test/acc included. The compare page's metric table shows only its first
    rows (alphabetical, system/* before test/ and val/), so this is where accuracy is in sight."""
    ids = ",".join(f"'{run_id}'" for run_id in run_ids)
    query = urlencode({"searchFilter": f"attributes.run_id IN ({ids})", "orderByKey": f"metrics.`{order_by}`",
                       "orderByAsc": str(ascending).lower(), "compareRunsMode": "CHART"}, quote_via=quote)
    return f"{runs_page(experiment_id, uri)}?{query}"


def model_version_page(name: str, version: str | int, uri: str | None = None) -> str:
    return f"{ui_base(uri)}/#/models/{quote(name, safe='')}/versions/{version}"


def registered_model_page(models_uri: str, uri: str | None = None) -> str | None:
    """The version page of `models:/<name>/<v>` or `models:/<name>@<alias>` (the alias resolved now);
    None for anything else."""
    match = MODELS_URI.fullmatch(models_uri)
    if match is None:
        return None
    version = match["version"]
    if version is None:
        try:
            version = MlflowClient(uri).get_model_version_by_alias(match["name"], match["alias"]).version
        except MlflowException:  # no such model or alias (any more): no link rather than a failed command
            return None
    return model_version_page(match["name"], version, uri)


def run_links(run_id: str, uri: str | None = None) -> dict[str, str]:
    """A single run's links: its experiment's Training runs and the run itself."""
    experiment_id = MlflowClient(uri).get_run(run_id).info.experiment_id
    return {"training runs": runs_page(experiment_id, uri), "run": run_page(experiment_id, run_id, uri)}


def study_links(experiment_id: str, parent_run_id: str, run_ids: list[str], what: str, order_by: str,
                ascending: bool = False) -> dict[str, str]:
    """A comparison's or study's links: its Training runs, the compare page and the charts of
    `run_ids` (its arms, or its best finished trials), and the champion once registered."""
    links = {"training runs": runs_page(experiment_id)}
    if run_ids:
        links[f"compare {what}"] = compare_page(experiment_id, run_ids)
        links[f"{what[:-1]} charts"] = charts_page(experiment_id, run_ids, order_by, ascending)
    champion = MlflowClient().get_run(parent_run_id).data.tags.get(tags.CHAMPION, "")
    page = registered_model_page(champion)
    if page:
        links["champion"] = page
    return links


def format_links(links: dict[str, str]) -> str:
    """`MLflow: <label>  <url>` lines, labels aligned, for the end of an entry point's output."""
    width = max((len(label) for label in links), default=0)
    return "\n".join(f"MLflow: {label:<{width}}  {url}" for label, url in links.items())


def _json(values: list[str]) -> str:
    return quote(json.dumps(values, separators=(",", ":")), safe="")
