"""Links into the MLflow UI (tracking.links): the server's own base, or `make ui`'s for a local store."""

import json
import urllib.parse

from mlflow.tracking import MlflowClient

from tracking import links


def test_an_http_tracking_uri_is_the_ui_base_without_credentials():
    assert links.ui_base("http://tracking-host:5000/") == "http://tracking-host:5000"
    assert links.ui_base("https://user:secret@mlflow.example.org/prefix/") == "https://mlflow.example.org/prefix"


def test_a_local_store_links_to_make_ui(monkeypatch, tmp_path):
    assert links.ui_base(f"sqlite:///{tmp_path}/mlflow.db") == "http://127.0.0.1:5000"
    assert links.ui_base("postgresql+psycopg2://user@db-host/mlflow") == "http://127.0.0.1:5000"
    monkeypatch.setattr(links, "tracking_uri", lambda: "http://127.0.0.1:5999")  # the process's URI by default
    assert links.runs_page("7") == "http://127.0.0.1:5999/#/experiments/7/runs"


def test_compare_page_selects_each_run_of_the_experiment():
    ids = ["0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"]
    url = links.compare_page("12", ids, uri="sqlite:///mlflow.db")
    base, query = url.split("/#/compare-runs?")
    assert base == "http://127.0.0.1:5000" and not any(c in query for c in '[]" ')  # percent-encoded
    params = urllib.parse.parse_qs(query)
    assert json.loads(params["runs"][0]) == ids and json.loads(params["experiments"][0]) == ["12"]


def test_charts_page_lists_the_runs_flat_best_first_in_the_chart_view():
    url = links.charts_page("3", ["aa11", "bb22"], "val/loss", ascending=True, uri="http://host:5000")
    base, query = url.split("?")
    assert base == "http://host:5000/#/experiments/3/runs" and " " not in query
    params = {k: v[0] for k, v in urllib.parse.parse_qs(query).items()}
    assert params == {"searchFilter": "attributes.run_id IN ('aa11','bb22')", "orderByKey": "metrics.`val/loss`",
                      "orderByAsc": "true", "compareRunsMode": "CHART"}


def test_model_version_page_follows_an_alias(tracking_store):
    client = MlflowClient()
    client.create_registered_model("freezeframe-x y")
    version = client.create_model_version("freezeframe-x y", "file:///nowhere/model")
    client.set_registered_model_alias("freezeframe-x y", "champion", version.version)
    expected = f"http://127.0.0.1:5000/#/models/freezeframe-x%20y/versions/{version.version}"
    assert links.registered_model_page("models:/freezeframe-x y@champion") == expected
    assert links.registered_model_page(f"models:/freezeframe-x y/{version.version}") == expected
    assert links.registered_model_page("models:/freezeframe-x y@gone") is None
    assert links.registered_model_page("runs:/abc/model") is None


def test_format_links_aligns_labels():
    text = links.format_links({"training runs": "http://a", "champion": "http://b"})
    assert text.splitlines() == ["MLflow: training runs  http://a", "MLflow: champion       http://b"]
