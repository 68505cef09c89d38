"""A study's parent run after a worker's trials: best value and params, Optuna's own plots, and the
best trial's model registered with the alias `champion`."""

from __future__ import annotations

import logging
import warnings

import matplotlib.pyplot as plt
import optuna
from mlflow.tracking import MlflowClient

from pipelines.study_worker import RUN_ATTR
from tracking import tags
from tracking.parent_run import log_values
from tracking.registry import register_champion

log = logging.getLogger(__name__)
_PLOTS = {
    "optimization_history": optuna.visualization.matplotlib.plot_optimization_history,
    "param_importances": optuna.visualization.matplotlib.plot_param_importances,
    "parallel_coordinate": optuna.visualization.matplotlib.plot_parallel_coordinate,
    "intermediate_values": optuna.visualization.matplotlib.plot_intermediate_values,
}


def log_study(study: optuna.Study, parent_run_id: str, metric: str, experiment: str) -> str | None:
    """Update the parent with what the study holds: counts, best value and params, Optuna's plots, the
    champion; returns the champion's models:/ URI, if any."""
    client = MlflowClient()
    trials = study.get_trials(deepcopy=False)
    states = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    run_tags = {f"trials.{k.lower()}": str(v) for k, v in states.items() if v}
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    for name, plot in _PLOTS.items():
        figure = _plot(plot, study, name)
        if figure is not None:
            client.log_figure(parent_run_id, figure, f"optuna/{name}.png")
            plt.close(figure)
    if not complete:
        log_values(parent_run_id, {}, run_tags)
        return None
    best = study.best_trial
    best_run = best.user_attrs.get(RUN_ATTR, "")
    run_tags.update({"best_trial": str(best.number), tags.BEST_RUN_ID: best_run,
                     **{f"best.{k}": str(v) for k, v in best.params.items()}})
    log_values(parent_run_id, {f"best/{metric}": best.value, "trials/complete": len(complete),
                               "trials/total": len(trials)}, run_tags)
    if not best_run:
        return None
    description = (f"Optuna study {study.study_name}, trial {best.number} "
                   f"(batch_size {best.params.get('batch_size')}): {metric} {best.value:.4f}; run {best_run}")
    return register_champion(best_run, f"freezeframe-{experiment}", description, parent_run_id)


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
