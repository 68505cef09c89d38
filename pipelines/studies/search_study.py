"""Optuna's side of a search: sampler, the space cut to the batch-size ceiling, what a
trial's run is worth on each objective, a finished twin to reuse, and the champion trial."""

from __future__ import annotations

import itertools

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipelines.config import RunConfig
from pipelines.errors import ConfigError
from pipelines.studies.ceiling import Ceiling, ceiling_key, find_ceiling
from pipelines.studies.keys import CEILING_ATTR
from pipelines.studies.search_space import SearchSpec, grid_space, trial_config
from pipelines.studies.storage import study_id, study_lock
from pipelines.studies.worker import WorkerGridSampler
from pipelines.training.results import FitResult


def make_sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    if spec.sampler == "grid":
        return WorkerGridSampler(grid_space(spec), seed=spec.seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed)  # multi-objective too (Optuna's MOTPE)


def batch_size_ceiling(study: optuna.Study, storage: optuna.storages.BaseStorage, url: str, spec: SearchSpec,
                       base: RunConfig) -> tuple[SearchSpec, list[Ceiling]]:
    """The space cut to the largest batch size that fits every (backbone, freeze) combination it holds.

    Each combination is measured once per study and kind of device (under the study's lock, so workers
    starting together wait for one measurement); later workers and reruns read it from the study."""
    if not spec.probe_memory:
        return spec, []
    found = []
    for backbone, freeze in itertools.product(spec.backbone or (base.model.backbone,),
                                              spec.freeze or (base.model.freeze,)):
        cfg = trial_config(base, spec, {"batch_size": spec.batch_sizes[0], "backbone": backbone, "freeze": freeze})
        attr = CEILING_ATTR + ceiling_key(cfg)
        with study_lock(url, study.study_name):
            cached = ceilings_in(study, storage).get(attr)  # read from the storage: another worker's ceiling counts
            if cached is None:
                ceiling = find_ceiling(cfg, spec.batch_sizes)
                storage.set_study_system_attr(study_id(study, storage), attr, ceiling.to_dict())
                print(f"search: batch-size ceiling of {backbone} · {freeze} on {ceiling.device}: {ceiling.ceiling} "
                      f"({len(ceiling.steps)} probe step{'s' * (len(ceiling.steps) > 1)}, {ceiling.seconds:.1f} s)",
                      flush=True)
            else:
                ceiling = Ceiling.from_dict(cached)
        if ceiling.ceiling < spec.batch_sizes[0]:
            first = ceiling.steps[0]
            raise ConfigError(
                f"search.batch_size.low {spec.batch_sizes[0]} does not fit: a training step of {backbone} ({freeze}) "
                f"at {cfg.data.image_size} px needs {first.need_mb:.0f} MB with the margin, over the "
                f"{ceiling.limit_mb:.0f} MB {_limit_source(cfg)} on {ceiling.device}")
        found.append(ceiling)
    return spec.cut_to(min(c.ceiling for c in found)), found


def ceilings_in(study: optuna.Study, storage: optuna.storages.BaseStorage) -> dict[str, dict]:
    """The batch-size ceilings a study holds (Ceiling.to_dict), by key."""
    found = storage.get_study_system_attrs(study_id(study, storage))
    return {k: v for k, v in found.items() if k.startswith(CEILING_ATTR)}


def _limit_source(cfg: RunConfig) -> str:
    return "of train.memory_limit_mb" if cfg.train.memory_limit_mb else "available"


def objective_values(spec: SearchSpec, fit: FitResult) -> list[float]:
    """A trial's value on each objective: validation metrics at its best epoch, perf/images_per_s as
    steady-state throughput, perf/peak_memory_mb as the training peak."""
    best = next((row for row in fit.history if int(row["epoch"]) == fit.best_epoch), {})
    found = {**best, spec.metric: fit.best_value, "perf/images_per_s": fit.extra["perf/steady_images_per_s"],
             "perf/peak_memory_mb": fit.extra["perf/peak_memory_mb"]}
    return [float(found[name]) for name in spec.objectives]


def finished_twin(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial | None:
    """A complete trial of this study with exactly this trial's params: training them again would give
    the same numbers (the runs are seeded), so its result is reused (Optuna's FAQ recipe)."""
    for done in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if done.number != trial.number and done.params == trial.params:
            return done
    return None


def champion_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial; in a multi-objective study, the Pareto front's best on the first
    objective (the validation metric): the most accurate of the trials nothing beats on every count."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    if len(study.directions) == 1:
        return study.best_trial
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    return max(study.best_trials, key=lambda t: (sign * t.values[0], -t.number))

