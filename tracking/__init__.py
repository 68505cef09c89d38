"""All of freezeframe's MLflow code: run lifecycle, logging, registry. Nothing else imports mlflow."""

import logging
import os

# Set before mlflow is imported anywhere in this process: no telemetry from users' runs or tests.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow's INFO lines (database migrations, experiment creation) drown a one-line error; warnings stay.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
# A tracking server that went away fails a run in ~15 s (3 retries, backoff) instead of minutes of
# MLflow's default retries; the run's checkpoint is kept for `resume`.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
if os.environ["MLFLOW_LOGGING_LEVEL"].upper() == "WARNING":  # mlflow may already be imported (and configured)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
