"""The tracking store: check that it answers, quickly, before any training starts."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import mlflow

from pipelines.errors import FreezeframeError, first_line, without_password

TIMEOUT_S = 3.0


class TrackingError(FreezeframeError):
    """The tracking store or registry cannot be used."""


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()  # MLFLOW_TRACKING_URI, else MLflow's default sqlite:///mlflow.db


def ensure_reachable(uri: str | None = None) -> str:
    """Fail in seconds, with the URI in the message, rather than after a long retry loop mid-run."""
    uri = uri or tracking_uri()
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=TIMEOUT_S) as reply:
                reply.read(16)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"tracking server {uri} is unreachable ({reason}); start it (make ui) "
                                "or unset MLFLOW_TRACKING_URI for the local sqlite store") from None
        ensure_access(uri)
    elif scheme == "sqlite":
        path = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
        if not path.parent.is_dir():
            raise TrackingError(f"tracking store {uri}: folder {path.parent} does not exist")
        _create_once(uri, path)
    elif scheme.startswith(("postgresql", "mysql", "mssql")):
        _check_database(uri)
    elif scheme in ("", "file"):
        raise TrackingError(f"tracking URI {uri} is a file store, which this MLflow no longer supports; "
                            "use sqlite:///mlflow.db or a tracking server")
    return uri


def ensure_access(uri: str | None = None) -> None:
    """A server's /health answers anyone, even with `--app-name basic-auth`: one authenticated read, with
    the credentials MLflow itself would send (MLFLOW_TRACKING_USERNAME/PASSWORD, a token, the credentials
    file), so a missing or wrong password fails here in one line, before any run exists. Neither the
    user name nor the password is ever part of the message."""
    uri = uri or tracking_uri()
    if urlparse(uri).scheme not in ("http", "https"):
        return
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        reply = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "GET",
                             max_retries=0, timeout=TIMEOUT_S, raise_on_status=False, params={"max_results": 1})
    except Exception as exc:  # noqa: BLE001 - requests and MLflow raise their own error types
        raise TrackingError(f"tracking server {uri} is unreachable ({first_line(exc)})") from None
    creds = get_default_host_creds(uri)
    if reply.status_code == 401:
        given = "the user name or password was refused" if creds.username else "no credentials were given"
        raise TrackingError(f"tracking server {uri} is unauthorized: {given}; set MLFLOW_TRACKING_USERNAME/"
                            "MLFLOW_TRACKING_PASSWORD to an account of this server (mlflow server --app-name "
                            "basic-auth)")
    if reply.status_code == 403:
        raise TrackingError(f"tracking server {uri} refused access (403): ask its admin for permission on it")


def _create_once(uri: str, path: Path) -> None:
    """Workers started together on a new sqlite store would race in MLflow's schema migration
    (alembic's "Online migration expected to match one row"): the first creates it, the others wait."""
    import fcntl

    from mlflow.tracking import MlflowClient

    with open(path.with_name(path.name + ".create-lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(uri).search_experiments(max_results=1)  # creates or migrates; cached per process
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _check_database(uri: str) -> None:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": int(TIMEOUT_S)})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - drivers raise their own error types
        raise TrackingError(f"tracking database {without_password(uri)} is unreachable: {first_line(exc)}") from None
