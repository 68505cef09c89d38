"""A comparison grid: backbones × freeze policies × seeds (or explicit arms) over one base run config.

Declared in an experiment file's `compare:` section:

    compare:
      name: quickstart
      backbones: [timm/tf_efficientnet_lite0, {name: torchvision/resnet18, weights: none}]
      freeze: [frozen, last_n:2, unfrozen]
      seeds: [0, 1, 2]
    # or, instead of the three axes: arms: [{backbone: ..., weights: ..., freeze: ..., seed: ...}]
      screen: {by: linear_probe, keep: 2}   # optional: fine-tune only the 2 backbones ranked best
      racing: successive_halving            # optional: stop arms that fall behind (studies/racing.py)
      lr: [1e-4, 3e-4, 1e-3, 3e-3]          # optional: each arm at each lr, the best on validation kept

Screening ranks the backbones first (freezeframe rank's arms, by logme | knn | linear_probe) and gives
the policies that train the backbone to the top `keep` only; the others keep their fixed-feature arms
(frozen, linear_probe), so they stay in the summary, marked as screened out.

`compare.lr` runs each backbone · policy · seed once per lr, an arm per variant named and tagged with its
lr (one train.lr for all would favour some policies); the summary keeps the variant best on validation
(pipelines/reports/lr_choice.py). A linear_probe arm, an L-BFGS fit, stays one arm at the base config.

Everything is checked here, before any arm starts: an empty grid, duplicate arms, unknown policies,
a gradual schedule that does not fit the epochs, a bad compare.lr.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import optuna
from optuna.trial import TrialState

from pipelines.config import RunConfig, digest, with_overrides
from pipelines.errors import ConfigError
from pipelines.policy import fitted_without_lr
from pipelines.ranking import SCORES
from pipelines.studies.keys import (
    ARM_ATTR,
    BACKBONE_ATTR,
    DIGEST_ATTR,
    FREEZE_ATTR,
    LR_ATTR,
    RUN_ATTR,
    SEED_ATTR,
    WEIGHTS_ATTR,
)
from pipelines.studies.racing import RACES
from pipelines.studies.worker import fail_trial
from pipelines.values import coerce, learning_rates, lr_text

_KEYS = ("name", "backbones", "freeze", "seeds", "arms", "screen", "racing", "lr")
_ARM_KEYS = ("backbone", "weights", "freeze", "seed")


@dataclass(frozen=True)
class Arm:
    backbone: str
    weights: str
    freeze: str
    seed: int
    lr: float | None = None  # compare.lr: this variant's train.lr; None: the base config's (no compare.lr)

    @property
    def name(self) -> str:
        lr = "" if self.lr is None else f" · lr {lr_text(self.lr)}"
        return f"{self.backbone} · {self.freeze}{lr} · seed {self.seed}"


@dataclass(frozen=True)
class Screen:
    by: str  # a score of pipelines.ranking.SCORES
    keep: int  # how many backbones, best first, get the policies that train the backbone


@dataclass(frozen=True)
class Comparison:
    name: str
    arms: tuple[Arm, ...]
    configs: tuple[RunConfig, ...]  # each arm's run config, validated
    screen: Screen | None = None
    racing: str = "none"  # one of racing.RACES

    def backbones(self) -> list[tuple[str, str]]:
        """The distinct (backbone, weights), in the grid's order."""
        return list(dict.fromkeys((arm.backbone, arm.weights) for arm in self.arms))

    def screened(self, kept: set[tuple[str, str]]) -> Comparison:
        """The grid with the policies that train the backbone left to the `kept` backbones only."""
        pairs = [(arm, cfg) for arm, cfg in zip(self.arms, self.configs, strict=True)
                 if (arm.backbone, arm.weights) in kept or not cfg.model.policy.trains_backbone]
        return Comparison(self.name, tuple(a for a, _ in pairs), tuple(c for _, c in pairs), self.screen, self.racing)


