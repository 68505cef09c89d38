"""A study's parent run after a worker's trials: counts, best value and params, a table of every trial
with what it cost, Optuna's own plots, the Pareto front of a multi-objective study, and the champion
trial's model registered with the alias `champion`."""

from __future__ import annotations

import logging
import math
import warnings

import matplotlib.pyplot as plt
import optuna
from mlflow.tracking import MlflowClient

from pipelines.studies.ceiling import Ceiling
from pipelines.studies.keys import RUN_ATTR, TWIN_ATTR
from pipelines.studies.search_study import champion_trial
from tracking import tags
from tracking.models.registry import register_champion
from tracking.studies.parent_run import children, log_values

log = logging.getLogger(__name__)
_PLOTS = {
    "optimization_history": optuna.visualization.matplotlib.plot_optimization_history,
    "param_importances": optuna.visualization.matplotlib.plot_param_importances,
    "parallel_coordinate": optuna.visualization.matplotlib.plot_parallel_coordinate,
    "intermediate_values": optuna.visualization.matplotlib.plot_intermediate_values,
}
PERF = ("perf/steady_images_per_s", "perf/peak_memory_mb")


def log_study(study: optuna.Study, parent_run_id: str, metrics: tuple[str, ...], experiment: str) -> str | None:
    """Update the parent with what the study holds: counts, the trials table, best value and params,
    Optuna's plots, the Pareto front; returns the champion's models:/ URI, if any."""
    client = MlflowClient()
    trials = study.get_trials(deepcopy=False)
    states = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    run_tags = {f"{tags.TRIALS_PREFIX}{k.lower()}": str(v) for k, v in states.items() if v}
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    twins = sum(TWIN_ATTR in t.user_attrs for t in trials)
    _log_trials_table(client, parent_run_id, trials, metrics)
    for name, figure in _figures(study, metrics).items():
        client.log_figure(parent_run_id, figure, f"optuna/{name}.png")
        plt.close(figure)
    if len(metrics) > 1 and complete:
        _log_pareto(client, parent_run_id, study, metrics)
    counts = {"trials/complete": len(complete), "trials/total": len(trials), "trials/duplicates": twins}
    best = champion_trial(study)
    if best is None:
        log_values(parent_run_id, counts, run_tags)
        return None
    best_run = best.user_attrs.get(RUN_ATTR, "")
    run_tags.update({tags.BEST_TRIAL: str(best.number), tags.BEST_RUN_ID: best_run,
                     **{f"{tags.BEST_PARAM_PREFIX}{k}": str(v) for k, v in best.params.items()}})
    log_values(parent_run_id, {**{f"best/{m}": v for m, v in zip(metrics, best.values, strict=True)}, **counts},
               run_tags)
    if not best_run:
        return None
    values = ", ".join(f"{m} {v:.4f}" for m, v in zip(metrics, best.values, strict=True))
    description = (f"Optuna study {study.study_name}, trial {best.number} "
                   f"(batch_size {best.params.get('batch_size')}): {values}; run {best_run}")
    return register_champion(best_run, f"freezeframe-{experiment}", description, parent_run_id)


def log_ceilings(parent_run_id: str, ceilings: list[Ceiling]) -> None:
    """The measurement behind `search.batch_size_ceiling`: every batch size it tried, its peak, and the verdict."""
    header = ["backbone", "freeze", "device", "limit_mb", "batch_size", "peak_mb", "need_mb", "fits", "ceiling"]
    rows = [[c.backbone, c.freeze, c.device, c.limit_mb, p.batch_size, p.peak_mb, p.need_mb, p.fits, c.ceiling]
            for c in ceilings for p in c.steps]
    client = MlflowClient()
    client.log_text(parent_run_id, _csv(header, rows), "search/batch_size_ceiling.csv")
    client.log_text(parent_run_id, _markdown(header, rows), "search/batch_size_ceiling.md")


def _log_trials_table(client: MlflowClient, parent_run_id: str, trials: list, metrics: tuple[str, ...]) -> None:
    """summary/trials.csv and .md: one row per trial, with its values, throughput and peak memory."""
    runs = {r.info.run_id: r for r in children(parent_run_id)}
    params = sorted({k for t in trials for k in t.params})
    header = ["trial", "state", *params, *metrics, *PERF, TWIN_ATTR, "run_id"]
    rows = []
    for t in trials:
        run = runs.get(t.user_attrs.get(RUN_ATTR, ""))
        perf = [round(run.data.metrics[k], 1) if run and k in run.data.metrics else "" for k in PERF]
        values = [round(v, 4) for v in t.values] if t.values else [""] * len(metrics)
        rows.append([t.number, t.state.name, *(t.params.get(k, "") for k in params), *values, *perf,
                     t.user_attrs.get(TWIN_ATTR, ""), t.user_attrs.get(RUN_ATTR, "")])
    client.log_text(parent_run_id, _csv(header, rows), "summary/trials.csv")
    client.log_text(parent_run_id, _markdown(header, rows), "summary/trials.md")


def _log_pareto(client: MlflowClient, parent_run_id: str, study: optuna.Study, metrics: tuple[str, ...]) -> None:
    """pareto/front.csv, .md and .png: the trials no other trial beats on every objective."""
    front = sorted(study.best_trials, key=lambda t: t.number)
    header = ["trial", *sorted({k for t in front for k in t.params}), *metrics, "run_id"]
    rows = [[t.number, *(t.params.get(k, "") for k in header[1:-len(metrics) - 1]),
             *(round(v, 4) for v in t.values), t.user_attrs.get(RUN_ATTR, "")] for t in front]
    client.log_text(parent_run_id, _csv(header, rows), "pareto/front.csv")
    client.log_text(parent_run_id, _markdown(header, rows), "pareto/front.md")
    figure = _plot(optuna.visualization.matplotlib.plot_pareto_front, study, "pareto_front",
                   target_names=list(metrics))
    if figure is not None:
        client.log_figure(parent_run_id, figure, "pareto/front.png")
        plt.close(figure)


def _figures(study: optuna.Study, metrics: tuple[str, ...]) -> dict:
    """Optuna's plots; a multi-objective study's are drawn for its first objective."""
    kwargs = {} if len(metrics) == 1 else {"target": lambda t: t.values[0], "target_name": metrics[0]}
    found = {}
    for name, plot in _PLOTS.items():
        if name == "intermediate_values" and len(metrics) > 1:
            continue  # multi-objective trials report no intermediate values
        figure = _plot(plot, study, name, **kwargs)
        if figure is not None:
            found[name] = figure
    return found


def _plot(plot, study: optuna.Study, name: str, **kwargs):
    """One that needs more trials than there are is skipped, not fatal."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning for the matplotlib backend
            axes = plot(study, **kwargs)
        return axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as exc:
        log.info("optuna plot %s skipped: %s", name, exc)
        return None


def _csv(header: list, rows: list[list]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows([["" if isinstance(v, float) and math.isnan(v) else v for v in row] for row in rows])
    return out.getvalue()


def _markdown(header: list, rows: list[list]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]) + "\n"
