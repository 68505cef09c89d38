"""A study's parent run after a worker's trials: best value and params, Optuna's own plots, and the
best trial's model registered with the alias `champion`."""

from __future__ import annotations

import logging
import warnings

import matplotlib.pyplot as plt
import mlflow
import optuna
from mlflow.tracking import MlflowClient

from tracking.registry import register_run_model
from tracking.store import TrackingError

log = logging.getLogger(__name__)
_PLOTS = {
    "optimization_history": optuna.visualization.matplotlib.plot_optimization_history,
    "param_importances": optuna.visualization.matplotlib.plot_param_importances,
    "parallel_coordinate": optuna.visualization.matplotlib.plot_parallel_coordinate,
    "intermediate_values": optuna.visualization.matplotlib.plot_intermediate_values,
}


def log_study(study: optuna.Study, parent_run_id: str, metric: str, experiment: str) -> str | None:
    """Update the parent with what the study holds now; returns the champion's models:/ URI, if any."""
    client = MlflowClient()
    trials = study.get_trials(deepcopy=False)
    states = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    tags = {f"trials.{k.lower()}": str(v) for k, v in states.items() if v}
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    with mlflow.start_run(run_id=parent_run_id):
        for name, plot in _PLOTS.items():
            figure = _plot(plot, study, name)
            if figure is not None:
                mlflow.log_figure(figure, f"optuna/{name}.png")
                plt.close(figure)
        if not complete:
            mlflow.set_tags(tags)
            return None
        best = study.best_trial
        best_run = best.user_attrs.get("mlflow_run_id", "")
        tags.update({"best_trial": str(best.number), "best_run_id": best_run,
                     **{f"best.{k}": str(v) for k, v in best.params.items()}})
        mlflow.set_tags(tags)
        mlflow.log_metrics({f"best/{metric}": best.value, "trials/complete": len(complete),
                            "trials/total": len(trials)})
        uri = _register_champion(study, best, best_run, metric, experiment)
    client.set_tag(parent_run_id, "champion", uri or "none: the best trial logged no model")
    return uri


def _plot(plot, study: optuna.Study, name: str):
    """Optuna's matplotlib plots; one that needs more trials than there are is skipped, not fatal."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning for the matplotlib backend
            axes = plot(study)
        return axes.figure if hasattr(axes, "figure") else axes[0].figure
    except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as exc:
        log.info("optuna plot %s skipped: %s", name, exc)
        return None


def _register_champion(study, best, best_run: str, metric: str, experiment: str) -> str | None:
    if not best_run:
        return None
    name = f"freezeframe-{experiment}"
    try:  # another worker (or an earlier run) may have registered this very trial already
        current = MlflowClient().get_model_version_by_alias(name, "champion")
        if current.tags.get("source_run_id") == best_run:
            return f"models:/{name}@champion"
    except mlflow.exceptions.MlflowException:
        pass
    description = (f"Optuna study {study.study_name}, trial {best.number} "
                   f"(batch_size {best.params.get('batch_size')}): {metric} {best.value:.4f}; run {best_run}")
    try:
        return register_run_model(best_run, name, "champion", description)
    except TrackingError:  # trials ran with tracking.log_model off
        return None