def parse_comparison(section: Any, base: RunConfig, source: str = "experiment") -> Comparison:
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: needs a 'compare:' section (name, backbones, freeze, seeds, or arms)")
    unknown = [k for k in section if k not in _KEYS]
    if unknown:
        raise ConfigError(f"{source}: unknown key 'compare.{unknown[0]}' (valid: {', '.join(_KEYS)})")
    name = str(section.get("name") or "comparison")
    if "arms" in section:
        if any(k in section for k in ("backbones", "freeze", "seeds")):
            raise ConfigError(f"{source}: give either compare.arms or the backbones/freeze/seeds axes, not both")
        arms = [_explicit_arm(item, base, source, i) for i, item in enumerate(_as_list(section["arms"], "arms"))]
    else:
        arms = _grid(section, base, source)
    if not arms:
        raise ConfigError(f"{source}: the comparison grid is empty")
    if "lr" in section:
        arms = _lr_variants(arms, learning_rates(section["lr"], source), source)
    seen: set[Arm] = set()
    configs = []
    for arm in arms:
        if arm in seen:
            raise ConfigError(f"{source}: duplicate arm '{arm.name}' (weights {arm.weights})")
        seen.add(arm)
        configs.append(arm_config(base, arm))  # a run config, validated: its policy, a gradual schedule
    screen = _screen(section["screen"], source) if section.get("screen") is not None else None
    racing = str(section.get("racing", "none"))
    if racing not in RACES:
        raise ConfigError(f"{source}: compare.racing must be one of {', '.join(RACES)}, got {racing!r}")
    return Comparison(name, tuple(arms), tuple(configs), screen, racing)


def _lr_variants(arms: list[Arm], lrs: list[float], source: str) -> list[Arm]:
    """Each arm once per lr, the lr innermost (a seed's variants queue together, so they race each other);
    an arm fitted without an lr stays one arm."""
    if all(fitted_without_lr(arm.freeze) for arm in arms):
        raise ConfigError(f"{source}: compare.lr, but no arm trains with an lr (linear_probe is an L-BFGS fit)")
    return [replace(arm, lr=lr) for arm in arms for lr in ([None] if fitted_without_lr(arm.freeze) else lrs)]


def _screen(item: Any, source: str) -> Screen:
    if not isinstance(item, dict) or set(item) != {"by", "keep"}:
        raise ConfigError(f"{source}: compare.screen is {{by: {' | '.join(SCORES)}, keep: <backbones>}}, got {item!r}")
    if item["by"] not in SCORES:
        raise ConfigError(f"{source}: compare.screen.by must be one of {', '.join(SCORES)}, got {item['by']!r}")
    keep = coerce(item["keep"], int, "compare.screen.keep", source)
    if keep < 1:
        raise ConfigError(f"{source}: compare.screen.keep must be at least 1, got {keep}")
    return Screen(str(item["by"]), keep)


def _as_list(value: Any, key: str) -> list:
    if not isinstance(value, list):
        raise ConfigError(f"compare.{key} must be a list, got {value!r}")
    return value


def _grid(section: dict, base: RunConfig, source: str) -> list[Arm]:
    backbones = []
    for item in _as_list(section.get("backbones", [base.model.backbone]), "backbones"):
        if isinstance(item, dict):
            extra = [k for k in item if k not in ("name", "weights")]
            if extra or "name" not in item:
                raise ConfigError(f"{source}: a compare.backbones entry is a name or {{name, weights}}, got {item}")
            backbones.append((str(item["name"]), str(item.get("weights", base.model.weights))))
        else:
            backbones.append((str(item), base.model.weights))
    policies = [str(p) for p in _as_list(section.get("freeze", [base.model.freeze]), "freeze")]
    seeds = [coerce(s, int, "compare.seeds", source) for s in _as_list(section.get("seeds", [base.seed]), "seeds")]
    if not seeds:
        raise ConfigError(f"{source}: compare.seeds is empty: give at least one seed")
    return [Arm(b, w, p, s) for b, w in backbones for p in policies for s in seeds]


