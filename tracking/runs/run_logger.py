"""What one run logs: params, tags, dataset lineage, per-epoch metrics, artifacts and the model.

The MLflow UI compares runs by these names, so they are stable: `train/loss`, `val/acc`, `test/*`,
`model/params_trainable`, `perf/images_per_s`; params are the resolved config flattened
(`train.lr`); tags carry the comparison axes (backbone, freeze, weights, dataset, seed).
"""

from __future__ import annotations

import collections
import contextlib
import importlib.metadata
import time
from collections.abc import Callable, Iterator

from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from pipelines import config as config_mod
from pipelines.config import RunConfig
from pipelines.reports import figures
from pipelines.reports.predictions import artifact_path
from pipelines.training.results import PreparedTraining, TrainingOutcome
from tracking import tags as t
from tracking.models import model_store
from tracking.runs import background
from tracking.runs.session import git_commit

_VERSIONED = ("torch", "torchvision", "timm", "torchmetrics", "mlflow", "scikit-learn", "optuna")


def run_name(cfg: RunConfig) -> str:
    return cfg.tracking.run_name or f"{cfg.model.backbone} · {cfg.model.freeze} · seed {cfg.seed}"


def run_tags(prepared: PreparedTraining, entry_point: str, code_version: str) -> dict[str, str]:
    """The comparison axes and the provenance: `code_version` is freezeframe's own (its entry points know it,
    installed or run from a checkout that never was)."""
    cfg = prepared.cfg
    tags = {
        t.BACKBONE: prepared.backbone.full_name, t.SOURCE: prepared.backbone.source,
        t.WEIGHTS: cfg.model.weights, t.FREEZE: cfg.model.freeze, t.DATASET: cfg.data.dataset,
        t.SEED: str(cfg.seed), t.ENTRY_POINT: entry_point, t.CONFIG_DIGEST: prepared.config_digest,
        t.SPLIT_DIGEST: prepared.data.split_digest, t.DEVICE: str(prepared.device),
        t.FEATURE_CACHE: str(prepared.feature_cache)[:250], f"{t.VERSION_PREFIX}freezeframe": code_version,
    }
    commit = git_commit()
    if commit:
        tags[t.GIT_COMMIT] = commit
    for package in _VERSIONED:
        try:
            tags[f"{t.VERSION_PREFIX}{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return tags


class MlflowTracker:
    """An engine listener: each epoch's metrics go to the run in one log_batch call, written by the
    background thread (tracking/runs/background.py) while the next epoch trains; figures and reports too."""

    def __init__(self, run_id: str, code_version: str):
        self.run_id, self.code_version = run_id, code_version
        self.client = MlflowClient()  # every call names the run: the background thread has no active run
        # seconds the run's own thread spent in MLflow calls or waiting for the background writes, by
        # kind; and the background thread's working time by kind (off the run's path, not its CPU)
        self.timings: dict[str, float] = collections.defaultdict(float)
        self.jobs = background.Jobs()

    @property
    def seconds(self) -> float:
        """Time the run waited on logging, the model export (optional, and slow) excepted."""
        return sum(v for k, v in self.timings.items() if k != "model")

    @property
    def background_seconds(self) -> dict[str, float]:
        return dict(self.jobs.busy)

    @contextlib.contextmanager
    def _timed(self, what: str) -> Iterator[None]:
        tick = time.perf_counter()
        try:
            yield
        finally:
            self.timings[what] += time.perf_counter() - tick

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """Queued for the background thread, so the next epoch trains while the store writes. At most
        one epoch is in flight: the previous one's write is awaited here (it had a whole epoch to
        finish), so a store that went away stops the run an epoch later, not at its end; flush()
        waits for the last before the run may end FINISHED."""
        with self._timed("epochs"):
            now = int(time.time() * 1000)
            batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items() if k != "epoch"]
            self.jobs.submit("epochs", lambda: self.client.log_batch(self.run_id, metrics=batch))
            self.jobs.wait("epochs", keep=1)

    def flush(self, raise_errors: bool = True) -> None:
        """Wait until the store has every queued write; a failed one raises (the run then ends FAILED,
        or with the tracking-lost error when the store is gone)."""
        with self._timed("waiting for background writes"):
            self.jobs.wait_all(raise_errors=raise_errors)

    def log_setup(self, prepared: PreparedTraining, entry_point: str) -> None:
        """Before training: the config, tags, dataset lineage and model size, so a dying run still says
        what it was; the inputs plot is drawn here and rendered while the first epoch trains."""
        with self._timed("setup"):
            self._log_setup(prepared, entry_point)
            if prepared.cfg.tracking.log_plots:
                images, labels = prepared.input_samples()
                title = f"inputs as the model sees them · {run_name(prepared.cfg)}"
                self._log_figures_later(lambda: {"plots/input_samples.png": figures.samples_figure(
                    images, labels, prepared.data.class_names, title)})

    def _log_figures_later(self, render: Callable[[], dict]) -> None:
        def job() -> None:
            for path, figure in render().items():
                self.client.log_figure(self.run_id, figure, path)

        self.jobs.submit("plots", job)

    def _log_setup(self, prepared: PreparedTraining, entry_point: str) -> None:
        cfg = prepared.cfg
        # Top-level keys get a "run." prefix: `mlflow run` already logged its -P values under bare names
        # (`seed`), and MLflow refuses to change a param's value.
        params = {(k if "." in k else f"run.{k}"): str(v) for k, v in config_mod.flatten(cfg).items()}
        params.update({f"data.n_{split}": str(n) for split, n in prepared.data.sizes().items()})
        params["data.num_classes"] = str(len(prepared.data.class_names))
        tags = run_tags(prepared, entry_point, self.code_version)
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()],
                              tags=[RunTag(k, v) for k, v in tags.items()])
        freeze = prepared.freeze
        self.log_metrics({"model/params_trainable": freeze.params_trainable, "model/params_total": freeze.params_total,
                          "model/stages_trainable": freeze.stages_trainable, "model/stages_total": freeze.stages_total,
                          "data/skipped_files": prepared.data.raw.skipped})
        self.client.log_text(self.run_id, config_mod.to_yaml(cfg), "config.yaml")
        _log_dataset(self.client, self.run_id, prepared)

    def log_metrics(self, values: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def log_outcome(self, outcome: TrainingOutcome) -> None:
        """The end of the run: figures and reports go to the background thread, the final metrics and
        the weights are written meanwhile, then everything is awaited (the run ends after this)."""
        with self._timed("epochs"):
            self.jobs.wait("epochs")  # a store lost in the last epoch fails here, before more is queued
        fit, prepared = outcome.fit, outcome.prepared
        names = prepared.data.class_names
        monitor = prepared.cfg.train.monitor
        if prepared.cfg.tracking.log_plots:
            self._log_figures_later(lambda: _figures(outcome, run_name(prepared.cfg)))
        confusion = {split: m.tolist() for split, m in fit.confusion.items() if m is not None}
        history = {"history": fit.history, "confusion": confusion, "class_names": names}
        self.jobs.submit("reports", lambda: self._log_reports(outcome.report_text, outcome.report_dict, history))
        self.jobs.submit("reports", lambda: self.client.log_text(self.run_id, outcome.predictions_csv, artifact_path()))
        for name, shifted in outcome.shifted.items():  # eval.shifts: beside the clean ones, in the same format
            self.jobs.submit("reports", lambda text=shifted.predictions_csv, path=artifact_path(name):
                             self.client.log_text(self.run_id, text, path))
        if outcome.probe is not None:  # linear_probe: every C tried, and the chosen one
            self.jobs.submit("reports", lambda: self.client.log_text(self.run_id, outcome.probe.csv(),
                                                                     "reports/probe_c_grid.csv"))
        with self._timed("final metrics"):
            under_shift = {k: v for s in outcome.shifted.values() for k, v in s.metrics.items()}  # shift/<name>/acc
            self.log_metrics({**fit.test, **under_shift, "best/epoch": fit.best_epoch,
                              f"best/{monitor}": fit.best_value,
                              "perf/train_s": fit.train_seconds, "train/stopped_early": float(fit.stopped_early),
                              "train/epochs_completed": len(fit.history)},
                             step=fit.best_epoch)
            if fit.resumed_from_epoch:
                self.client.set_tag(self.run_id, t.RESUMED_FROM_EPOCH, str(fit.resumed_from_epoch))
            per_epoch = fit.history[-1] if fit.history else {}  # already logged with each epoch
            numbers = {k: v for k, v in fit.extra.items() if isinstance(v, (int, float)) and k not in per_epoch}
            if numbers:
                self.log_metrics(numbers)
            words = {k: str(v) for k, v in fit.extra.items() if not isinstance(v, (int, float))}
            if words:  # results that are not numbers are tags (feature_cache_source: memory | disk | computed)
                self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in words.items()])
        if prepared.cfg.tracking.log_model:
            with self._timed("model"):  # optional and slow: timed apart
                model_store.log_model(self.run_id, prepared)
        else:
            with self._timed("weights"):
                model_store.log_run_weights(self.run_id, prepared)
        self.flush()

    def _log_reports(self, text: str, report: dict, history: dict) -> None:
        self.client.log_text(self.run_id, text, "reports/classification_report.txt")
        self.client.log_dict(self.run_id, report, "reports/classification_report.json")
        # The best epoch's val confusion matrix as numbers: a second PNG costs a third of a second per run.
        self.client.log_dict(self.run_id, history, "reports/history.json")


