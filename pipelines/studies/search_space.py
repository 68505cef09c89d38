"""An Optuna search over a base run config, declared in an experiment file's `search:` section:

    search:
      study_name: batch_size_search
      metric: val/acc               # maximised (val/loss is minimised)
      batch_size: {low: 8, high: 64}  # multiples of 8 only, both bounds included
      lr: {low: 1.0e-4, high: 1.0e-2}  # optional, log-uniform; or a list for the grid sampler
      freeze: [frozen, unfrozen]    # optional categorical; so is backbone
      linear_scaling: {base_batch_size: 32}  # optional: lr = base lr * batch_size / 32
      n_trials: 6                   # what this invocation adds
      max_trials: 40                # optional: the study's total, over reruns and workers
      sampler: tpe                  # tpe (seeded) | random | grid (exhaustive) | nsga2
      pruner: successive_halving    # successive_halving | hyperband | median | none
      probe_memory: true            # cut batch_size.high to the largest batch that fits in memory
      objectives: [val/acc, perf/images_per_s]  # optional: a multi-objective study (Pareto front)

Every bound and name is checked here, before a study or a trial exists.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import optuna

from pipelines.config import MONITORS, RunConfig, with_overrides
from pipelines.errors import ConfigError
from pipelines.studies.storage import DIRECTIONS
from pipelines.values import coerce

SAMPLERS = ("tpe", "random", "grid", "nsga2")
PRUNERS = ("successive_halving", "hyperband", "median", "none")
DEFAULT_PRUNER = "successive_halving"  # benchmarks/bench_pruning.py: see docs/search.md, "Pruning"
_KEYS = ("study_name", "metric", "objectives", "batch_size", "lr", "freeze", "backbone", "linear_scaling",
         "n_trials", "max_trials", "timeout", "sampler", "pruner", "probe_memory", "seed")
BATCH_STEP = 8
# What a trial can be judged on: the monitored metrics at the best epoch, and what the trial cost.
# perf/images_per_s is the steady-state training throughput (perf/steady_images_per_s on the run).
PERF_OBJECTIVES = {"perf/images_per_s": "max", "perf/peak_memory_mb": "min"}
OBJECTIVES = {**MONITORS, **PERF_OBJECTIVES}


@dataclass(frozen=True)
class SearchSpec:
    study_name: str
    metric: str  # the first objective: it picks each trial's best epoch, drives pruning, names the champion
    objectives: tuple[str, ...]  # (metric,) or more: a multi-objective study
    batch_sizes: tuple[int, ...]  # every candidate, multiples of 8
    lr: tuple[float, float] | tuple[float, ...] | None  # (low, high) log-uniform, or a list of values
    lr_is_list: bool
    freeze: tuple[str, ...]
    backbone: tuple[str, ...]
    linear_scaling_base: int  # 0 = off
    n_trials: int
    max_trials: int  # the study's total over every worker and rerun; 0 = no cap
    timeout: float  # seconds, 0 = none
    sampler: str
    pruner: str
    probe_memory: bool
    seed: int
    pruner_note: str = ""  # why the pruner is off, when the file did not say so itself

    @property
    def directions(self) -> tuple[str, ...]:
        return tuple(DIRECTIONS[OBJECTIVES[name]] for name in self.objectives)

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def cut_to(self, ceiling: int) -> SearchSpec:
        """The space with batch sizes above the memory ceiling removed."""
        return dataclasses.replace(self, batch_sizes=tuple(b for b in self.batch_sizes if b <= ceiling))


def parse_search(section: Any, base: RunConfig, overrides: dict[str, Any] | None = None,
                 source: str = "experiment") -> SearchSpec:
    """The `search:` section plus command-line overrides (n_trials, sampler, ...), validated."""
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: needs a 'search:' section (batch_size bounds, n_trials, sampler, pruner)")
    raw = {**section, **{k: v for k, v in (overrides or {}).items() if v not in ("", None)}}
    unknown = [k for k in raw if k not in _KEYS]
    if unknown:
        raise ConfigError(f"{source}: unknown key 'search.{unknown[0]}' (valid: {', '.join(_KEYS)})")
    objectives = _objectives(raw)
    metric = objectives[0]
    sampler, pruner = str(raw.get("sampler", "tpe")), str(raw.get("pruner", DEFAULT_PRUNER))
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler '{sampler}' (valid: {', '.join(SAMPLERS)})")
    if pruner not in PRUNERS:
        raise ConfigError(f"unknown pruner '{pruner}' (valid: {', '.join(PRUNERS)})")
    pruner_note = ""
    if len(objectives) > 1 and pruner != "none":
        if "pruner" in raw:  # asked for by name: refusing beats silently not doing it
            raise ConfigError(f"search.pruner '{pruner}' needs one objective (Optuna prunes single-objective "
                              f"studies only): drop it or set pruner: none for objectives {list(objectives)}")
        pruner, pruner_note = "none", "off: Optuna prunes single-objective studies only"
    n_trials = coerce(raw.get("n_trials", 10), int, "search.n_trials", source)
    if n_trials <= 0:
        raise ConfigError(f"search.n_trials must be > 0, got {n_trials}")
    max_trials = coerce(raw.get("max_trials", 0), int, "search.max_trials", source)
    if "max_trials" in raw and max_trials < 1:
        raise ConfigError(f"search.max_trials must be >= 1 (the study's total), got {max_trials}")
    timeout = coerce(raw.get("timeout", 0), float, "search.timeout", source)
    if BATCH_STEP % base.train.devices:  # every candidate batch (a multiple of 8) must split over the devices
        raise ConfigError(f"search: train.devices {base.train.devices} does not divide every batch size the search "
                          f"draws (multiples of {BATCH_STEP}): use 1, 2, 4 or 8 devices")
    lr, lr_is_list = _lr(raw.get("lr"), source)
    if sampler == "grid" and lr is not None and not lr_is_list:
        raise ConfigError("the grid sampler needs discrete values: give search.lr as a list, not low/high")
    freeze = tuple(str(p) for p in raw.get("freeze", []) or [])
    scaling = raw.get("linear_scaling") or {}
    if not isinstance(scaling, dict) or any(k != "base_batch_size" for k in scaling):
        raise ConfigError("search.linear_scaling takes {base_batch_size: N}")
    spec = SearchSpec(
        study_name=str(raw.get("study_name") or "freezeframe-search"), metric=metric, objectives=objectives,
        batch_sizes=_batch_sizes(raw.get("batch_size"), source), lr=lr, lr_is_list=lr_is_list, freeze=freeze,
        backbone=tuple(str(b) for b in raw.get("backbone", []) or []),
        linear_scaling_base=coerce(scaling.get("base_batch_size", 0), int, "search.linear_scaling", source),
        n_trials=n_trials, max_trials=max_trials, timeout=timeout, sampler=sampler, pruner=pruner,
        probe_memory=coerce(raw.get("probe_memory", True), bool, "search.probe_memory", source),
        seed=coerce(raw.get("seed", base.seed), int, "search.seed", source), pruner_note=pruner_note)
    for policy in spec.freeze or (base.model.freeze,):  # each choice validated as a run config: its policy,
        cfg = trial_config(base, spec, {"batch_size": spec.batch_sizes[-1], "freeze": policy})  # its schedule
        if cfg.model.policy.kind == "linear_probe":
            raise ConfigError("search: linear_probe is fitted to convergence, whatever the batch size or lr, so a "
                              "search has nothing to vary for it: use it in train or compare")
    return spec


def _objectives(raw: dict[str, Any]) -> tuple[str, ...]:
    """`objectives:` or the single `metric:`; the first must be a validation metric (it picks the best epoch)."""
    metric = raw.get("metric")
    given = raw.get("objectives", [metric or "val/acc"])
    if isinstance(given, str):
        given = [given]
    if not isinstance(given, list) or not given:
        raise ConfigError(f"search.objectives is a list of metrics, e.g. [val/acc, perf/images_per_s] "
                          f"(valid: {', '.join(OBJECTIVES)})")
    objectives = tuple(str(name) for name in given)
    for name in objectives:
        if name not in OBJECTIVES:
            raise ConfigError(f"search objective '{name}' is not a metric a trial reports "
                              f"(valid: {', '.join(OBJECTIVES)})")
    if objectives[0] not in MONITORS:
        raise ConfigError(f"search.objectives must start with a validation metric ({', '.join(MONITORS)}), "
                          f"not '{objectives[0]}': it picks each trial's best epoch")
    if len(set(objectives)) < len(objectives):
        raise ConfigError(f"search.objectives names a metric twice: {list(objectives)}")
    if metric is not None and str(metric) != objectives[0]:
        raise ConfigError(f"search.metric '{metric}' and search.objectives {list(objectives)} disagree: "
                          "give objectives alone, the validation metric first")
    return objectives


def _batch_sizes(value: Any, source: str) -> tuple[int, ...]:
    if not isinstance(value, dict) or set(value) - {"low", "high"} or not {"low", "high"} <= set(value):
        raise ConfigError(f"{source}: search.batch_size needs {{low, high}}, both multiples of {BATCH_STEP}")
    low = coerce(value["low"], int, "search.batch_size.low", source)
    high = coerce(value["high"], int, "search.batch_size.high", source)
    for name, bound in (("low", low), ("high", high)):
        if bound < BATCH_STEP or bound % BATCH_STEP:
            raise ConfigError(f"search.batch_size.{name} = {bound} is not a positive multiple of {BATCH_STEP}")
    if low > high:
        raise ConfigError(f"search.batch_size.low {low} > high {high}")
    return tuple(range(low, high + 1, BATCH_STEP))


def _lr(value: Any, source: str) -> tuple[tuple[float, ...] | None, bool]:
    if value is None:
        return None, False
    if isinstance(value, list):
        values = tuple(coerce(v, float, "search.lr[]", source) for v in value)
        if not values or min(values) <= 0:
            raise ConfigError("search.lr values must be > 0")
        return values, True
    if not isinstance(value, dict) or set(value) != {"low", "high"}:
        raise ConfigError("search.lr is {low, high} (log-uniform) or a list of values")
    low, high = (coerce(value[k], float, f"search.lr.{k}", source) for k in ("low", "high"))
    if not 0 < low < high:
        raise ConfigError(f"search.lr needs 0 < low < high, got {low}, {high}")
    return (low, high), False


def grid_space(spec: SearchSpec) -> dict[str, list]:
    """GridSampler's space: every combination is one trial."""
    space: dict[str, list] = {"batch_size": list(spec.batch_sizes)}
    if spec.lr is not None:
        space["lr"] = list(spec.lr)
    if spec.freeze:
        space["freeze"] = list(spec.freeze)
    if spec.backbone:
        space["backbone"] = list(spec.backbone)
    return space


