"""Racing a comparison's arms (`compare.racing: successive_halving`): each arm reports its monitored
metric per epoch, and Optuna's SuccessiveHalvingPruner stops one that is not in the top third of the
arms that reached the same rung (epochs 1, 3, 9, ...), as search's pruning does.

Two rules make it fit a comparison:
- An arm is judged against the arms of other backbone × policy groups only: its own seeds are the
  same experiment again, and ranking them against each other would stop a group for its seed noise.
- A linear_probe arm never sets a rung's bar: its one value is final (a converged fit), while every
  other arm at that rung is still training.
Arms that never train the backbone are queued first (arms.queue_arms), so their values are in when the
expensive arms reach their first rung. An arm is never stopped at its last epoch: it has finished.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

from pipelines.studies.keys import BACKBONE_ATTR, FREEZE_ATTR, WEIGHTS_ATTR

RACES = ("none", "successive_halving")
ONE_STEP = "linear_probe"  # reports one final value, never a training curve


def group_of(trial: FrozenTrial) -> tuple:
    """An arm's backbone × weights × policy, from the attributes queue_arms gave its trial."""
    attrs = trial.user_attrs
    return attrs.get(BACKBONE_ATTR), attrs.get(WEIGHTS_ATTR), attrs.get(FREEZE_ATTR)


class _Rivals:
    """The study as the pruner sees it: `get_trials` without the judged arm's own group and without
    one-step arms; everything else (storage, direction) is the study's."""

    def __init__(self, study: optuna.Study, judged: FrozenTrial):
        self._study, self._group = study, group_of(judged)
        self._judged = judged.number

    def get_trials(self, *args, **kwargs) -> list[FrozenTrial]:
        return [t for t in self._study.get_trials(*args, **kwargs) if t.number == self._judged or (
            group_of(t) != self._group and t.user_attrs.get(FREEZE_ATTR) != ONE_STEP)]

    def __getattr__(self, name: str):
        return getattr(self._study, name)


class RivalsPruner(optuna.pruners.BasePruner):
    """Optuna's successive halving over the arms of other groups (see the module's docstring)."""

    def __init__(self):
        # rungs at epochs 1, 3, 9, ...: at each, an arm goes on only in the top third of its rivals there
        self._inner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if trial.user_attrs.get(FREEZE_ATTR) == ONE_STEP:
            return False
        return self._inner.prune(_Rivals(study, trial), trial)


def racing_pruner(race: str) -> optuna.pruners.BasePruner:
    return RivalsPruner() if race == "successive_halving" else optuna.pruners.NopPruner()
