"""Shared fixtures: a tmp sqlite tracking store and a tmp working folder per test; tiny, fast configs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("TQDM_DISABLE", "1")
# One torch thread per process, here and in the workers the tests start: `make test` runs two test
# processes on two cores, and the multi-worker tests several more; more threads would only contend.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pipelines.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# The longest tests (30-80 s each on 2 cores), longest first: started last, one of them would run alone at
# the end while the other test process sits idle (measured: 10 % of the suite's CPU time idle before).
LONGEST_FIRST = ("test_ray", "test_distributed", "test_slurm", "test_browser", "test_e2e", "test_git_uri",
                 "test_readme", "test_search_budget", "test_faults", "test_package")


def pytest_collection_modifyitems(items):
    """Slow tests first, the longest modules among them first: with several pytest-xdist workers the quick
    ones then fill the gaps at the end, instead of two long tests running last, alone. `make test` passes
    --maxschedchunk 1 so that each worker takes the next test when free; xdist's default chunks would give
    one worker every slow test."""
    def order(item) -> tuple[bool, int]:
        slow = item.get_closest_marker("slow") is not None or item.get_closest_marker("e2e") is not None
        module = item.module.__name__.rsplit(".", 1)[-1]
        return not slow, LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=order)


def pytest_sessionfinish(session):
    """The preloaded server of the worker tests (tests/preloaded.py), where this process started one."""
    from tests import preloaded

    preloaded.stop()


_EMPTY_STORE: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def state_home(tmp_path_factory) -> Path:
    """The per-user state folder (pipelines.state) in tmp, for this process and the ones it starts: a
    test that runs the project from a temporary folder never writes to ~/.local/share."""
    home = tmp_path_factory.mktemp("freezeframe-home")
    os.environ["FREEZEFRAME_HOME"] = str(home)
    return home


@pytest.fixture(scope="session", autouse=True)
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store, made once per test process: creating one runs MLflow's schema
    migrations (~2.5 s); each test gets a copy (milliseconds), still a store of its own."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    _EMPTY_STORE.append(path)
    return path


def store_in(folder: Path, name: str = "mlflow.db") -> str:
    """`sqlite:///<folder>/<name>`, a fresh empty store (copied, unless the test made one there already;
    outside pytest, as in the benchmarks, there is no copy to take and MLflow creates it)."""
    import shutil

    target = folder / name
    if _EMPTY_STORE and not target.exists():
        shutil.copyfile(_EMPTY_STORE[0], target)
    return f"sqlite:///{target}"


@pytest.fixture
def tracking_store(tmp_path, monkeypatch):
    """A fresh sqlite store, and the test's cwd in tmp so ./mlruns artifacts and checkpoints land there."""
    import mlflow

    uri = store_in(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)  # mlflow.set_experiment exports it; no test inherits it


def tiny_overrides(tmp_path: Path, **extra) -> dict:
    """timm's test_resnet (0.37 M params) on 32 px digits, a few dozen images per split."""
    base = {
        "model.backbone": "timm/test_resnet", "model.weights": "none", "model.freeze": "unfrozen",
        "data.image_size": 32, "data.max_samples": 40, "train.epochs": 2, "train.batch_size": 16,
        "train.lr": 0.01, "train.checkpoint_dir": str(tmp_path / "checkpoints"), "tracking.log_model": False,
        "tracking.experiment_name": "tests",
    }
    base.update(extra)
    return base


def tiny_experiment(tmp_path: Path, extra: str = "", filename: str = "experiment.yaml", **overrides) -> Path:
    """An experiment file with the tiny settings (and overrides), plus raw YAML such as a compare: section."""
    import yaml

    sections: dict = {}
    for key, value in tiny_overrides(tmp_path, **overrides).items():
        section, leaf = key.split(".", 1)
        sections.setdefault(section, {})[leaf] = value
    path = tmp_path / filename  # the file's stem names the registered model: freezeframe-<stem>
    path.write_text(yaml.safe_dump(sections) + extra)
    return path


@pytest.fixture
def tiny_cfg(tmp_path):
    return load_config(None, tiny_overrides(tmp_path))


def runs_in(uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, seconds: float = 60, process=None) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {seconds}s")


# MLflow 3's server also starts GenAI job runners (half a dozen huey processes): not needed for training runs
SERVER_ENV = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@contextlib.contextmanager
def serving_mlflow(folder: Path, extra_args: tuple[str, ...] = (), env: dict | None = None,
                   seconds: float = 60) -> Iterator[str]:
    """A real `mlflow server` process on a free loopback port, with a sqlite backend and artifact store in
    `folder`; `extra_args` and `env` for variants (`--app-name basic-auth` and its settings). Also the
    benchmarks' server (benchmarks/bench_study_storage.py); `seconds` to wait for it to answer."""
    import subprocess
    import sys

    port = free_port()
    log = open(folder / "mlflow-server.log", "w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
         store_in(folder, "server.db"), "--artifacts-destination", str(folder / "server-artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1", *extra_args],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder, env={**SERVER_ENV, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", seconds, process=process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One real `mlflow server` per test process, shared by the tests that only need a server: starting
    one costs ~12 s of CPU. Each test keeps to its own experiment, study, storage and model names."""
    with serving_mlflow(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


POSTGRES = "postgresql://postgres@127.0.0.1:5432"


def require_cluster_engines(why: str) -> None:
    """Skip a Ray or Slurm test this machine cannot run, unless FREEZEFRAME_REQUIRE_CLUSTER=1 (as .ci/run
    sets) makes that a failure."""
    if os.environ.get("FREEZEFRAME_REQUIRE_CLUSTER") == "1":
        pytest.fail(f"required here (FREEZEFRAME_REQUIRE_CLUSTER=1): {why}")
    pytest.skip(why)


@pytest.fixture
def postgres_databases():
    """Fresh PostgreSQL databases for one test, dropped after; skipped where no PostgreSQL answers,
    unless FREEZEFRAME_REQUIRE_POSTGRES=1 (as .ci/run sets) makes that a failure."""
    import uuid

    try:
        import psycopg2

        admin = psycopg2.connect(f"{POSTGRES}/postgres", connect_timeout=3)
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("FREEZEFRAME_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL at {POSTGRES} is required here (FREEZEFRAME_REQUIRE_POSTGRES=1): {exc}")
        pytest.skip(f"no PostgreSQL at {POSTGRES}: {str(exc).strip().splitlines()[0]}")
    admin.autocommit = True
    names = [f"freezeframe_{kind}_{uuid.uuid4().hex[:10]}" for kind in ("optuna", "mlflow")]
    with admin.cursor() as cursor:
        for name in names:
            cursor.execute(f"CREATE DATABASE {name}")
    try:
        # the driver named: MLflow would otherwise pick psycopg (3), which is not installed
        yield [f"{POSTGRES.replace('postgresql://', 'postgresql+psycopg2://')}/{name}" for name in names]
    finally:
        with admin.cursor() as cursor:
            for name in names:
                cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