def suggest(trial: optuna.Trial, spec: SearchSpec) -> dict[str, Any]:
    """Batch size with step=8 (Optuna's step cannot combine with log=True, hence a linear int)."""
    params: dict[str, Any] = {"batch_size": trial.suggest_int("batch_size", spec.batch_sizes[0],
                                                              spec.batch_sizes[-1], step=BATCH_STEP)}
    if spec.lr is not None:
        params["lr"] = (trial.suggest_categorical("lr", list(spec.lr)) if spec.lr_is_list
                        else trial.suggest_float("lr", spec.lr[0], spec.lr[1], log=True))
    if spec.freeze:
        params["freeze"] = trial.suggest_categorical("freeze", list(spec.freeze))
    if spec.backbone:
        params["backbone"] = trial.suggest_categorical("backbone", list(spec.backbone))
    return params


def trial_config(base: RunConfig, spec: SearchSpec, params: dict[str, Any]) -> RunConfig:
    """The base config with a trial's choices; the linear scaling rule applied last."""
    lr = float(params.get("lr", base.train.lr))
    if spec.linear_scaling_base:
        lr = lr * params["batch_size"] / spec.linear_scaling_base
    cfg = with_overrides(base, {"train.batch_size": int(params["batch_size"]), "train.lr": lr,
                                "train.monitor": spec.metric,
                                "model.freeze": params.get("freeze", base.model.freeze),
                                "model.backbone": params.get("backbone", base.model.backbone)})
    assert cfg.train.batch_size % BATCH_STEP == 0 and math.isfinite(cfg.train.lr)
    return cfg