def _explicit_arm(item: Any, base: RunConfig, source: str, index: int) -> Arm:
    if not isinstance(item, dict) or any(k not in _ARM_KEYS for k in item):
        raise ConfigError(f"{source}: compare.arms[{index}] must be a mapping of {', '.join(_ARM_KEYS)}")
    return Arm(str(item.get("backbone", base.model.backbone)), str(item.get("weights", base.model.weights)),
               str(item.get("freeze", base.model.freeze)),
               coerce(item.get("seed", base.seed), int, f"compare.arms[{index}].seed", source))


def arm_config(base: RunConfig, arm: Arm) -> RunConfig:
    """The base run config with the arm's axes; validated, so a bad schedule fails before any arm runs.
    A linear_probe arm takes one process whatever train.devices says (fitted_without_lr). An lr variant's
    run is named as the arm is (lr included); without compare.lr the config is as it always was."""
    probe = fitted_without_lr(arm.freeze)
    lr = {} if arm.lr is None else {"train.lr": arm.lr}
    return with_overrides(base, {"model.backbone": arm.backbone, "model.weights": arm.weights,
                                 "model.freeze": arm.freeze, "seed": arm.seed,
                                 "tracking.run_name": "" if arm.lr is None else arm.name,
                                 "train.devices": 1 if probe else base.train.devices, **lr})


def arm_configs(spec: Comparison) -> dict[str, tuple[Arm, RunConfig]]:
    """config digest → (arm, its run config)."""
    return {digest(cfg): (arm, cfg) for arm, cfg in zip(spec.arms, spec.configs, strict=True)}


def queue_arms(study: optuna.Study, storage: optuna.storages.BaseStorage, arms: dict[str, tuple[Arm, RunConfig]],
               recorded: Callable[[str], bool] = lambda run_id: True) -> dict[str, str]:
    """Queue each arm of this grid once: not if a trial of the same digest is waiting, running or
    complete. Returns digest → MLflow run id of the arms complete earlier. Call under the study lock.

    A complete trial counts only while `recorded(its run id)` holds: a study kept beside a new or
    cleared tracking store runs its arms again rather than summarising runs that store never saw.

    A trial running another config belongs to workers of a changed grid: refused, as a mixed summary
    would be wrong. One waiting with another config is superseded by this grid and failed, saying so.
    """
    trials = study.get_trials(deepcopy=False)
    foreign = [t for t in trials if t.user_attrs.get(DIGEST_ATTR) not in arms]
    running = [t for t in foreign if t.state == TrialState.RUNNING]
    if running:
        raise ConfigError(f"comparison '{study.study_name}' is being run with another config (arm "
                          f"'{running[0].user_attrs.get(ARM_ATTR)}', digest {running[0].user_attrs.get(DIGEST_ATTR)}); "
                          "wait for those workers or choose another study_name")
    for trial in foreign:
        if trial.state == TrialState.WAITING:
            fail_trial(study, storage, trial.number, "superseded: the comparison's config changed")
    states: dict[str, set[TrialState]] = {}
    done: dict[str, str] = {}
    for trial in trials:
        key = trial.user_attrs.get(DIGEST_ATTR)
        if trial.state == TrialState.COMPLETE:
            if key not in arms or not recorded(trial.user_attrs.get(RUN_ATTR, "")):
                continue
            done[key] = trial.user_attrs[RUN_ATTR]
        states.setdefault(key, set()).add(trial.state)
    # arms that never train the backbone first: cheap, and their values are in when racing judges the rest
    for key, (arm, _) in sorted(arms.items(), key=lambda item: item[1][1].model.policy.trains_backbone):
        if not states.get(key, set()) & {TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE}:
            axes = {BACKBONE_ATTR: arm.backbone, WEIGHTS_ATTR: arm.weights, FREEZE_ATTR: arm.freeze,
                    SEED_ATTR: arm.seed, **({} if arm.lr is None else {LR_ATTR: arm.lr})}
            study.enqueue_trial({}, user_attrs={ARM_ATTR: arm.name, DIGEST_ATTR: key, **axes})
    return done
