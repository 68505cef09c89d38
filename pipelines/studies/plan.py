"""A study as it is asked for, before it opens: the one description compare, rank and search each build
once, and every process that opens the study (a worker, an arm's process 0) builds the same study from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna

from pipelines.studies.racing import racing_pruner


@dataclass(frozen=True)
class PrunerSpec:
    """A study's pruner, by name. Optuna keeps a study's pruner in the process, not in the storage, so a
    process that opens the study elsewhere (an arm's process 0) builds it again from this; the worker's
    study is built from the same value (one description, never two kept in step)."""
    kind: str  # "racing" (compare.racing) or "search" (search.pruner)
    name: str
    epochs: int = 0  # a search's epochs: hyperband's largest resource

    def build(self) -> optuna.pruners.BasePruner:
        return racing_pruner(self.name) if self.kind == "racing" else pruner_named(self.name, self.epochs)


@dataclass(frozen=True)
class StudyPlan:
    """A comparison, ranking or search as a study with a parent run: what differs between the three."""
    kind: str  # compare | rank | search: the study's kind, its parent's and its children's entry point
    name: str
    storage_url: str  # '' = the default (pipelines.studies.storage.DEFAULT_STORAGE)
    experiment_name: str  # the config's; MLFLOW_EXPERIMENT_NAME or `mlflow run`'s launcher may override it
    directions: tuple[str, ...]  # maximize | minimize, per objective
    metrics: tuple[str, ...]  # each objective's name, as optuna-dashboard shows it
    pruner: PrunerSpec
    parent_tags: dict[str, str] = field(default_factory=dict)
    parent_params: dict[str, Any] = field(default_factory=dict)
    sampler: optuna.samplers.BaseSampler | None = None  # a search's; a comparison's arms are queued
    adopt_launcher: bool = True  # the `mlflow run` launcher's run becomes this worker's record


def pruner_named(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """search.pruner's pruner, for trials of `epochs` epochs."""
    if name == "successive_halving":
        # ASHA: at epochs 1, 3, 9, ... a trial goes on only in the top third of those that got there
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "median":
        # once two trials have finished, a trial below their median at the same epoch stops there
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()
