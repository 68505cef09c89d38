"""What a user sees: the MLflow UI and optuna-dashboard in a real headless Chromium (Debian's package).

Skipped where /usr/bin/chromium is missing, unless FREEZEFRAME_REQUIRE_BROWSER=1 (as .ci/run sets,
after installing it). Screenshots land in the test's tmp folder, or in the folder FREEZEFRAME_SCREENSHOTS
names; docs/ holds the README's, taken from a real comparison (its plot set to val/acc and test/acc).
"""

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from freezeframe.cli import main
from tests.conftest import ROOT, free_port, wait_for_http
from tests.test_compare import write_experiment
from tests.test_search import SPACE, search_experiment

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
         "--window-size=1600,1100", "--virtual-time-budget=30000"]  # the window is resized for screenshots


@pytest.fixture(autouse=True)
def chromium_present():
    if CHROMIUM is None:
        if os.environ.get("FREEZEFRAME_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is required here (FREEZEFRAME_REQUIRE_BROWSER=1): apt-get install chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")


def browse(url: str, profile: Path, screenshot: Path | None = None, height: int = 1100,
           expect: tuple[str, ...] = ()) -> str:
    """The page's DOM after its scripts ran (and a screenshot of it, `height` px tall). With `expect`, read
    it up to three times until every expected text is there: on a loaded machine the charts section can
    still be fetching its metrics when Chromium's time budget ends (the assertions that follow still
    fail if it never shows them)."""
    base = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom"]
    # one browser for the screenshot and the DOM: each Chromium start costs seconds of CPU
    shooting = [f"--window-size=1600,{height}", f"--screenshot={screenshot}"] if screenshot is not None else []
    for _ in range(3):
        page = subprocess.run([*base, *shooting, url], capture_output=True, text=True, timeout=120,
                              check=True).stdout
        if all(text in page for text in expect):
            break
    if screenshot is not None:
        assert screenshot.stat().st_size > 20_000  # a rendered page, not a blank one
    return page


def shot(tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("FREEZEFRAME_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def top_level_rows(page: str) -> list[str]:
    """The run names the runs table shows as rows: nested runs stay folded under their parent's row."""
    names = re.findall(r'href="#/experiments/\d+/runs/[0-9a-f]{32}"[^>]*>(?:<[^>]+>)*([^<]+)<', page)
    return list(dict.fromkeys(html.unescape(name).strip() for name in names))


def printed_link(output: str, label: str) -> str:
    """The URL an entry point printed as `MLflow: <label>  <url>`."""
    (line,) = [line for line in output.splitlines() if line.startswith(f"MLflow: {label} ")]
    return line.split()[-1]


def compare_through_mlflow_run(server: str, grid: str, folder: Path) -> str:
    """`mlflow run . -e compare` against the server, as a user runs it; its printout."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(leaked, None)
    done = subprocess.run([str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "-e", "compare",
                           "--env-manager", "local", "--experiment-name", "seen", "-P", f"experiment={grid}",
                           "-P", f"storage=sqlite:///{folder / 'optuna.db'}"],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_mlflow_ui_shows_the_comparison(mlflow_server, tmp_path):
    """The links compare prints open the Training runs page and the compare view of its arms; the page
    has one row for the comparison (its launcher's run folds under it; a rerun's too: tests/test_git_uri.py)."""
    mlflow.set_tracking_uri(mlflow_server)
    grid = write_experiment(tmp_path, "  name: seen\n  freeze: [frozen, unfrozen]\n",
                            **{"tracking.experiment_name": "seen", "tracking.log_model": True})
    output = compare_through_mlflow_run(mlflow_server, grid, tmp_path)
    client = MlflowClient(mlflow_server)
    (experiment,) = [e for e in client.search_experiments() if e.name == "seen"]
    children = [r for r in client.search_runs([experiment.experiment_id])
                if "mlflow.parentRunId" in r.data.tags and "worker_of" not in r.data.tags]
    arms = ("timm/test_resnet · frozen · seed 0", "timm/test_resnet · unfrozen · seed 0")

    runs_link = printed_link(output, "training runs")
    assert runs_link == f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs"
    runs_page = browse(runs_link, tmp_path / "p1", shot(tmp_path, "training-runs.png"), height=1000)
    assert top_level_rows(runs_page) == ["compare · seen"]  # its arms and its worker folded under it
    assert "Training runs" in runs_page

    compare_link = printed_link(output, "compare arms")
    assert compare_link.startswith(f"{mlflow_server}/#/compare-runs?runs=")
    assert all(r.info.run_id in compare_link for r in children) and len(children) == 2
    compare = browse(compare_link, tmp_path / "p2", shot(tmp_path, "compare-runs.png"), expect=arms)
    assert "Comparing 2 Runs" in compare
    for name in arms:
        assert name in compare, name
    # its metric table shows only its first rows (system/* before test/ and val/): accuracy is charted here
    charts = browse(printed_link(output, "arm charts"), tmp_path / "p4", shot(tmp_path, "arm-charts.png"),
                    expect=(*arms, "val/acc", "test/acc"))
    text = re.sub(r"<[^>]+>", "", charts)
    assert "2 matching runs" in text and "compare · seen" not in text  # the arms alone, flat
    for name in (*arms, "val/acc", "test/acc"):
        assert name in charts, name

    version = client.get_model_version_by_alias("freezeframe-grid", "champion").version
    champion_link = printed_link(output, "champion")
    assert champion_link == f"{mlflow_server}/#/models/freezeframe-grid/versions/{version}"
    champion = browse(champion_link, tmp_path / "p3")
    assert f"Version {version}" in champion and "best arm of comparison seen" in champion


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
        page = browse(f"http://127.0.0.1:{port}/dashboard/studies/1", tmp_path / "p3",
                      shot(tmp_path, "study.png"), height=1000)
        assert "tiny" in page and "History" in page and "batch_size" in page
        assert "mlflow_parent_run_url" in page  # Study User Attributes: the way back to MLflow
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=20)
