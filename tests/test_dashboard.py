"""optuna-dashboard as a real process against a study freezeframe wrote, read through its HTTP API."""

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest

from freezeframe.cli import main
from tests.conftest import free_port, wait_for_http
from tests.test_search import SPACE, search_experiment


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.load(reply)


@pytest.mark.slow
def test_dashboard_shows_the_study_and_its_trials(tracking_store, tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    assert main(["search", "--experiment", search_experiment(tmp_path, SPACE), "--storage", storage,
                 "--n_trials", "2"]) == 0
    port = free_port()
    dashboard = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"), storage,
                                  "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/api/studies", process=dashboard)
        studies = get(f"{base}/api/studies")["study_summaries"]
        (study,) = [s for s in studies if s["study_name"] == "tiny"]
        detail = get(f"{base}/api/studies/{study['study_id']}?after=0")
        trials = detail["trials"]
        assert len(trials) == 2 and {t["state"] for t in trials} == {"Complete"}
        sizes = [int(p["param_external_value"]) for t in trials for p in t["params"] if p["name"] == "batch_size"]
        assert len(sizes) == 2 and all(b % 8 == 0 for b in sizes)
        expected = optuna.load_study(study_name="tiny", storage=storage).trials
        run_ids = [a["value"] for t in trials for a in t["user_attrs"] if a["key"] == "mlflow_run_id"]
        assert sorted(run_ids) == sorted(t.user_attrs["mlflow_run_id"] for t in expected)
        # the study's way back to its MLflow parent run, among the study's user attrs
        attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
        runs_page = f"http://127.0.0.1:5000/#/experiments/{attrs['mlflow_experiment_id']}/runs"  # `make ui`
        assert attrs["mlflow_experiment_url"] == runs_page
        assert attrs["mlflow_parent_run_url"] == f"{runs_page}/{attrs['mlflow_parent_run_id']}"
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=20)
