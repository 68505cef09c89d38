"""What a user sees: the MLflow UI and optuna-dashboard in a real headless Chromium (Debian's package).

Skipped where /usr/bin/chromium is missing, unless FREEZEFRAME_REQUIRE_BROWSER=1 (as .ci/run sets,
after installing it). Screenshots land in the test's tmp folder; docs/ holds the README's copies.
"""

import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from freezeframe.cli import main
from tests.conftest import free_port, wait_for_http
from tests.test_compare import write_experiment
from tests.test_search import SPACE, search_experiment

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
         "--window-size=1600,1100", "--virtual-time-budget=30000"]


@pytest.fixture(autouse=True)
def chromium_present():
    if CHROMIUM is None:
        if os.environ.get("FREEZEFRAME_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is required here (FREEZEFRAME_REQUIRE_BROWSER=1): apt-get install chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")


def browse(url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (and a screenshot of it)."""
    base = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}"]
    if screenshot is not None:
        subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True)
        assert screenshot.stat().st_size > 20_000  # a rendered page, not a blank one
    done = subprocess.run([*base.copy(), "--dump-dom", url], capture_output=True, text=True, timeout=120,
                          check=True)
    return done.stdout


def test_mlflow_ui_shows_the_comparison(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(mlflow_server)
    grid = write_experiment(tmp_path, "  name: seen\n  freeze: [frozen, unfrozen]\n",
                            **{"tracking.experiment_name": "seen"})
    assert main(["compare", "--experiment", grid]) == 0
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    client = MlflowClient(mlflow_server)
    (experiment,) = [e for e in client.search_experiments() if e.name == "seen"]
    children = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]

    runs_page = browse(f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs", tmp_path / "p1",
                       tmp_path / "training-runs.png")
    assert "compare · seen" in runs_page  # the parent, its children folded under it

    ids = urllib.parse.quote(json.dumps([r.info.run_id for r in children]))
    compare = browse(f"{mlflow_server}/#/compare-runs?runs={ids}&experiments="
                     f"{urllib.parse.quote(json.dumps([experiment.experiment_id]))}",
                     tmp_path / "p2", tmp_path / "compare-runs.png")
    assert "Comparing 2 Runs" in compare
    for name in ("timm/test_resnet · frozen · seed 0", "timm/test_resnet · unfrozen · seed 0", "val/acc",
                 "test/acc"):
        assert name in compare, name


def test_optuna_dashboard_shows_the_study(tmp_path, tracking_store):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    assert main(["search", "--experiment", search_experiment(tmp_path, SPACE), "--storage", storage,
                 "--n_trials", "2"]) == 0
    port = free_port()
    dashboard = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"), storage, "--host",
                                  "127.0.0.1", "--port", str(port), "--quiet"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/studies", process=dashboard)
        page = browse(f"http://127.0.0.1:{port}/dashboard/studies/1", tmp_path / "p3", tmp_path / "study.png")
        assert "tiny" in page and "History" in page and "batch_size" in page
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=20)
