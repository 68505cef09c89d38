"""All of freezeframe's MLflow code: run lifecycle, logging, registry. Nothing else imports mlflow."""

import logging
import os

# Set before mlflow is imported anywhere in this process: no telemetry from users' runs or tests.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow's INFO lines (database migrations, experiment creation) drown a one-line error; warnings stay.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
if os.environ["MLFLOW_LOGGING_LEVEL"].upper() == "WARNING":  # mlflow may already be imported (and configured)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