def _figures(outcome: TrainingOutcome, title: str) -> dict:
    fit, names = outcome.fit, outcome.prepared.data.class_names
    found = {
        "plots/training_curves.png": figures.curves_figure(fit.history, title),
        "plots/confusion_matrix_test.png": figures.confusion_figure(fit.confusion["test"], names, f"test · {title}"),
    }
    if outcome.probe is not None:
        probe = outcome.probe
        found["plots/probe_c.png"] = figures.probe_figure(probe.grid, probe.c, f"linear probe · {title}")
    return found


def _log_dataset(client: MlflowClient, run_id: str, prepared: PreparedTraining) -> None:
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    raw = prepared.data.raw
    source = CodeDatasetSource(tags={"source": raw.source, "split_digest": prepared.data.split_digest})
    for split, n in prepared.data.sizes().items():
        digest = f"{prepared.data.split_digest}-{split}"[:36]
        dataset = MetaDataset(source=source, name=f"{raw.name}-{split}", digest=digest).to_dict()
        entity = DatasetEntity(dataset["name"], dataset["digest"], dataset["source_type"], dataset["source"],
                               dataset.get("schema"), dataset.get("profile"))
        context = [InputTag(MLFLOW_DATASET_CONTEXT, split), InputTag(t.DATASET_ROWS, str(n))]
        inputs = [DatasetInput(entity, tags=context)]
        _log_input_retrying(client, run_id, inputs)


def _log_input_retrying(client: MlflowClient, run_id: str, inputs: list, attempts: int = 4) -> None:
    """Workers logging the same dataset at once race on MLflow's unique (experiment, name, digest)
    row; the loser's retry finds the winner's row and links to it."""
    for attempt in range(attempts):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as exc:
            duplicate = any(word in str(exc) for word in ("UNIQUE constraint", "IntegrityError", "duplicate key"))
            if not duplicate or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
