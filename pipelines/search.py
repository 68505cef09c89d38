"""Optuna's side of a search: sampler, pruner, the study, and the per-epoch reporter."""

from __future__ import annotations

import optuna

from pipelines.search_space import SearchSpec, grid_space
from pipelines.studies import open_study


def make_sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler(grid_space(spec), seed=spec.seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed)


def make_pruner(spec: SearchSpec, epochs: int) -> optuna.pruners.BasePruner:
    if spec.pruner == "median":
        # once two trials have finished, a trial below their median at the same epoch stops there
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_search(spec: SearchSpec, url: str, storage: optuna.storages.BaseStorage, epochs: int) -> optuna.Study:
    return open_study(spec.study_name, url, storage, "search", spec.direction, spec.metric,
                      sampler=make_sampler(spec), pruner=make_pruner(spec, epochs))


class EpochReporter:
    """An engine listener: report the metric each epoch (optuna-dashboard's curves); with `prune`, stop
    the trial when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str, prune: bool = True):
        self.trial, self.metric, self.prune = trial, metric, prune

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.trial.report(metrics[self.metric], step=epoch)
        if self.prune and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} ({self.metric} {metrics[self.metric]:.4f})")
